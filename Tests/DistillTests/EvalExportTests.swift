import CheckpointFormats
import Distill
import Foundation
import ImageCodecs
import Layers
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// The evaluator (student vs teacher masks through one decoder) and the exporter.
final class EvalExportTests: XCTestCase {
    /// MobileSAM's real prompt encoder and mask decoder around a tiny 64-pixel TinyViT (the
    /// decoder's weights do not depend on the image size): (4, 4) embeddings, fast decoding.
    static func tinyDecoderModel() throws -> SAMModel {
        var c = CacheTestSupport.tinyConfig()
        c.neckChannels = 256
        let model = SAMModel(encoder: .tinyViT(c))
        let w = try WeightsFile(contentsOf: try Fixture.mobileSAMCheckpoint())
        func strip(_ p: String) -> [String: Tensor] {
            var d: [String: Tensor] = [:]
            for (k, v) in w.tensors where k.hasPrefix(p) { d[String(k.dropFirst(p.count))] = v }
            return d
        }
        try model.promptEncoder.load(strip("prompt_encoder."))
        try model.maskDecoder.load(strip("mask_decoder."))
        return model
    }

    /// Random "teacher" embeddings (1, 256, 4, 4) for frames of a few sizes.
    static func images(count: Int, noise: Float, seed: UInt64 = 3) -> [EvaluationImage] {
        var rng = SeededRandom(seed: seed)
        let transform = ResizeLongestSide(targetLength: 64)
        return (0..<count).map { i in
            let t = Tensor.randomNormal([1, 256, 4, 4], std: 0.5, rng: &rng)
            var s = t
            if noise > 0 {
                let n = Tensor.randomNormal([1, 256, 4, 4], std: noise, rng: &rng)
                for j in 0..<s.count { s.data[j] += n.data[j] }
            }
            let size = [ImageSize(height: 48, width: 64), ImageSize(height: 64, width: 40), ImageSize(height: 64, width: 64)][i % 3]
            return EvaluationImage(name: "img\(i)", teacherEmbedding: t, studentEmbedding: s,
                                   originalSize: size, inputSize: transform.targetSize(for: size))
        }
    }

    static func report(_ model: SAMModel, _ options: EvaluationOptions, _ images: [EvaluationImage]) throws -> EvaluationReport {
        let e = Evaluator(model: model, options: options)
        return EvaluationReport(student: "s", teacher: "t", data: "synthetic", options: options,
                                images: try images.map { try e.evaluate($0) })
    }

    func testSameEmbeddingGivesIoUOneAndPerturbedLess() throws {
        let model = try Self.tinyDecoderModel()
        for multimask in [false, true] {
            var o = EvaluationOptions()
            o.prompts = PromptProtocol.allCases
            o.pointsPerImage = 4
            o.multimask = multimask
            o.pointDistance = 12
            let same = try Self.report(model, o, Self.images(count: 4, noise: 0))
            XCTAssertEqual(same.summary.count, 4 * (multimask ? 2 : 1), "every protocol × metric reported: \(same.summary)")
            for s in same.summary {
                XCTAssertGreaterThan(s.prompts, 0, "\(s)")
                XCTAssertEqual(s.miou, 1, "identical embeddings give identical masks: \(s)")
                XCTAssertEqual(s.ciLow, 1); XCTAssertEqual(s.ciHigh, 1)
            }
            XCTAssertTrue(same.rows.allSatisfy { $0.miou == 1 })

            let perturbed = try Self.report(model, o, Self.images(count: 4, noise: 1.0))
            let overall = perturbed.summary.map(\.miou)
            // Each row keeps its prompts' IoUs (JSON `ious`), whose mean is the row's mIoU.
            for r in try EvaluationReport.read(json: try perturbed.json()).rows {
                XCTAssertEqual(r.ious?.count, r.prompts, "\(r)")
                XCTAssertEqual(r.ious.map { $0.reduce(0, +) / Double($0.count) } ?? -1, r.miou, accuracy: 1e-12)
            }
            XCTAssertTrue(overall.allSatisfy { $0 >= 0 && $0 <= 1 })
            XCTAssertLessThan(overall.reduce(0, +) / Double(overall.count), 0.99, "a perturbed embedding changes masks: \(perturbed.summary)")
            for s in perturbed.summary {
                XCTAssertLessThanOrEqual(s.ciLow, s.miou, "\(s)")
                XCTAssertGreaterThanOrEqual(s.ciHigh, s.miou, "\(s)")
            }
            if multimask {
                // best3 is a max over the three masks, one of which is the top one.
                for p in PromptProtocol.allCases {
                    let top = perturbed.summary.first { $0.prompt == p.rawValue && $0.metric == "top" }!
                    let best = perturbed.summary.first { $0.prompt == p.rawValue && $0.metric == "best3" }!
                    XCTAssertGreaterThanOrEqual(best.miou, top.miou - 1e-12, p.rawValue)
                }
            }
        }
    }

    func testSeededDeterminismAndBootstrap() throws {
        let model = try Self.tinyDecoderModel()
        var o = EvaluationOptions()
        o.prompts = [.point, .twoPoint, .box]
        o.pointsPerImage = 3
        o.pointDistance = 10
        let imgs = Self.images(count: 5, noise: 1.0)
        let a = try Self.report(model, o, imgs), b = try Self.report(model, o, imgs)
        XCTAssertEqual(a.rows, b.rows)
        XCTAssertEqual(a.summary, b.summary)
        XCTAssertEqual(try a.json(), try b.json())
        o.seed = 7
        let c = try Self.report(model, o, imgs)
        XCTAssertNotEqual(a.rows.map(\.miou), c.rows.map(\.miou), "another seed draws other prompts")

        // Bootstrap over clusters: contains the mean, degenerate for equal clusters, seeded.
        let clusters: [(sum: Double, count: Int)] = [(0.5, 1), (2.7, 3), (0.1, 2), (3.0, 4), (0.9, 1)]
        let mean = clusters.reduce(0) { $0 + $1.sum } / Double(clusters.reduce(0) { $0 + $1.count })
        let (lo, hi) = EvaluationReport.bootstrapInterval(clusters, samples: 2000, seed: 1)
        XCTAssertLessThan(lo, mean); XCTAssertGreaterThan(hi, mean)
        XCTAssertTrue(lo >= 0.1 / 2 && hi <= 0.9, "\(lo) \(hi)")
        XCTAssertTrue(EvaluationReport.bootstrapInterval(clusters, samples: 2000, seed: 1) == (lo, hi))
        let flat = EvaluationReport.bootstrapInterval([(0.4, 2), (0.2, 1)], samples: 500, seed: 2)
        XCTAssertEqual(flat.0, 0.2, accuracy: 1e-12); XCTAssertEqual(flat.1, 0.2, accuracy: 1e-12)

        // The three outputs carry the same numbers.
        let md = a.markdown(), table = a.table()
        for s in a.summary {
            XCTAssertTrue(md.contains(String(format: "%.4f", s.miou)))
            XCTAssertTrue(table.contains(String(format: "%.4f", s.miou)))
        }
        let json = try JSONSerialization.jsonObject(with: try a.json()) as! [String: Any]
        XCTAssertEqual((json["summary"] as! [[String: Any]]).count, a.summary.count)
        XCTAssertEqual((json["rows"] as! [[String: Any]]).count, a.rows.count)
    }

    /// mobile_sam.pt → safetensors (float32, float16, with and without the decoder): the same
    /// tensors come back through `SAMModel.load`; float16 within half-precision rounding.
    func testExportRoundTripMobileSAM() throws {
        let dir = try CacheTestSupport.temporaryDirectory("export")
        defer { try? FileManager.default.removeItem(at: dir) }
        let pt = try Fixture.mobileSAMCheckpoint()
        let reference = try SAMModel.load(contentsOf: pt).stateDict()

        let full = dir.appendingPathComponent("full.safetensors")
        let s = try Exporter.export(checkpoint: pt, to: full, full: true)
        XCTAssertEqual(s.decoderTensors + s.encoderTensors, reference.count)
        let (entries, meta) = try SafeTensors.read(full)
        XCTAssertEqual(meta["image_encoder"], "tiny_vit")
        XCTAssertEqual(meta["image_encoder_config"], SAMEncoderConfig.tinyViT(.mobileSAM).metadata["image_encoder_config"])
        XCTAssertTrue(entries.keys.allSatisfy { $0.hasPrefix("image_encoder.") || $0.hasPrefix("prompt_encoder.") || $0.hasPrefix("mask_decoder.") })
        XCTAssertFalse(entries.keys.contains { $0.hasPrefix("image_encoder.head.") || $0.hasPrefix("image_encoder.norm_head.") || $0.hasSuffix("num_batches_tracked") })
        let loaded = try SAMModel.load(contentsOf: full)
        XCTAssertEqual(loaded.encoderConfig, .tinyViT(.mobileSAM))
        let back = loaded.stateDict()
        XCTAssertEqual(Set(back.keys), Set(reference.keys))
        for (k, v) in reference { XCTAssertEqual(back[k]!.shape, v.shape, k); XCTAssertTrue(back[k]!.data == v.data, k) }

        // Encoder alone, with the decoder from the original.
        let encoderOnly = dir.appendingPathComponent("enc.safetensors")
        try Exporter.export(checkpoint: pt, to: encoderOnly)
        XCTAssertTrue(try SafeTensors.read(encoderOnly).tensors.keys.allSatisfy { $0.hasPrefix("image_encoder.") })
        let viaDecoder = try SAMModel.load(contentsOf: encoderOnly, decoderWeights: pt).stateDict()
        for (k, v) in reference { XCTAssertTrue(viaDecoder[k]!.data == v.data, k) }

        // float16.
        let half = dir.appendingPathComponent("half.safetensors")
        try Exporter.export(checkpoint: pt, to: half, half: true, full: true)
        XCTAssertTrue(try SafeTensors.read(half).tensors.values.allSatisfy { $0.dtype == .f16 })
        let h = try SAMModel.load(contentsOf: half).stateDict()
        var worst = 0.0
        for (k, v) in reference {
            let r = withinHalfRounding(h[k]!.data, v.data)
            worst = max(worst, r.worst)
            XCTAssertTrue(r.ok, "\(k): \(r.worst) half-ulps")
        }
        XCTAssertGreaterThan(worst, 0, "float16 storage rounds something")

        // An export of an export is the same file content.
        let again = dir.appendingPathComponent("again.safetensors")
        try Exporter.export(checkpoint: full, to: again, full: true)
        let a = try SafeTensors.read(again).tensors, f = try SafeTensors.read(full).tensors
        XCTAssertEqual(Set(a.keys), Set(f.keys))
        for (k, v) in f { XCTAssertTrue(a[k]!.tensor.data == v.tensor.data, k) }
    }

    /// A depth-pruned student (depths [1, 1, 2, 1], from evenly spaced MobileSAM blocks) as a
    /// training checkpoint → `samdistill export --full` → `SAMModel.load` and `samdistill segment`.
    func testExportedDepthPrunedStudentRunsInSegment() throws {
        let dir = try CacheTestSupport.temporaryDirectory("export-pruned")
        defer { try? FileManager.default.removeItem(at: dir) }
        let pt = try Fixture.mobileSAMCheckpoint()
        var config = RunConfig()
        var c = TinyViTConfig.mobileSAM
        c.depths = [1, 1, 2, 1]
        config.student = .tinyViT(c, preset: nil)
        config.teacher.checkpoint = pt.path
        config.initialisation = .teacherBlocks(blockMap: nil)
        let student = try Student.make(config)
        var tensors: [String: Tensor] = [:]
        for (k, p) in student.namedParameters() { tensors["model." + k] = p.value }
        let ckpt = dir.appendingPathComponent("step_0.safetensors")
        try SafeTensors.write(tensors, metadata: ["format": "samdistill-checkpoint-1", "step": "0", "config": try config.yaml()], to: ckpt)

        let exe = try CacheTestSupport.executable()
        let out = dir.appendingPathComponent("student.safetensors")
        let e = try CacheTestSupport.run(exe, ["export", ckpt.path, "--out", out.path, "--full"])
        XCTAssertEqual(e.status, 0, e.err)
        let model = try SAMModel.load(contentsOf: out)
        // The run config's round trip spells out MobileSAM's implicit merge strides ([2, 2, 1]).
        guard case .tinyViT(let resolved, _) = try RunConfig.parse(try config.yaml()).student else { return XCTFail("not a TinyViT") }
        XCTAssertEqual(resolved.depths, [1, 1, 2, 1])
        XCTAssertEqual(model.encoderConfig, .tinyViT(resolved), "\(model.encoderConfig.metadata)")
        let sd = model.stateDict()
        for (k, p) in student.namedParameters() { XCTAssertTrue(sd["image_encoder." + k]!.data == p.value.data, k) }

        let photo = try CacheTestSupport.realPhotos(["fruits.jpg"])[0]
        let json = dir.appendingPathComponent("seg.json")
        let s = try CacheTestSupport.run(exe, ["segment", "--checkpoint", out.path, "--image", photo.path, "--point", "250,240",
                                               "--out", dir.appendingPathComponent("overlay.png").path, "--json", json.path])
        XCTAssertEqual(s.status, 0, s.err)
        let summary = try JSONSerialization.jsonObject(with: Data(contentsOf: json)) as? [String: Any]
        XCTAssertNotNil(summary, "segment wrote its JSON summary")

        // A training checkpoint without decoder source fails with a clear message.
        config.teacher.checkpoint = nil
        config.initialisation = .random
        try SafeTensors.write(tensors, metadata: ["format": "samdistill-checkpoint-1", "step": "0", "config": try config.yaml()], to: ckpt)
        XCTAssertThrowsError(try Exporter.export(checkpoint: ckpt, to: out, full: true)) {
            XCTAssertTrue("\($0)".contains("--prompt-decoder-from"), "\($0)")
        }
    }

    /// The real thing on one photo through `samdistill eval --images`: MobileSAM exported as
    /// float16 vs MobileSAM float32; the masks agree almost everywhere.
    func testEvalCommandOnOnePhotoWithMobileSAM() throws {
        let dir = try CacheTestSupport.temporaryDirectory("eval-real")
        defer { try? FileManager.default.removeItem(at: dir) }
        let pt = try Fixture.mobileSAMCheckpoint()
        let images = dir.appendingPathComponent("images")
        try FileManager.default.createDirectory(at: images, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: try CacheTestSupport.realPhotos(["fruits.jpg"])[0], to: images.appendingPathComponent("fruits.jpg"))
        let half = dir.appendingPathComponent("half.safetensors")
        try Exporter.export(checkpoint: pt, to: half, half: true)
        let exe = try CacheTestSupport.executable()
        let json = dir.appendingPathComponent("r.json"), md = dir.appendingPathComponent("r.md")
        let r = try CacheTestSupport.run(exe, ["eval", "--student", half.path, "--teacher", pt.path, "--images", images.path,
                                               "--prompts", "point,two-point,box,grid", "--points-per-image", "4",
                                               "--point-distance", "100", "--multimask", "--json", json.path, "--markdown", md.path])
        XCTAssertEqual(r.status, 0, r.err)
        let report = try JSONDecoder().decode(EvaluationReport.self, from: Data(contentsOf: json), snakeCase: true)
        XCTAssertEqual(report.summary.count, 8)
        for s in report.summary {
            XCTAssertEqual(s.images, 1)
            XCTAssertGreaterThan(s.prompts, 0)
            XCTAssertGreaterThan(s.miou, 0.95, "float16 weights barely move the masks: \(s)")
        }
        XCTAssertTrue(try String(contentsOf: md, encoding: .utf8).contains("| fruits.jpg |"))
        XCTAssertTrue(r.out.contains("95% CI"), r.out)

        // Value sets are checked before any weights load, each error naming the option and the values.
        for (args, expected) in [(["--split", "test"], ["--split", "'train', 'val' or 'all'"]),
                                 (["--prompts", "point,lasso"], ["--prompts", "'point'", "'two-point'", "'none'"]),
                                 (["--prompts", ""], ["--prompts"])] {
            let bad = try CacheTestSupport.run(exe, ["eval", "--student", half.path, "--teacher", pt.path, "--images", images.path] + args)
            XCTAssertNotEqual(bad.status, 0, "\(args)")
            for e in expected { XCTAssertTrue(bad.err.contains(e), "\(args): expected \(e) in \(bad.err)") }
        }
    }
}

extension JSONDecoder {
    func decode<T: Decodable>(_ type: T.Type, from data: Data, snakeCase: Bool) throws -> T {
        let d = JSONDecoder()
        if snakeCase { d.keyDecodingStrategy = .convertFromSnakeCase }
        return try d.decode(type, from: data)
    }
}

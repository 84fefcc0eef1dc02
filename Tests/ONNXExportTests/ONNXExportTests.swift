import CheckpointFormats
import Distill
import Foundation
import Layers
import ONNX
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// `export --format onnx` for every encoder family (TinyViT: MobileSAM's real weights, a small
/// random student and the same at a reduced input resolution; SAM's ViT: a small random one with windowed and global attention; the conv
/// student and a RepViT, random) and for SAM's decoder: the graph's structure in Swift, then ONNX Runtime
/// against samdistill on real photos through Scripts/check-onnx (onnx + onnxruntime in .venv,
/// which Scripts/test installs), then bad input.
final class ONNXExportTests: XCTestCase {
    static let photosNote = "Scripts/fetch-data fetches weights/mobile_sam.pt and the photos (Scripts/test does)"

    /// Every parameter drawn from a seeded RNG (BatchNorm variances in [0.5, 1.5], norm scales
    /// near `normWeight`, weights ~ N(0, 1/fan_in)), so that no path of the graph is hidden behind
    /// zeros. The RepViT takes norm scales near 0.5: at 1 its three-branch residual blocks double
    /// the activations' variance each, and ONNX Runtime and samdistill then differ by 1.1e-5
    /// relative L2 (float32 rounding at large magnitudes), against 5e-7 at 0.5 (a trained
    /// RepViT-M1: 7e-7, Experiments/repvit/README.md).
    static func randomise(_ m: Module, seed: UInt64, normWeight: Float = 1) {
        var rng = SeededRandom(seed: seed)
        for (key, p) in m.namedParameters() {
            let shape = p.value.shape, n = p.value.count
            let values: [Float]
            if key.hasSuffix("running_var") {
                values = (0..<n).map { _ in rng.uniform(0.5, 1.5) }
            } else if key == "pos_embed" {
                values = (0..<n).map { _ in 0.02 * rng.normal() }
            } else if shape.count >= 2 {
                let std = 1 / Float(n / shape[0]).squareRoot()
                values = (0..<n).map { _ in std * rng.normal() }
            } else if key.hasSuffix("weight") {
                values = (0..<n).map { _ in normWeight * (1 + 0.1 * rng.normal()) }
            } else {
                values = (0..<n).map { _ in 0.1 * rng.normal() }
            }
            p.value = Tensor(shape: shape, data: values)
        }
    }

    /// The random students, written as exports (`image_encoder.*` + the architecture metadata).
    static func writeStudents(to dir: URL) throws -> [(name: String, url: URL, encoder: any SAMImageEncoder)] {
        var tiny = TinyViTConfig()
        tiny.embedDims = [32, 64, 96, 128]; tiny.depths = [1, 1, 2, 1]; tiny.numHeads = [1, 2, 3, 4]
        tiny.windowSizes = [7, 7, 14, 8]; tiny.mergeStrides = [2, 2, 1]
        var vit = ViTConfig()
        vit.embedDim = 96; vit.depth = 4; vit.numHeads = 3; vit.globalAttentionIndexes = [1, 3]
        var rep = RepViTConfig()
        rep.embedDims = [16, 16, 32, 32]; rep.depths = [1, 2, 1, 1]; rep.seBlocks = [1, 3]
        var resized = tiny
        resized.inputResize = 672
        let encoders: [(String, any SAMImageEncoder)] = [("tinyvit", TinyViT(tiny)), ("vit", ImageEncoderViT(vit)),
                                                         ("conv", ConvStudent(ConvStudentConfig())), ("repvit", RepViT(rep)),
                                                         ("tinyvit672", TinyViT(resized))]
        return try encoders.enumerated().map { i, e in
            randomise(e.1, seed: 20 + UInt64(i), normWeight: e.0 == "repvit" ? 0.5 : 1)
            var tensors: [String: Tensor] = [:]
            for (k, v) in e.1.stateDict() { tensors["image_encoder." + k] = v }
            var meta = e.1.encoderConfig.metadata
            meta["format"] = "samdistill-export-1"
            let url = dir.appendingPathComponent("\(e.0).safetensors")
            try SafeTensors.write(tensors, metadata: meta, to: url)
            return (e.0, url, e.1)
        }
    }

    static func temporaryDirectory(_ name: String) throws -> URL {
        let u = FileManager.default.temporaryDirectory
            .appendingPathComponent("samdistill-\(name)-\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: u, withIntermediateDirectories: true)
        return u
    }

    static func model(_ url: URL) throws -> Onnx_ModelProto { try Onnx_ModelProto(serializedBytes: try Data(contentsOf: url)) }

    static func dims(_ v: Onnx_ValueInfoProto) -> [String] {
        v.type.tensorType.shape.dim.map { $0.dimParam.isEmpty ? "\($0.dimValue)" : $0.dimParam }
    }

    /// Every node input is a graph input, an initializer, an earlier node's output or absent (""),
    /// and every graph output is produced: the graph is complete and in topological order.
    static func assertWellFormed(_ m: Onnx_ModelProto, file: StaticString = #filePath, line: UInt = #line) {
        var defined = Set(m.graph.input.map(\.name) + m.graph.initializer.map(\.name) + [""])
        for n in m.graph.node {
            for i in n.input where !defined.contains(i) {
                XCTFail("node \(n.name) (\(n.opType)) reads \(i) before it is defined", file: file, line: line)
            }
            defined.formUnion(n.output)
        }
        for o in m.graph.output where !defined.contains(o.name) { XCTFail("output \(o.name) is never produced", file: file, line: line) }
        XCTAssertEqual(m.irVersion, 8, file: file, line: line)
        XCTAssertEqual(m.opsetImport.map(\.domain), [""], file: file, line: line)
        XCTAssertEqual(m.opsetImport.map(\.version), [17], file: file, line: line)
    }

    static func count(_ m: Onnx_ModelProto, _ op: String) -> Int { m.graph.node.filter { $0.opType == op }.count }

    /// Conv2d layers an encoder runs (Conv2dBN counted once: BatchNorm folded), transposed convs,
    /// LayerNorms over tokens.
    static func expectedOps(_ e: any SAMImageEncoder) -> (conv: Int, convTranspose: Int, layerNorm: Int) {
        switch e {
        case let t as TinyViT:
            let merges = (t.convStage.downsample == nil ? 0 : 1) + t.stages.filter { $0.downsample != nil }.count
            let blocks = t.stages.map(\.blocks.count).reduce(0, +)
            return (2 + 3 * t.convStage.blocks.count + 3 * merges + blocks + 2, 0, 2 * blocks)
        case let v as ImageEncoderViT:
            return (1 + 2, 0, 2 * v.blocks.count)
        case let c as ConvStudent:
            let blocks = c.stages.flatMap { $0 }
            return (1 + 2 * blocks.count + blocks.filter { $0.downsample != nil }.count + 1, c.upsample.count, 0)
        case let r as RepViT:
            // stem 2; a block's token mixer 1 (RepVGGDW fused) or 2 (stride 2), its SE 2, channel mixer 2; fusion 2, neck 2
            let blocks = r.blocks.map { ($0.stride == 1 ? 1 : 2) + ($0.se == nil ? 0 : 2) + 2 }.reduce(0, +)
            return (2 + blocks + 2 + 2, 0, 0)
        default:
            return (0, 0, 0)
        }
    }

    func testEncoderGraphsHaveTheModelsStructure() throws {
        let dir = try Self.temporaryDirectory("onnx-structure")
        defer { try? FileManager.default.removeItem(at: dir) }
        var all = try Self.writeStudents(to: dir)
        let pt = try Fixture.mobileSAMCheckpoint()
        all.append(("mobilesam", pt, try SAMWeights.read(pt).encoder))
        for (name, url, encoder) in all {
            let out = dir.appendingPathComponent("\(name).onnx"), half = dir.appendingPathComponent("\(name)_half.onnx")
            let s = try Exporter.exportONNX(checkpoint: url, to: out)
            try Exporter.exportONNX(checkpoint: url, to: half, half: true)
            let m = try Self.model(out), h = try Self.model(half)
            Self.assertWellFormed(m)
            Self.assertWellFormed(h)
            XCTAssertEqual(m.graph.input.map(\.name), ["image"], name)
            XCTAssertEqual(Self.dims(m.graph.input[0]), ["1", "3", "1024", "1024"], name)
            XCTAssertEqual(m.graph.output.map(\.name), ["image_embeddings"], name)
            XCTAssertEqual(Self.dims(m.graph.output[0]), ["1", "256", "64", "64"], name)
            XCTAssertEqual(Self.count(m, "BatchNormalization"), 0, "\(name): BatchNorm is folded")
            let e = Self.expectedOps(encoder)
            XCTAssertEqual(Self.count(m, "Conv"), e.conv, "\(name): Conv nodes")
            XCTAssertEqual(Self.count(m, "ConvTranspose"), e.convTranspose, "\(name): ConvTranspose nodes")
            XCTAssertEqual(Self.count(m, "LayerNormalization"), e.layerNorm, "\(name): LayerNormalization nodes")
            // Every learned value is in the graph once: the float initializers hold as many values
            // as the encoder has parameters, less each folded BatchNorm's 4 vectors plus its new bias;
            // a RepVGGDW's 1×1 branch (its weight and folded bias) merges into the 3×3 conv,
            // RepViT's Resize adds its 4 scales, and a reduced-resolution TinyViT's two resamplings
            // their tap weights (each twice: across and down).
            var matrices = 0
            if let t = encoder as? TinyViT, let n = t.config.inputResize {
                let r = t.config.stageResolutions.last!, o = t.outputResolution
                matrices = 2 * n * BilinearResample.Taps(input: t.config.imageSize, output: n).width
                    + 2 * o * BilinearResample.Taps(input: r, output: o).width
                XCTAssertEqual(m.graph.node.filter { $0.opType == "Gather" && $0.name.contains("_resize") }.count, 4,
                               "\(name): the resamplings")
            }
            let bnChannels = encoder.namedParameters().filter { $0.0.hasSuffix("running_var") }.reduce(0) { $0 + $1.1.value.count }
            let branch = encoder.namedParameters().filter { $0.0.hasSuffix("token_mixer.0.conv1.c.weight") }.reduce(0) { $0 + $1.1.value.count }
            let parameterValues = encoder.namedParameters().reduce(0) { $0 + $1.1.value.count }
            let sums = m.graph.initializer.filter { $0.dataType == Int32(Onnx_TensorProto.DataType.float.rawValue) && $0.dims.count > 0 }
                .reduce(0) { $0 + Int($1.dims.reduce(1, *)) }
            XCTAssertEqual(sums, parameterValues - 3 * bnChannels - 2 * branch + (encoder is RepViT ? 4 : 0) + matrices,
                           "\(name): float32 values in the initializers")
            XCTAssertEqual(s.nodes, m.graph.node.count)
            // --half: the same graph with every weight float16 behind a Cast to float32.
            let f16 = h.graph.initializer.filter { $0.dataType == Int32(Onnx_TensorProto.DataType.float16.rawValue) }
            // (RepViT's Resize scales and the resampling weights stay float32 constants)
            XCTAssertEqual(f16.count, m.graph.initializer.filter { $0.dataType == Int32(Onnx_TensorProto.DataType.float.rawValue) && $0.dims.count > 0 }.count
                           - (encoder is RepViT ? 1 : 0) - (matrices > 0 ? 4 : 0), name)
            XCTAssertEqual(Self.count(h, "Cast"), f16.count, name)
            XCTAssertEqual(h.graph.node.count, m.graph.node.count + f16.count, name)
        }
    }

    /// --external-data: every initializer of 1 KiB or more lives in OUT.data, at 4 KiB-aligned
    /// offsets, holding exactly the bytes the single-file model holds; the graph is unchanged.
    func testExternalDataHoldsTheSameWeights() throws {
        let dir = try Self.temporaryDirectory("onnx-external")
        defer { try? FileManager.default.removeItem(at: dir) }
        let pt = try Fixture.mobileSAMCheckpoint()
        let one = dir.appendingPathComponent("one.onnx"), split = dir.appendingPathComponent("split.onnx")
        try Exporter.exportONNX(checkpoint: pt, to: one)
        let s = try Exporter.exportONNX(checkpoint: pt, to: split, externalData: true)
        XCTAssertTrue(s.externalData)
        let a = try Self.model(one), b = try Self.model(split)
        Self.assertWellFormed(b)
        XCTAssertEqual(a.graph.node, b.graph.node)
        let blob = try Data(contentsOf: dir.appendingPathComponent("split.onnx.data"))
        var external = 0
        for (x, y) in zip(a.graph.initializer, b.graph.initializer) {
            XCTAssertEqual(x.name, y.name)
            XCTAssertEqual(x.dims, y.dims)
            guard x.rawData.count >= ONNXFile.externalThreshold else {
                XCTAssertEqual(y.rawData, x.rawData, x.name)
                XCTAssertEqual(y.dataLocation, .default, x.name)
                continue
            }
            external += 1
            XCTAssertEqual(y.dataLocation, .external, x.name)
            XCTAssertTrue(y.rawData.isEmpty, x.name)
            let e = Dictionary(uniqueKeysWithValues: y.externalData.map { ($0.key, $0.value) })
            XCTAssertEqual(e["location"], "split.onnx.data")
            let offset = Int(e["offset"]!)!, length = Int(e["length"]!)!
            XCTAssertEqual(offset % 4096, 0, x.name)
            XCTAssertEqual(length, x.rawData.count, x.name)
            XCTAssertEqual(blob.subdata(in: offset..<(offset + length)), x.rawData, x.name)
        }
        XCTAssertGreaterThan(external, 100)
    }

    func testDecoderHasSamOnnxModelsInterface() throws {
        let dir = try Self.temporaryDirectory("onnx-decoder")
        defer { try? FileManager.default.removeItem(at: dir) }
        let out = dir.appendingPathComponent("decoder.onnx")
        try Exporter.exportONNX(checkpoint: try Fixture.mobileSAMCheckpoint(), to: out, decoder: true)
        let m = try Self.model(out)
        Self.assertWellFormed(m)
        XCTAssertEqual(m.graph.input.map(\.name), ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"])
        XCTAssertEqual(m.graph.input.map(Self.dims), [["1", "256", "64", "64"], ["1", "num_points", "2"], ["1", "num_points"],
                                                      ["1", "1", "256", "256"], ["1"], ["2"]])
        XCTAssertEqual(m.graph.output.map(\.name), ["masks", "iou_predictions", "low_res_masks"])
        XCTAssertEqual(m.graph.output.map(Self.dims), [["1", "4", "height", "width"], ["1", "4"], ["1", "4", "256", "256"]])
        // Two-way transformer: 2 blocks × 4 norms + the final one; 2 × 3 attentions + the final one, softmax each.
        XCTAssertEqual(Self.count(m, "LayerNormalization"), 9)
        XCTAssertEqual(Self.count(m, "Softmax"), 7)
        XCTAssertEqual(Self.count(m, "ConvTranspose"), 2)
        XCTAssertEqual(Self.count(m, "Resize"), 2)
    }

    /// ONNX Runtime against samdistill on real photos, every family, through Scripts/check-onnx.
    func testOnnxRuntimeAgreesWithSamdistill() throws {
        let python = Fixture.repositoryRoot.appendingPathComponent(".venv/bin/python3")
        let probe = try? Fixture.runProcess(python, ["-c", "import onnx, onnxruntime"])
        guard probe?.status == 0 else {
            throw XCTSkip("\(python.path) has no onnx + onnxruntime: Scripts/python-env onnx installs them (Scripts/test does)")
        }
        let pt = try Fixture.mobileSAMCheckpoint()
        let dir = try Self.temporaryDirectory("onnx-ort")
        defer { try? FileManager.default.removeItem(at: dir) }
        let students = try Self.writeStudents(to: dir)
        let json = dir.appendingPathComponent("check.json")
        var args = [Fixture.repositoryRoot.appendingPathComponent("Scripts/check_onnx.py").path,
                    "--samdistill", try Fixture.samdistillExecutable().path, "--out", dir.appendingPathComponent("out").path,
                    "--json", json.path, "--encoder", "mobilesam=\(pt.path)"]
        for s in students { args += ["--encoder", "\(s.name)=\(s.url.path)"] }
        let r = try Fixture.runProcess(python, args)
        print(r.out)  // the figures, one row per check
        XCTAssertEqual(r.status, 0, "Scripts/check_onnx.py:\n\(r.out)\n\(r.err)\n\(Self.photosNote)")
        let j = try JSONSerialization.jsonObject(with: try Data(contentsOf: json)) as! [String: Any]
        let rows = j["rows"] as! [[String: Any]]
        // 6 encoders × 2 photos × (float32, float16, float32 with external data);
        // 2 photos × 6 prompts × (mask IoU, IoU prediction)
        XCTAssertEqual(rows.filter { ($0["check"] as! String).hasPrefix("encoder") }.count, 36)
        XCTAssertEqual(rows.filter { ($0["check"] as! String).hasPrefix("decoder") }.count, 24)
        for row in rows { XCTAssertEqual(row["ok"] as? Bool, true, "\(row)") }
        for row in rows where ["encoder float32", "encoder float32-external"].contains(row["check"] as? String) {
            XCTAssertLessThanOrEqual(row["value"] as! Double, 1e-5, "\(row)")
        }
    }

    func testBadExportInputGivesOneErrorAndStatus1() throws {
        let exe = try Fixture.samdistillExecutable()
        let pt = try Fixture.mobileSAMCheckpoint().path
        let dir = try Self.temporaryDirectory("onnx-bad")
        defer { try? FileManager.default.removeItem(at: dir) }
        let encoderOnly = dir.appendingPathComponent("encoder.safetensors")
        try Exporter.export(checkpoint: URL(fileURLWithPath: pt), to: encoderOnly)
        let out = dir.appendingPathComponent("x.onnx").path
        let cases: [([String], String)] = [
            (["export", encoderOnly.path, "--format", "onnx", "--decoder", "--out", out], "--decoder: no prompt_encoder.* / mask_decoder.* tensors"),
            (["export", pt, "--format", "tflite", "--out", "x.tflite"], "--format: unknown format 'tflite'"),
            (["export", "/nonexistent/w.pt", "--format", "onnx", "--out", "x.onnx"], "no such file: /nonexistent/w.pt"),
            (["export", pt, "--format", "onnx", "--out", "x.safetensors"], "must be a .onnx file"),
            (["export", pt, "--decoder", "--out", "x.safetensors"], "--decoder needs --format onnx"),
        ]
        for (args, message) in cases {
            let r = try Fixture.runProcess(exe, args)
            XCTAssertEqual(r.status, 1, "\(args): \(r.err)")
            let lines = r.err.split(separator: "\n")
            XCTAssertEqual(lines.count, 1, "\(args): \(r.err)")
            XCTAssertTrue(r.err.contains(message), "\(args): \(r.err)")
        }
        let notONNX = FileManager.default.temporaryDirectory.appendingPathComponent("samdistill-not-\(UInt32.random(in: 0...UInt32.max)).onnx")
        try Data("not a model".utf8).write(to: notONNX)
        defer { try? FileManager.default.removeItem(at: notONNX) }
        let r = try Fixture.runProcess(exe, ["inspect", notONNX.path])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.contains("not a readable ONNX model"), r.err)
    }
}

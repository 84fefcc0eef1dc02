import CheckpointFormats
import Distill
import Foundation
import Optim
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// `samdistill run CONFIG` (RunPipeline): cache → eval (initial) → train → eval (final) → export
/// on a tiny 64-pixel teacher carrying MobileSAM's real prompt encoder and mask decoder, then the
/// skip and resume rules.
final class RunPipelineTests: XCTestCase {
    /// A tiny SAM (TinyViT 64 px with a 256-channel neck + MobileSAM's decoder) written as one
    /// safetensors file whose metadata names the encoder, as `samdistill export --full` writes.
    static func writeTinySAM(in dir: URL) throws -> URL {
        let model = try EvalExportTests.tinyDecoderModel()
        var rng = SeededRandom(seed: 4)
        CacheTestSupport.randomiseSignalPreserving(model.imageEncoder, rng: &rng)
        let url = dir.appendingPathComponent("tiny-sam.safetensors")
        try SafeTensors.write(model.stateDict(), metadata: model.encoderConfig.metadata, to: url)
        return url
    }

    static func yaml(dir: URL, teacher: URL, steps: Int = 4) -> String {
        """
        data: {images: \(dir.path)/images, image_list: \(dir.path)/list.txt, val_list: \(dir.path)/val.txt,
               train: [\(dir.path)/cache/c.h5], views: 2}
        teacher: {checkpoint: \(teacher.path)}
        student: {type: tinyvit, image_size: 64, embed_dims: [8, 16, 16, 16], depths: [1, 1, 1, 1],
                  num_heads: [1, 2, 2, 2], window_sizes: [4, 4, 4, 4], merge_strides: [2, 2, 1], neck_channels: 256}
        init: {type: random}
        freeze: [patch_embed]
        loss: {type: mse}
        schedule: {type: constant, lr: 1.0e-3}
        batch_size: 2
        steps: \(steps)
        seed: 3
        checkpoint_every: 1
        keep_last: 10
        eval: {prompts: {types: [point, box], count: 3}}
        output_dir: \(dir.path)/run
        """
    }

    /// The tiny setup in `dir`: the 64-pixel teacher, 5 synthetic photos, list.txt naming them
    /// all and val.txt naming those at `heldOut`. Returns the teacher's path.
    static func writeTinySetup(in dir: URL, heldOut: [Int]) throws -> URL {
        let teacher = try writeTinySAM(in: dir)
        let names = try CacheTestSupport.writeSyntheticImages(in: dir.appendingPathComponent("images"), count: 5)
        try (names.joined(separator: "\n") + "\n").write(to: dir.appendingPathComponent("list.txt"), atomically: true, encoding: .utf8)
        try heldOut.map { names[$0] + "\n" }.joined().write(to: dir.appendingPathComponent("val.txt"), atomically: true, encoding: .utf8)
        return teacher
    }

    func testRunEndToEndThenSkipThenResume() throws {
        let dir = try CacheTestSupport.temporaryDirectory("runpipeline")
        defer { try? FileManager.default.removeItem(at: dir) }
        let teacher = try Self.writeTinySAM(in: dir)
        let names = try CacheTestSupport.writeSyntheticImages(in: dir.appendingPathComponent("images"), count: 7)
        // The list leaves one image out; two of the listed ones are held out.
        try (names.dropLast().joined(separator: "\n") + "\n# a comment\n").write(to: dir.appendingPathComponent("list.txt"), atomically: true, encoding: .utf8)
        try "\(names[0])\n\(names[3])\n".write(to: dir.appendingPathComponent("val.txt"), atomically: true, encoding: .utf8)
        let config = try RunConfig.parse(Self.yaml(dir: dir, teacher: teacher))
        var lines: [String] = []
        func pipeline(_ c: RunConfig) -> RunPipeline {
            let p = RunPipeline(config: c, configName: "test.yaml")
            p.showsProgress = false
            p.log = { lines.append($0) }
            return p
        }

        let first = try pipeline(config).run()
        let reader = try CacheReader(URL(fileURLWithPath: config.data.train[0]))
        XCTAssertEqual(reader.rows(split: .train).count, 4 * 2, "4 training images × 2 views (the unlisted image is not cached)")
        XCTAssertEqual(reader.rows(split: .val).count, 2, "held-out images: one plain view each")
        reader.close()  // (HDF5 file locking: the next run writes to it)
        XCTAssertEqual(first.trainedSteps, 4)
        XCTAssertEqual(first.skipped, [])
        let before = try XCTUnwrap(first.before), after = try XCTUnwrap(first.after)
        XCTAssertEqual(Set(after.summary.map(\.prompt)), ["point", "box"])
        XCTAssertEqual(after.summary.first?.images, 2)
        for s in before.summary + after.summary { XCTAssertTrue((0...1).contains(s.miou), "\(s)") }
        XCTAssertNotEqual(before.summary.map(\.miou), after.summary.map(\.miou), "the trained student is another student")
        let run = URL(fileURLWithPath: config.outputDir)
        for f in ["eval-init.json", "eval-init.md", "eval-final.json", "eval-final.md", "pipeline.json", "metrics.jsonl", "config.yaml", "student.safetensors", "report/index.html"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: run.appendingPathComponent(f).path), f)
        }
        // The report: the final table beside the initial one, one panel per held-out prompt, the loss curve.
        let page = try String(contentsOf: run.appendingPathComponent("report/index.html"), encoding: .utf8)
        for (b, a) in zip(before.summary, after.summary) { XCTAssertTrue(page.contains(String(format: "%+.4f", a.miou - b.miou)), "gain of \(a.prompt)") }
        XCTAssertEqual(page.components(separatedBy: "<figure class=\"panel\"").count - 1, after.summary.reduce(0) { $0 + $1.prompts })
        XCTAssertTrue(page.contains("<polyline"), "loss curve from metrics.jsonl")
        // The export runs in the inference core by itself (encoder from metadata + the teacher's decoder).
        let exported = try SAMModel.load(contentsOf: run.appendingPathComponent("student.safetensors"))
        XCTAssertEqual(exported.imageSize, 64)
        // Frozen units (freeze: [patch_embed]) left exactly as initialised; the rest trained.
        let initial = try Student.make(config).stateDict()
        let final = try SAMWeights.read(run.appendingPathComponent("checkpoints/step-00000004.safetensors")).encoder.stateDict()
        for (k, v) in initial where k.hasPrefix("patch_embed.") { XCTAssertEqual(final[k]?.data, v.data, "frozen \(k) changed") }
        XCTAssertNotEqual(final["layers.1.blocks.0.mlp.fc1.weight"]?.data, initial["layers.1.blocks.0.mlp.fc1.weight"]?.data)

        // Run again: every step is up to date, nothing is rewritten.
        let exportDate = try FileManager.default.attributesOfItem(atPath: run.appendingPathComponent("student.safetensors").path)[.modificationDate] as? Date
        let again = try pipeline(config).run()
        XCTAssertEqual(Set(again.skipped), ["cache", "eval-init", "train", "eval-final", "export"])
        XCTAssertEqual(again.trainedSteps, 0)
        XCTAssertEqual(again.after?.summary.map(\.miou), after.summary.map(\.miou))
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: run.appendingPathComponent("student.safetensors").path)[.modificationDate] as? Date, exportDate)

        // Changing only the evaluation re-evaluates, without retraining or re-exporting.
        var moreprompts = config
        moreprompts.eval.prompts.count = 2
        let reEval = try pipeline(moreprompts).run()
        XCTAssertEqual(Set(reEval.skipped), ["cache", "train", "export"])

        // An interruption after step 2: the last two checkpoints and later outputs are gone; the
        // rerun resumes from step 2 and ends with the same weights as the uninterrupted run.
        let ck = run.appendingPathComponent("checkpoints")
        for s in [3, 4] { try FileManager.default.removeItem(at: ck.appendingPathComponent(String(format: "step-%08d.safetensors", s))) }
        try FileManager.default.removeItem(at: run.appendingPathComponent("student.safetensors"))
        let resumed = try pipeline(config).run()
        XCTAssertEqual(resumed.trainedSteps, 2, "steps 3 and 4 only")
        XCTAssertTrue(resumed.skipped.contains("cache"))
        let final2 = try SAMWeights.read(ck.appendingPathComponent("step-00000004.safetensors")).encoder.stateDict()
        for (k, v) in final { XCTAssertEqual(final2[k]?.data, v.data, "resumed run differs at \(k)") }
        XCTAssertEqual(resumed.after?.summary.map(\.miou), after.summary.map(\.miou))

        // Other training settings in the same output_dir are refused, naming the directory.
        var other = config
        other.schedule = .constant(ConstantSchedule(lr: 2e-3))
        XCTAssertThrowsError(try pipeline(other).run()) { e in
            XCTAssertTrue("\(e)".contains("other training settings"), "\(e)")
        }
        // A listed image that does not exist: one error naming the list file and the entry.
        try "\(names[1])\nmissing.png\n".write(to: dir.appendingPathComponent("list.txt"), atomically: true, encoding: .utf8)
        var broken = config
        broken.data.train = [dir.appendingPathComponent("cache/other.h5").path]
        XCTAssertThrowsError(try pipeline(broken).run()) { e in
            XCTAssertTrue("\(e)".contains("list.txt") && "\(e)".contains("missing.png"), "\(e)")
        }
    }

    /// The `eval` entries of a run directory's metrics.jsonl, by step.
    static func evaluations(in runDirectory: String) throws -> [Int: [String: Double]] {
        let metrics = try String(contentsOf: URL(fileURLWithPath: runDirectory).appendingPathComponent("metrics.jsonl"), encoding: .utf8)
        var curve: [Int: [String: Double]] = [:]
        for line in metrics.split(separator: "\n") {
            let o = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            if let e = o["eval"] as? [String: Double] { curve[o["step"] as! Int] = e }
        }
        return curve
    }

    /// `eval.during_training`: the held-out mIoU at every eval_every step lands in metrics.jsonl
    /// (`miou_point`, `miou_box`), and the last one equals the final evaluation of the same weights
    /// (same prompts, same teacher masks; the checkpoint is float32: to 1e-12).
    func testHeldOutMIoUDuringTraining() throws {
        let dir = try CacheTestSupport.temporaryDirectory("runpipeline-curve")
        defer { try? FileManager.default.removeItem(at: dir) }
        let teacher = try Self.writeTinySetup(in: dir, heldOut: [0, 3])
        let config = try RunConfig.parse(Self.yaml(dir: dir, teacher: teacher),
                                         overrides: ["eval.during_training=true", "eval_every=2", "eval.before=false"])
        let p = RunPipeline(config: config, configName: "test.yaml")
        p.showsProgress = false
        p.log = { _ in }
        let outcome = try p.run()
        let curve = try Self.evaluations(in: config.outputDir)
        XCTAssertEqual(Set(curve.keys), [2, 4])
        for (_, e) in curve { XCTAssertNotNil(e["miou_point"]); XCTAssertNotNil(e["miou_box"]); XCTAssertNotNil(e["val_mse"]) }
        let after = try XCTUnwrap(outcome.after)
        for s in after.summary {
            XCTAssertEqual(try XCTUnwrap(curve[4]?["miou_\(s.prompt)"]), s.miou, accuracy: 1e-12, s.prompt)
        }
        // `samdistill train` on the same config logs the same curve (same weights, prompts and
        // teacher masks at each step; another process, so to 1e-4, not to the bit).
        var trained = config
        trained.outputDir = dir.appendingPathComponent("train-cli").path
        let cfg = dir.appendingPathComponent("train.yaml")
        try trained.yaml().write(to: cfg, atomically: true, encoding: .utf8)
        let r = try CacheTestSupport.run(try CacheTestSupport.executable(), ["train", cfg.path, "--quiet"])
        XCTAssertEqual(r.status, 0, r.err)
        let cliCurve = try Self.evaluations(in: trained.outputDir)
        XCTAssertEqual(Set(cliCurve.keys), [2, 4])
        for (step, e) in curve {
            for key in ["miou_point", "miou_box"] {
                XCTAssertEqual(try XCTUnwrap(cliCurve[step]?[key], "step \(step) \(key)"), e[key]!, accuracy: 1e-4, "step \(step) \(key)")
            }
        }
    }

    /// The command line: `samdistill run` on the same tiny setup prints the before/after table and
    /// the exported path; a second call says every step is up to date.
    func testRunCommand() throws {
        let dir = try CacheTestSupport.temporaryDirectory("runcli")
        defer { try? FileManager.default.removeItem(at: dir) }
        let teacher = try Self.writeTinySAM(in: dir)
        let names = try CacheTestSupport.writeSyntheticImages(in: dir.appendingPathComponent("images"), count: 5)
        try names.joined(separator: "\n").write(to: dir.appendingPathComponent("list.txt"), atomically: true, encoding: .utf8)
        try "\(names[2])\n".write(to: dir.appendingPathComponent("val.txt"), atomically: true, encoding: .utf8)
        let cfg = dir.appendingPathComponent("run.yaml")
        try Self.yaml(dir: dir, teacher: teacher, steps: 2).write(to: cfg, atomically: true, encoding: .utf8)
        let exe = try CacheTestSupport.executable()
        let r = try CacheTestSupport.run(exe, ["run", cfg.path, "--quiet"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("before") && r.out.contains("after") && r.out.contains("exported student: "), r.out)
        XCTAssertTrue(r.err.contains("[5/5] export"), r.err)
        let again = try CacheTestSupport.run(exe, ["run", cfg.path, "--quiet"])
        XCTAssertEqual(again.status, 0, again.err)
        XCTAssertTrue(again.out.contains("up to date: cache, eval-init, train, eval-final, export"), again.out)
        // A bad override names the key; nothing runs.
        let bad = try CacheTestSupport.run(exe, ["run", cfg.path, "--set", "freeze=[layers.0]"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.err.contains("freeze"), bad.err)
    }
}

/// The documented recipes (Configs/mobilesam_vit_h.yaml, Configs/nanosam_resnet18.yaml) parse,
/// validate and start: two optimiser steps of each at full size (1024², batch 1) on random data
/// standing in for their caches, with finite, decreasing-or-not-exploding losses.
final class RecipeTests: XCTestCase {
    func testRecipesStart() throws {
        let dir = try CacheTestSupport.temporaryDirectory("recipes")
        defer { try? FileManager.default.removeItem(at: dir) }
        for (name, student) in [("mobilesam_vit_h.yaml", "tinyvit"), ("nanosam_resnet18.yaml", "conv")] {
            let url = Fixture.repositoryRoot.appendingPathComponent("Configs/\(name)")
            let full = try RunConfig.load(url)
            XCTAssertEqual(full.student.typeName, student, name)
            XCTAssertEqual(full.student.outputShape.channels, 256)
            XCTAssertEqual(full.student.outputShape.side, 64)
            XCTAssertGreaterThan(full.steps ?? 0, 1000, "\(name): a real run length")
            let cfg = try RunConfig.load(url, overrides: ["batch_size=1", "steps=2", "schedule.warmup_steps=1",
                                                          "output_dir=\(dir.appendingPathComponent(name).path)"])
            let s = try Student.make(cfg)
            var rng = SeededRandom(seed: 5)
            let data = InMemoryTrainingData(images: .randomNormal([2, 3, 1024, 1024], rng: &rng),
                                            targets: .randomNormal([2, 256, 64, 64], std: 0.1, rng: &rng))
            let trainer = try Trainer(config: cfg, student: s, train: data)
            trainer.showsProgress = false
            let records = try trainer.run()
            XCTAssertEqual(records.count, 2, name)
            XCTAssertTrue(records.allSatisfy { $0.loss.isFinite && $0.gradNorm.isFinite && $0.gradNorm > 0 }, "\(name): \(records)")
            print("\(name): \(String(format: "%.1f", Double(s.forwardFLOPs) / 1e9)) GFLOP forward per image; losses \(records.map(\.loss))")
        }
    }
}

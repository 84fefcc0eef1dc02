import Distill
import Foundation
import Optim
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// `stages:` in a run config: `samdistill run` (RunPipeline) trains MSE, then prompt-in-the-loop
/// from its final checkpoint, on RunPipelineTests' tiny setup (64-pixel teacher with MobileSAM's
/// real prompt encoder and mask decoder); skip, resume and the stale-stage refusal.
final class StagedRunTests: XCTestCase {
    static let stages = """

        stages:
          - {name: mse, steps: 2}
          - {name: pitl, steps: 2, loss: {type: prompt_in_the_loop, prompts_per_image: 2}, schedule: {type: constant, lr: 5.0e-4}}
        """

    func testStagesChainSkipResumeAndRefuseStale() throws {
        let dir = try CacheTestSupport.temporaryDirectory("stages")
        defer { try? FileManager.default.removeItem(at: dir) }
        let teacher = try RunPipelineTests.writeTinySetup(in: dir, heldOut: [0])
        let config = try RunConfig.parse(RunPipelineTests.yaml(dir: dir, teacher: teacher) + Self.stages)
        XCTAssertEqual(config.stages.map(\.name), ["mse", "pitl"])
        let (mse, pitl) = (config.stages[0], config.stages[1])
        XCTAssertEqual(mse.config.loss, .mse)
        XCTAssertEqual(mse.config.initialisation, .random)
        XCTAssertTrue(mse.config.eval.before)
        XCTAssertEqual(pitl.config.initialisation, .checkpoint(path: mse.finalCheckpoint))
        XCTAssertFalse(pitl.config.eval.before)
        XCTAssertNil(pitl.config.data.images)
        XCTAssertEqual(pitl.config.schedule, .constant(ConstantSchedule(lr: 5e-4)))
        XCTAssertEqual(pitl.config.freeze, ["patch_embed"], "the rest of the config carries over")
        XCTAssertEqual(pitl.config.outputDir, dir.appendingPathComponent("run/pitl").path)
        // One trainer per stage: a trainer refuses the staged config itself.
        XCTAssertThrowsError(try Trainer(config: config, student: Student(config.student), train: TrainerTests.data(channels: 256)))

        var lines: [String] = []
        func pipeline() -> RunPipeline {
            let p = RunPipeline(config: config, configName: "staged.yaml")
            p.showsProgress = false
            p.log = { lines.append($0) }
            return p
        }
        let first = try pipeline().run()
        XCTAssertEqual(first.trainedSteps, 4)
        XCTAssertEqual(first.totalSteps, 4)
        XCTAssertNotNil(first.before)
        XCTAssertNotNil(first.after)
        XCTAssertEqual(first.exported?.path, dir.appendingPathComponent("run/pitl/student.safetensors").path)
        for f in ["mse/student.safetensors", "mse/eval-final.json", "pitl/student.safetensors", "pitl/eval-final.json", "pitl/metrics.jsonl"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: dir.appendingPathComponent("run/\(f)").path), f)
        }
        let pitlMetrics = try String(contentsOf: dir.appendingPathComponent("run/pitl/metrics.jsonl"), encoding: .utf8)
        XCTAssertTrue(pitlMetrics.contains("teacher_decode"), "the second stage trained with prompt-in-the-loop")
        // The second stage started from the first one's final weights.
        let mseFinal = try SAMWeights.read(URL(fileURLWithPath: mse.finalCheckpoint)).encoder.stateDict()
        for (k, v) in try Student.make(pitl.config).stateDict() { XCTAssertEqual(mseFinal[k]?.data, v.data, k) }

        // Again: every step of both stages is up to date.
        let again = try pipeline().run()
        XCTAssertEqual(again.trainedSteps, 0)
        XCTAssertEqual(Set(again.skipped), ["mse/cache", "mse/eval-init", "mse/train", "mse/eval-final", "mse/export",
                                            "pitl/train", "pitl/eval-final", "pitl/export"])
        // The second stage interrupted after its step 1: only its step 2 runs again.
        try FileManager.default.removeItem(atPath: pitl.finalCheckpoint)
        let resumed = try pipeline().run()
        XCTAssertEqual(resumed.trainedSteps, 1)
        XCTAssertTrue(resumed.skipped.contains("mse/train"))
        // The first stage's final checkpoint newer than the second stage's run: refused.
        try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(60)], ofItemAtPath: mse.finalCheckpoint)
        XCTAssertThrowsError(try pipeline().run()) { e in
            XCTAssertTrue("\(e)".contains("earlier result of stage 'mse'") && "\(e)".contains("run/pitl"), "\(e)")
        }
    }

    /// `samdistill train --stage NAME` trains one stage of a staged config, as `run` would: its
    /// directory, and the previous stage's final weights; without --stage, or before the previous
    /// stage exists, one clear refusal.
    func testTrainCommandTrainsOneStage() throws {
        let dir = try CacheTestSupport.temporaryDirectory("stages-train")
        defer { try? FileManager.default.removeItem(at: dir) }
        let teacher = try RunPipelineTests.writeTinySetup(in: dir, heldOut: [0])
        let file = dir.appendingPathComponent("staged.yaml")
        try (RunPipelineTests.yaml(dir: dir, teacher: teacher) + Self.stages).write(to: file, atomically: true, encoding: .utf8)
        let config = try RunConfig.parse(RunPipelineTests.yaml(dir: dir, teacher: teacher) + Self.stages)
        let (mse, pitl) = (config.stages[0], config.stages[1])
        let exe = try CacheTestSupport.executable()
        XCTAssertEqual(try CacheTestSupport.run(exe, ["cache", "--config", file.path, "--quiet"]).status, 0)

        let whole = try CacheTestSupport.run(exe, ["train", file.path, "--quiet"])
        XCTAssertEqual(whole.status, 1)
        XCTAssertTrue(whole.err.contains("stages mse, pitl: train one with --stage NAME"), whole.err)
        let unknown = try CacheTestSupport.run(exe, ["train", file.path, "--stage", "kd"])
        XCTAssertEqual(unknown.status, 1)
        XCTAssertTrue(unknown.err.contains("--stage kd: not a stage of \(file.path) (mse, pitl)"), unknown.err)
        let early = try CacheTestSupport.run(exe, ["train", file.path, "--stage", "pitl"])
        XCTAssertEqual(early.status, 1)
        XCTAssertTrue(early.err.contains("stage 'mse''s final checkpoint \(mse.finalCheckpoint), which does not exist"), early.err)

        for stage in ["mse", "pitl"] {
            let r = try CacheTestSupport.run(exe, ["train", file.path, "--stage", stage, "--quiet"])
            XCTAssertEqual(r.status, 0, r.err)
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: pitl.finalCheckpoint))
        let pitlMetrics = try String(contentsOf: dir.appendingPathComponent("run/pitl/metrics.jsonl"), encoding: .utf8)
        XCTAssertTrue(pitlMetrics.contains("teacher_decode"), "the pitl stage trained with its own loss")
        // The pitl stage started from the mse stage's final weights and moved them.
        let mseFinal = try SAMWeights.read(URL(fileURLWithPath: mse.finalCheckpoint)).encoder.stateDict()
        for (k, v) in try Student.make(pitl.config).stateDict() { XCTAssertEqual(mseFinal[k]?.data, v.data, k) }
        XCTAssertNotEqual(try SAMWeights.read(URL(fileURLWithPath: pitl.finalCheckpoint)).encoder.stateDict()["layers.3.blocks.0.mlp.fc2.weight"]?.data,
                          mseFinal["layers.3.blocks.0.mlp.fc2.weight"]?.data, "the pitl stage trained")
    }

    func testStageConfigErrors() throws {
        func problems(_ stages: String) -> [String] {
            do { _ = try RunConfig.parse("teacher: {checkpoint: t.pt}\noutput_dir: runs/x\nstages: \(stages)"); return [] }
            catch let e as ConfigError { return e.problems } catch { return ["\(error)"] }
        }
        XCTAssertEqual(problems("[{name: a, steps: 2, freeze: [patch_embed]}]"),
                       ["stages[0].freeze: unknown key (a stage sets name, batch_size, grad_accumulation, loss, optimizer, schedule, seed, steps)"])
        XCTAssertEqual(problems("[{steps: 2}]"), ["stages[0].name: required: a directory name of letters, digits, _ and -"])
        XCTAssertEqual(problems("[{name: a, steps: 2}, {name: a, steps: 1}]"), ["stages[1].name: 'a' names two stages"])
        XCTAssertEqual(problems("[{name: a, loss: {type: hinge}}]"),
                       ["stages[0].loss.type: unknown loss 'hinge' (expected mse, normalized_mse, masked_mse, huber, l1 or prompt_in_the_loop)"])
        XCTAssertEqual(problems("[]").count, 1)
        XCTAssertEqual(try RunConfig.parse("output_dir: runs/x\nstages: [{name: a, steps: 3}]").stages.first?.config.steps, 3)
        // A stage's own seed (its sample order and prompts); the others keep the base's.
        let seeded = try RunConfig.parse("seed: 5\noutput_dir: runs/x\nstages: [{name: a, steps: 3}, {name: b, steps: 2, seed: 7}]").stages
        XCTAssertEqual(seeded.map(\.config.seed), [5, 7])
    }
}

import CheckpointFormats
import Distill
import Foundation
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// SIGKILL at random points of `samdistill cache`, `train` and `run` (issue 21, part 3): not part
/// of the suite — skipped unless `SAMDISTILL_STRESS_KILLS` (kills per command) is set, which
/// `Scripts/stress-kill` does. Per command: an uninterrupted reference run on tiny inputs, then
/// the same command started again and again, each start killed after a random delay in
/// [0, 1.2 × the reference's duration], until the kill count is reached; then one last run to
/// the end. The resumed result must equal the reference: every cache row (bytes), the loss
/// sequence (metrics.jsonl, bit for bit) and the final weights (checkpoint, export). A start
/// that finished before its kill is counted and its outputs are removed, so later kills land
/// mid-run again. Figures are printed as `STRESS ...` lines.
final class StressKillTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        guard let n = ProcessInfo.processInfo.environment["SAMDISTILL_STRESS_KILLS"], Int(n) != nil else {
            throw XCTSkip("a stress run, not part of the suite: Scripts/stress-kill sets SAMDISTILL_STRESS_KILLS")
        }
        dir = try CacheTestSupport.temporaryDirectory("stress")
    }

    override func tearDownWithError() throws {
        if let dir { try? FileManager.default.removeItem(at: dir) }
    }

    var kills: Int { Int(ProcessInfo.processInfo.environment["SAMDISTILL_STRESS_KILLS"] ?? "") ?? 20 }

    struct Outcome { var kills = 0, finishedBeforeKill = 0, attempts = 0, partial = 0 }

    /// Starts `args` repeatedly, SIGKILLing each start after a random delay, until `kills` kills
    /// landed while it ran. `check` runs after each kill (true: the state was partial);
    /// `reset` removes the outputs of a start that finished first.
    func hammer(_ exe: URL, _ args: [String], duration: Double, seed: UInt64,
                check: () throws -> Bool, reset: () throws -> Void) throws -> Outcome {
        var rng = SeededRandom(seed: seed)
        var o = Outcome()
        while o.kills < kills && o.attempts < 10 * kills {
            o.attempts += 1
            let p = Process()
            p.executableURL = exe
            p.arguments = args
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            Thread.sleep(forTimeInterval: Double(rng.uniform()) * 1.2 * duration)
            let wasRunning = p.isRunning
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            if wasRunning && p.terminationReason == .uncaughtSignal {
                o.kills += 1
                if try check() { o.partial += 1 }
            } else {
                XCTAssertEqual(p.terminationStatus, 0, "a start that was not killed succeeds")
                o.finishedBeforeKill += 1
                try reset()
            }
        }
        XCTAssertGreaterThanOrEqual(o.kills, kills)
        return o
    }

    func timed(_ exe: URL, _ args: [String]) throws -> Double {
        let t0 = Date()
        let r = try CacheTestSupport.run(exe, args)
        XCTAssertEqual(r.status, 0, r.err)
        return Date().timeIntervalSince(t0)
    }

    func losses(_ run: URL) -> [Double] {
        guard let text = try? String(contentsOf: run.appendingPathComponent("metrics.jsonl"), encoding: .utf8) else { return [] }
        return text.split(separator: "\n")
            .compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["loss"] as? Double }
    }

    func tensors(_ url: URL) throws -> [String: [Float]] {
        var out: [String: [Float]] = [:]
        for (k, v) in try WeightsFile(contentsOf: url).tensors { out[k] = v.data }
        return out
    }

    func report(_ command: String, _ o: Outcome, _ duration: Double, _ extra: String) {
        print(String(format: "STRESS %@: %d kills in %d starts (%d finished before the kill, %d kills left partial output), reference run %.2f s; %@",
                     command, o.kills, o.attempts, o.finishedBeforeKill, o.partial, duration, extra))
    }

    func testCacheSurvivesKills() throws {
        let exe = try CacheTestSupport.executable()
        let images = dir.appendingPathComponent("images")
        try CacheTestSupport.writeSyntheticImages(in: images, count: 12)
        let (w, c) = try CacheTestSupport.writeTinyTeacher(in: dir)
        func args(_ out: URL) -> [String] {
            ["cache", "--images", images.path, "--teacher", w.path, "--teacher-config", c.path, "--out", out.path,
             "--views", "3", "--seed", "5", "--quiet"]
        }
        let reference = dir.appendingPathComponent("reference.h5")
        let d = try timed(exe, args(reference))
        let expected = try CacheTestSupport.rowDump(reference)
        let out = dir.appendingPathComponent("killed.h5")
        let o = try hammer(exe, args(out), duration: d, seed: 1, check: {
            guard FileManager.default.fileExists(atPath: out.path) else { return false }
            let done = try CacheReader(out).rows()
            let dump = try CacheTestSupport.rowDump(out)
            for i in done { XCTAssertEqual(dump[i], expected[i], "row \(i) marked complete but differs") }
            return !done.isEmpty && done.count < expected.count
        }, reset: { try FileManager.default.removeItem(at: out) })
        let r = try CacheTestSupport.run(exe, args(out))
        XCTAssertEqual(r.status, 0, r.err)
        let same = try CacheTestSupport.rowDump(out) == expected
        XCTAssertTrue(same, "the resumed cache equals the uninterrupted one")
        report("cache", o, d, "\(expected.count) rows, resumed cache equal to the reference: \(same)")
    }

    /// A train config on the tiny teacher's cache (256×4×4 embeddings); checkpoints every step.
    func trainConfig(cache: URL, run: URL, steps: Int) throws -> URL {
        let yaml = """
            data: {train: [\(cache.path)]}
            student: {type: tinyvit, image_size: 64, embed_dims: [8, 16, 16, 16], depths: [1, 1, 1, 1],
                      num_heads: [1, 2, 2, 2], window_sizes: [4, 4, 4, 4], merge_strides: [2, 2, 1], neck_channels: 256}
            init: {type: random}
            loss: {type: mse}
            schedule: {type: warmup_cosine, peak_lr: 2.0e-3, min_lr: 1.0e-5, warmup_steps: 2}
            batch_size: 2
            steps: \(steps)
            seed: 4
            checkpoint_every: 1
            keep_last: 2
            eval_every: 0
            output_dir: \(run.path)
            """
        let url = run.deletingLastPathComponent().appendingPathComponent(run.lastPathComponent + ".yaml")
        try yaml.write(to: url, atomically: true, encoding: .utf8)
        return url
    }

    func testTrainSurvivesKills() throws {
        let exe = try CacheTestSupport.executable()
        let images = dir.appendingPathComponent("images")
        try CacheTestSupport.writeSyntheticImages(in: images, count: 6)
        // SAM's 256 channels: a student's embedding must fit the mask decoder
        let (w, c) = try CacheTestSupport.writeTinyTeacher(in: dir, neckChannels: 256)
        let cache = dir.appendingPathComponent("cache.h5")
        XCTAssertEqual(try CacheTestSupport.run(exe, ["cache", "--images", images.path, "--teacher", w.path, "--teacher-config", c.path,
                                                      "--out", cache.path, "--views", "2", "--quiet"]).status, 0)
        let steps = 30
        let refRun = dir.appendingPathComponent("ref-run")
        let d = try timed(exe, ["train", try trainConfig(cache: cache, run: refRun, steps: steps).path, "--quiet"])
        let expected = losses(refRun)
        XCTAssertEqual(expected.count, steps)
        let run = dir.appendingPathComponent("run")
        let cfg = try trainConfig(cache: cache, run: run, steps: steps)
        let o = try hammer(exe, ["train", cfg.path, "--resume", "--quiet"], duration: d, seed: 2, check: {
            // What is on disk after a kill is a prefix of the reference's losses.
            let l = losses(run)
            XCTAssertEqual(l, Array(expected.prefix(l.count)), "after a kill, metrics.jsonl is a prefix of the reference")
            return !l.isEmpty && l.count < steps
        }, reset: { try FileManager.default.removeItem(at: run) })
        let r = try CacheTestSupport.run(exe, ["train", cfg.path, "--resume", "--quiet"])
        XCTAssertEqual(r.status, 0, r.err)
        let got = losses(run)
        XCTAssertEqual(got, expected, "the resumed run's loss sequence is the uninterrupted one's, bit for bit")
        let last = String(format: "checkpoints/step-%08d.safetensors", steps)
        let sameWeights = try tensors(run.appendingPathComponent(last)) == tensors(refRun.appendingPathComponent(last))
        XCTAssertTrue(sameWeights, "the same final weights")
        report("train", o, d, "\(steps) steps, loss sequence bit-identical: \(got == expected), final weights identical: \(sameWeights)")
    }

    func testRunSurvivesKills() throws {
        let exe = try CacheTestSupport.executable()
        let teacher = try RunPipelineTests.writeTinySAM(in: dir)
        func setUp(_ base: URL) throws -> URL {
            try FileManager.default.createDirectory(at: base, withIntermediateDirectories: true)
            let names = try CacheTestSupport.writeSyntheticImages(in: base.appendingPathComponent("images"), count: 5)
            try names.joined(separator: "\n").write(to: base.appendingPathComponent("list.txt"), atomically: true, encoding: .utf8)
            try "\(names[0])\n".write(to: base.appendingPathComponent("val.txt"), atomically: true, encoding: .utf8)
            let cfg = base.appendingPathComponent("run.yaml")
            try RunPipelineTests.yaml(dir: base, teacher: teacher, steps: 6).write(to: cfg, atomically: true, encoding: .utf8)
            return cfg
        }
        let ref = dir.appendingPathComponent("ref")
        let d = try timed(exe, ["run", try setUp(ref).path, "--quiet"])
        let expectedLosses = losses(ref.appendingPathComponent("run"))
        let expectedRows = try CacheTestSupport.rowDump(ref.appendingPathComponent("cache/c.h5"))
        let base = dir.appendingPathComponent("killed")
        let cfg = try setUp(base)
        let o = try hammer(exe, ["run", cfg.path, "--quiet"], duration: d, seed: 3, check: {
            let l = losses(base.appendingPathComponent("run"))
            XCTAssertEqual(l, Array(expectedLosses.prefix(l.count)), "after a kill, metrics.jsonl is a prefix of the reference")
            return !FileManager.default.fileExists(atPath: base.appendingPathComponent("run/student.safetensors").path)
        }, reset: {
            for sub in ["cache", "run"] { try? FileManager.default.removeItem(at: base.appendingPathComponent(sub)) }
        })
        let r = try CacheTestSupport.run(exe, ["run", cfg.path, "--quiet"])
        XCTAssertEqual(r.status, 0, r.err)
        let got = losses(base.appendingPathComponent("run"))
        XCTAssertEqual(got, expectedLosses)
        let sameRows = try CacheTestSupport.rowDump(base.appendingPathComponent("cache/c.h5")) == expectedRows
        XCTAssertTrue(sameRows)
        let sameExport = try tensors(base.appendingPathComponent("run/student.safetensors"))
            == tensors(ref.appendingPathComponent("run/student.safetensors"))
        XCTAssertTrue(sameExport, "the same exported student")
        report("run", o, d, "cache rows equal: \(sameRows), loss sequence bit-identical: \(got == expectedLosses), export identical: \(sameExport)")
    }
}

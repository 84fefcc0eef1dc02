import CheckpointFormats
import Distill
import Distributed
import Foundation
import HDF5
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// Data-parallel training over Open MPI on this machine (`mpirun -np 2`, the built `samdistill`):
/// 2 ranks × batch 1 replay 1 rank × batch 2 (losses and final weights, with sync_batchnorm: the
/// tiny TinyViT student trains its BatchNorms), and a 2-rank run's checkpoint resumes with 1 rank
/// on the same sequence. Skipped only when `mpirun` is not installed (Scripts/setup installs
/// openmpi-bin). Root CI needs Open MPI's allow-run-as-root variables, set here.
///
/// Tolerances: the two layouts differ only in reduction order (a rank's gradient is summed over
/// its sample, then the two ranks' are added and halved; one rank sums over both samples), so
/// each step's loss agrees to relative 2e-6 and every final weight to 2e-6 absolute (weights of
/// magnitude ≤ ~1 after six AdamW steps of lr 1e-3; measured 1.4e-7 and 1.8e-7). AdamW's eps is 1e-4 here: the student has
/// parameters whose exact gradient is zero (the MLP's fc2 bias feeds a 1×1 conv + BatchNorm,
/// which removes any per-channel constant), so their gradient is rounding noise (~1e-10), which
/// eps 1e-8 would normalise up to lr-sized steps of random sign (measured: 6.5e-4 apart after
/// six steps); eps 1e-4 leaves real gradients (1e-4…1e-1) nearly unchanged.
final class DataParallelTests: XCTestCase {
    static let lossTolerance = 2e-6
    static let weightTolerance: Float = 2e-6

    /// mpirun on PATH, or nil.
    static var mpirun: URL? {
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":") {
            let u = URL(fileURLWithPath: String(dir)).appendingPathComponent("mpirun")
            if FileManager.default.isExecutableFile(atPath: u.path) { return u }
        }
        return nil
    }

    /// This process's environment plus what Open MPI needs in a root container: run as root,
    /// shared memory without the ptrace single-copy (containers forbid it), no network probing.
    static var mpiEnvironment: [String: String] {
        var env = ProcessInfo.processInfo.environment
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        env["OMPI_MCA_btl"] = "self,vader"
        env["OMPI_MCA_btl_vader_single_copy_mechanism"] = "none"
        env["OMPI_MCA_rmaps_base_oversubscribe"] = "1"
        env["SAMDISTILL_THREADS"] = "1"
        return env
    }

    /// `mpirun -np ranks samdistill args` (one thread per rank), or samdistill alone for ranks 0.
    static func samdistill(ranks: Int, _ args: [String]) throws -> (status: Int32, out: String, err: String) {
        let exe = try CacheTestSupport.executable()
        if ranks == 0 {
            return try Fixture.runProcess(exe, args + ["--threads", "1"])
        }
        guard let mpirun else { throw XCTSkip("mpirun is not installed (Scripts/setup installs openmpi-bin)") }
        return try Fixture.runProcess(mpirun, ["-np", String(ranks), "--oversubscribe", "--bind-to", "none", exe.path] + args,
                                      environment: mpiEnvironment)
    }

    /// A tiny teacher (256-channel embeddings of 64×64 inputs), 8 synthetic images cached (2 held
    /// out), and the run config of a tiny TinyViT student with BatchNorm (patch embed, MBConv).
    static func prepare(_ dir: URL) throws -> URL {
        let (weights, teacherConfig) = try CacheTestSupport.writeTinySAMTeacher(in: dir)
        let images = dir.appendingPathComponent("images")
        try CacheTestSupport.writeSyntheticImages(in: images, count: 8)
        let cache = dir.appendingPathComponent("cache.h5")
        let yaml = """
            data: {train: [\(cache.path)], val_fraction: 0.3, images: \(images.path), views: 1}
            teacher: {checkpoint: \(weights.path)}
            student: {type: tinyvit, image_size: 64, embed_dims: [8, 16, 16, 16], depths: [1, 1, 1, 1],
                      num_heads: [1, 2, 2, 2], window_sizes: [4, 4, 4, 4], merge_strides: [2, 2, 1]}
            init: {type: random}
            loss: {type: mse}
            optimizer: {max_grad_norm: 1.0, eps: 1.0e-4}
            schedule: {type: constant, lr: 1.0e-3}
            batch_size: 2
            steps: 6
            seed: 3
            checkpoint_every: 3
            keep_last: 5
            eval_every: 3
            sync_batchnorm: true
            output_dir: \(dir.appendingPathComponent("run").path)
            """
        let cfg = dir.appendingPathComponent("run.yaml")
        try yaml.write(to: cfg, atomically: true, encoding: .utf8)
        let c = try CacheTestSupport.run(try CacheTestSupport.executable(),
                                         ["cache", "--config", cfg.path, "--teacher-config", teacherConfig.path, "--quiet"])
        XCTAssertEqual(c.status, 0, c.err)
        return cfg
    }

    /// (step, loss) and (step, val_mse) of a run directory's metrics.jsonl.
    static func metrics(_ run: URL) throws -> (losses: [Double], valMSE: [Double]) {
        let lines = try String(contentsOf: run.appendingPathComponent("metrics.jsonl"), encoding: .utf8)
            .split(separator: "\n").compactMap { try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        return (lines.compactMap { $0["loss"] as? Double }, lines.compactMap { ($0["eval"] as? [String: Double])?["val_mse"] })
    }

    static func finalWeights(_ run: URL, step: Int) throws -> [String: Tensor] {
        let (entries, _) = try SafeTensors.read(run.appendingPathComponent("checkpoints").appendingPathComponent(String(format: "step-%08d.safetensors", step)))
        var out: [String: Tensor] = [:]
        for (k, e) in entries where k.hasPrefix("model.") { out[k] = e.tensor }
        return out
    }

    /// The largest |a − b| over every tensor of two checkpoints (same keys).
    static func maxDifference(_ a: [String: Tensor], _ b: [String: Tensor]) -> (Float, String) {
        XCTAssertEqual(Set(a.keys), Set(b.keys))
        var worst: Float = 0, at = ""
        for (k, t) in a {
            guard let u = b[k] else { continue }
            XCTAssertEqual(t.shape, u.shape, k)
            for (x, y) in zip(t.data, u.data) where abs(x - y) > worst { worst = abs(x - y); at = k }
        }
        return (worst, at)
    }

    static func relativeDifference(_ a: [Double], _ b: [Double]) -> Double {
        zip(a, b).map { abs($0 - $1) / max(abs($1), 1e-12) }.max() ?? .infinity
    }

    func testTwoRanksReplayOneRankWithTwiceTheBatchAndResumeWithOneRank() throws {
        guard Self.mpirun != nil else { throw XCTSkip("mpirun is not installed (Scripts/setup installs openmpi-bin)") }
        let dir = try CacheTestSupport.temporaryDirectory("mpi")
        defer { if ProcessInfo.processInfo.environment["SAMDISTILL_KEEP_TEST_DIR"] == nil { try? FileManager.default.removeItem(at: dir) } else { print("kept \(dir.path)") } }
        let cfg = try Self.prepare(dir)
        let one = dir.appendingPathComponent("one"), two = dir.appendingPathComponent("two"), mixed = dir.appendingPathComponent("mixed")

        // 1 rank × batch 2 (a plain process), 2 ranks × batch 1.
        let a = try Self.samdistill(ranks: 0, ["train", cfg.path, "--quiet", "--set", "output_dir=\(one.path)"])
        XCTAssertEqual(a.status, 0, a.err)
        let b = try Self.samdistill(ranks: 2, ["train", cfg.path, "--quiet", "--set", "output_dir=\(two.path)", "--set", "batch_size=1"])
        XCTAssertEqual(b.status, 0, "mpirun -np 2: \(b.out)\n\(b.err)")
        XCTAssertTrue(b.out.contains("on 2 ranks"), "rank 0 reports the ranks: \(b.out)")
        XCTAssertEqual(b.out.components(separatedBy: "done:").count, 2, "only rank 0 prints: \(b.out)")

        let m1 = try Self.metrics(one), m2 = try Self.metrics(two)
        XCTAssertEqual(m1.losses.count, 6)
        XCTAssertEqual(m2.losses.count, 6, "rank 0 alone writes metrics: one line per step")
        XCTAssertLessThan(m1.losses.last!, m1.losses.first!)
        let lossDiff = Self.relativeDifference(m2.losses, m1.losses)
        XCTAssertLessThanOrEqual(lossDiff, Self.lossTolerance, "losses 2×1 \(m2.losses) vs 1×2 \(m1.losses)")
        XCTAssertEqual(m2.valMSE.count, 2)
        let valDiff = Self.relativeDifference(m2.valMSE, m1.valMSE)
        XCTAssertLessThanOrEqual(valDiff, Self.lossTolerance, "val_mse (rows split over ranks) \(m2.valMSE) vs \(m1.valMSE)")
        let (wDiff, wKey) = Self.maxDifference(try Self.finalWeights(two, step: 6), try Self.finalWeights(one, step: 6))
        XCTAssertLessThanOrEqual(wDiff, Self.weightTolerance, "final weights differ by \(wDiff) at \(wKey)")
        // The training moved the weights far more than that.
        let (moved, _) = Self.maxDifference(try Self.finalWeights(one, step: 6), try Self.finalWeights(one, step: 3))
        XCTAssertGreaterThan(moved, 100 * Self.weightTolerance)
        print("DataParallelTests: 2×1 vs 1×2: loss rel \(lossDiff), val_mse rel \(valDiff), weights abs \(wDiff) (\(wKey))")

        // 2 ranks to step 3 (its checkpoint), then 1 rank × batch 2 resumes to step 6.
        let c = try Self.samdistill(ranks: 2, ["train", cfg.path, "--quiet", "--set", "output_dir=\(mixed.path)", "--set", "batch_size=1",
                                               "--set", "steps=3"])
        XCTAssertEqual(c.status, 0, "mpirun -np 2 (3 steps): \(c.out)\n\(c.err)")
        let d = try Self.samdistill(ranks: 0, ["train", cfg.path, "--quiet", "--resume", "--set", "output_dir=\(mixed.path)"])
        XCTAssertEqual(d.status, 0, d.err)
        let m3 = try Self.metrics(mixed)
        XCTAssertEqual(m3.losses.count, 6, "steps 1–3 on 2 ranks, 4–6 resumed on 1")
        let resumeDiff = Self.relativeDifference(m3.losses, m1.losses)
        XCTAssertLessThanOrEqual(resumeDiff, Self.lossTolerance, "2-rank then 1-rank \(m3.losses) vs 1-rank \(m1.losses)")
        let (rDiff, rKey) = Self.maxDifference(try Self.finalWeights(mixed, step: 6), try Self.finalWeights(one, step: 6))
        XCTAssertLessThanOrEqual(rDiff, Self.weightTolerance, "resumed final weights differ by \(rDiff) at \(rKey)")
        print("DataParallelTests: 2 ranks → resume on 1: loss rel \(resumeDiff), weights abs \(rDiff)")
    }

    /// `mpirun -np 2 samdistill cache`: two shards (rank r writes shard r) listed by the index,
    /// row for row the bytes of the one-process cache; rows cleared in both shards (as a crash
    /// leaves them) are recomputed by a 2-rank rerun, and a 1-rank rerun of the sharded cache
    /// finds it complete.
    func testTwoRankCacheEqualsOneRankCacheAndResumesEveryShard() throws {
        guard Self.mpirun != nil else { throw XCTSkip("mpirun is not installed (Scripts/setup installs openmpi-bin)") }
        let dir = try CacheTestSupport.temporaryDirectory("mpi-cache")
        defer { try? FileManager.default.removeItem(at: dir) }
        let images = dir.appendingPathComponent("images")
        try CacheTestSupport.writeSyntheticImages(in: images, count: 5)
        let (weights, config) = try CacheTestSupport.writeTinyTeacher(in: dir)
        func cache(_ ranks: Int, _ out: URL) throws -> String {
            let r = try Self.samdistill(ranks: ranks, ["cache", "--images", images.path, "--teacher", weights.path, "--teacher-config", config.path,
                                                       "--views", "2", "--val-fraction", "0.3", "--out", out.path])
            XCTAssertEqual(r.status, 0, "\(ranks) ranks: \(r.out)\n\(r.err)")
            return r.err
        }
        let one = dir.appendingPathComponent("one.h5"), two = dir.appendingPathComponent("two.h5")
        _ = try cache(0, one)
        let log = try cache(2, two)
        XCTAssertTrue(log.contains("[rank 1/2]"), log)
        let index = try HDF5File(two, mode: .readOnly)
        guard case .strings(let shards)? = try index.attribute("shards"), case .ints(let rows)? = try index.attribute("shard_rows") else {
            return XCTFail("two.h5 is no shard index")
        }
        index.close()
        XCTAssertEqual(shards, ["two-shard-00000.h5", "two-shard-00001.h5"])
        let reference = try CacheTestSupport.rowDump(one)
        XCTAssertEqual(rows.reduce(0, +), reference.count)
        XCTAssertGreaterThan(reference.count, 5, "views and the split give more rows than images")
        let dump = try CacheTestSupport.rowDump(two)
        XCTAssertEqual(dump.count, reference.count)
        for i in 0..<reference.count { XCTAssertEqual(dump[i], reference[i], "row \(i)") }

        // A crash in both shards: clear row 0 of each (and damage its image), rerun on 2 ranks.
        for name in shards {
            let f = try HDF5File(dir.appendingPathComponent(name), mode: .readWrite)
            try f.dataset("complete").write(rows: 0, [UInt8(0)])
            try f.dataset("image").write(rows: 0, [UInt8](repeating: 255, count: 64 * 64 * 3))
            f.close()
        }
        XCTAssertEqual(try CacheReader(two).rows().count, reference.count - 2)
        let resumed = try cache(2, two)
        XCTAssertTrue(resumed.contains("rows: 2 written, \(reference.count - 2) already complete"), resumed)
        XCTAssertEqual(try CacheTestSupport.rowDump(two), reference)
        // One rank opens every shard: nothing to do.
        let single = try cache(0, two)
        XCTAssertTrue(single.contains("rows: 0 written, \(reference.count) already complete"), single)
    }

    /// `mpirun -np 2 samdistill eval`: the ranks split the cache rows (and, with --images, the
    /// files); rank 0 alone prints and writes the report, whose per-image IoUs and summary equal
    /// the one-process report's exactly (prompts are seeded per image name).
    func testTwoRankEvaluationEqualsOneRank() throws {
        guard Self.mpirun != nil else { throw XCTSkip("mpirun is not installed (Scripts/setup installs openmpi-bin)") }
        let dir = try CacheTestSupport.temporaryDirectory("mpi-eval")
        defer { try? FileManager.default.removeItem(at: dir) }
        let images = dir.appendingPathComponent("images")
        try CacheTestSupport.writeSyntheticImages(in: images, count: 5)
        let teacher = try CacheTestSupport.writeTinySAM(in: dir, seed: 5)
        let studentDir = dir.appendingPathComponent("student")
        try FileManager.default.createDirectory(at: studentDir, withIntermediateDirectories: true)
        let student = try CacheTestSupport.writeTinySAM(in: studentDir, seed: 6)
        let cache = dir.appendingPathComponent("c.h5")
        let c = try Self.samdistill(ranks: 0, ["cache", "--images", images.path, "--teacher", teacher.path, "--out", cache.path, "--quiet"])
        XCTAssertEqual(c.status, 0, c.err)
        for source in [["--cache", cache.path, "--split", "all"], ["--images", images.path]] {
            var reports: [[String: Any]] = []
            for ranks in [0, 2] {
                let json = dir.appendingPathComponent("eval-\(ranks).json")
                let r = try Self.samdistill(ranks: ranks, ["eval", "--student", student.path, "--teacher", teacher.path, "--json", json.path,
                                                           "--prompts", "point,box"] + source)
                XCTAssertEqual(r.status, 0, "\(ranks) ranks \(source[0]): \(r.out)\n\(r.err)")
                XCTAssertEqual(r.out.components(separatedBy: "\nteacher ").count, 2, "one report (rank 0's): \(r.out)")
                reports.append(try JSONSerialization.jsonObject(with: Data(contentsOf: json)) as! [String: Any])
            }
            for key in ["rows", "summary"] {
                let a = try JSONSerialization.data(withJSONObject: reports[0][key] as Any, options: [.sortedKeys])
                let b = try JSONSerialization.data(withJSONObject: reports[1][key] as Any, options: [.sortedKeys])
                XCTAssertEqual(String(decoding: a, as: UTF8.self), String(decoding: b, as: UTF8.self), "\(source[0]) \(key)")
            }
            // Images with rows (an image whose tiny random teacher gives no mask has none) from both ranks' shares.
            let evaluated = Set(((reports[1]["rows"] as? [[String: Any]]) ?? []).compactMap { $0["image"] as? String })
            XCTAssertGreaterThanOrEqual(evaluated.count, 3, "\(source[0]): \(evaluated)")
        }
    }

    /// `mpirun -np 2 samdistill run CONFIG`: cache rows split over the ranks (a 2-shard cache),
    /// data-parallel training, the initial evaluation and the held-out mIoU curve split over the
    /// ranks (the initial report identical to a one-process run's), final evaluation and export on
    /// rank 0; one report; a rerun finds every step up to date.
    func testRunPipelineOnTwoRanks() throws {
        guard Self.mpirun != nil else { throw XCTSkip("mpirun is not installed (Scripts/setup installs openmpi-bin)") }
        let dir = try CacheTestSupport.temporaryDirectory("mpi-run")
        defer { try? FileManager.default.removeItem(at: dir) }
        let images = dir.appendingPathComponent("images")
        try CacheTestSupport.writeSyntheticImages(in: images, count: 6)
        let teacher = try CacheTestSupport.writeTinySAM(in: dir, seed: 5)
        let run = dir.appendingPathComponent("run"), cache = dir.appendingPathComponent("cache.h5")
        let cfg = dir.appendingPathComponent("run.yaml")
        try """
            data: {train: [\(cache.path)], val_fraction: 0.4, images: \(images.path)}
            teacher: {checkpoint: \(teacher.path)}
            student: {type: tinyvit, image_size: 64, embed_dims: [8, 16, 16, 16], depths: [1, 1, 1, 1],
                      num_heads: [1, 2, 2, 2], window_sizes: [4, 4, 4, 4], merge_strides: [2, 2, 1]}
            init: {type: random}
            schedule: {type: constant, lr: 1.0e-3}
            batch_size: 1
            steps: 4
            checkpoint_every: 2
            sync_batchnorm: true
            eval_every: 2
            eval: {prompts: {types: [point], count: 2}, max_images: 3, during_training: true}
            export: {path: student.safetensors}
            output_dir: \(run.path)
            """.write(to: cfg, atomically: true, encoding: .utf8)
        // The one-process reference (its own cache and run directory, batch 2 = 2 ranks × 1).
        let oneRun = dir.appendingPathComponent("one"), oneCache = dir.appendingPathComponent("one.h5")
        let one = try Self.samdistill(ranks: 0, ["run", cfg.path, "--quiet", "--set", "output_dir=\(oneRun.path)",
                                                 "--set", "data.train=[\(oneCache.path)]", "--set", "batch_size=2"])
        XCTAssertEqual(one.status, 0, one.err)
        let r = try Self.samdistill(ranks: 2, ["run", cfg.path, "--quiet"])
        XCTAssertEqual(r.status, 0, "\(r.out)\n\(r.err)")
        XCTAssertEqual(r.out.components(separatedBy: "exported student:").count, 2, "rank 0 reports once: \(r.out)")
        XCTAssertTrue(FileManager.default.fileExists(atPath: run.appendingPathComponent("student.safetensors").path))
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir.appendingPathComponent("cache-shard-00001.h5").path), "one shard per rank")
        XCTAssertEqual(try Self.metrics(run).losses.count, 4)
        let initial = try [oneRun, run].map { try JSONSerialization.jsonObject(with: Data(contentsOf: $0.appendingPathComponent("eval-init.json"))) as! [String: Any] }
        for key in ["rows", "summary"] {
            let a = try JSONSerialization.data(withJSONObject: initial[0][key] as Any, options: [.sortedKeys])
            let b = try JSONSerialization.data(withJSONObject: initial[1][key] as Any, options: [.sortedKeys])
            XCTAssertEqual(String(decoding: a, as: UTF8.self), String(decoding: b, as: UTF8.self), "eval-init \(key): 1 vs 2 ranks")
        }
        let curve = try String(contentsOf: run.appendingPathComponent("metrics.jsonl"), encoding: .utf8)
            .split(separator: "\n").compactMap { try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            .compactMap { ($0["eval"] as? [String: Double])?["miou_point"] }
        XCTAssertEqual(curve.count, 2, "the held-out mIoU at steps 2 and 4, gathered from both ranks")
        let again = try Self.samdistill(ranks: 2, ["run", cfg.path, "--quiet"])
        XCTAssertEqual(again.status, 0, again.err)
        XCTAssertTrue(again.out.contains("up to date: ") && again.out.contains("train"), again.out)
    }

    /// A plain process (this test runner: no launcher) is rank 0 of 1 and never initialises MPI;
    /// the launchers' variables are what turns MPI on.
    func testNoMPIWithoutALauncher() {
        XCTAssertFalse(Communicator.world.usesMPI)
        XCTAssertEqual(Communicator.world.size, 1)
        XCTAssertEqual(Communicator.world.rank, 0)
        XCTAssertFalse(Communicator.launchedByMPI(["PATH": "/usr/bin", "SLURM_JOB_ID": "7"]), "a Slurm batch shell is not a rank")
        for v in ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"] { XCTAssertTrue(Communicator.launchedByMPI([v: "2"]), v) }
        var values: [Float] = [1, 2, 3]
        Communicator.world.allreduceSum(&values)
        XCTAssertEqual(values, [1, 2, 3], "one rank: the sum is the value")
    }

    /// A rank killed (SIGKILL) after a checkpoint ends the whole job with a non-zero status;
    /// the last checkpoint is intact, and a 2-rank `--resume` completes the run on exactly the
    /// loss sequence of an uninterrupted 2-rank run (same layout and threads: bit-identical).
    func testKilledRankEndsTheJobAndTheRunResumes() throws {
        guard let mpirun = Self.mpirun else { throw XCTSkip("mpirun is not installed (Scripts/setup installs openmpi-bin)") }
        let dir = try CacheTestSupport.temporaryDirectory("mpi-kill")
        defer { try? FileManager.default.removeItem(at: dir) }
        let cfg = try Self.prepare(dir)
        let reference = dir.appendingPathComponent("reference"), killed = dir.appendingPathComponent("killed")
        let steps = ["--set", "steps=20", "--set", "checkpoint_every=5", "--set", "eval_every=0", "--set", "keep_last=2", "--set", "batch_size=1"]
        let a = try Self.samdistill(ranks: 2, ["train", cfg.path, "--quiet", "--set", "output_dir=\(reference.path)"] + steps)
        XCTAssertEqual(a.status, 0, a.err)

        let p = Process()
        p.executableURL = mpirun
        p.arguments = ["-np", "2", "--oversubscribe", "--bind-to", "none", try CacheTestSupport.executable().path,
                       "train", cfg.path, "--quiet", "--set", "output_dir=\(killed.path)"] + steps
        p.environment = Self.mpiEnvironment
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        // Wait for the step-5 checkpoint, then SIGKILL rank 1 (found by its environment).
        let checkpoints = killed.appendingPathComponent("checkpoints")
        let deadline = Date().addingTimeInterval(60)
        while Trainer.checkpoints(in: checkpoints).isEmpty && Date() < deadline && p.isRunning { usleep(20_000) }
        XCTAssertFalse(Trainer.checkpoints(in: checkpoints).isEmpty, "a checkpoint before the kill")
        var victim: Int32?
        for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(name), let env = FileManager.default.contents(atPath: "/proc/\(name)/environ"),
                  let cmd = FileManager.default.contents(atPath: "/proc/\(name)/cmdline") else { continue }
            let e = String(decoding: env, as: UTF8.self), c = String(decoding: cmd, as: UTF8.self)
            if e.contains("OMPI_COMM_WORLD_RANK=1\0") && c.contains(killed.path) && c.contains("samdistill") { victim = pid }
        }
        guard let victim else { p.terminate(); p.waitUntilExit(); return XCTFail("rank 1's process not found (the run ended first?)") }
        kill(victim, SIGKILL)
        let errText = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertNotEqual(p.terminationStatus, 0, "the job ends when a rank dies")
        XCTAssertTrue(errText.contains("signal 9") || errText.contains("Killed"), "mpirun names the dead rank: \(errText)")
        let last = try XCTUnwrap(Trainer.checkpoints(in: checkpoints).last)
        XCTAssertNoThrow(try SafeTensors.read(last), "the last checkpoint is intact")
        XCTAssertLessThan(try Self.metrics(killed).losses.count, 20, "killed before the end")

        let r = try Self.samdistill(ranks: 2, ["train", cfg.path, "--quiet", "--resume", "--set", "output_dir=\(killed.path)"] + steps)
        XCTAssertEqual(r.status, 0, "\(r.out)\n\(r.err)")
        let resumed = try Self.metrics(killed).losses, uninterrupted = try Self.metrics(reference).losses
        XCTAssertEqual(resumed.count, 20)
        XCTAssertEqual(resumed, uninterrupted, "killed + resumed vs uninterrupted, both 2 ranks")
        print("DataParallelTests: killed after \(last.lastPathComponent), resumed on 2 ranks: \(resumed.count) losses identical")
    }

    /// A rank that fails ends the job with a message naming it, non-zero status, and the
    /// other rank does not hang (bad input: a batch_size the cache cannot fill is not it; an
    /// unreadable cache on every rank is).
    func testFailingRankEndsTheJob() throws {
        guard Self.mpirun != nil else { throw XCTSkip("mpirun is not installed (Scripts/setup installs openmpi-bin)") }
        let dir = try CacheTestSupport.temporaryDirectory("mpi-fail")
        defer { try? FileManager.default.removeItem(at: dir) }
        let cfg = dir.appendingPathComponent("bad.yaml")
        try """
            data: {train: [\(dir.appendingPathComponent("missing.h5").path)]}
            student: {type: tinyvit, image_size: 64, embed_dims: [8, 16, 16, 16], depths: [1, 1, 1, 1],
                      num_heads: [1, 2, 2, 2], window_sizes: [4, 4, 4, 4], merge_strides: [2, 2, 1]}
            steps: 2
            output_dir: \(dir.appendingPathComponent("run").path)
            """.write(to: cfg, atomically: true, encoding: .utf8)
        let r = try Self.samdistill(ranks: 2, ["train", cfg.path, "--quiet"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("rank ") && r.err.contains("missing.h5") && r.err.contains("ending the job"), r.err)
    }

    /// Commands that do not split their work refuse more than one rank.
    func testOneProcessCommandsRefuseRanks() throws {
        guard Self.mpirun != nil else { throw XCTSkip("mpirun is not installed (Scripts/setup installs openmpi-bin)") }
        let r = try Self.samdistill(ranks: 2, ["inspect", "/nonexistent.safetensors"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("launch it without mpirun"), r.err)
    }
}

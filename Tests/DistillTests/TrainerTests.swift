import Distill
import Layers
import Optim
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// The training loop on in-memory data: PyTorch fidelity, loss decrease, exact resume, NaN stop,
/// run-directory contents.
final class TrainerTests: XCTestCase {
    /// Scripts/refdump/train_fidelity.py's model: MobileSAM's TinyViT at 64×64, 4×4×16 output.
    static let tinyConfig: TinyViTConfig = {
        var c = TinyViTConfig()
        c.imageSize = 64
        c.embedDims = [8, 16, 24, 32]
        c.depths = [1, 1, 1, 1]
        c.numHeads = [1, 2, 2, 4]
        c.windowSizes = [7, 4, 2, 2]
        c.mergeStrides = [2, 2, 1]
        c.neckChannels = 16
        return c
    }()

    /// train_fidelity.py's `fidelity_init`: sorted keys; running stats 0/1; rank ≥ 2 (not
    /// attention_biases): U(±1/√(numel/shape[0])); rank-1 `…weight`: 1 + U(±0.1); others U(±0.1).
    static func fidelityInit(_ m: Module, seed: UInt64 = 5) {
        var rng = SeededRandom(seed: seed)
        for (k, p) in m.namedParameters().sorted(by: { $0.0 < $1.0 }) {
            let v = p.value
            if k.hasSuffix("running_mean") { p.value = Tensor(zeros: v.shape) }
            else if k.hasSuffix("running_var") { p.value = Tensor(repeating: 1, shape: v.shape) }
            else if v.rank >= 2 && !k.hasSuffix("attention_biases") {
                let b = Float(1 / (Double(v.count / v.shape[0])).squareRoot())
                p.value = Tensor.randomUniform(v.shape, -b, b, rng: &rng)
            } else if k.hasSuffix("weight") {
                p.value = Tensor.randomUniform(v.shape, -0.1, 0.1, rng: &rng).map { $0 + 1 }
            } else {
                p.value = Tensor.randomUniform(v.shape, -0.1, 0.1, rng: &rng)
            }
        }
    }

    static func data(count: Int = 6, channels: Int = 16, grid: Int = 4, size: Int = 64) -> InMemoryTrainingData {
        var r1 = SeededRandom(seed: 11), r2 = SeededRandom(seed: 12)
        return InMemoryTrainingData(images: Tensor.randomUniform([count, 3, size, size], -2, 2, rng: &r1),
                                    targets: Tensor.randomUniform([count, channels, grid, grid], -1, 1, rng: &r2))
    }

    static func recipe(steps: Int = 20, dir: URL) -> RunConfig {
        var c = RunConfig()
        c.student = .tinyViT(tinyConfig, preset: nil)
        c.batchSize = 2
        c.gradAccumulation = 2
        c.steps = steps
        c.seed = 7
        c.optimizer.adamW = AdamW.Configuration(weightDecay: 0.05)
        c.optimizer.maxGradNorm = 1.0
        c.schedule = .warmupCosine(WarmupCosineSchedule(peakLR: 2e-3, warmupSteps: 3, totalSteps: 20))
        c.loss = .mse
        c.checkpointEvery = 100
        c.keepLast = 2
        c.evalEvery = 0
        c.logEvery = 5
        c.outputDir = dir.path
        return c
    }

    func temporaryDirectory() throws -> URL {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("trainer-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: d) }
        return d
    }

    func makeTrainer(_ config: RunConfig, validation: TrainingData? = nil) throws -> Trainer {
        let student = Student(config.student)
        Self.fidelityInit(student)
        let t = try Trainer(config: config, student: student, train: Self.data(), validation: validation)
        t.showsProgress = false
        return t
    }

    /// The same recipe in PyTorch (float64, Scripts/refdump/train_fidelity.py): every one of the
    /// 20 losses within 1% (measured: see the assertion message), lr identical, grad norms within 1%.
    func testLossSequenceMatchesPyTorch() throws {
        let f = try Fixture("train_fidelity")
        let trainer = try makeTrainer(Self.recipe(dir: try temporaryDirectory()))
        let records = try trainer.run()
        XCTAssertEqual(records.count, 20)
        var worst = 0.0
        for (i, r) in records.enumerated() {
            let e = abs(r.loss - Double(f["losses"].data[i])) / Double(f["losses"].data[i])
            worst = max(worst, e)
            XCTAssertLessThanOrEqual(e, 0.01, "step \(i + 1): Swift \(r.loss), PyTorch \(f["losses"].data[i])")
            XCTAssertEqual(r.lr, f["lrs"].data[i], accuracy: f["lrs"].data[i] * 1e-6)
            XCTAssertEqual(r.gradNorm, Double(f["grad_norms"].data[i]), accuracy: 0.01 * Double(f["grad_norms"].data[i]))
        }
        print("train fidelity: worst relative loss difference vs PyTorch over 20 steps: \(worst)")
        // and the loss went down
        let last: Double = records.suffix(3).map(\.loss).reduce(0, +) / 3
        XCTAssertLessThan(last, 0.6 * records[0].loss)
    }

    /// 6 steps straight vs a run stopped after step 3 (checkpoints every 2 steps, so step 3 is
    /// lost), a restart (new student from other weights, new trainer) and `resume` from step 2:
    /// identical losses (relative 1e-6; in practice bit-identical), identical final weights, and
    /// metrics.jsonl holding each step once.
    func testResumeReproducesTheUninterruptedRun() throws {
        var straight = Self.recipe(steps: 6, dir: try temporaryDirectory())
        straight.schedule = .warmupCosine(WarmupCosineSchedule(peakLR: 2e-3, warmupSteps: 2, totalSteps: 6))
        straight.checkpointEvery = 2
        let a = try makeTrainer(straight)
        let full = try a.run()

        var split = straight
        split.outputDir = try temporaryDirectory().path
        let b = try makeTrainer(split)
        struct Stop: Error {}
        b.afterStep = { r in if r.step == 3 { throw Stop() } }
        XCTAssertThrowsError(try b.run()) { XCTAssertTrue($0 is Stop) }
        // a new trainer whose student starts from other weights: everything must come from the checkpoint
        let student = Student(split.student)
        var rng = SeededRandom(seed: 99)
        student.initialiseRandomly(rng: &rng)
        let c = try Trainer(config: split, student: student, train: Self.data())
        c.showsProgress = false
        XCTAssertThrowsError(try c.run(resume: false)) { XCTAssertTrue("\($0)".contains("--resume"), "\($0)") }
        let rest = try c.run(resume: true)
        XCTAssertEqual(rest.map(\.step), [3, 4, 5, 6])
        XCTAssertEqual(rest[0].loss, b.history[2].loss, accuracy: 1e-6 * abs(b.history[2].loss), "step 3 again")
        let resumed = Array(b.history.prefix(2)) + rest
        XCTAssertEqual(full.count, resumed.count)
        for (x, y) in zip(full, resumed) {
            XCTAssertEqual(x.step, y.step)
            XCTAssertEqual(x.loss, y.loss, accuracy: 1e-6 * abs(x.loss), "step \(x.step)")
        }
        let wa = a.student.stateDict(), wc = c.student.stateDict()
        for (k, v) in wa { XCTAssertEqual(v.data, wc[k]!.data, k) }
        let lines = try String(contentsOf: c.metricsURL, encoding: .utf8).split(separator: "\n")
        let steps = lines.compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["step"] as? Int }
        XCTAssertEqual(steps, [1, 2, 3, 4, 5, 6])
    }

    // MARK: SIGKILL

    static let childDirectoryVariable = "SAMDISTILL_TRAINER_TEST_CHILD_DIR"

    static func killRecipe(_ dir: String) -> RunConfig {
        var c = recipe(steps: 24, dir: URL(fileURLWithPath: dir))
        c.schedule = .warmupCosine(WarmupCosineSchedule(peakLR: 2e-3, warmupSteps: 3, totalSteps: 24))
        c.checkpointEvery = 5
        return c
    }

    /// The child process of `testResumeAfterSIGKILL` (skipped when run normally): trains the
    /// kill recipe in the directory the parent names, until the parent kills it.
    func testZChildProcessForSIGKILL() throws {
        guard let dir = ProcessInfo.processInfo.environment[Self.childDirectoryVariable] else {
            throw XCTSkip("runs only as the child process of testResumeAfterSIGKILL")
        }
        try makeTrainer(Self.killRecipe(dir)).run()
    }

    /// Runs the training in a child process (this test binary, `testZChildProcessForSIGKILL`),
    /// kills it with SIGKILL after step 8 (last checkpoint: step 5), resumes in this process and
    /// compares the whole loss sequence in metrics.jsonl (the child's steps 1–5 and the resumed
    /// 6–24) with an uninterrupted run: relative 1e-6.
    func testResumeAfterSIGKILL() throws {
        let exe = CommandLine.arguments[0]
        guard exe.hasSuffix(".xctest") else { throw XCTSkip("needs the XCTest binary (\(exe)) to start a child run") }
        let dir = try temporaryDirectory()
        let cfg = Self.killRecipe(dir.path)
        let child = Process()
        child.executableURL = URL(fileURLWithPath: exe)
        child.arguments = ["DistillTests.TrainerTests/testZChildProcessForSIGKILL"]
        var env = ProcessInfo.processInfo.environment
        env[Self.childDirectoryVariable] = dir.path
        child.environment = env
        child.standardOutput = FileHandle.nullDevice
        child.standardError = FileHandle.nullDevice
        try child.run()
        let metrics = dir.appendingPathComponent("metrics.jsonl")
        let deadline = Date().addingTimeInterval(300)
        func stepsLogged() -> Int {
            ((try? String(contentsOf: metrics, encoding: .utf8)) ?? "").split(separator: "\n").count
        }
        while stepsLogged() < 8 && child.isRunning && Date() < deadline { usleep(5_000) }
        XCTAssertTrue(child.isRunning, "the child ended before it was killed")
        kill(child.processIdentifier, SIGKILL)
        child.waitUntilExit()
        XCTAssertEqual(child.terminationReason, .uncaughtSignal)
        XCTAssertEqual(child.terminationStatus, SIGKILL)
        let killedAt = stepsLogged()
        XCTAssertGreaterThanOrEqual(killedAt, 8)
        XCTAssertLessThan(killedAt, 24, "killed too late to test anything")

        let resumed = try makeTrainer(cfg)
        let rest = try resumed.run(resume: true)
        XCTAssertEqual(rest.first.map { ($0.step - 1) % 5 }, 0, "resumed from a checkpoint step")
        var straightConfig = cfg
        straightConfig.outputDir = try temporaryDirectory().path
        let straight = try makeTrainer(straightConfig).run()
        let lines = try String(contentsOf: metrics, encoding: .utf8).split(separator: "\n")
            .compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        let logged = lines.compactMap { l in (l["step"] as? Int).flatMap { s in (l["loss"] as? Double).map { (s, $0) } } }
        XCTAssertEqual(logged.map(\.0), Array(1...24))
        for ((s, l), r) in zip(logged, straight) {
            XCTAssertEqual(l, r.loss, accuracy: 1e-6 * abs(r.loss), "step \(s)")
        }
    }

    /// A NaN loss stops the run with an error naming the step; the last good checkpoint stays and
    /// no checkpoint of the failing step is written.
    func testNonFiniteLossStopsWithTheStep() throws {
        var cfg = Self.recipe(steps: 6, dir: try temporaryDirectory())
        cfg.checkpointEvery = 1
        cfg.keepLast = 5
        let t = try makeTrainer(cfg)
        t.afterStep = { r in
            if r.step == 2 {  // corrupt a weight after step 2: step 3's loss is NaN
                let p = t.student.namedParameters().first { $0.0 == "neck.2.weight" }!.1
                p.value.data[0] = .nan
            }
        }
        XCTAssertThrowsError(try t.run()) { e in
            guard case .nonFinite(let step, let what, _)? = e as? TrainerError else { return XCTFail("\(e)") }
            XCTAssertEqual(step, 3); XCTAssertEqual(what, "loss")
            XCTAssertTrue("\(e)".hasPrefix("step 3: the loss is nan"), "\(e)")
        }
        let names = Trainer.checkpoints(in: t.checkpointDirectory).map(\.lastPathComponent)
        XCTAssertEqual(names, ["step-00000001.safetensors", "step-00000002.safetensors"])
        // the last good checkpoint restores a finite model
        let fresh = try makeTrainer(cfg)
        try fresh.restore(from: t.checkpointDirectory.appendingPathComponent("step-00000002.safetensors"))
        XCTAssertEqual(fresh.step, 2)
        XCTAssertTrue(fresh.student.stateDict().values.allSatisfy { $0.data.allSatisfy(\.isFinite) })
    }

    /// A conv student with masked MSE and evaluation: loss decreases, the run directory holds the
    /// resolved config, metrics with eval lines, the SVG, the last K checkpoints and the best.
    func testConvStudentRunWritesTheRunDirectory() throws {
        let dir = try temporaryDirectory()
        var c = RunConfig()
        var sc = ConvStudentConfig()
        sc.imageSize = 32; sc.stemChannels = 8; sc.channels = [8, 16]; sc.blocks = [1, 1]; sc.strides = [2, 2]
        sc.stemStride = 4; sc.outChannels = 256; sc.upsampleChannels = 8
        c.student = .conv(sc)
        c.loss = .maskedMSE(.validElements)
        c.batchSize = 3; c.steps = 12; c.seed = 1
        c.schedule = .constant(ConstantSchedule(lr: 3e-3))
        c.checkpointEvery = 4; c.keepLast = 2; c.evalEvery = 6; c.logEvery = 4
        c.outputDir = dir.path
        var rng = SeededRandom(seed: 3)
        let images = Tensor.randomUniform([6, 3, 32, 32], -2, 2, rng: &rng)
        let targets = Tensor.randomUniform([6, 256, 2, 2], -1, 1, rng: &rng)
        let regions = [ValidRegion(height: 2, width: 1), ValidRegion(height: 1, width: 2), ValidRegion(height: 2, width: 2),
                       ValidRegion(height: 2, width: 2), ValidRegion(height: 1, width: 1), ValidRegion(height: 2, width: 2)]
        let train = InMemoryTrainingData(images: images, targets: targets, validRegions: regions)
        let student = try Student.make(c)
        let t = try Trainer(config: c, student: student, train: train, validation: train)
        t.showsProgress = false
        var hookSteps: [Int] = []
        t.evaluationHook = { _, step in hookSteps.append(step); return ["miou": Double(step) / 100] }
        let records = try t.run()
        XCTAssertEqual(hookSteps, [6, 12])
        let first: Double = records.prefix(3).map(\.loss).reduce(0, +) / 3
        let last: Double = records.suffix(3).map(\.loss).reduce(0, +) / 3
        XCTAssertLessThan(last, 0.8 * first)
        let fm = FileManager.default
        let names = Trainer.checkpoints(in: t.checkpointDirectory).map(\.lastPathComponent)
        XCTAssertEqual(names, ["step-00000008.safetensors", "step-00000012.safetensors"])
        XCTAssertTrue(fm.fileExists(atPath: t.checkpointDirectory.appendingPathComponent("best.safetensors").path))
        let resolved = try RunConfig.load(dir.appendingPathComponent("config.yaml"))
        XCTAssertEqual(resolved, c)
        let svg = try String(contentsOf: t.plotURL, encoding: .utf8)
        XCTAssertTrue(svg.hasPrefix("<svg") && svg.contains("<polyline") && svg.contains("<circle"))
        let lines = try String(contentsOf: t.metricsURL, encoding: .utf8).split(separator: "\n")
            .map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        XCTAssertEqual(lines.filter { $0["loss"] != nil }.count, 12)
        let evals = lines.compactMap { $0["eval"] as? [String: Double] }
        XCTAssertEqual(evals.count, 2)
        XCTAssertNotNil(evals.last?["val_cosine"])
        XCTAssertEqual(evals.map { $0["miou"] }, [0.06, 0.12])
        XCTAssertLessThan(evals.last!["val_mse"]!, evals.first!["val_mse"]! * 1.0001)
        for key in ["step", "loss", "lr", "grad_norm", "images_per_s"] { XCTAssertNotNil(lines[0][key], key) }
        // the checkpoint initialises a student through `init: checkpoint`
        var c2 = c
        c2.initialisation = .checkpoint(path: t.checkpointDirectory.appendingPathComponent("step-00000012.safetensors").path)
        let s2 = try Student.make(c2)
        for (k, v) in student.stateDict() { XCTAssertEqual(v.data, s2.stateDict()[k]!.data, k) }
    }

    func testBatchOrderIsASeededPermutationPerEpoch() {
        var o = BatchOrder(seed: 7, count: 5)
        let rows = o.rows(cursor: 0, n: 15)
        for e in 0..<3 { XCTAssertEqual(Set(rows[(5 * e)..<(5 * e + 5)]), Set(0..<5)) }
        XCTAssertNotEqual(Array(rows[0..<5]), Array(rows[5..<10]))
        var o2 = BatchOrder(seed: 7, count: 5)
        XCTAssertEqual(o2.rows(cursor: 7, n: 4), Array(rows[7..<11]))
    }
}

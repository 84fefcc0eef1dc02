import Distill
import Layers
import Optim
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// Prompt-in-the-loop distillation with MobileSAM's real prompt encoder and mask decoder on a
/// tiny grid (64×64 input, 4×4×256 embeddings, 16×16 low-res masks): the loss's gradient with
/// respect to the student embedding against central finite differences, determinism, the prompt
/// structure, and the trainer lowering the loss in a few steps.
final class PromptInTheLoopTests: XCTestCase {
    static func loopConfig(prompts: Int = 4, rounds: Int = 1, embeddingWeight: Double = 0) -> PromptInTheLoopConfig {
        var c = PromptInTheLoopConfig()
        c.promptsPerImage = prompts
        c.correctionRounds = rounds
        c.bceWeight = 2
        c.diceWeight = 1
        c.embeddingWeight = embeddingWeight
        return c
    }

    static func loop(_ c: PromptInTheLoopConfig) throws -> PromptInTheLoop {
        try PromptInTheLoop(config: c, teacherCheckpoint: Fixture.mobileSAMCheckpoint(), imageSize: 64, embeddingSize: 4)
    }

    /// Teacher embeddings (2, 256, 4, 4) and a student near them; the second image is 3×2 cells.
    static func embeddings() -> (student: Tensor, teacher: Tensor, regions: [ValidRegion]) {
        var rng = SeededRandom(seed: 3)
        let teacher = Tensor.randomNormal([2, 256, 4, 4], std: 0.3, rng: &rng)
        let student = teacher + Tensor.randomNormal([2, 256, 4, 4], std: 0.15, rng: &rng)
        return (student, teacher, [ValidRegion(height: 4, width: 4), ValidRegion(height: 3, width: 2)])
    }

    /// Central difference of the loss (plan held fixed) in coordinate i of the student embedding.
    static func numericDerivative(_ loop: PromptInTheLoop, student: Tensor, teacher: Tensor, regions: [ValidRegion],
                                  seed: UInt64, plan: PromptInTheLoop.Plan, index i: Int, eps: Float = 4e-3) -> Double {
        var x = student
        let v = x.data[i]
        x.data[i] = v + eps
        let lp = loop.evaluate(student: x, teacher: teacher, regions: regions, seed: seed, plan: plan).loss.value
        x.data[i] = v - eps
        let lm = loop.evaluate(student: x, teacher: teacher, regions: regions, seed: seed, plan: plan).loss.value
        return (lp - lm) / (Double(v + eps) - Double(v - eps))
    }

    /// The `count` largest entries of `r`'s gradient against central differences (its plan held
    /// fixed): |a − n| ≤ 1e-4 + 2e-2·max(|a|, |n|), the tolerance of the test below.
    static func assertLargestGradientEntries(_ count: Int, _ loop: PromptInTheLoop, _ r: PromptInTheLoop.Result, student: Tensor,
                                             teacher: Tensor, regions: [ValidRegion], seed: UInt64,
                                             file: StaticString = #filePath, line: UInt = #line) {
        let g = r.loss.gradient.data
        for i in g.indices.sorted(by: { abs(g[$0]) > abs(g[$1]) }).prefix(count) {
            let numeric = numericDerivative(loop, student: student, teacher: teacher, regions: regions, seed: seed, plan: r.plan, index: i)
            let analytic = Double(g[i])
            XCTAssertLessThanOrEqual(abs(analytic - numeric), 1e-4 + 2e-2 * max(abs(analytic), abs(numeric)),
                                     "coordinate \(i): analytic \(analytic), numeric \(numeric)", file: file, line: line)
        }
    }

    /// With the plan held fixed (the prompts a first call sampled and the student's mask inputs
    /// of its correction round, which are not differentiated), the loss is a smooth function of
    /// the student embedding: its gradient (both rounds, the embedding MSE term) against central
    /// differences at 32 coordinates (eps 4e-3), |a − n| ≤ 1e-4 + 2e-2·max(|a|, |n|): 1e-4 is the
    /// Float32 decoder's noise floor at this step (the gradient's largest entries are ~2e-2).
    func testGradientMatchesFiniteDifferences() throws {
        let loop = try Self.loop(Self.loopConfig(embeddingWeight: 0.5))
        let (student, teacher, regions) = Self.embeddings()
        let r = loop.evaluate(student: student, teacher: teacher, regions: regions, seed: 9)
        XCTAssertEqual(r.roundLosses.count, 2)
        XCTAssertTrue(r.loss.value.isFinite && r.loss.value > 0)
        let kinds = r.plan.prompts.flatMap { $0[0] }.map { $0.box == nil }
        XCTAssertTrue(kinds.contains(true) && kinds.contains(false), "both point and box prompts: \(r.plan.prompts)")
        var rng = SeededRandom(seed: 4)
        var worst = 0.0
        for _ in 0..<32 {
            let i = Int(rng.next() % UInt64(student.count))
            let numeric = Self.numericDerivative(loop, student: student, teacher: teacher, regions: regions, seed: 9,
                                                 plan: r.plan, index: i)
            let analytic = Double(r.loss.gradient.data[i])
            let ratio = abs(analytic - numeric) / (1e-4 + 2e-2 * max(abs(analytic), abs(numeric)))
            worst = max(worst, ratio)
            XCTAssertLessThanOrEqual(ratio, 1, "coordinate \(i): analytic \(analytic), numeric \(numeric)")
        }
        print("prompt-in-the-loop loss \(r.loss.value) (rounds \(r.roundLosses)): worst error/tolerance \(worst)")
        XCTAssertGreaterThan(r.loss.gradient.maxAbs(), 1e-2)
    }

    /// Same inputs and seed: bit-identical loss, gradient and prompts; another seed other prompts.
    /// Round 2 adds one point (inside the image region) to each round-1 prompt, single output;
    /// points use a multimask output, boxes the single one.
    func testDeterministicAndPromptStructure() throws {
        let loop = try Self.loop(Self.loopConfig(prompts: 6))
        let (student, teacher, regions) = Self.embeddings()
        let a = loop.evaluate(student: student, teacher: teacher, regions: regions, seed: 21)
        let b = loop.evaluate(student: student, teacher: teacher, regions: regions, seed: 21)
        XCTAssertEqual(a.loss.value, b.loss.value)
        XCTAssertEqual(a.loss.gradient.data, b.loss.gradient.data)
        XCTAssertEqual(a.plan, b.plan)
        let c = loop.evaluate(student: student, teacher: teacher, regions: regions, seed: 22)
        XCTAssertNotEqual(a.plan.prompts, c.plan.prompts)
        for (image, rounds) in a.plan.prompts.enumerated() {
            XCTAssertEqual(rounds.count, 2)
            XCTAssertEqual(rounds[0].count, 6)
            let (fh, fw) = (Float(regions[image].height * 16), Float(regions[image].width * 16))
            for (p, q) in zip(rounds[0], rounds[1]) {
                if let box = p.box {
                    XCTAssertEqual(p.output, 0)
                    XCTAssertTrue(p.points.isEmpty)
                    XCTAssertTrue(box[0] <= box[2] && box[1] <= box[3] && box[2] < fw && box[3] < fh, "\(box)")
                } else {
                    XCTAssertTrue((1...3).contains(p.output))
                    XCTAssertEqual(p.labels, [1])
                    XCTAssertTrue(p.points[0] < fw && p.points[1] < fh)
                }
                XCTAssertEqual(q.box, p.box)
                XCTAssertEqual(q.output, 0)
                XCTAssertEqual(Array(q.points.prefix(p.points.count)), p.points)
                XCTAssertEqual(q.points.count, p.points.count + 2)
                XCTAssertTrue([0, 1].contains(q.labels.last!))
                XCTAssertTrue(q.points[q.points.count - 2] < fw && q.points[q.points.count - 1] < fh)
            }
        }
        // No correction round: one round, the same first-round prompts for the same seed.
        let one = try Self.loop(Self.loopConfig(prompts: 6, rounds: 0))
            .evaluate(student: student, teacher: teacher, regions: regions, seed: 21)
        XCTAssertEqual(one.plan.prompts.map { $0.count }, [1, 1])
        XCTAssertEqual(one.plan.prompts.map { $0[0] }, a.plan.prompts.map { $0[0] })
        XCTAssertEqual(one.roundLosses[0], a.roundLosses[0], accuracy: 1e-12)
    }

    /// `point_output: single` and `correction_mask_input: false`: the same first-round prompts as
    /// the default for the same seed, points learning output 0; the loss without mask inputs is
    /// another function (round 2 differs), still smooth in the embedding: its gradient against
    /// central differences at its 12 largest entries (the tolerance of the test above).
    func testSingleOutputPointsAndCorrectionsWithoutMaskInput() throws {
        var c = Self.loopConfig(prompts: 6)
        let (student, teacher, regions) = Self.embeddings()
        let base = try Self.loop(c).evaluate(student: student, teacher: teacher, regions: regions, seed: 21)
        c.pointOutput = .single
        c.correctionMaskInput = false
        let loop = try Self.loop(c)
        let r = loop.evaluate(student: student, teacher: teacher, regions: regions, seed: 21)
        for (a, b) in zip(r.plan.prompts, base.plan.prompts) {
            XCTAssertEqual(a[0].map(\.points), b[0].map(\.points))
            XCTAssertEqual(a[0].map(\.box), b[0].map(\.box))
            XCTAssertTrue(a[0].allSatisfy { $0.output == 0 })
            XCTAssertTrue(b[0].contains { $0.box == nil && $0.output > 0 }, "the default trains a multimask output")
        }
        XCTAssertNotEqual(r.roundLosses[1], base.roundLosses[1])
        // The 12 largest gradient entries: far above the Float32 decoder's noise floor (~1e-4 at
        // this step, where ReLU kinks also sit).
        Self.assertLargestGradientEntries(12, loop, r, student: student, teacher: teacher, regions: regions, seed: 21)
    }

    /// `all_outputs_weight` and `soft_targets`: the same prompts as without them for the same seed;
    /// the loss is the chosen outputs' term plus the weight times the term over all four outputs
    /// (checked against a run of the same plan without it, correction rounds off so that rounds
    /// cannot differ), and the gradient of the combined loss against central differences at its
    /// 12 largest entries. Soft targets: a student equal to the teacher has a BCE gradient of
    /// Float32 noise (σ(x) − σ(x)), while hard targets pull it (σ(x) − [x > 0]).
    func testAllOutputsAndSoftTargets() throws {
        var c = Self.loopConfig(prompts: 6, rounds: 0)
        c.pointOutput = .single
        let (student, teacher, regions) = Self.embeddings()
        let base = try Self.loop(c).evaluate(student: student, teacher: teacher, regions: regions, seed: 5)
        var a = c
        a.allOutputsWeight = 0.5
        let loop = try Self.loop(a)
        let r = loop.evaluate(student: student, teacher: teacher, regions: regions, seed: 5)
        XCTAssertEqual(r.plan.prompts, base.plan.prompts)
        // The all-outputs term: the difference to the same prompts without it, over its weight.
        let extra = (r.loss.value - base.loss.value) / 0.5
        XCTAssertGreaterThan(extra, 0.05, "the four outputs' term adds to the loss")
        Self.assertLargestGradientEntries(12, loop, r, student: student, teacher: teacher, regions: regions, seed: 5)
        var soft = a
        soft.softTargets = true
        soft.correctionRounds = 1
        let softLoop = try Self.loop(soft)
        let rs = softLoop.evaluate(student: student, teacher: teacher, regions: regions, seed: 5)
        XCTAssertEqual(rs.plan.prompts.map { $0[0] }, base.plan.prompts.map { $0[0] })
        Self.assertLargestGradientEntries(12, softLoop, rs, student: student, teacher: teacher, regions: regions, seed: 5)
        // BCE alone, student = teacher: soft targets leave only the two decoders' rounding.
        var bceOnly = c
        bceOnly.diceWeight = 0
        bceOnly.allOutputsWeight = 1
        let hard = try Self.loop(bceOnly).evaluate(student: teacher, teacher: teacher, regions: regions, seed: 5)
        bceOnly.softTargets = true
        let matched = try Self.loop(bceOnly).evaluate(student: teacher, teacher: teacher, regions: regions, seed: 5)
        XCTAssertGreaterThan(hard.loss.gradient.maxAbs(), 1e-3)
        XCTAssertLessThan(matched.loss.gradient.maxAbs(), 1e-3 * hard.loss.gradient.maxAbs())
    }

    /// The trainer with `loss: prompt_in_the_loop` (teacher decoder loaded from teacher.checkpoint):
    /// 8 steps on two images lower the loss on those images (fixed prompts seed) by ≥ 10%, and
    /// every step logs its phase times.
    func testTrainerLowersTheLoss() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pitl-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        var c = TrainerTests.recipe(steps: 8, dir: dir)
        var tiny = TrainerTests.tinyConfig
        tiny.neckChannels = 256
        c.student = .tinyViT(tiny, preset: nil)
        c.gradAccumulation = 1
        c.optimizer.maxGradNorm = nil
        c.schedule = .constant(ConstantSchedule(lr: 2e-3))
        c.loss = .promptInTheLoop(Self.loopConfig())
        c.teacher.checkpoint = try Fixture.mobileSAMCheckpoint().path
        let student = Student(c.student)
        TrainerTests.fidelityInit(student)
        let (_, teacher, _) = Self.embeddings()
        var rng = SeededRandom(seed: 8)
        let data = InMemoryTrainingData(images: Tensor.randomUniform([2, 3, 64, 64], -2, 2, rng: &rng), targets: teacher)
        let trainer = try Trainer(config: c, student: student, train: data)
        trainer.showsProgress = false
        let loop = try XCTUnwrap(trainer.promptLoop)
        let batch = try data.batch([0, 1], seed: 0)
        func heldLoss() -> Double {
            loop.evaluate(student: student.forward(batch.images, mode: .training), teacher: batch.targets,
                          regions: batch.validRegions, seed: 99).loss.value
        }
        let before = heldLoss()
        let records = try trainer.run()
        let after = heldLoss()
        print("prompt-in-the-loop tiny run: loss \(before) → \(after); steps \(records.map(\.loss)); phases \(records.last!.phaseSeconds)")
        XCTAssertEqual(records.count, 8)
        XCTAssertLessThan(after, 0.9 * before)
        for r in records {
            for k in ["teacher_decode", "student_decode_forward", "decoder_backward", "encoder_forward", "encoder_backward"] {
                XCTAssertGreaterThan(r.phaseSeconds[k] ?? 0, 0, "step \(r.step): \(k)")
            }
        }
        let metrics = try String(contentsOf: trainer.metricsURL, encoding: .utf8)
        XCTAssertTrue(metrics.contains("\"teacher_decode\""))
    }

    /// A cache with everything-masks drives the sampler (the trainer's path: CacheTrainingData's
    /// batch → evaluate): every first-round box is the input-frame box of one of its image's
    /// cached masks, every point the centre of a low-res pixel inside one; both kinds occur; the
    /// same seed gives the same prompts, another seed others; a row without masks samples as
    /// before (random points).
    func testCachedEverythingMasksDriveTheSampler() throws {
        let dir = try CacheTestSupport.temporaryDirectory("pitl-masks")
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        let images = dir.appendingPathComponent("images")
        try CacheTestSupport.writeSyntheticImages(in: images, count: 2)
        let weights = try CacheTestSupport.writeTinySAM(in: dir)
        var o = CacheOptions(images: images, output: dir.appendingPathComponent("c.h5"))
        o.progress = false
        o.everythingMasks = CacheTestSupport.tinyEverything
        _ = try FeatureCacheBuilder(options: o, teacher: try TeacherEncoder.load(weights: weights),
                                    everything: try EverythingMasker.load(o.everythingMasks, checkpoint: weights.path)).run()
        let data = try CacheTrainingData.open({ var d = DataConfig(); d.train = [o.output.path]; return d }()).train
        let batch = try data.batch([0, 1], seed: 0)
        let masks = try XCTUnwrap(batch.everythingMasks)
        XCTAssertTrue(masks.allSatisfy { $0.count >= 2 }, "masks per image: \(masks.map(\.count))")
        var rng = SeededRandom(seed: 2)
        let student = batch.targets + Tensor.randomNormal(batch.targets.shape, std: 0.1, rng: &rng)
        let loop = try Self.loop(Self.loopConfig(prompts: 8))
        func run(_ seed: UInt64, _ m: [[MaskRLE]]?) -> PromptInTheLoop.Result {
            loop.evaluate(student: student, teacher: batch.targets, regions: batch.validRegions, seed: seed, everythingMasks: m)
        }
        let a = run(5, masks)
        XCTAssertEqual(a.plan, run(5, masks).plan)
        XCTAssertNotEqual(a.plan.prompts, run(6, masks).plan.prompts)
        XCTAssertTrue(a.loss.value.isFinite && a.loss.value > 0)
        var boxes = 0, points = 0
        for (image, rounds) in a.plan.prompts.enumerated() {
            let frameBoxes = masks[image].map { m -> [Float] in
                let b = m.runBox!
                return [Float(4 * b.x0), Float(4 * b.y0), Float(4 * b.x1 + 3), Float(4 * b.y1 + 3)]
            }
            for p in rounds[0] {
                if let box = p.box {
                    boxes += 1
                    XCTAssertEqual(p.output, 0)
                    XCTAssertTrue(frameBoxes.contains(box), "image \(image): box \(box) is no cached mask's \(frameBoxes)")
                } else {
                    points += 1
                    XCTAssertTrue((1...3).contains(p.output))
                    // Low-res pixel centres: 4·i + 1.5.
                    let x = Int((p.points[0] - 1.5) / 4), y = Int((p.points[1] - 1.5) / 4)
                    XCTAssertEqual(p.points, [Float(4 * x) + 1.5, Float(4 * y) + 1.5])
                    XCTAssertTrue(masks[image].contains { $0.decode().pixels[y * 16 + x] }, "image \(image): point \(p.points) in no cached mask")
                }
            }
        }
        XCTAssertGreaterThan(boxes, 0)
        XCTAssertGreaterThan(points, 0)
        // No masks for the second image: it samples as without any (the first keeps its masks).
        let mixed = run(5, [masks[0], []]), plain = run(5, nil)
        XCTAssertEqual(mixed.plan.prompts[0], a.plan.prompts[0])
        XCTAssertEqual(mixed.plan.prompts[1], plain.plan.prompts[1])
        XCTAssertNotEqual(plain.plan.prompts[0], a.plan.prompts[0])
    }

    /// `two_point_fraction`: an image's first round is all two-point prompts (both positive,
    /// single output, low-res pixel centres) or none; with everything-masks, both points lie in
    /// one of them, `two_point_distance` apart (20 frame px = 5 low-res px, ±1); the correction
    /// round adds a third point; the loss stays smooth in the embedding (its 8 largest gradient
    /// entries against central differences, the tolerance of the tests above).
    func testTwoPointFirstRounds() throws {
        var c = Self.loopConfig(prompts: 6)
        c.pointOutput = .single
        c.twoPointFraction = 1
        c.twoPointDistance = 20
        let loop = try Self.loop(c)
        let (student, teacher, regions) = Self.embeddings()
        // Image 0: one 12×12 everything-mask; image 1: none (random points, as without masks).
        let rect = BinaryMask(width: 16, height: 16, pixels: (0..<256).map { (2..<14).contains($0 / 16) && (3..<15).contains($0 % 16) })
        let r = loop.evaluate(student: student, teacher: teacher, regions: regions, seed: 21, everythingMasks: [[MaskRLE(rect)], []])
        for (image, rounds) in r.plan.prompts.enumerated() {
            let (vh, vw) = (regions[image].height * 4, regions[image].width * 4)
            for (p, q) in zip(rounds[0], rounds[1]) {
                XCTAssertNil(p.box)
                XCTAssertEqual(p.labels, [1, 1])
                XCTAssertEqual(p.output, 0)
                let cells = stride(from: 0, to: 4, by: 2).map { (x: Int((p.points[$0] - 1.5) / 4), y: Int((p.points[$0 + 1] - 1.5) / 4)) }
                XCTAssertEqual(p.points, cells.flatMap { [Float(4 * $0.x) + 1.5, Float(4 * $0.y) + 1.5] })
                XCTAssertTrue(cells.allSatisfy { $0.x < vw && $0.y < vh }, "image \(image): \(p.points)")
                if image == 0 {
                    XCTAssertTrue(cells.allSatisfy { rect.pixels[$0.y * 16 + $0.x] }, "\(p.points) outside the mask")
                    let d = Double((cells[0].x - cells[1].x) * (cells[0].x - cells[1].x) + (cells[0].y - cells[1].y) * (cells[0].y - cells[1].y)).squareRoot()
                    XCTAssertEqual(d, 5, accuracy: 1, "\(p.points)")
                }
                XCTAssertEqual(Array(q.points.prefix(4)), p.points)
                XCTAssertEqual(q.labels.count, 3)
            }
        }
        Self.assertLargestGradientEntries(8, loop, r, student: student, teacher: teacher, regions: regions, seed: 21)
        // Fraction 0.5: per image all two-point or none; both kinds occur over a few seeds.
        c.twoPointFraction = 0.5
        let half = try Self.loop(c)
        var kinds = Set<Bool>()
        for seed in UInt64(30)..<UInt64(38) {
            for rounds in half.evaluate(student: student, teacher: teacher, regions: regions, seed: seed).plan.prompts {
                let two = rounds[0].map { $0.labels.count == 2 }
                XCTAssertTrue(two.allSatisfy { $0 == two[0] }, "one image mixes prompt kinds: \(rounds[0])")
                kinds.insert(two[0])
            }
        }
        XCTAssertEqual(kinds, [true, false])
    }

    func testConfig() throws {
        let yaml = """
        teacher: {checkpoint: weights/mobile_sam.pt}
        loss: {type: prompt_in_the_loop, prompts_per_image: 8, box_fraction: 0.25, correction_rounds: 0,
               bce_weight: 5, dice_weight: 1, embedding_weight: 0.1, point_output: single, correction_mask_input: false,
               two_point_fraction: 0.25, two_point_distance: 150, all_outputs_weight: 0.5, soft_targets: true}
        """
        let c = try RunConfig.parse(yaml)
        var expected = PromptInTheLoopConfig()
        expected.pointOutput = .single
        expected.correctionMaskInput = false
        expected.promptsPerImage = 8
        expected.boxFraction = 0.25
        expected.correctionRounds = 0
        expected.bceWeight = 5
        expected.embeddingWeight = 0.1
        expected.twoPointFraction = 0.25
        expected.twoPointDistance = 150
        expected.allOutputsWeight = 0.5
        expected.softTargets = true
        XCTAssertEqual(c.loss, .promptInTheLoop(expected))
        XCTAssertEqual(try RunConfig.parse(try c.yaml()).loss, c.loss, "the resolved config round-trips")
        XCTAssertEqual(try RunConfig.parse("teacher: {checkpoint: x.pt}\nloss: {type: prompt_in_the_loop}").loss,
                       .promptInTheLoop(PromptInTheLoopConfig()))
        func problems(_ y: String) -> [String] {
            do { _ = try RunConfig.parse(y); return [] } catch let e as ConfigError { return e.problems } catch { return ["\(error)"] }
        }
        XCTAssertEqual(problems("teacher: {checkpoint: x.pt}\nloss: {type: prompt_in_the_loop, prompt_per_image: 8}"),
                       ["loss.prompt_per_image: unknown key"])
        XCTAssertEqual(problems("teacher: {checkpoint: x.pt}\nloss: {type: prompt_in_the_loop, correction_rounds: 2}").count, 1)
        XCTAssertEqual(problems("teacher: {checkpoint: x.pt}\nloss: {type: prompt_in_the_loop, box_fraction: 1.5}").count, 1)
        XCTAssertEqual(problems("teacher: {checkpoint: x.pt}\nloss: {type: prompt_in_the_loop, point_output: top}"),
                       ["loss.point_output: must be 'best' or 'single', got 'top'"])
        XCTAssertEqual(problems("teacher: {checkpoint: x.pt}\nloss: {type: prompt_in_the_loop, two_point_fraction: 2}"),
                       ["loss.two_point_fraction: must be in [0, 1], got 2.0"])
        XCTAssertEqual(problems("loss: {type: prompt_in_the_loop}"),
                       ["teacher: checkpoint is required by loss type prompt_in_the_loop (its prompt encoder and mask decoder)"])
    }
}

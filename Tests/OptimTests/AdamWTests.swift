import CheckpointFormats
import Foundation
import Layers
import Optim
import Tensor
import TestSupport
import XCTest

/// fc1 Linear(5, 8) → LayerNorm(8) → GELU → fc2 Linear(8, 3), keys as the generator's TinyModel.
final class TinyModel: Module {
    let fc1 = Linear(5, 8), norm = LayerNorm(8), act = ActivationLayer(.gelu), fc2 = Linear(8, 3)

    func namedParameters() -> [(String, Parameter)] {
        prefixed("fc1.", fc1) + prefixed("norm.", norm) + prefixed("fc2.", fc2)
    }

    func forward(_ x: Tensor) -> Tensor {
        fc2.forward(act.forward(norm.forward(fc1.forward(x, mode: .training), mode: .training), mode: .training), mode: .training)
    }

    func backward(_ dy: Tensor) { _ = fc1.backward(norm.backward(act.backward(fc2.backward(dy)))) }

    var trainableNames: [String] { namedParameters().filter { $0.1.isTrainable }.map(\.0) }
}

/// Batch `s` of a (steps, rows, features) fixture tensor.
func batch(_ t: Tensor, _ s: Int) -> Tensor {
    let per = t.count / t.shape[0]
    return Tensor(shape: Array(t.shape.dropFirst()), data: Array(t.data[(s * per)..<((s + 1) * per)]))
}

final class AdamWTests: XCTestCase {
    /// One training step of the fixture's recipe: forward, MSE, backward, clip, AdamW.
    /// Returns (loss, pre-clip norm).
    @discardableResult
    func trainStep(_ model: TinyModel, _ opt: AdamW, _ f: Fixture, _ s: Int, lr: Float, maxNorm: Double) -> (Double, Double) {
        model.zeroGradients()
        let y = model.forward(batch(f["x"], s))
        let loss = mseLoss(y, batch(f["target"], s))
        model.backward(loss.gradient)
        let norm = clipGradientNorm(model.trainableParameters(), maxNorm: maxNorm)
        opt.step(learningRate: lr)
        return (loss.value, norm)
    }

    func makeRecipe() throws -> (Fixture, TinyModel, AdamW, LearningRateSchedule, Double) {
        let f = try Fixture("adamw")
        let model = TinyModel()
        try model.load(f.stateDict())
        let config = try JSONDecoder().decode(AdamW.Configuration.self, from: Data(f.metadata["optimizer"]!.utf8))
        let schedule = try JSONDecoder().decode(LearningRateSchedule.self, from: Data(f.metadata["schedule"]!.utf8))
        return (f, model, AdamW(parameters: model.trainableParameters(), configuration: config),
                schedule, Double(f.metadata["max_norm"]!)!)
    }

    /// 10 steps of AdamW (two groups, betas (0.9, 0.95), wd 0.1) with clip_grad_norm_ (active in
    /// 8 of the 10 steps) and a warmup+cosine schedule against torch.optim.AdamW.
    ///
    /// The PyTorch side runs in float64 from the same float32 start (Scripts/refdump/optim.py), so
    /// the reference is exact and the difference is this Float32 implementation's own error. Why
    /// 1e-5 (max-normalised per tensor) holds: the Float32 forward/backward gives gradients with
    /// ~1e-6 relative error; Adam's update lr·m̂/(√v̂ + eps) is invariant to the gradient scale,
    /// so a relative gradient error moves each update by about the same relative amount (the
    /// updates total at most 10·lr_max = 0.2 per value, parameters are O(1)), plus Float32
    /// rounding of parameter and state (6e-8 per step). The gradients here are far above eps
    /// (1e-8), where the ratio m/√v would amplify absolute errors.
    func testTenStepsMatchPyTorch() throws {
        let (f, model, opt, schedule, maxNorm) = try makeRecipe()
        XCTAssertEqual(opt.decayGroup.map { model.trainableNames[$0] }, ["fc1.weight", "fc2.weight"])
        XCTAssertEqual(opt.noDecayGroup.count, 4)
        let steps = f.int("steps")
        XCTAssertEqual(steps, 10)
        for s in 0..<steps {
            let lr = schedule.lr(at: s)
            XCTAssertEqual(Double(lr), Double(f["lr"].data[s]), accuracy: 1e-6 * Double(lr), "lr at step \(s)")
            let (loss, norm) = trainStep(model, opt, f, s, lr: lr, maxNorm: maxNorm)
            XCTAssertEqual(loss, Double(f["loss"].data[s]), accuracy: 1e-5 * loss, "loss at step \(s)")
            XCTAssertEqual(norm, Double(f["norm"].data[s]), accuracy: 1e-5 * norm, "gradient norm at step \(s)")
        }
        XCTAssertEqual(opt.stepCount, steps)
        var worst: Double = 0
        let state = opt.stateDict(names: model.trainableNames)
        for (k, p) in model.namedParameters() {
            let e = relativeError(p.value, f["final." + k])
            worst = max(worst, e)
            XCTAssertLessThanOrEqual(e, 1e-5, "parameter \(k) after \(steps) steps")
            // The parameters really moved (by much more than the tolerance).
            XCTAssertGreaterThan(relativeError(p.value, f["param." + k]), 1e-3, "parameter \(k) did not move")
            for s in ["exp_avg", "exp_avg_sq"] {
                XCTAssertLessThanOrEqual(relativeError(state["\(k).\(s)"]!, f["state.\(k).\(s)"]), 1e-5, "\(k).\(s)")
            }
        }
        XCTAssertLessThanOrEqual(worst, 1e-5)
    }

    /// 5 steps, export the state (through a safetensors file, the step count in its metadata),
    /// a new model and a new optimiser import it, 5 more steps: bit-identical to 10 straight steps.
    func testStateRoundTripContinuesBitIdentically() throws {
        let (f, straight, opt, schedule, maxNorm) = try makeRecipe()
        for s in 0..<10 { trainStep(straight, opt, f, s, lr: schedule.lr(at: s), maxNorm: maxNorm) }

        let (_, first, opt1, _, _) = try makeRecipe()
        for s in 0..<5 { trainStep(first, opt1, f, s, lr: schedule.lr(at: s), maxNorm: maxNorm) }
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("adamw-roundtrip-\(getpid()).safetensors")
        defer { try? FileManager.default.removeItem(at: url) }
        var tensors = opt1.stateDict(names: first.trainableNames)
        for (k, v) in first.stateDict() { tensors["model." + k] = v }
        try SafeTensors.write(tensors, metadata: ["step": String(opt1.stepCount)], to: url)

        let (read, metadata) = try SafeTensors.read(url)
        let resumed = TinyModel()
        try resumed.load(read.filter { $0.key.hasPrefix("model.") }
            .reduce(into: [:]) { $0[String($1.key.dropFirst(6))] = $1.value.tensor })
        let opt2 = AdamW(parameters: resumed.trainableParameters(), configuration: opt.configuration)
        try opt2.load(read.filter { !$0.key.hasPrefix("model.") }.mapValues(\.tensor),
                      names: resumed.trainableNames, stepCount: Int(metadata["step"]!)!)
        XCTAssertEqual(opt2.stepCount, 5)
        for s in 5..<10 { trainStep(resumed, opt2, f, s, lr: schedule.lr(at: s), maxNorm: maxNorm) }

        for ((k, a), (_, b)) in zip(straight.namedParameters(), resumed.namedParameters()) {
            XCTAssertEqual(a.value.data, b.value.data, "parameter \(k) differs after resuming")
        }
        let sa = opt.stateDict(names: straight.trainableNames), sb = opt2.stateDict(names: resumed.trainableNames)
        for (k, v) in sa { XCTAssertEqual(v.data, sb[k]!.data, "state \(k) differs after resuming") }
        XCTAssertEqual(opt.stepCount, opt2.stepCount)
        // Resuming from a fresh optimiser instead (no import) does differ: the test can fail.
        let (_, fresh, opt3, _, _) = try makeRecipe()
        try fresh.load(first.stateDict())
        for s in 5..<10 { trainStep(fresh, opt3, f, s, lr: schedule.lr(at: s), maxNorm: maxNorm) }
        XCTAssertNotEqual(fresh.fc1.weight.value.data, straight.fc1.weight.value.data)
    }

    /// Import is strict: missing, unexpected and mis-shaped keys are reported together and
    /// nothing changes.
    func testLoadIsStrict() {
        let a = Parameter(Tensor(repeating: 1, shape: [2, 3])), b = Parameter(Tensor(zeros: [3]), decays: false)
        let opt = AdamW(parameters: [a, b])
        a.grad = Tensor(repeating: 0.5, shape: [2, 3])
        opt.step(learningRate: 0.1)
        let before = opt.stateDict(names: ["a", "b"])
        let bad: [String: Tensor] = ["a.exp_avg": Tensor(zeros: [3, 2]), "a.exp_avg_sq": Tensor(zeros: [2, 3]),
                                     "b.exp_avg": Tensor(zeros: [3]), "c.exp_avg": Tensor(zeros: [1])]
        XCTAssertThrowsError(try opt.load(bad, names: ["a", "b"], stepCount: 7)) { error in
            let e = error as! WeightLoadingError
            XCTAssertEqual(e.missing, ["b.exp_avg_sq"])
            XCTAssertEqual(e.unexpected, ["c.exp_avg"])
            XCTAssertEqual(e.misshaped.map(\.key), ["a.exp_avg"])
            XCTAssert("\(e)".contains("AdamW state"))
        }
        XCTAssertEqual(opt.stepCount, 1)
        XCTAssertEqual(opt.stateDict(names: ["a", "b"])["a.exp_avg"]!.data, before["a.exp_avg"]!.data)
    }

    /// With zero gradients the update is exactly the decoupled decay: p·(1 − lr·wd) for the decay
    /// group, unchanged for the no-decay group.
    func testWeightDecayOnlyOnDecayGroup() {
        var rng = SeededRandom(seed: 51)
        let w = Parameter(.randomNormal([4, 5], rng: &rng)), bias = Parameter(.randomNormal([5], rng: &rng), decays: false)
        let w0 = w.value, b0 = bias.value
        let opt = AdamW(parameters: [w, bias], weightDecay: 0.2)
        opt.step(learningRate: 0.05)
        XCTAssertEqual(w.value.data, w0.data.map { $0 * Float(1 - 0.05 * 0.2) })
        XCTAssertEqual(bias.value.data, b0.data)
    }

    /// First step by hand (Double): m̂ = g, v̂ = g², so p ← p(1 − lr·wd) − lr·g/(|g| + eps).
    func testFirstStepFormula() {
        var rng = SeededRandom(seed: 52)
        let p = Parameter(.randomNormal([50], rng: &rng))
        p.grad = .randomNormal([50], std: 1e-3, rng: &rng)
        let p0 = p.value, g = p.grad
        let opt = AdamW(parameters: [p], beta1: 0.8, beta2: 0.99, eps: 1e-6, weightDecay: 0.05)
        opt.step(learningRate: 0.01)
        for i in 0..<50 {
            let gi = Double(g.data[i])
            let expected = Double(p0.data[i]) * (1 - 0.01 * 0.05) - 0.01 * gi / (abs(gi) + 1e-6)
            XCTAssertEqual(Double(p.value.data[i]), expected, accuracy: 1e-6)
        }
    }

    /// The threaded update equals the plain serial loop bit for bit (4 workers forced, parameters
    /// large enough to be split; both groups; several steps with changing gradients).
    func testThreadedStepMatchesReference() {
        let saved = Threads.count
        Threads.count = 4
        defer { Threads.count = saved }
        var rng = SeededRandom(seed: 53)
        let shapes = [[300, 257], [4099], [7]]
        let values = shapes.map { Tensor.randomNormal($0, rng: &rng) }
        func make() -> [Parameter] {
            zip(values, [true, false, true]).map { Parameter($0, decays: $1) }
        }
        let a = make(), b = make()
        let optA = AdamW(parameters: a, weightDecay: 0.1), optB = AdamW(parameters: b, weightDecay: 0.1)
        for step in 0..<3 {
            for i in a.indices {
                let g = Tensor.randomNormal(shapes[i], std: 0.1, rng: &rng)
                a[i].grad = g; b[i].grad = g
            }
            optA.step(learningRate: 1e-3 * Float(step + 1))
            optB.stepReference(learningRate: 1e-3 * Float(step + 1))
        }
        for i in a.indices {
            XCTAssertEqual(a[i].value.data, b[i].value.data, "parameter \(i)")
            XCTAssertEqual(optA.expAvg[i].data, optB.expAvg[i].data)
            XCTAssertEqual(optA.expAvgSq[i].data, optB.expAvgSq[i].data)
        }
        XCTAssertNotEqual(a[0].value.data, values[0].data)
    }
}

final class GradientClippingTests: XCTestCase {
    func testClipsOnlyAboveMaxNorm() {
        var rng = SeededRandom(seed: 61)
        let a = Parameter(.randomNormal([3, 4], rng: &rng)), b = Parameter(.randomNormal([5], rng: &rng))
        let buffer = Parameter(buffer: .randomNormal([2], rng: &rng))
        a.grad = .randomNormal([3, 4], rng: &rng); b.grad = .randomNormal([5], rng: &rng)
        let ga = a.grad, gb = b.grad
        var sq: Double = 0
        for v in ga.data + gb.data { sq += Double(v) * Double(v) }
        let expected = sq.squareRoot()

        // Below the threshold: untouched.
        XCTAssertEqual(clipGradientNorm([a, b, buffer], maxNorm: expected * 2), expected, accuracy: 1e-12 * expected)
        XCTAssertEqual(a.grad.data, ga.data)
        // Above: scaled by maxNorm / (norm + 1e-6); the returned norm is the one before clipping.
        let norm = clipGradientNorm([a, b, buffer], maxNorm: 0.5)
        XCTAssertEqual(norm, expected, accuracy: 1e-12 * expected)
        let c = Float(0.5 / (expected + 1e-6))
        XCTAssertEqual(a.grad.data, ga.data.map { $0 * c })
        XCTAssertEqual(b.grad.data, gb.data.map { $0 * c })
        XCTAssertEqual(gradientNorm([a, b]), 0.5, accuracy: 1e-6)
    }

    func testNonFiniteNormLeavesGradientsAlone() {
        let a = Parameter(Tensor(zeros: [3]))
        a.grad = Tensor(shape: [3], data: [1, .nan, 2])
        XCTAssert(clipGradientNorm([a], maxNorm: 1).isNaN)
        XCTAssertEqual(a.grad.data[0], 1)
        XCTAssertEqual(a.grad.data[2], 2)
    }

    /// Large gradients (blocked parallel reduction) against a serial Double sum, 1e-12 relative.
    func testLargeGradientNorm() {
        var rng = SeededRandom(seed: 62)
        let p = Parameter(Tensor(zeros: [200_003]))
        p.grad = .randomNormal([200_003], rng: &rng)
        var sq: Double = 0
        for v in p.grad.data { sq += Double(v) * Double(v) }
        XCTAssertEqual(gradientNorm([p]), sq.squareRoot(), accuracy: 1e-12 * sq.squareRoot())
    }
}

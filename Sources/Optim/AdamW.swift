import Foundation
import Tensor

/// `torch.optim.AdamW` (single-tensor path, amsgrad off) over two parameter groups chosen by
/// `Parameter.decays`: the decay group uses `weightDecay`, the other group weight decay 0
/// (biases, norm weights, bias tables). The learning rate is given to every `step` by the
/// caller (from a `LearningRateSchedule`).
///
/// One step, for each parameter p with gradient g (t = the step count after incrementing):
///
///     p ← p · (1 − lr·wd)                              (decay group only)
///     m ← lerp(m, g, 1 − β1) = m + (1 − β1)·(g − m)   (`exp_avg.lerp_(g, 1 − β1)`)
///     v ← v·β2 + (1 − β2)·g·g                          (`exp_avg_sq.mul_(β2).addcmul_(g, g, 1 − β2)`)
///     p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + eps)
///
/// in Float32 with the scalar factors computed in Double and rounded once, in PyTorch's order.
/// Every parameter is stepped every time: a parameter whose gradient stayed zero still decays
/// and moves with its momentum (PyTorch skips parameters whose `.grad` is None; with
/// `zero_grad(set_to_none=False)` the two agree).
///
/// State: the step count and, per parameter, `exp_avg` (m) and `exp_avg_sq` (v), same shape as
/// the parameter. `stateDict(names:)` / `load(_:names:stepCount:)` export and import them for
/// resumable checkpoints; continuing from an imported state is bit-identical to never stopping.
public final class AdamW {
    /// Hyperparameters other than the learning rate. Coding keys: `beta1`, `beta2`, `eps`,
    /// `weight_decay` (missing keys take the PyTorch defaults; unknown keys are errors).
    public struct Configuration: Codable, Equatable, Sendable {
        public var beta1: Double
        public var beta2: Double
        public var eps: Double
        public var weightDecay: Double

        public init(beta1: Double = 0.9, beta2: Double = 0.999, eps: Double = 1e-8, weightDecay: Double = 0.01) {
            self.beta1 = beta1; self.beta2 = beta2; self.eps = eps; self.weightDecay = weightDecay
        }

        enum CodingKeys: String, CodingKey, CaseIterable {
            case beta1, beta2, eps
            case weightDecay = "weight_decay"
        }

        public init(from decoder: Decoder) throws {
            try rejectUnknownKeys(decoder, allowed: CodingKeys.allCases.map(\.rawValue), in: "adamw")
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let d = Configuration()
            beta1 = try c.decodeIfPresent(Double.self, forKey: .beta1) ?? d.beta1
            beta2 = try c.decodeIfPresent(Double.self, forKey: .beta2) ?? d.beta2
            eps = try c.decodeIfPresent(Double.self, forKey: .eps) ?? d.eps
            weightDecay = try c.decodeIfPresent(Double.self, forKey: .weightDecay) ?? d.weightDecay
            try validate(codingPath: decoder.codingPath)
        }

        func validate(codingPath: [CodingKey]) throws {
            func fail(_ key: CodingKeys, _ why: String) throws {
                throw DecodingError.dataCorrupted(.init(codingPath: codingPath + [key], debugDescription: why))
            }
            if !(0..<1).contains(beta1) { try fail(.beta1, "beta1 must be in [0, 1), got \(beta1)") }
            if !(0..<1).contains(beta2) { try fail(.beta2, "beta2 must be in [0, 1), got \(beta2)") }
            if !(eps >= 0) { try fail(.eps, "eps must be ≥ 0, got \(eps)") }
            if !(weightDecay >= 0) { try fail(.weightDecay, "weight_decay must be ≥ 0, got \(weightDecay)") }
        }
    }

    public let configuration: Configuration
    /// The parameters in a fixed order (all trainable).
    public let parameters: [Parameter]
    /// Indices into `parameters` of the decay group (`decays == true`) and the no-decay group.
    public let decayGroup: [Int]
    public let noDecayGroup: [Int]
    /// Steps taken so far (PyTorch's `state["step"]`); the next step uses stepCount + 1.
    public private(set) var stepCount: Int = 0
    /// exp_avg (m) per parameter: same shapes as the parameters.
    public private(set) var expAvg: [Tensor]
    /// exp_avg_sq (v) per parameter: same shapes as the parameters.
    public private(set) var expAvgSq: [Tensor]

    public init(parameters: [Parameter], configuration: Configuration = Configuration()) {
        for (i, p) in parameters.enumerated() {
            precondition(p.isTrainable, "AdamW: parameter \(i) \(p.shape) is a buffer, not a trainable parameter")
        }
        precondition(Set(parameters.map(ObjectIdentifier.init)).count == parameters.count,
                     "AdamW: the same parameter appears twice")
        self.parameters = parameters
        self.configuration = configuration
        decayGroup = parameters.indices.filter { parameters[$0].decays }
        noDecayGroup = parameters.indices.filter { !parameters[$0].decays }
        expAvg = parameters.map { Tensor(zeros: $0.shape) }
        expAvgSq = parameters.map { Tensor(zeros: $0.shape) }
    }

    public convenience init(parameters: [Parameter], beta1: Double = 0.9, beta2: Double = 0.999,
                            eps: Double = 1e-8, weightDecay: Double = 0.01) {
        self.init(parameters: parameters,
                  configuration: Configuration(beta1: beta1, beta2: beta2, eps: eps, weightDecay: weightDecay))
    }

    /// The scalar factors of step `t` for learning rate `lr`, computed as PyTorch does (Python
    /// floats, i.e. Double) and rounded to Float32 where PyTorch hands them to a Float32 kernel.
    struct StepFactors {
        var decay: Float          // 1 − lr·wd
        var oneMinusBeta1: Float  // lerp weight
        var beta2: Float
        var oneMinusBeta2: Float
        var stepSize: Float       // lr / (1 − β1ᵗ)
        var biasCorrection2Sqrt: Float
        var eps: Float
    }

    func factors(learningRate lr: Float, step t: Int) -> StepFactors {
        let c = configuration, lr = Double(lr), t = Double(t)
        let bc1 = 1 - pow(c.beta1, t), bc2 = 1 - pow(c.beta2, t)
        return StepFactors(decay: Float(1 - lr * c.weightDecay), oneMinusBeta1: Float(1 - c.beta1),
                           beta2: Float(c.beta2), oneMinusBeta2: Float(1 - c.beta2),
                           stepSize: Float(lr / bc1), biasCorrection2Sqrt: Float(bc2.squareRoot()),
                           eps: Float(c.eps))
    }

    private func checkShapes() {
        for (i, p) in parameters.enumerated() {
            precondition(p.value.shape == expAvg[i].shape && p.grad.shape == p.value.shape,
                         "AdamW: parameter \(i) has shape \(p.value.shape), gradient \(p.grad.shape), state \(expAvg[i].shape)")
        }
    }

    /// One optimisation step with learning rate `learningRate` on the current gradients.
    /// Large parameters are updated by several threads (disjoint chunks; the result does not
    /// depend on the thread count, see `stepReference`).
    public func step(learningRate: Float) {
        checkShapes()
        stepCount += 1
        let f = factors(learningRate: learningRate, step: stepCount)
        for i in parameters.indices {
            let p = parameters[i]
            let decays = p.decays && configuration.weightDecay != 0
            let n = p.value.count
            p.value.data.withUnsafeMutableBufferPointer { pb in
                p.grad.data.withUnsafeBufferPointer { gb in
                    expAvg[i].data.withUnsafeMutableBufferPointer { mb in
                        expAvgSq[i].data.withUnsafeMutableBufferPointer { vb in
                            // p, g, m, v: (n) flat views of one parameter, its gradient and state
                            let pp = pb.baseAddress!, gp = gb.baseAddress!, mp = mb.baseAddress!, vp = vb.baseAddress!
                            parallelChunks(n, costPerItem: 16) { r in
                                for j in r {
                                    var x = pp[j]
                                    if decays { x *= f.decay }
                                    let g = gp[j]
                                    let m = lerp(mp[j], g, f.oneMinusBeta1)
                                    var v = vp[j] * f.beta2
                                    v += f.oneMinusBeta2 * g * g
                                    let denom = v.squareRoot() / f.biasCorrection2Sqrt + f.eps
                                    x += -f.stepSize * (m / denom)
                                    mp[j] = m; vp[j] = v; pp[j] = x
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The same update as `step`, as a plain serial loop over Swift arrays (the reference the
    /// threaded `step` is tested against; results are bit-identical).
    public func stepReference(learningRate: Float) {
        checkShapes()
        stepCount += 1
        let f = factors(learningRate: learningRate, step: stepCount)
        for i in parameters.indices {
            let p = parameters[i]
            let decays = p.decays && configuration.weightDecay != 0
            for j in 0..<p.value.count {
                if decays { p.value.data[j] *= f.decay }
                let g = p.grad.data[j]
                let m = expAvg[i].data[j]
                expAvg[i].data[j] = f.oneMinusBeta1 < 0.5 ? m + f.oneMinusBeta1 * (g - m)
                                                          : g - (g - m) * (1 - f.oneMinusBeta1)
                expAvgSq[i].data[j] = expAvgSq[i].data[j] * f.beta2
                expAvgSq[i].data[j] += f.oneMinusBeta2 * g * g
                let denom = expAvgSq[i].data[j].squareRoot() / f.biasCorrection2Sqrt + f.eps
                p.value.data[j] += -f.stepSize * (expAvg[i].data[j] / denom)
            }
        }
    }

    // MARK: State export / import

    /// The optimiser state keyed by parameter name: `NAME.exp_avg` and `NAME.exp_avg_sq` for
    /// each parameter, `names[i]` naming `parameters[i]` (use the model's checkpoint keys). The
    /// step count is not a tensor: save `stepCount` beside it (e.g. in the checkpoint metadata).
    public func stateDict(names: [String]) -> [String: Tensor] {
        checkNames(names)
        var d: [String: Tensor] = [:]
        for (i, name) in names.enumerated() {
            d[name + ".exp_avg"] = expAvg[i]
            d[name + ".exp_avg_sq"] = expAvgSq[i]
        }
        return d
    }

    /// Restores a state written by `stateDict(names:)` and its step count. Strict, like
    /// `Module.load`: every key must be present with the parameter's shape and no other key may
    /// appear; all problems are reported together (`WeightLoadingError`) and nothing changes
    /// unless everything matches.
    public func load(_ state: [String: Tensor], names: [String], stepCount: Int) throws {
        checkNames(names)
        precondition(stepCount >= 0, "AdamW.load: negative step count \(stepCount)")
        var missing: [String] = [], misshaped: [(key: String, expected: [Int], found: [Int])] = []
        var known = Set<String>()
        for (i, name) in names.enumerated() {
            for key in [name + ".exp_avg", name + ".exp_avg_sq"] {
                known.insert(key)
                guard let t = state[key] else { missing.append(key); continue }
                if t.shape != parameters[i].shape { misshaped.append((key, parameters[i].shape, t.shape)) }
            }
        }
        let unexpected = state.keys.filter { !known.contains($0) }.sorted()
        if !missing.isEmpty || !unexpected.isEmpty || !misshaped.isEmpty {
            var e = WeightLoadingError(missing: missing, unexpected: unexpected, misshaped: misshaped)
            e.source = "AdamW state"
            throw e
        }
        for (i, name) in names.enumerated() {
            expAvg[i] = state[name + ".exp_avg"]!
            expAvgSq[i] = state[name + ".exp_avg_sq"]!
        }
        self.stepCount = stepCount
    }

    private func checkNames(_ names: [String]) {
        precondition(names.count == parameters.count,
                     "AdamW: \(names.count) names for \(parameters.count) parameters")
        precondition(Set(names).count == names.count, "AdamW: parameter names are not unique")
    }
}

/// `torch.lerp(a, b, w)` as PyTorch's CPU kernel evaluates it: a + w·(b − a) for w < ½,
/// b − (b − a)·(1 − w) otherwise.
@inline(__always)
private func lerp(_ a: Float, _ b: Float, _ w: Float) -> Float {
    w < 0.5 ? a + w * (b - a) : b - (b - a) * (1 - w)
}

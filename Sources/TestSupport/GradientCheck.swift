import Foundation
import Layers
import Tensor

/// Central finite differences for hand-written backward passes.
///
/// The scalar checked is `L = Σ y ⊙ R` for a fixed random `R` (accumulated in Double), so the
/// analytic gradient is `backward(R)`. Each sampled coordinate `v` of an input or parameter is
/// perturbed by ±eps and `(L(v+eps) − L(v−eps)) / 2eps` is compared with the analytic value:
/// it passes when `|a − n| ≤ atol + rtol · max(|a|, |n|)`.
public struct GradientCheckReport: CustomStringConvertible {
    public var checked = 0
    public var failures: [String] = []
    public var worstRatio: Double = 0  // max over coordinates of |a−n| / (atol + rtol·max(|a|,|n|))
    public var passed: Bool { failures.isEmpty }
    public var description: String {
        "\(checked) coordinates, worst error/tolerance \(String(format: "%.3f", worstRatio))"
            + (failures.isEmpty ? "" : "; failures:\n  " + failures.prefix(12).joined(separator: "\n  "))
    }
}

public struct GradientCheck {
    public var eps: Float = 1e-2
    public var atol: Double = 1e-3
    public var rtol: Double = 1e-2
    /// Coordinates sampled per tensor (all of them when the tensor is smaller).
    public var samples: Int = 24
    public var seed: UInt64 = 1234

    public init(eps: Float = 1e-2, atol: Double = 1e-3, rtol: Double = 1e-2, samples: Int = 24, seed: UInt64 = 1234) {
        self.eps = eps; self.atol = atol; self.rtol = rtol; self.samples = samples; self.seed = seed
    }

    /// - inputs: the tensors the forward reads (perturbed in place through `inout`).
    /// - parameters: the module parameters to check (their `value` is perturbed).
    /// - forward: computes the output from the current inputs.
    /// - backward: given dL/dy, returns dL/d(input) for each input (and accumulates parameter grads).
    public func run(inputs: inout [Tensor], parameters: [(String, Parameter)],
                    forward: ([Tensor]) -> Tensor,
                    backward: (Tensor) -> [Tensor]) -> GradientCheckReport {
        var rng = SeededRandom(seed: seed)
        for (_, p) in parameters where p.isTrainable { p.grad.zero() }
        let y0 = forward(inputs)
        let r = Tensor.randomNormal(y0.shape, rng: &rng)
        let dInputs = backward(r)
        let analyticParams = parameters.map { $0.1.grad }

        func loss() -> Double { forward(inputs).dot(r) }

        var report = GradientCheckReport()
        func compare(_ name: String, _ index: Int, _ analytic: Float, _ numeric: Double) {
            let a = Double(analytic)
            let tol = atol + rtol * max(abs(a), abs(numeric))
            let ratio = abs(a - numeric) / tol
            report.checked += 1
            report.worstRatio = max(report.worstRatio, ratio)
            if ratio > 1 {
                report.failures.append("\(name)[\(index)]: analytic \(a), numeric \(numeric)")
            }
        }
        func indices(_ n: Int) -> [Int] {
            if n <= samples { return Array(0..<n) }
            return (0..<samples).map { _ in Int(rng.next() % UInt64(n)) }
        }
        for i in 0..<inputs.count {
            for j in indices(inputs[i].count) {
                let v = inputs[i].data[j]
                inputs[i].data[j] = v + eps; let lp = loss()
                inputs[i].data[j] = v - eps; let lm = loss()
                inputs[i].data[j] = v
                compare("input\(i)", j, dInputs[i].data[j], (lp - lm) / (2 * Double(eps)))
            }
        }
        for (k, (name, p)) in parameters.enumerated() where p.isTrainable {
            for j in indices(p.value.count) {
                let v = p.value.data[j]
                p.value.data[j] = v + eps; let lp = loss()
                p.value.data[j] = v - eps; let lm = loss()
                p.value.data[j] = v
                compare(name, j, analyticParams[k].data[j], (lp - lm) / (2 * Double(eps)))
            }
        }
        return report
    }
}

import Layers
import Tensor

/// Elements per block of the deterministic Double reduction (same for any thread count).
private let normBlock = 1 << 14

/// Σ g² over one gradient in Double: fixed blocks (in parallel when large) added in block order.
func squaredNorm(_ t: Tensor) -> Double {
    let n = t.count
    let blocks = (n + normBlock - 1) / normBlock
    return t.data.withUnsafeBufferPointer { xb in
        let x = xb.baseAddress!
        func block(_ r: Range<Int>) -> Double {
            var s: Double = 0
            for i in r { let v = Double(x[i]); s += v * v }
            return s
        }
        if blocks <= 1 { return n > 0 ? block(0..<n) : 0 }
        var partial = [Double](repeating: 0, count: blocks)
        partial.withUnsafeMutableBufferPointer { pb in
            let pp = pb.baseAddress!
            parallelFor(blocks, costPerItem: normBlock * 2) { b in
                pp[b] = block((b * normBlock)..<Swift.min(n, (b + 1) * normBlock))
            }
        }
        return partial.reduce(0, +)
    }
}

/// The total L2 norm of the gradients of the trainable parameters (buffers are skipped),
/// accumulated in Double.
public func gradientNorm(_ params: [Parameter]) -> Double {
    var s: Double = 0
    for p in params where p.isTrainable { s += squaredNorm(p.grad) }
    return s.squareRoot()
}

/// `torch.nn.utils.clip_grad_norm_(params, maxNorm)` (L2): computes the total norm of all
/// gradients together and, when the coefficient maxNorm / (norm + 1e-6) is below 1, multiplies
/// every gradient by it. Returns the norm before clipping.
///
/// A non-finite norm (NaN/Inf gradients) is returned as is and the gradients are left
/// untouched (PyTorch would multiply them by NaN): the caller should report the step and skip it.
@discardableResult
public func clipGradientNorm(_ params: [Parameter], maxNorm: Double) -> Double {
    precondition(maxNorm > 0, "clipGradientNorm: maxNorm must be positive, got \(maxNorm)")
    let norm = gradientNorm(params)
    guard norm.isFinite else { return norm }
    let coefficient = maxNorm / (norm + 1e-6)
    if coefficient < 1 {
        let c = Float(coefficient)
        for p in params where p.isTrainable { p.grad.scale(by: c) }
    }
    return norm
}

import Tensor

/// The total L2 norm of the gradients of the trainable parameters (buffers are skipped),
/// accumulated in Double.
public func gradientNorm(_ params: [Parameter]) -> Double {
    var s: Double = 0
    for p in params where p.isTrainable { s += p.grad.squaredNorm() }
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

import Foundation
import Tensor

/// Exact GELU, `0.5 · x · (1 + erf(x / √2))` (PyTorch's default `nn.GELU()`), and ReLU.
/// The kernels evaluate erf with the vectorised rational approximation of `FastMath` (≤ ~1e-7
/// absolute); `geluValue`/`geluDerivative` (libm) are the scalar references they are tested against.
/// Both as stateless kernels (for fused use inside blocks) and as small layers that keep their
/// input for backward.

@inline(__always) public func geluValue(_ x: Float) -> Float { 0.5 * x * (1 + erff(x * 0.70710678118654752)) }

/// d/dx GELU(x) = Φ(x) + x · φ(x).
@inline(__always) public func geluDerivative(_ x: Float) -> Float {
    let cdf = 0.5 * (1 + erff(x * 0.70710678118654752))
    let pdf = 0.39894228040143268 * expf(-0.5 * x * x)
    return cdf + x * pdf
}

public enum Activation: String, Codable, Sendable {
    case gelu, relu

    /// y = f(x). GELU runs the vectorised `FastMath.gelu` (≤ ~1e-7·max(1, |x|) from the exact
    /// `geluValue`, which `forwardReference` uses).
    public func forward(_ x: Tensor) -> Tensor {
        switch self {
        case .gelu:
            var y = Tensor.empty(x.shape)
            let n = x.count
            x.data.withUnsafeBufferPointer { xb in
                y.data.withUnsafeMutableBufferPointer { yb in
                    let xp = xb.baseAddress!, yp = yb.baseAddress!
                    parallelChunks(n, costPerItem: 4) { r in
                        FastMath.gelu(xp + r.lowerBound, yp + r.lowerBound, r.count)
                    }
                }
            }
            return y
        case .relu: return x.map { $0 > 0 ? $0 : 0 }
        }
    }

    /// In-place y = f(y) (GELU vectorised as `forward`).
    public func apply(_ y: inout Tensor) {
        let n = y.count
        y.data.withUnsafeMutableBufferPointer { yb in
            let yp = yb.baseAddress!
            switch self {
            case .gelu: parallelChunks(n, costPerItem: 4) { r in FastMath.geluInPlace(yp + r.lowerBound, r.count) }
            case .relu: parallelChunks(n) { r in for i in r where yp[i] < 0 { yp[i] = 0 } }
            }
        }
    }

    /// dx = dy ⊙ f'(x). `output`, when given, must be f(x) as the forward computed it: GELU then
    /// takes Φ(x) = f(x) / x instead of evaluating erf (`FastMath.geluDerivative(_:gelu:)`).
    public func backward(_ dy: Tensor, input x: Tensor, output y: Tensor? = nil) -> Tensor {
        precondition(dy.shape == x.shape, "\(self).backward: dy \(dy.shape) vs input \(x.shape)")
        precondition(y == nil || y!.shape == x.shape, "\(self).backward: output \(y!.shape) vs input \(x.shape)")
        var dx = Tensor.empty(x.shape)
        let n = x.count
        let out = y ?? Tensor(zeros: [0])
        dx.data.withUnsafeMutableBufferPointer { o in
            x.data.withUnsafeBufferPointer { xp in
                dy.data.withUnsafeBufferPointer { g in
                    out.data.withUnsafeBufferPointer { yb in
                        let op = o.baseAddress!, xv = xp.baseAddress!, gv = g.baseAddress!, yv = yb.baseAddress
                        switch self {
                        case .gelu:
                            parallelChunks(n, costPerItem: 8) { r in
                                let i = r.lowerBound
                                if y != nil {
                                    FastMath.geluBackward(gv + i, xv + i, gelu: yv! + i, op + i, r.count)
                                } else {
                                    FastMath.geluBackward(gv + i, xv + i, op + i, r.count)
                                }
                            }
                        case .relu: parallelChunks(n) { r in for i in r { op[i] = xv[i] > 0 ? gv[i] : 0 } }
                        }
                    }
                }
            }
        }
        return dx
    }
}

/// An activation as a layer (no parameters): keeps its input in training mode.
public final class ActivationLayer: Module {
    public let kind: Activation
    // x: any shape, kept for backward
    private var input: Tensor?

    public init(_ kind: Activation) { self.kind = kind }
    public func namedParameters() -> [(String, Parameter)] { [] }

    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        input = mode.keepsActivations ? x : nil
        return kind.forward(x)
    }

    public func backward(_ dy: Tensor) -> Tensor {
        guard let x = input else { preconditionFailure("\(kind).backward without a training-mode forward") }
        input = nil
        return kind.backward(dy, input: x)
    }
}

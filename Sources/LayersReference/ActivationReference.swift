import Foundation
import Layers
import Tensor

extension Activation {
    /// Plain scalar reference of `forward` (libm `erff` for GELU).
    public func forwardReference(_ x: Tensor) -> Tensor {
        switch self {
        case .gelu: return Tensor(shape: x.shape, data: x.data.map(geluValue))
        case .relu: return Tensor(shape: x.shape, data: x.data.map { $0 > 0 ? $0 : 0 })
        }
    }

    /// Plain scalar reference of `backward` (libm `erff`/`expf` for GELU).
    public func backwardReference(_ dy: Tensor, input x: Tensor) -> Tensor {
        precondition(dy.shape == x.shape, "\(self).backwardReference: dy \(dy.shape) vs input \(x.shape)")
        switch self {
        case .gelu: return Tensor(shape: x.shape, data: zip(dy.data, x.data).map { $0 * geluDerivative($1) })
        case .relu: return Tensor(shape: x.shape, data: zip(dy.data, x.data).map { $1 > 0 ? $0 : 0 })
        }
    }
}

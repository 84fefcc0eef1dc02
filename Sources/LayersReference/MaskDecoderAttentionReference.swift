import Foundation
import Layers
import Tensor

extension MaskDecoderAttention {
    /// Naive reference forward (plain loops in Double, no gemm, same weights) for the tests.
    /// q: (B, Nq, C), k: (B, Nk, C), v: (B, Nk, C) -> (B, Nq, C).
    public func forwardReference(q: Tensor, k: Tensor, v: Tensor) -> Tensor {
        let B = q.shape[0], Nq = q.shape[1], Nk = k.shape[1], I = internalDim, d = headDim
        let qp = linearReference(q, qProj), kp = linearReference(k, kProj), vp = linearReference(v, vProj)
        var o = [Double](repeating: 0, count: B * Nq * I)
        let scale = 1 / Double(d).squareRoot()
        for b in 0..<B { for h in 0..<heads { for i in 0..<Nq {
            var row = [Double](repeating: 0, count: Nk)
            for j in 0..<Nk {
                var s: Double = 0
                for c in 0..<d { s += qp[(b * Nq + i) * I + h * d + c] * kp[(b * Nk + j) * I + h * d + c] }
                row[j] = s * scale
            }
            let m = row.max() ?? 0
            var z: Double = 0
            for j in 0..<Nk { row[j] = Foundation.exp(row[j] - m); z += row[j] }
            for c in 0..<d {
                var s: Double = 0
                for j in 0..<Nk { s += row[j] / z * vp[(b * Nk + j) * I + h * d + c] }
                o[(b * Nq + i) * I + h * d + c] = s
            }
        } } }
        let y = linearReference(Tensor(shape: [B, Nq, I], data: o.map(Float.init)), outProj)
        return Tensor(shape: [B, Nq, embeddingDim], data: y.map(Float.init))
    }
}

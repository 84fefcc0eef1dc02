import Foundation
import Layers
import Tensor

extension ViTAttention {
    /// Naive reference forward (plain loops in Double, no gemm, same weights) for the tests.
    /// x: (B, H, W, C) -> (B, H, W, C).
    public func forwardReference(_ x: Tensor) -> Tensor {
        checkInput(x)
        let B = x.shape[0], H = x.shape[1], W = x.shape[2], C = dim, d = headDim, N = H * W
        let t = linearReference(x, qkv)  // (B, N, 3C)
        let scale = 1 / Double(d).squareRoot()
        var o = [Double](repeating: 0, count: B * N * C)
        for b in 0..<B { for h in 0..<heads { for n in 0..<N {
            let qh = n / W, qw = n % W
            func q(_ c: Int) -> Double { t[(b * N + n) * 3 * C + h * d + c] }
            var row = [Double](repeating: 0, count: N)
            for m in 0..<N {
                let kh = m / W, kw = m % W
                var s: Double = 0
                for c in 0..<d { s += q(c) * scale * t[(b * N + m) * 3 * C + C + h * d + c] }
                if let relPosH, let relPosW {
                    for c in 0..<d {
                        s += q(c) * Double(relPosH.value.data[(qh - kh + H - 1) * d + c])
                        s += q(c) * Double(relPosW.value.data[(qw - kw + W - 1) * d + c])
                    }
                }
                row[m] = s
            }
            let mx = row.max() ?? 0
            var z: Double = 0
            for m in 0..<N { row[m] = Foundation.exp(row[m] - mx); z += row[m] }
            for c in 0..<d {
                var s: Double = 0
                for m in 0..<N { s += row[m] / z * t[(b * N + m) * 3 * C + 2 * C + h * d + c] }
                o[(b * N + n) * C + h * d + c] = s
            }
        } } }
        let y = linearReference(Tensor(shape: [B, H, W, C], data: o.map(Float.init)), proj)
        return Tensor(shape: [B, H, W, C], data: y.map(Float.init))
    }
}

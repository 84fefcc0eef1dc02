import Foundation
import Layers
import Tensor

extension ConvLayout {
    /// Plain loops for `tokensToMap` (tests): y[b, c, p] = x[b, p, c].
    public static func tokensToMapReference(_ x: Tensor, height H: Int, width W: Int) -> Tensor {
        let B = x.shape[0], P = H * W, C = x.shape[2]
        var y = Tensor(zeros: [B, C, H, W])
        for b in 0..<B { for p in 0..<P { for c in 0..<C { y.data[(b * C + c) * P + p] = x.data[(b * P + p) * C + c] } } }
        return y
    }

    /// Plain loops for `mapToTokens` (tests): y[b, p, c] = x[b, c, p].
    public static func mapToTokensReference(_ x: Tensor) -> Tensor {
        let B = x.shape[0], C = x.shape[1], P = x.shape[2] * x.shape[3]
        var y = Tensor(zeros: [B, P, C])
        for b in 0..<B { for c in 0..<C { for p in 0..<P { y.data[(b * P + p) * C + c] = x.data[(b * C + c) * P + p] } } }
        return y
    }
}

import Foundation
import Tensor

/// `F.interpolate(x, scale_factor: f, mode: "bicubic", align_corners: False)` on NCHW maps (EdgeSAM's
/// `UpSampleLayer`, which brings RepViT's S/32 stage up to S/16). No parameters.
///
/// PyTorch's kernel, separably per axis: output index o reads source position
/// r = (o + ½)/f − ½ (not clamped), i = ⌊r⌋, t = r − i, and mixes the four source pixels
/// i−1, i, i+1, i+2 (clamped into the map) with Keys' cubic-convolution weights, A = −0.75:
/// w(i−1) = c2(t+1), w(i) = c1(t), w(i+1) = c1(1−t), w(i+2) = c2(2−t),
/// c1(x) = ((A+2)x − (A+3))x² + 1, c2(x) = ((Ax − 5A)x + 8A)x − 4A.
/// Backward scatters dy through the same taps (the transpose).
public enum BicubicUpsample {
    /// The four (clamped source index, weight) taps of each output index along one axis.
    static func taps(input n: Int, factor f: Int) -> [(index: [Int], weight: [Float])] {
        let A = -0.75
        func c1(_ x: Double) -> Double { ((A + 2) * x - (A + 3)) * x * x + 1 }
        func c2(_ x: Double) -> Double { ((A * x - 5 * A) * x + 8 * A) * x - 4 * A }
        return (0..<(n * f)).map { o in
            let r = (Double(o) + 0.5) / Double(f) - 0.5
            let i = Int(r.rounded(.down)), t = r - Double(i)
            let w = [c2(t + 1), c1(t), c1(1 - t), c2(2 - t)].map { Float($0) }
            return ((i - 1...i + 2).map { Swift.min(Swift.max($0, 0), n - 1) }, w)
        }
    }

    /// x: (B, C, H, W) -> (B, C, f·H, f·W)
    public static func forward(_ x: Tensor, factor f: Int = 2) -> Tensor {
        precondition(x.rank == 4 && f >= 1, "BicubicUpsample(×\(f)): expected (B, C, H, W), got \(x.shape)")
        let P = x.shape[0] * x.shape[1], H = x.shape[2], W = x.shape[3], Ho = H * f, Wo = W * f
        let th = taps(input: H, factor: f), tw = taps(input: W, factor: f)
        var y = Tensor.empty([x.shape[0], x.shape[1], Ho, Wo])
        x.data.withUnsafeBufferPointer { xb in
            y.data.withUnsafeMutableBufferPointer { yb in
                let xp = xb.baseAddress!, yp = yb.baseAddress!
                parallelFor(P, costPerItem: Ho * Wo * 8) { p in
                    // rows: (H, Wo) the horizontal pass of plane p
                    var rows = [Float](repeating: 0, count: H * Wo)
                    let src = xp + p * H * W, dst = yp + p * Ho * Wo
                    for yy in 0..<H {
                        for (ox, t) in tw.enumerated() {
                            var s: Float = 0
                            for k in 0..<4 { s += t.weight[k] * src[yy * W + t.index[k]] }
                            rows[yy * Wo + ox] = s
                        }
                    }
                    for (oy, t) in th.enumerated() {
                        for ox in 0..<Wo {
                            var s: Float = 0
                            for k in 0..<4 { s += t.weight[k] * rows[t.index[k] * Wo + ox] }
                            dst[oy * Wo + ox] = s
                        }
                    }
                }
            }
        }
        return y
    }

    /// dy: (B, C, f·H, f·W) -> dx: (B, C, H, W)
    public static func backward(_ dy: Tensor, factor f: Int = 2) -> Tensor {
        precondition(dy.rank == 4 && dy.shape[2] % f == 0 && dy.shape[3] % f == 0,
                     "BicubicUpsample(×\(f)).backward: dy \(dy.shape) is not an upsampled map")
        let P = dy.shape[0] * dy.shape[1], Ho = dy.shape[2], Wo = dy.shape[3], H = Ho / f, W = Wo / f
        let th = taps(input: H, factor: f), tw = taps(input: W, factor: f)
        var dx = Tensor(zeros: [dy.shape[0], dy.shape[1], H, W])
        dy.data.withUnsafeBufferPointer { gb in
            dx.data.withUnsafeMutableBufferPointer { xb in
                let gp = gb.baseAddress!, xp = xb.baseAddress!
                parallelFor(P, costPerItem: Ho * Wo * 8) { p in
                    // rows: (H, Wo) the gradient at the horizontal pass's output
                    var rows = [Float](repeating: 0, count: H * Wo)
                    let g = gp + p * Ho * Wo, d = xp + p * H * W
                    for (oy, t) in th.enumerated() {
                        for ox in 0..<Wo {
                            let v = g[oy * Wo + ox]
                            for k in 0..<4 { rows[t.index[k] * Wo + ox] += t.weight[k] * v }
                        }
                    }
                    for yy in 0..<H {
                        for (ox, t) in tw.enumerated() {
                            let v = rows[yy * Wo + ox]
                            for k in 0..<4 { d[yy * W + t.index[k]] += t.weight[k] * v }
                        }
                    }
                }
            }
        }
        return dx
    }
}

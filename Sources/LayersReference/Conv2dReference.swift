import Foundation
import Layers
import Tensor

/// Naive `F.conv2d`: y[b, o, oy, ox] = bias[o] + Σ_{ci ∈ group(o), ky, kx} w[o, ci, ky, kx] ·
/// x[b, g·Cg + ci, oy·s − p + ky, ox·s − p + kx], accumulated in Double.
/// x: (B, C, H, W), weight: (O, C/groups, k, k), bias: (O) -> (B, O, Ho, Wo)
public func conv2dReference(_ x: Tensor, weight: Tensor, bias: Tensor?, stride: Int, padding: Int,
                            groups: Int = 1) -> Tensor {
    let g = ReferenceConvShape(x.shape, outputChannels: weight.shape[0], kernel: weight.shape[2], stride: stride,
                         padding: padding, groups: groups, layer: "conv2dReference")
    precondition(weight.shape == [g.O, g.Cg, g.k, g.k], "conv2dReference: weight \(weight.shape) vs input \(x.shape)")
    var y = Tensor(zeros: [g.B, g.O, g.Ho, g.Wo])
    for b in 0..<g.B { for o in 0..<g.O {
        let gr = o / g.Og
        for oy in 0..<g.Ho { for ox in 0..<g.Wo {
            var acc = Double(bias?.data[o] ?? 0)
            for ci in 0..<g.Cg { for ky in 0..<g.k { for kx in 0..<g.k {
                let iy = oy * g.s - g.p + ky, ix = ox * g.s - g.p + kx
                if iy < 0 || iy >= g.H || ix < 0 || ix >= g.W { continue }
                let c = gr * g.Cg + ci
                acc += Double(weight.data[((o * g.Cg + ci) * g.k + ky) * g.k + kx])
                    * Double(x.data[((b * g.C + c) * g.H + iy) * g.W + ix])
            } } }
            y.data[((b * g.O + o) * g.Ho + oy) * g.Wo + ox] = Float(acc)
        } }
    } }
    return y
}

/// Naive gradients of `conv2dReference` for upstream dy: (B, O, Ho, Wo), in Double.
/// Returns dx: (B, C, H, W), dWeight: (O, C/groups, k, k), dBias: (O).
public func conv2dBackwardReference(_ x: Tensor, weight: Tensor, dy: Tensor, stride: Int, padding: Int,
                                    groups: Int = 1) -> (dx: Tensor, dWeight: Tensor, dBias: Tensor) {
    let g = ReferenceConvShape(x.shape, outputChannels: weight.shape[0], kernel: weight.shape[2], stride: stride,
                         padding: padding, groups: groups, layer: "conv2dBackwardReference")
    precondition(dy.shape == [g.B, g.O, g.Ho, g.Wo], "conv2dBackwardReference: dy \(dy.shape)")
    var dx = [Double](repeating: 0, count: x.count)
    var dw = [Double](repeating: 0, count: weight.count)
    var db = [Double](repeating: 0, count: g.O)
    for b in 0..<g.B { for o in 0..<g.O {
        let gr = o / g.Og
        for oy in 0..<g.Ho { for ox in 0..<g.Wo {
            let d = Double(dy.data[((b * g.O + o) * g.Ho + oy) * g.Wo + ox])
            db[o] += d
            for ci in 0..<g.Cg { for ky in 0..<g.k { for kx in 0..<g.k {
                let iy = oy * g.s - g.p + ky, ix = ox * g.s - g.p + kx
                if iy < 0 || iy >= g.H || ix < 0 || ix >= g.W { continue }
                let xi = ((b * g.C + gr * g.Cg + ci) * g.H + iy) * g.W + ix
                let wi = ((o * g.Cg + ci) * g.k + ky) * g.k + kx
                dw[wi] += d * Double(x.data[xi])
                dx[xi] += d * Double(weight.data[wi])
            } } }
        } }
    } }
    return (Tensor(shape: x.shape, data: dx.map(Float.init)), Tensor(shape: weight.shape, data: dw.map(Float.init)),
            Tensor(shape: [g.O], data: db.map(Float.init)))
}

/// Shapes of one convolution, computed here rather than borrowed from `Layers` so the reference
/// shares no code with the kernels it checks.
private struct ReferenceConvShape {
    let B: Int, C: Int, H: Int, W: Int, O: Int, k: Int, s: Int, p: Int
    let Ho: Int, Wo: Int, Cg: Int, Og: Int

    init(_ xShape: [Int], outputChannels: Int, kernel: Int, stride: Int, padding: Int, groups: Int, layer: String) {
        precondition(xShape.count == 4, "\(layer): expected (B, C, H, W), got \(xShape)")
        B = xShape[0]; C = xShape[1]; H = xShape[2]; W = xShape[3]
        O = outputChannels; k = kernel; s = stride; p = padding
        precondition(C % groups == 0 && O % groups == 0, "\(layer): \(C) → \(O) channels in \(groups) groups")
        Cg = C / groups; Og = O / groups
        Ho = (H + 2 * p - k) / s + 1
        Wo = (W + 2 * p - k) / s + 1
    }
}

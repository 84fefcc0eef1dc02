import Foundation
import Tensor

/// `nn.LayerNorm(C)` over the last dimension. Checkpoint keys: `weight` (C), `bias` (C).
public final class LayerNorm: Module {
    public let features: Int
    public let eps: Float
    public let weight: Parameter
    public let bias: Parameter

    // xhat: (rows, C) normalised input; rstd: (rows) 1/sqrt(var + eps); kept for backward
    private var xhat: Tensor?
    private var rstd: [Float] = []

    public init(_ features: Int, eps: Float = 1e-5) {
        self.features = features
        self.eps = eps
        weight = Parameter(Tensor(repeating: 1, shape: [features]), decays: false)
        bias = Parameter(Tensor(zeros: [features]), decays: false)
    }

    public func namedParameters() -> [(String, Parameter)] { [("weight", weight), ("bias", bias)] }

    /// x: (..., C) -> y: (..., C)
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        precondition(x.shape.last == features, "LayerNorm(\(features)): expected last dimension \(features), got shape \(x.shape)")
        let C = features, rows = x.count / C
        var y = Tensor.empty(x.shape)
        var xh = mode.keepsActivations ? Tensor.empty(x.shape) : Tensor(zeros: [0])
        var rs = [Float](repeating: 0, count: mode.keepsActivations ? rows : 0)
        let keep = mode.keepsActivations, eps = eps
        x.data.withUnsafeBufferPointer { xb in
            y.data.withUnsafeMutableBufferPointer { yb in
                xh.data.withUnsafeMutableBufferPointer { hb in
                    rs.withUnsafeMutableBufferPointer { rb in
                        weight.value.data.withUnsafeBufferPointer { wb in
                            bias.value.data.withUnsafeBufferPointer { bb in
                                let xp = xb.baseAddress!, yp = yb.baseAddress!, w = wb.baseAddress!, b = bb.baseAddress!
                                let hp = hb.baseAddress, rp = rb.baseAddress
                                parallelChunks(rows, costPerItem: C * 4) { range in
                                    for r in range {
                                        let row = xp + r * C
                                        let mean = Reductions.sum(row, C) / Float(C)
                                        let v = Reductions.sumSquaredDeviations(row, C, from: mean)
                                        let s = 1 / (v / Float(C) + eps).squareRoot()
                                        let out = yp + r * C
                                        if keep {
                                            let h = hp! + r * C
                                            for c in 0..<C { h[c] = (row[c] - mean) * s; out[c] = h[c] * w[c] + b[c] }
                                            rp![r] = s
                                        } else {
                                            for c in 0..<C { out[c] = (row[c] - mean) * s * w[c] + b[c] }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        if keep { xhat = xh; rstd = rs } else { xhat = nil; rstd = [] }
        return y
    }

    /// dy: (..., C) -> dx: (..., C); dW += Σ dy·x̂, dB += Σ dy (unless frozen).
    public func backward(_ dy: Tensor) -> Tensor {
        guard let xh = xhat else { preconditionFailure("LayerNorm.backward without a training-mode forward") }
        precondition(dy.shape == xh.shape, "LayerNorm.backward: dy \(dy.shape) vs input \(xh.shape)")
        let C = features, rows = xh.count / C
        var dx = Tensor.empty(xh.shape)
        // dW and dB per block of 256 rows (fixed blocks: the same sums for any thread count),
        // added in block order afterwards. partial: (blocks, 2, C)
        let block = 256, blocks = (rows + block - 1) / block
        var partial = [Float](repeating: 0, count: blocks * 2 * C)
        let rs = rstd
        dy.data.withUnsafeBufferPointer { gb in
            xh.data.withUnsafeBufferPointer { hb in
                dx.data.withUnsafeMutableBufferPointer { ob in
                    weight.value.data.withUnsafeBufferPointer { wb in
                        partial.withUnsafeMutableBufferPointer { pb in
                            let g = gb.baseAddress!, h = hb.baseAddress!, o = ob.baseAddress!, w = wb.baseAddress!
                            let pp = pb.baseAddress!
                            parallelFor(blocks, costPerItem: block * C * 4) { k in
                                let dw = pp + k * 2 * C, db = dw + C
                                for r in (k * block)..<Swift.min(rows, (k + 1) * block) {
                                    let gr = g + r * C, hr = h + r * C, orow = o + r * C
                                    let m1 = Reductions.dot(gr, w, C) / Float(C)
                                    let m2 = Reductions.dot(gr, w, hr, C) / Float(C)
                                    for c in 0..<C { dw[c] += gr[c] * hr[c]; db[c] += gr[c] }
                                    let s = rs[r]
                                    for c in 0..<C { orow[c] = s * (gr[c] * w[c] - m1 - hr[c] * m2) }
                                }
                            }
                        }
                    }
                }
            }
        }
        for k in 0..<blocks {
            let o = k * 2 * C
            if weight.requiresGradient { for c in 0..<C { weight.grad.data[c] += partial[o + c] } }
            if bias.requiresGradient { for c in 0..<C { bias.grad.data[c] += partial[o + C + c] } }
        }
        xhat = nil; rstd = []
        return dx
    }
}

/// SAM's `LayerNorm2d`: normalises each pixel of an NCHW map over its channels (eps 1e-6).
/// Checkpoint keys: `weight` (C), `bias` (C).
public final class LayerNorm2d: Module {
    public let channels: Int
    public let eps: Float
    public let weight: Parameter
    public let bias: Parameter

    // xhat: (B, C, H, W); rstd: (B, H·W); kept for backward
    private var xhat: Tensor?
    private var rstd: [Float] = []

    public init(_ channels: Int, eps: Float = 1e-6) {
        self.channels = channels
        self.eps = eps
        weight = Parameter(Tensor(repeating: 1, shape: [channels]), decays: false)
        bias = Parameter(Tensor(zeros: [channels]), decays: false)
    }

    public func namedParameters() -> [(String, Parameter)] { [("weight", weight), ("bias", bias)] }

    /// x: (B, C, H, W) -> y: (B, C, H, W)
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        precondition(x.rank == 4 && x.shape[1] == channels,
                     "LayerNorm2d(\(channels)): expected (B, \(channels), H, W), got shape \(x.shape)")
        let B = x.shape[0], C = channels, HW = x.shape[2] * x.shape[3]
        var y = Tensor.empty(x.shape)
        var xh = Tensor.empty(x.shape)
        var rs = [Float](repeating: 0, count: B * HW)
        let eps = eps
        x.data.withUnsafeBufferPointer { xb in
            xh.data.withUnsafeMutableBufferPointer { hb in
                rs.withUnsafeMutableBufferPointer { rb in
                    let xp = xb.baseAddress!, hp = hb.baseAddress!, rp = rb.baseAddress!
                    // Pixels are independent: split (batch, pixel blocks) across workers; channels
                    // stride by HW, so accumulate per-pixel sums in a contiguous scratch row.
                    let blocks = (HW + 255) / 256
                    parallelFor(B * blocks, costPerItem: C * 256 * 4) { job in
                        let b = job / blocks, p0 = (job % blocks) * 256, p1 = Swift.min(HW, p0 + 256)
                        let n = p1 - p0
                        var mean = [Float](repeating: 0, count: n), v = [Float](repeating: 0, count: n)
                        let base = b * C * HW
                        for c in 0..<C { let row = xp + base + c * HW + p0; for i in 0..<n { mean[i] += row[i] } }
                        for i in 0..<n { mean[i] /= Float(C) }
                        for c in 0..<C {
                            let row = xp + base + c * HW + p0
                            for i in 0..<n { let d = row[i] - mean[i]; v[i] += d * d }
                        }
                        for i in 0..<n { v[i] = 1 / (v[i] / Float(C) + eps).squareRoot(); rp[b * HW + p0 + i] = v[i] }
                        for c in 0..<C {
                            let row = xp + base + c * HW + p0, h = hp + base + c * HW + p0
                            for i in 0..<n { h[i] = (row[i] - mean[i]) * v[i] }
                        }
                    }
                }
            }
        }
        xh.data.withUnsafeBufferPointer { hb in
            y.data.withUnsafeMutableBufferPointer { yb in
                weight.value.data.withUnsafeBufferPointer { wb in
                    bias.value.data.withUnsafeBufferPointer { bb in
                        let h = hb.baseAddress!, yp = yb.baseAddress!, w = wb.baseAddress!, bv = bb.baseAddress!
                        parallelFor(B * C, costPerItem: HW) { bc in
                            let c = bc % C, o = bc * HW
                            for i in 0..<HW { yp[o + i] = h[o + i] * w[c] + bv[c] }
                        }
                    }
                }
            }
        }
        if mode.keepsActivations { xhat = xh; rstd = rs } else { xhat = nil; rstd = [] }
        return y
    }

    /// dy: (B, C, H, W) -> dx; dW += Σ dy·x̂, dB += Σ dy (unless frozen: then not even summed).
    public func backward(_ dy: Tensor) -> Tensor {
        guard let xh = xhat else { preconditionFailure("LayerNorm2d.backward without a training-mode forward") }
        precondition(dy.shape == xh.shape, "LayerNorm2d.backward: dy \(dy.shape) vs input \(xh.shape)")
        let B = xh.shape[0], C = channels, HW = xh.shape[2] * xh.shape[3]
        var dx = Tensor.empty(xh.shape)
        // Parameter gradients: per channel, sums over batch and pixels.
        var dw = [Double](repeating: 0, count: C), db = [Double](repeating: 0, count: C)
        dy.data.withUnsafeBufferPointer { gb in
            xh.data.withUnsafeBufferPointer { hb in
                let g = gb.baseAddress!, h = hb.baseAddress!
                if weight.requiresGradient || bias.requiresGradient { for b in 0..<B { for c in 0..<C {
                    let o = (b * C + c) * HW
                    dw[c] += Double(Reductions.dot(g + o, h + o, HW)); db[c] += Double(Reductions.sum(g + o, HW))
                } } }
                dx.data.withUnsafeMutableBufferPointer { ob in
                    weight.value.data.withUnsafeBufferPointer { wb in
                        let o = ob.baseAddress!, w = wb.baseAddress!
                        let rp = rstd
                        for b in 0..<B {
                            var m1 = [Float](repeating: 0, count: HW), m2 = [Float](repeating: 0, count: HW)
                            let base = b * C * HW
                            for c in 0..<C {
                                let gr = g + base + c * HW, hr = h + base + c * HW, wc = w[c]
                                for i in 0..<HW { let d = gr[i] * wc; m1[i] += d; m2[i] += d * hr[i] }
                            }
                            let invC = 1 / Float(C)
                            for c in 0..<C {
                                let gr = g + base + c * HW, hr = h + base + c * HW, orow = o + base + c * HW, wc = w[c]
                                for i in 0..<HW {
                                    orow[i] = rp[b * HW + i] * (gr[i] * wc - m1[i] * invC - hr[i] * m2[i] * invC)
                                }
                            }
                        }
                    }
                }
            }
        }
        if weight.requiresGradient { for c in 0..<C { weight.grad.data[c] += Float(dw[c]) } }
        if bias.requiresGradient { for c in 0..<C { bias.grad.data[c] += Float(db[c]) } }
        xhat = nil; rstd = []
        return dx
    }
}

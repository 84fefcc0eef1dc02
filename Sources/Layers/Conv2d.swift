import Foundation
import Tensor

/// `nn.Conv2d` on NCHW maps, square kernel / stride / padding, no dilation.
/// Checkpoint keys: `weight` (O, I/groups, k, k), `bias` (O) unless built with `bias: false`.
///
/// Three kernels, chosen once from the configuration (`path`):
/// - `.depthwise` (groups == inputChannels == outputChannels): direct loops, parallel over
///   (image, channel) planes, forward and backward.
/// - `.pointwise` (1×1, stride 1, no padding): the NCHW map of one image already is the
///   (C, H·W) matrix, so each group is one GEMM on it, no im2col.
/// - `.im2col` (everything else): per image, the (C·k·k, Ho·Wo) column matrix is built in
///   parallel, then one GEMM per group (OpenBLAS threads the GEMM; our threads never wrap it).
///   Backward: dW += dy · colsᵀ, dcols = Wᵀ · dy, col2im (parallel over input channels).
/// `conv2dReference` / `conv2dBackwardReference` are the naive loops the kernels are tested against.
/// Parameters start at zero (as `Linear`); model builders initialise or load them.
/// Weight decay applies to `weight` only.
public final class Conv2d: Module {
    public enum Path: String, Sendable { case pointwise, depthwise, im2col }

    public let inputChannels: Int
    public let outputChannels: Int
    public let kernelSize: Int
    public let stride: Int
    public let padding: Int
    public let groups: Int
    public let path: Path
    /// `weight`: (O, I/groups, k, k)
    public let weight: Parameter
    /// `bias`: (O), absent when built with `bias: false`
    public let bias: Parameter?

    // x: (B, C, H, W), kept for backward
    private var input: Tensor?

    public init(inputChannels: Int, outputChannels: Int, kernelSize: Int, stride: Int = 1,
                padding: Int = 0, groups: Int = 1, bias: Bool = true) {
        precondition(kernelSize >= 1 && stride >= 1 && padding >= 0 && groups >= 1,
                     "Conv2d: invalid kernel \(kernelSize), stride \(stride), padding \(padding), groups \(groups)")
        precondition(inputChannels % groups == 0 && outputChannels % groups == 0,
                     "Conv2d: channels \(inputChannels)→\(outputChannels) are not divisible by groups \(groups)")
        self.inputChannels = inputChannels
        self.outputChannels = outputChannels
        self.kernelSize = kernelSize
        self.stride = stride
        self.padding = padding
        self.groups = groups
        if groups > 1 && groups == inputChannels && groups == outputChannels {
            path = .depthwise
        } else if kernelSize == 1 && stride == 1 && padding == 0 {
            path = .pointwise
        } else {
            path = .im2col
        }
        weight = Parameter(Tensor(zeros: [outputChannels, inputChannels / groups, kernelSize, kernelSize]))
        self.bias = bias ? Parameter(Tensor(zeros: [outputChannels]), decays: false) : nil
    }

    public func namedParameters() -> [(String, Parameter)] {
        var p = [("weight", weight)]
        if let bias { p.append(("bias", bias)) }
        return p
    }

    var name: String {
        "Conv2d(\(inputChannels)→\(outputChannels), k\(kernelSize) s\(stride) p\(padding) g\(groups))"
    }

    /// Output spatial size for an input of `height` × `width`.
    public func outputSize(height: Int, width: Int) -> (height: Int, width: Int) {
        precondition(height + 2 * padding >= kernelSize && width + 2 * padding >= kernelSize,
                     "\(name): input \(height)×\(width) is smaller than the kernel")
        return ((height + 2 * padding - kernelSize) / stride + 1, (width + 2 * padding - kernelSize) / stride + 1)
    }

    /// x: (B, C, H, W) -> y: (B, O, Ho, Wo), Ho = (H + 2p − k) / s + 1
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        let y = weight.value.data.withUnsafeBufferPointer { wb in
            if let bias {
                return bias.value.data.withUnsafeBufferPointer { bb in
                    convolve(x, weight: wb.baseAddress!, bias: bb.baseAddress!, residual: nil, activation: nil)
                }
            }
            return convolve(x, weight: wb.baseAddress!, bias: nil, residual: nil, activation: nil)
        }
        input = mode.keepsActivations ? x : nil
        return y
    }

    /// Inference with replacement parameters (BatchNorm folded in by `Conv2dBN`) and a fused
    /// epilogue: y = activation(conv(x; weight) + bias + residual). Keeps nothing for backward.
    /// weight: (O, I/groups, k, k), bias: (O) or nil, residual: (B, O, Ho, Wo) or nil.
    public func forwardInference(_ x: Tensor, weight w: Tensor, bias b: [Float]?, residual: Tensor? = nil,
                                 activation: Activation? = nil) -> Tensor {
        precondition(w.shape == weight.value.shape, "\(name).forwardInference: weight \(w.shape) vs \(weight.value.shape)")
        precondition(b == nil || b!.count == outputChannels, "\(name).forwardInference: bias of \(b!.count) values")
        input = nil
        return w.data.withUnsafeBufferPointer { wb in
            if let b {
                return b.withUnsafeBufferPointer { bb in
                    convolve(x, weight: wb.baseAddress!, bias: bb.baseAddress!, residual: residual, activation: activation)
                }
            }
            return convolve(x, weight: wb.baseAddress!, bias: nil, residual: residual, activation: activation)
        }
    }

    /// The shared forward: y = activation(conv(x; w) + bias + residual).
    private func convolve(_ x: Tensor, weight wp: UnsafePointer<Float>, bias bp: UnsafePointer<Float>?,
                          residual: Tensor?, activation: Activation?) -> Tensor {
        precondition(x.rank == 4 && x.shape[1] == inputChannels,
                     "\(name): expected input of shape (B, \(inputChannels), H, W), got \(x.shape)")
        let geo = ConvGeometry(x.shape, outputChannels: outputChannels, kernel: kernelSize, stride: stride,
                               padding: padding, groups: groups, layer: name)
        let outShape = [geo.B, geo.O, geo.Ho, geo.Wo]
        if let residual {
            precondition(residual.shape == outShape, "\(name): residual \(residual.shape) vs output \(outShape)")
        }
        var y = Tensor.empty(outShape)
        let r = residual ?? Tensor(zeros: [0])
        x.data.withUnsafeBufferPointer { xb in
            y.data.withUnsafeMutableBufferPointer { yb in
                r.data.withUnsafeBufferPointer { rb in
                    let ep = ConvEpilogue(bias: bp, residual: residual == nil ? nil : rb.baseAddress!, activation: activation)
                    switch path {
                    case .depthwise: depthwiseForward(xb.baseAddress!, wp, yb.baseAddress!, geo, ep)
                    case .pointwise, .im2col: gemmForward(xb.baseAddress!, wp, yb.baseAddress!, geo, ep)
                    }
                }
            }
        }
        return y
    }

    /// dy: (B, O, Ho, Wo) -> dx: (B, C, H, W); accumulates dW and db. With `inputGradient: false`
    /// (a first layer, whose input is the image) dx is not computed and an empty tensor (shape [0])
    /// is returned: no dcols GEMM, no col2im.
    public func backward(_ dy: Tensor, inputGradient: Bool = true) -> Tensor {
        guard let x = input else { preconditionFailure("\(name).backward without a training-mode forward") }
        let geo = ConvGeometry(x.shape, outputChannels: outputChannels, kernel: kernelSize, stride: stride,
                               padding: padding, groups: groups, layer: name)
        precondition(dy.shape == [geo.B, geo.O, geo.Ho, geo.Wo],
                     "\(name).backward: expected dy of shape \([geo.B, geo.O, geo.Ho, geo.Wo]), got \(dy.shape)")
        // the pointwise GEMM and the 3×3 depthwise plane write every dx value; col2im and the
        // other depthwise loops accumulate
        let writesEveryValue = path == .pointwise || (path == .depthwise && geo.isDepthwise3x3)
        var dx = inputGradient ? (writesEveryValue ? Tensor.empty(x.shape) : Tensor(zeros: x.shape)) : Tensor(zeros: [0])
        x.data.withUnsafeBufferPointer { xb in
            dy.data.withUnsafeBufferPointer { gb in
                dx.data.withUnsafeMutableBufferPointer { db in
                    weight.value.data.withUnsafeBufferPointer { wb in
                        weight.grad.data.withUnsafeMutableBufferPointer { gwb in
                            let xp = xb.baseAddress!, gp = gb.baseAddress!, dxp = inputGradient ? db.baseAddress! : nil
                            let wp = wb.baseAddress!, gw = gwb.baseAddress!
                            switch path {
                            case .depthwise: depthwiseBackward(xp, wp, gp, dxp, gw, geo)
                            case .pointwise, .im2col: gemmBackward(xp, wp, gp, dxp, gw, geo)
                            }
                        }
                    }
                }
                if let bias {
                    bias.grad.data.withUnsafeMutableBufferPointer { gbb in
                        accumulateChannelBiasGradient(gb.baseAddress!, gbb.baseAddress!, B: geo.B, C: geo.O, HW: geo.Ho * geo.Wo)
                    }
                }
            }
        }
        input = nil
        return dx
    }

    // MARK: GEMM paths (pointwise, im2col)

    /// Pointwise without an epilogue (training): whole-map GEMMs. Otherwise blocked: jobs are
    /// (image, block of output columns), a block being whole output rows sized so that its column
    /// matrix and output stay in cache; each worker builds its block's columns (im2col path) and
    /// runs single-threaded GEMMs on them, then the epilogue on the fresh output.
    private func gemmForward(_ xp: UnsafePointer<Float>, _ wp: UnsafePointer<Float>, _ yp: UnsafeMutablePointer<Float>,
                             _ g: ConvGeometry, _ ep: ConvEpilogue) {
        let pointwise = path == .pointwise
        let K = g.Cg * g.kk, L = g.L, Og = g.Og, CK = g.C * g.kk
        if pointwise && ep.isEmpty {
            // Nothing to apply while the output is in cache (training): one GEMM per image and
            // group on the whole map, threaded by OpenBLAS. Blocks would run single-threaded GEMMs
            // with a short inner dimension (64 for MBConv's expansion) at ~20 GFLOP/s per core;
            // whole-map GEMMs run at ~90 GFLOP/s on two.
            for b in 0..<g.B {
                let xi = xp + b * g.C * L, yi = yp + b * g.O * L
                for gr in 0..<g.groups {
                    // y_g (Og, L) = W_g (Og, Cg) · x_g (Cg, L)
                    gemm(m: Og, n: L, k: K, a: wp + gr * Og * K, lda: K, b: xi + gr * K * L, ldb: L,
                         c: yi + gr * Og * L, ldc: L)
                }
            }
            return
        }
        // block: whole output rows, ≥ 512 columns, about 2¹⁸ values of columns or output
        let target = Swift.max(512, (1 << 18) / Swift.max(CK, g.O))
        let rowsPerBlock = Swift.max(1, Swift.min(g.Ho, target / g.Wo))
        let blocks = (g.Ho + rowsPerBlock - 1) / rowsPerBlock
        let maxCols = rowsPerBlock * g.Wo
        parallelChunksSerialBLAS(g.B * blocks) { jobs in
            // cols: (C·k·k, block columns) for one block (unused on the pointwise path)
            // (capacity 0 would write the count into the stdlib's shared empty-array storage
            // from every worker: a benign race that ThreadSanitizer still reports)
            var cols = pointwise ? [] : [Float](unsafeUninitializedCapacity: CK * maxCols) { _, n in n = CK * maxCols }
            cols.withUnsafeMutableBufferPointer { cb in
                for job in jobs {
                    let b = job / blocks, oy0 = (job % blocks) * rowsPerBlock
                    let oy1 = Swift.min(g.Ho, oy0 + rowsPerBlock)
                    let c0 = oy0 * g.Wo, n = (oy1 - oy0) * g.Wo
                    let xi = xp + b * g.C * g.H * g.W, yi = yp + b * g.O * L
                    let src: UnsafePointer<Float>, ldb: Int
                    if pointwise {
                        src = xi + c0; ldb = L
                    } else {
                        im2colRows(xi, cb.baseAddress!, g, oy0: oy0, oy1: oy1)
                        src = UnsafePointer(cb.baseAddress!); ldb = n
                    }
                    for gr in 0..<g.groups {
                        // y_g[:, block] (Og, n) = W_g (Og, Cg·k·k) · cols_g (Cg·k·k, n)
                        gemm(m: Og, n: n, k: K, a: wp + gr * Og * K, lda: K, b: src + gr * K * ldb, ldb: ldb,
                             c: yi + gr * Og * L + c0, ldc: L)
                    }
                    for o in 0..<g.O {
                        ep.apply(yi + o * L + c0, n, channel: o, offset: (b * g.O + o) * L + c0)
                    }
                }
            }
        }
    }

    /// dxp nil: no input gradient.
    private func gemmBackward(_ xp: UnsafePointer<Float>, _ wp: UnsafePointer<Float>, _ gp: UnsafePointer<Float>,
                              _ dxp: UnsafeMutablePointer<Float>?, _ gw: UnsafeMutablePointer<Float>, _ g: ConvGeometry) {
        let pointwise = path == .pointwise
        let K = g.Cg * g.kk, L = g.L, Og = g.Og
        // cols, dcols: (C·k·k, Ho·Wo) for one image (unused on the pointwise path; dcols also without dx)
        let n = pointwise ? 0 : g.C * g.kk * L
        var cols = [Float](repeating: 0, count: n), dcols = [Float](repeating: 0, count: dxp == nil ? 0 : n)
        cols.withUnsafeMutableBufferPointer { cb in
            dcols.withUnsafeMutableBufferPointer { dcb in
                for b in 0..<g.B {
                    let xi = xp + b * g.C * g.H * g.W, dxi = dxp.map { $0 + b * g.C * g.H * g.W }, gi = gp + b * g.O * L
                    let src: UnsafePointer<Float>, dst: UnsafeMutablePointer<Float>?
                    if pointwise {
                        src = xi; dst = dxi
                    } else {
                        im2col(xi, cb.baseAddress!, g)
                        src = UnsafePointer(cb.baseAddress!); dst = dxi == nil ? nil : dcb.baseAddress!
                    }
                    for gr in 0..<g.groups {
                        let dyg = gi + gr * Og * L
                        // dW_g (Og, Cg·k·k) += dy_g (Og, L) · cols_gᵀ (L, Cg·k·k)
                        gemm(transB: true, m: Og, n: K, k: L, a: dyg, lda: L, b: src + gr * K * L, ldb: L,
                             beta: 1, c: gw + gr * Og * K, ldc: K)
                        // dcols_g (Cg·k·k, L) = W_gᵀ (Cg·k·k, Og) · dy_g (Og, L)
                        if let dst {
                            gemm(transA: true, m: K, n: L, k: Og, a: wp + gr * Og * K, lda: K, b: dyg, ldb: L,
                                 c: dst + gr * K * L, ldc: L)
                        }
                    }
                    if !pointwise, let dxi { col2im(UnsafePointer(dcb.baseAddress!), dxi, g) }
                }
            }
        }
    }

    // MARK: Depthwise path

    /// Each (b, c) plane: y[oy, ox] = Σ_{ky,kx} w[c, ky, kx] · x[oy·s − p + ky, ox·s − p + kx], then
    /// the epilogue on the plane while it is in cache.
    private func depthwiseForward(_ xp: UnsafePointer<Float>, _ wp: UnsafePointer<Float>,
                                  _ yp: UnsafeMutablePointer<Float>, _ g: ConvGeometry, _ ep: ConvEpilogue) {
        let k = g.k, s = g.s, p = g.p, H = g.H, W = g.W, Ho = g.Ho, Wo = g.Wo, C = g.C
        let (ox0, ox1) = g.validOutputColumns()
        let fast3 = g.isDepthwise3x3
        parallelFor(g.B * C, costPerItem: g.L * g.kk * 2) { bc in
            let x = xp + bc * H * W, y = yp + bc * g.L, w = wp + (bc % C) * g.kk
            if fast3 {
                depthwise3x3Plane(x, w, y, H: H, W: W)
                ep.apply(y, g.L, channel: bc % C, offset: bc * g.L)
                return
            }
            y.update(repeating: 0, count: g.L)
            for oy in 0..<Ho {
                let yrow = y + oy * Wo
                for ky in 0..<k {
                    let iy = oy * s - p + ky
                    if iy < 0 || iy >= H { continue }
                    let xrow = x + iy * W
                    for kx in 0..<k {
                        let wv = w[ky * k + kx], lo = ox0[kx], hi = ox1[kx]
                        if lo >= hi { continue }
                        if s == 1 {
                            let xs = xrow + (kx - p)
                            for ox in lo..<hi { yrow[ox] += wv * xs[ox] }
                        } else {
                            for ox in lo..<hi { yrow[ox] += wv * xrow[ox * s - p + kx] }
                        }
                    }
                }
            }
            ep.apply(y, g.L, channel: bc % C, offset: bc * g.L)
        }
    }

    /// One plane of a 3×3, stride 1, padding 1 depthwise conv, register-blocked: each output row is
    /// written once, its up to nine products summed in registers in the generic loop's order
    /// (rows top to bottom, columns left to right, from 0), so the values are the generic path's.
    /// x, y: (H, W), W ≥ 2; w: (3, 3).
    @inline(__always)
    private func depthwise3x3Plane(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                                   H: Int, W: Int) {
        for oy in 0..<H {
            let yr = y + oy * W, mid = x + oy * W
            let up: UnsafePointer<Float>? = oy > 0 ? x + (oy - 1) * W : nil
            let down: UnsafePointer<Float>? = oy < H - 1 ? x + (oy + 1) * W : nil
            // interior columns 1 ..< W−1: all three kernel columns inside the row
            let b0 = w[3], b1 = w[4], b2 = w[5]
            switch (up, down) {
            case let (u?, d?):
                let a0 = w[0], a1 = w[1], a2 = w[2], c0 = w[6], c1 = w[7], c2 = w[8]
                for ox in 1..<(W - 1) {
                    var acc: Float = 0
                    acc += a0 * u[ox - 1]; acc += a1 * u[ox]; acc += a2 * u[ox + 1]
                    acc += b0 * mid[ox - 1]; acc += b1 * mid[ox]; acc += b2 * mid[ox + 1]
                    acc += c0 * d[ox - 1]; acc += c1 * d[ox]; acc += c2 * d[ox + 1]
                    yr[ox] = acc
                }
            case let (u?, nil):
                let a0 = w[0], a1 = w[1], a2 = w[2]
                for ox in 1..<(W - 1) {
                    var acc: Float = 0
                    acc += a0 * u[ox - 1]; acc += a1 * u[ox]; acc += a2 * u[ox + 1]
                    acc += b0 * mid[ox - 1]; acc += b1 * mid[ox]; acc += b2 * mid[ox + 1]
                    yr[ox] = acc
                }
            case let (nil, d?):
                let c0 = w[6], c1 = w[7], c2 = w[8]
                for ox in 1..<(W - 1) {
                    var acc: Float = 0
                    acc += b0 * mid[ox - 1]; acc += b1 * mid[ox]; acc += b2 * mid[ox + 1]
                    acc += c0 * d[ox - 1]; acc += c1 * d[ox]; acc += c2 * d[ox + 1]
                    yr[ox] = acc
                }
            case (nil, nil):
                for ox in 1..<(W - 1) {
                    var acc: Float = 0
                    acc += b0 * mid[ox - 1]; acc += b1 * mid[ox]; acc += b2 * mid[ox + 1]
                    yr[ox] = acc
                }
            }
            // edge columns 0 and W−1: the kernel column outside the row is skipped
            @inline(__always) func taps(_ acc: inout Float, _ row: UnsafePointer<Float>?, _ ky: Int, _ ox: Int) {
                guard let row else { return }
                for kx in 0..<3 {
                    let ix = ox - 1 + kx
                    if ix >= 0 && ix < W { acc += w[ky * 3 + kx] * row[ix] }
                }
            }
            var left: Float = 0, right: Float = 0
            taps(&left, up, 0, 0); taps(&left, mid, 1, 0); taps(&left, down, 2, 0)
            taps(&right, up, 0, W - 1); taps(&right, mid, 1, W - 1); taps(&right, down, 2, W - 1)
            yr[0] = left
            yr[W - 1] = right
        }
    }

    /// One plane's 3×3 / stride 1 / padding 1 weight gradient, one pass over the rows:
    /// dw[ky·3 + kx] += Σ_{oy, ox} dy[oy, ox] · x[oy − 1 + ky, ox − 1 + kx] (zero outside). Each output
    /// row's nine sums are SIMD partials (one dy load for three taps), added to dw row by row as
    /// the generic loop's per-row dot products are. x, dy: (H, W), W ≥ 2.
    @inline(__always)
    private func depthwise3x3WeightGradientPlane(_ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>,
                                                 _ dw: UnsafeMutablePointer<Float>, H: Int, W: Int) {
        // the three taps (kernel columns 0, 1, 2) of one kernel row over one output row
        @inline(__always) func taps(_ xr: UnsafePointer<Float>, _ d: UnsafePointer<Float>) -> (Float, Float, Float) {
            let rx = UnsafeRawPointer(xr), rd = UnsafeRawPointer(d)
            var l = SIMD8<Float>(), c = SIMD8<Float>(), r = SIMD8<Float>()
            var ox = 1
            while ox + 8 <= W - 1 {
                let g = rd.loadUnaligned(fromByteOffset: ox * 4, as: SIMD8<Float>.self)
                l += g * rx.loadUnaligned(fromByteOffset: (ox - 1) * 4, as: SIMD8<Float>.self)
                c += g * rx.loadUnaligned(fromByteOffset: ox * 4, as: SIMD8<Float>.self)
                r += g * rx.loadUnaligned(fromByteOffset: (ox + 1) * 4, as: SIMD8<Float>.self)
                ox += 8
            }
            var ls = l.sum(), cs = c.sum(), rs = r.sum()
            while ox < W - 1 { ls += d[ox] * xr[ox - 1]; cs += d[ox] * xr[ox]; rs += d[ox] * xr[ox + 1]; ox += 1 }
            // edge columns: ox = 0 has no left tap, ox = W − 1 no right tap
            cs += d[0] * xr[0]; rs += d[0] * xr[1]
            ls += d[W - 1] * xr[W - 2]; cs += d[W - 1] * xr[W - 1]
            return (ls, cs, rs)
        }
        for oy in 0..<H {
            let d = dy + oy * W
            for ky in 0..<3 {
                let iy = oy - 1 + ky
                if iy < 0 || iy >= H { continue }
                let (l, c, r) = taps(x + iy * W, d)
                dw[ky * 3] += l; dw[ky * 3 + 1] += c; dw[ky * 3 + 2] += r
            }
        }
    }

    /// dx[iy, ix] += w · dy[oy, ox]; dW[c, ky, kx] += Σ dy[oy, ox] · x[iy, ix] (per-plane partials,
    /// then summed over the batch).
    /// dxp nil: no input gradient.
    private func depthwiseBackward(_ xp: UnsafePointer<Float>, _ wp: UnsafePointer<Float>, _ gp: UnsafePointer<Float>,
                                   _ dxp: UnsafeMutablePointer<Float>?, _ gw: UnsafeMutablePointer<Float>,
                                   _ g: ConvGeometry) {
        let k = g.k, kk = g.kk, s = g.s, p = g.p, H = g.H, W = g.W, Ho = g.Ho, Wo = g.Wo, C = g.C
        let (ox0, ox1) = g.validOutputColumns()
        let fast3 = g.isDepthwise3x3
        // partial: (B·C, k·k) weight-gradient partial sums per plane
        var partial = [Float](repeating: 0, count: g.B * C * kk)
        partial.withUnsafeMutableBufferPointer { pb in
            let pp = pb.baseAddress!
            parallelFor(g.B * C, costPerItem: g.L * kk * 4) { bc in
                let x = xp + bc * H * W, dx = dxp.map { $0 + bc * H * W }, dy = gp + bc * g.L
                let w = wp + (bc % C) * kk, dw = pp + bc * kk
                if fast3 {
                    // dx = dy correlated with w turned 180° (same padding): the forward's plane,
                    // which writes every value; dW in one pass over the rows.
                    if let dx {
                        withUnsafeTemporaryAllocation(of: Float.self, capacity: 9) { t in
                            for i in 0..<9 { t[i] = w[8 - i] }
                            depthwise3x3Plane(dy, UnsafePointer(t.baseAddress!), dx, H: H, W: W)
                        }
                    }
                    depthwise3x3WeightGradientPlane(x, dy, dw, H: H, W: W)
                    return
                }
                for oy in 0..<Ho {
                    let grow = dy + oy * Wo
                    for ky in 0..<k {
                        let iy = oy * s - p + ky
                        if iy < 0 || iy >= H { continue }
                        let xrow = x + iy * W, dxrow = dx.map { $0 + iy * W }
                        for kx in 0..<k {
                            let wv = w[ky * k + kx], lo = ox0[kx], hi = ox1[kx]
                            if lo >= hi { continue }
                            var acc: Float = 0
                            if s == 1 {
                                let xs = xrow + (kx - p)
                                if let dxrow {
                                    let dxs = dxrow + (kx - p)
                                    for ox in lo..<hi { dxs[ox] += wv * grow[ox] }
                                }
                                acc = Reductions.dot(grow + lo, xs + lo, hi - lo)
                            } else {
                                for ox in lo..<hi {
                                    let ix = ox * s - p + kx
                                    dxrow?[ix] += wv * grow[ox]; acc += grow[ox] * xrow[ix]
                                }
                            }
                            dw[ky * k + kx] += acc
                        }
                    }
                }
            }
            for b in 0..<g.B { for i in 0..<(C * kk) { gw[i] += pp[b * C * kk + i] } }
        }
    }
}

// MARK: - Shared geometry and kernels

/// Shapes of one convolution call (math names for the kernels).
struct ConvGeometry {
    let B: Int, C: Int, H: Int, W: Int, O: Int, k: Int, s: Int, p: Int, groups: Int
    let Ho: Int, Wo: Int
    var kk: Int { k * k }
    var L: Int { Ho * Wo }
    /// 3×3, stride 1, padding 1 on planes at least 2 wide: the register-blocked depthwise planes.
    var isDepthwise3x3: Bool { k == 3 && s == 1 && p == 1 && W >= 2 }
    var Cg: Int { C / groups }
    var Og: Int { O / groups }

    init(_ xShape: [Int], outputChannels: Int, kernel: Int, stride: Int, padding: Int, groups: Int, layer: String) {
        B = xShape[0]; C = xShape[1]; H = xShape[2]; W = xShape[3]
        O = outputChannels; k = kernel; s = stride; p = padding; self.groups = groups
        precondition(H + 2 * p >= k && W + 2 * p >= k, "\(layer): input \(xShape) is smaller than the kernel")
        Ho = (H + 2 * p - k) / s + 1
        Wo = (W + 2 * p - k) / s + 1
    }

    /// For each kernel column kx, the output columns ox whose input column ox·s − p + kx lies
    /// inside the image: ox0[kx] ..< ox1[kx].
    func validOutputColumns() -> ([Int], [Int]) {
        var lo = [Int](repeating: 0, count: k), hi = [Int](repeating: 0, count: k)
        for kx in 0..<k {
            let a = p - kx  // ox·s ≥ a
            lo[kx] = a <= 0 ? 0 : Swift.min(Wo, (a + s - 1) / s)
            let b = W - 1 + p - kx  // ox·s ≤ b
            hi[kx] = b < 0 ? 0 : Swift.min(Wo, b / s + 1)
            if hi[kx] < lo[kx] { hi[kx] = lo[kx] }
        }
        return (lo, hi)
    }
}

/// x: (C, H, W) one image -> cols: (C·k·k, Ho·Wo), row (c, ky, kx) holds x[c, oy·s − p + ky,
/// ox·s − p + kx] (zero outside the image). Parallel over rows.
func im2col(_ x: UnsafePointer<Float>, _ cols: UnsafeMutablePointer<Float>, _ g: ConvGeometry) {
    let k = g.k, kk = g.kk, s = g.s, p = g.p, H = g.H, W = g.W, Ho = g.Ho, Wo = g.Wo, L = g.L
    let (ox0, ox1) = g.validOutputColumns()
    parallelFor(g.C * kk, costPerItem: L) { row in
        let c = row / kk, ky = (row / k) % k, kx = row % k
        let dst = cols + row * L, src = x + c * H * W
        let lo = ox0[kx], hi = ox1[kx]
        for oy in 0..<Ho {
            let d = dst + oy * Wo
            let iy = oy * s - p + ky
            if iy < 0 || iy >= H { d.update(repeating: 0, count: Wo); continue }
            if lo > 0 { d.update(repeating: 0, count: lo) }
            if hi < Wo { (d + hi).update(repeating: 0, count: Wo - hi) }
            let srow = src + iy * W
            if s == 1 {
                if hi > lo { (d + lo).update(from: srow + (lo - p + kx), count: hi - lo) }
            } else {
                for ox in lo..<hi { d[ox] = srow[ox * s - p + kx] }
            }
        }
    }
}

/// Rows oy0..<oy1 of `im2col`: cols (C·k·k, (oy1 − oy0)·Wo), row (c, ky, kx) holds
/// x[c, oy·s − p + ky, ox·s − p + kx] for those output rows (zero outside the image). Serial (the
/// caller runs blocks on its workers).
func im2colRows(_ x: UnsafePointer<Float>, _ cols: UnsafeMutablePointer<Float>, _ g: ConvGeometry, oy0: Int, oy1: Int) {
    let k = g.k, kk = g.kk, s = g.s, p = g.p, H = g.H, W = g.W, Wo = g.Wo
    let n = (oy1 - oy0) * Wo
    let (ox0, ox1) = g.validOutputColumns()
    for row in 0..<(g.C * kk) {
        let c = row / kk, ky = (row / k) % k, kx = row % k
        let dst = cols + row * n, src = x + c * H * W
        let lo = ox0[kx], hi = ox1[kx]
        for oy in oy0..<oy1 {
            let d = dst + (oy - oy0) * Wo
            let iy = oy * s - p + ky
            if iy < 0 || iy >= H { d.update(repeating: 0, count: Wo); continue }
            if lo > 0 { d.update(repeating: 0, count: lo) }
            if hi < Wo { (d + hi).update(repeating: 0, count: Wo - hi) }
            let srow = src + iy * W
            if s == 1 {
                if hi > lo { (d + lo).update(from: srow + (lo - p + kx), count: hi - lo) }
            } else if s == 2 {
                let base = srow + (kx - p)
                for ox in lo..<hi { d[ox] = base[2 * ox] }
            } else {
                for ox in lo..<hi { d[ox] = srow[ox * s - p + kx] }
            }
        }
    }
}

/// What a forward does to each fresh output plane segment: y = activation(y + bias[c] + residual).
struct ConvEpilogue {
    let bias: UnsafePointer<Float>?
    let residual: UnsafePointer<Float>?
    let activation: Activation?

    var isEmpty: Bool { bias == nil && residual == nil && activation == nil }

    /// y[0..<n] of channel `channel`, at flat output offset `offset` (where the residual is read).
    @inline(__always)
    func apply(_ y: UnsafeMutablePointer<Float>, _ n: Int, channel: Int, offset: Int) {
        if isEmpty { return }
        let b = bias?[channel] ?? 0
        switch (activation, residual) {
        case (.gelu, nil): FastMath.geluInPlace(y, bias: b, n)
        case (.gelu, let r?): FastMath.geluInPlace(y, adding: r + offset, bias: b, n)
        case (.relu, nil): for i in 0..<n { let v = y[i] + b; y[i] = v < 0 ? 0 : v }
        case (.relu, let r?): let rp = r + offset; for i in 0..<n { let v = y[i] + rp[i] + b; y[i] = v < 0 ? 0 : v }
        case (nil, nil): for i in 0..<n { y[i] += b }
        case (nil, let r?): let rp = r + offset; for i in 0..<n { y[i] += rp[i] + b }
        }
    }
}

/// The adjoint of `im2col`: dx[c, iy, ix] += dcols[(c, ky, kx), (oy, ox)]. Parallel over input
/// channels (each owns its plane of dx).
func col2im(_ dcols: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, _ g: ConvGeometry) {
    let k = g.k, kk = g.kk, s = g.s, p = g.p, H = g.H, W = g.W, Ho = g.Ho, Wo = g.Wo, L = g.L
    let (ox0, ox1) = g.validOutputColumns()
    parallelFor(g.C, costPerItem: kk * L) { c in
        let plane = dx + c * H * W
        for ky in 0..<k { for kx in 0..<k {
            let src = dcols + (c * kk + ky * k + kx) * L
            let lo = ox0[kx], hi = ox1[kx]
            if lo >= hi { continue }
            for oy in 0..<Ho {
                let iy = oy * s - p + ky
                if iy < 0 || iy >= H { continue }
                let srow = src + oy * Wo, drow = plane + iy * W
                if s == 1 {
                    let ds = drow + (kx - p)
                    for ox in lo..<hi { ds[ox] += srow[ox] }
                } else {
                    for ox in lo..<hi { drow[ox * s - p + kx] += srow[ox] }
                }
            }
        } }
    }
}

/// db[c] += Σ_{b, i} dy[b, c, i] for dy: (B, C, HW). Parallel over channels.
func accumulateChannelBiasGradient(_ dy: UnsafePointer<Float>, _ db: UnsafeMutablePointer<Float>, B: Int, C: Int, HW: Int) {
    parallelFor(C, costPerItem: B * HW) { c in
        var total: Double = 0
        for b in 0..<B {
            total += Double(Reductions.sum(dy + (b * C + c) * HW, HW))
        }
        db[c] += Float(total)
    }
}

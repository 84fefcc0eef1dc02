import Foundation
import Tensor

/// TinyViT's window attention: `Attention(dim, key_dim, num_heads, attn_ratio, resolution)` of
/// mobile_sam/modeling/tiny_vit_sam.py (LeViT-style, with a learned per-head relative-offset bias).
///
///     x̂ = LayerNorm(x)                                   x: (B', N, C), N = res.0 · res.1
///     t = x̂ Wqkvᵀ + b                                    t: (B', N, heads · (2·keyDim + d))
///     per token and head h, t holds [q (keyDim), k (keyDim), v (d)] at offset h·(2·keyDim + d)
///     S_h = q_h k_hᵀ · keyDim^-½ + attention_biases[h, idx]   (N, N)
///     O_h = softmax_rows(S_h) v_h                         (N, d), heads concatenated: (B', N, heads·d)
///     y = O Wprojᵀ + b                                    y: (B', N, C)
///
/// `d = Int(attentionRatio · keyDim)` (Python's `int()` truncation). `idx[i, j]` numbers the offsets
/// (|Δrow|, |Δcol|) between tokens i and j in the order the reference first meets them (row-major
/// token pairs); it is PyTorch's non-persistent buffer `attention_bias_idxs`, computed here and
/// never loaded. The PyTorch module's eval-mode `ab` cache (bias table gathered at `.eval()` time)
/// is not represented: this layer always gathers from the current table, as `.train()` mode does.
///
/// Checkpoint keys, in PyTorch's state-dict order: `attention_biases` (heads, offsets),
/// `norm.weight`, `norm.bias` (C), `qkv.weight` (heads·(2·keyDim + d), C), `qkv.bias`,
/// `proj.weight` (C, heads·d), `proj.bias` (C). The bias table does not decay (as in timm/TinyViT).
public final class TinyViTAttention: Module {
    public let dim: Int
    public let keyDim: Int
    public let heads: Int
    public let attentionRatio: Double
    /// d: per-head value width, `Int(attentionRatio · keyDim)`.
    public let valueDim: Int
    /// (height, width) of the token grid (the window).
    public let resolution: (Int, Int)
    /// keyDim^-½
    public let scale: Float

    public let norm: LayerNorm
    public let qkv: Linear
    public let proj: Linear
    /// `attention_biases`: (heads, offsetCount)
    public let attentionBiases: Parameter
    /// Number of distinct (|Δrow|, |Δcol|) offsets: res.0 · res.1.
    public let offsetCount: Int
    /// `attention_bias_idxs`: (N, N) row-major, the offset index of every (query, key) pair.
    public let biasIndices: [Int32]

    // Kept for backward (training mode only):
    // t: (B', N, heads·(2·keyDim + d)) the qkv projection, in windows
    private var qkvOutput: Tensor?
    // p: (B', heads, N, N) softmax probabilities
    private var probabilities: Tensor?
    // the map's geometry after `forward(map:window:mode:)`, nil after the windows' forward
    private var mapGeometry: WindowGeometry?

    /// N = resolution.0 · resolution.1 tokens per window.
    public var tokens: Int { resolution.0 * resolution.1 }
    /// Width of one head's [q, k, v] group in the qkv output: 2·keyDim + d.
    public var headStride: Int { 2 * keyDim + valueDim }

    public init(dim: Int, keyDim: Int, heads: Int, attentionRatio: Double = 4, resolution: (Int, Int) = (14, 14)) {
        precondition(dim > 0 && keyDim > 0 && heads > 0 && resolution.0 > 0 && resolution.1 > 0,
                     "TinyViTAttention: dim \(dim), keyDim \(keyDim), heads \(heads), resolution \(resolution) must be positive")
        self.dim = dim
        self.keyDim = keyDim
        self.heads = heads
        self.attentionRatio = attentionRatio
        self.valueDim = Int(attentionRatio * Double(keyDim))
        precondition(valueDim > 0, "TinyViTAttention: attentionRatio \(attentionRatio) · keyDim \(keyDim) gives no value dimensions")
        self.resolution = resolution
        self.scale = Float(1 / Double(keyDim).squareRoot())
        norm = LayerNorm(dim)
        qkv = Linear(dim, heads * (2 * keyDim + valueDim))
        proj = Linear(heads * valueDim, dim)
        let (idx, count) = TinyViTAttention.offsetIndices(resolution)
        biasIndices = idx
        offsetCount = count
        attentionBiases = Parameter(Tensor(zeros: [heads, count]), decays: false)
    }

    /// The reference's `attention_bias_idxs`: for token pairs (p1, p2) over `itertools.product`
    /// of rows and columns (row-major), offset (|Δrow|, |Δcol|) gets the next index the first time
    /// it is met. Returns the (N, N) row-major index table and the number of offsets.
    public static func offsetIndices(_ resolution: (Int, Int)) -> (indices: [Int32], count: Int) {
        let (R, C) = resolution
        let N = R * C
        var seen = [Int](repeating: -1, count: R * C)  // keyed by |Δr|·C + |Δc|
        var count = 0
        var idx = [Int32](repeating: 0, count: N * N)
        for i in 0..<N {
            for j in 0..<N {
                let key = abs(i / C - j / C) * C + abs(i % C - j % C)
                if seen[key] < 0 { seen[key] = count; count += 1 }
                idx[i * N + j] = Int32(seen[key])
            }
        }
        return (idx, count)
    }

    public func namedParameters() -> [(String, Parameter)] {
        [("attention_biases", attentionBiases)] + prefixed("norm.", norm) + prefixed("qkv.", qkv) + prefixed("proj.", proj)
    }

    /// Stops with a message naming the layer when x has the wrong shape.
    public func checkInput(_ x: Tensor) {
        if x.rank != 3 || x.shape[1] != tokens || x.shape[2] != dim {
            preconditionFailure("TinyViTAttention(dim \(dim), resolution \(resolution)): expected input of shape (B', \(tokens), \(dim)), got \(x.shape)")
        }
    }

    /// The bias table gathered per head: (heads, N, N).
    private func denseBias() -> [Float] {
        let N = tokens, NN = N * N, O = offsetCount
        var out = [Float](repeating: 0, count: heads * NN)
        let table = attentionBiases.value.data
        for h in 0..<heads {
            for ij in 0..<NN { out[h * NN + ij] = table[h * O + Int(biasIndices[ij])] }
        }
        return out
    }

    /// x: (B', N, C) windows -> y: (B', N, C)
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        checkInput(x)
        // t: (B', N, ld)
        let t = qkv.forward(norm.forward(x, mode: mode), mode: mode)
        let (o, p) = attend(t)
        keep(t, p, map: nil, mode: mode)
        return proj.forward(o, mode: mode)
    }

    /// x: (B, H, W, C) the whole map -> (B, H, W, C): attention in ws × ws windows (ws² = N) with
    /// the LayerNorm, qkv and proj on the map's own tokens only. The reference zero-pads the map
    /// to whole windows before this module; a zero token's qkv row is the constant
    /// Wqkv·β + b (LayerNorm(0) = β), which fills the padded tokens here, and their outputs are
    /// cropped anyway: the same values without the padded rows' work (a 64² map in 14² windows
    /// pads to 70², 20% more rows). The padded queries' attention rows are still computed.
    public func forward(map x: Tensor, window: Int, mode: ForwardMode) -> Tensor {
        precondition(x.rank == 4 && x.shape[3] == dim && window * window == tokens,
                     "TinyViTAttention(dim \(dim), resolution \(resolution)): expected a (B, H, W, \(dim)) map in \(window)² windows, got \(x.shape)")
        let geometry = WindowGeometry(batch: x.shape[0], height: x.shape[1], width: x.shape[2], channels: dim, window: window)
        // t: (B, H, W, ld) on the map, then tw: (B', N, ld) windows
        let t = qkv.forward(norm.forward(x, mode: mode), mode: mode)
        let tw = windowPartition(t, window: window, padding: geometry.needsPadding ? paddingRow() : nil)
        let (o, p) = attend(tw)
        keep(tw, p, map: geometry, mode: mode)
        // o back on the map: (B, H, W, H·d)
        let om = windowReverse(o, window: window, batch: geometry.batch, height: geometry.height, width: geometry.width)
        return proj.forward(om, mode: mode)
    }

    /// qkv of a zero token: Wqkv · LayerNorm(0) + b = Wqkv · β + b, (ld).
    private func paddingRow() -> [Float] {
        let ld = qkv.outputFeatures, C = dim
        var row = qkv.bias?.value.data ?? [Float](repeating: 0, count: ld)
        qkv.weight.value.data.withUnsafeBufferPointer { wb in
            norm.bias.value.data.withUnsafeBufferPointer { bb in
                for o in 0..<ld { row[o] += Reductions.dot(wb.baseAddress! + o * C, bb.baseAddress!, C) }
            }
        }
        return row
    }

    private func keep(_ t: Tensor, _ p: Tensor, map geometry: WindowGeometry?, mode: ForwardMode) {
        if mode.keepsActivations {
            qkvOutput = t; probabilities = p; mapGeometry = geometry
        } else {
            qkvOutput = nil; probabilities = nil; mapGeometry = nil
        }
    }

    /// t: (B', N, ld) -> o: (B', N, H·d) heads concatenated, p: (B', H, N, N) probabilities.
    private func attend(_ t: Tensor) -> (Tensor, Tensor) {
        let Bw = t.shape[0], N = tokens, NN = N * N, H = heads, kd = keyDim, d = valueDim
        let hs = headStride, ld = H * hs, dh = H * d, scale = scale
        // p: (B', H, N, N) scores, then probabilities
        var p = Tensor.empty([Bw, H, N, N])
        // o: (B', N, H·d) heads concatenated
        var o = Tensor.empty([Bw, N, dh])
        let bias = denseBias()
        t.data.withUnsafeBufferPointer { tb in
            p.data.withUnsafeMutableBufferPointer { pb in
                o.data.withUnsafeMutableBufferPointer { ob in
                    bias.withUnsafeBufferPointer { bb in
                        let tp = tb.baseAddress!, pp = pb.baseAddress!, op = ob.baseAddress!, bp = bb.baseAddress!
                        // One job per (window, head), all its steps in cache; windows run on the
                        // workers with single-threaded GEMMs (49×49×32 products are too small to split).
                        // The (N, N) products accumulate (beta 1) onto a buffer filled in cache just
                        // before: OpenBLAS's beta-0 path is ~1.2× slower for them (`bench gemm`,
                        // attention rows).
                        parallelChunksSerialBLAS(Bw * H) { jobs in
                            for bh in jobs {
                                let b = bh / H, h = bh % H
                                let q = tp + b * N * ld + h * hs, S = pp + bh * NN
                                // S (N, N) = bias[h] (N, N) + scale · q (N, kd) · kᵀ (kd, N): the bias copied
                                // in and the GEMM accumulating onto it (beta 1; no zero fill, no add pass);
                                // q and k read in place (row stride ld). Then softmax per row.
                                S.update(from: bp + h * NN, count: NN)
                                gemm(transB: true, m: N, n: N, k: kd, alpha: scale, a: q, lda: ld,
                                     b: q + kd, ldb: ld, beta: 1, c: S, ldc: N)
                                for i in 0..<N { softmaxRow(S + i * N, N) }
                                // O_h (N, d) = P (N, N) · v (N, d), into its head's columns (row stride dh)
                                gemm(m: N, n: d, k: N, a: S, lda: N, b: q + 2 * kd, ldb: ld,
                                     c: op + b * N * dh + h * d, ldc: dh)
                            }
                        }
                    }
                }
            }
        }
        return (o, p)
    }

    /// dy: the forward's output shape, (B', N, C) or (B, H, W, C) -> dx of the same shape;
    /// accumulates every parameter gradient.
    public func backward(_ dy: Tensor) -> Tensor {
        guard let t = qkvOutput, let p = probabilities else {
            preconditionFailure("TinyViTAttention.backward without a training-mode forward")
        }
        let geometry = mapGeometry
        qkvOutput = nil; probabilities = nil; mapGeometry = nil
        let expected = geometry.map { [$0.batch, $0.height, $0.width, dim] } ?? [p.shape[0], tokens, dim]
        precondition(dy.shape == expected,
                     "TinyViTAttention.backward: dy \(dy.shape) does not match the forward's output \(expected)")
        // dO: (B', N, H·d) or (B, H, W, H·d)
        let dO = proj.backward(dy)
        let dT: Tensor
        if let g = geometry {
            // the padded queries' outputs were cropped: zero gradient there
            let dTw = attendBackward(windowPartition(dO, window: g.window), t, p)
            dT = windowReverse(dTw, window: g.window, batch: g.batch, height: g.height, width: g.width)
            if g.needsPadding {
                accumulatePaddingGradient(windowPaddingSum(dTw, window: g.window, batch: g.batch, height: g.height, width: g.width))
            }
        } else {
            dT = attendBackward(dO, t, p)
        }
        return norm.backward(qkv.backward(dT))
    }

    /// The padding row Wqkv·β + b feeds every padded token: its gradient g (ld), summed over
    /// them, goes to b (+= g), Wqkv (+= g βᵀ) and β (+= Wqkvᵀ g).
    private func accumulatePaddingGradient(_ g: [Double]) {
        let ld = qkv.outputFeatures, C = dim
        if let bias = qkv.bias, bias.requiresGradient { for o in 0..<ld { bias.grad.data[o] += Float(g[o]) } }
        let beta = norm.bias.value.data, w = qkv.weight.value.data
        if qkv.weight.requiresGradient {
            qkv.weight.grad.data.withUnsafeMutableBufferPointer { gw in
                for o in 0..<ld { for c in 0..<C { gw[o * C + c] += Float(g[o]) * beta[c] } }
            }
        }
        if norm.bias.requiresGradient {
            var dBeta = [Double](repeating: 0, count: C)
            for o in 0..<ld { for c in 0..<C { dBeta[c] += g[o] * Double(w[o * C + c]) } }
            for c in 0..<C { norm.bias.grad.data[c] += Float(dBeta[c]) }
        }
    }

    /// dO: (B', N, H·d) -> dT: (B', N, ld) the gradient of the windows' qkv rows t; accumulates
    /// the bias table's gradient, the scatter-add of dS over all windows and all (i, j) pairs
    /// sharing an offset.
    private func attendBackward(_ dO: Tensor, _ t: Tensor, _ p: Tensor) -> Tensor {
        let Bw = p.shape[0], N = tokens, NN = N * N, H = heads, kd = keyDim, d = valueDim
        let hs = headStride, ld = H * hs, dh = H * d, scale = scale, O = offsetCount
        // dS: (B', H, N, N) dL/dP, then dL/dS
        var dS = Tensor.empty([Bw, H, N, N])
        // dT: (B', N, ld) gradient of the qkv output; every entry is written below (beta 0)
        var dT = Tensor.empty(t.shape)
        // Bias-table gradient per head, accumulated in Double: (H, offsets)
        var tableGrad = [Double](repeating: 0, count: H * O)
        t.data.withUnsafeBufferPointer { tb in
            p.data.withUnsafeBufferPointer { pb in
                dO.data.withUnsafeBufferPointer { gb in
                    dS.data.withUnsafeMutableBufferPointer { sb in
                        dT.data.withUnsafeMutableBufferPointer { db in
                            let tp = tb.baseAddress!, pp = pb.baseAddress!, gp = gb.baseAddress!
                            let sp = sb.baseAddress!, dtp = db.baseAddress!
                            // One job per (window, head) on the workers, single-threaded GEMMs.
                            parallelChunksSerialBLAS(Bw * H) { jobs in
                                for bh in jobs {
                                    let b = bh / H, h = bh % H
                                    let gO = gp + b * N * dh + h * d
                                    let q = tp + b * N * ld + h * hs, v = q + 2 * kd
                                    let P = pp + bh * NN, S = sp + bh * NN
                                    let dq = dtp + b * N * ld + h * hs
                                    // dP (N, N) = dO_h (N, d) · vᵀ (d, N), onto zeros filled in cache (beta 1, as in forward)
                                    S.update(repeating: 0, count: NN)
                                    gemm(transB: true, m: N, n: N, k: d, a: gO, lda: dh, b: v, ldb: ld, beta: 1, c: S, ldc: N)
                                    // dv (N, d) = Pᵀ (N, N) · dO_h (N, d)
                                    gemm(transA: true, m: N, n: d, k: N, a: P, lda: N, b: gO, ldb: dh,
                                         c: dq + 2 * kd, ldc: ld)
                                    // dS = P ⊙ (dP − rowsum(dP ⊙ P))
                                    for i in 0..<N { softmaxRowBackward(P + i * N, S + i * N, N) }
                                    // dq (N, kd) = scale · dS (N, N) · k (N, kd)
                                    gemm(m: N, n: kd, k: N, alpha: scale, a: S, lda: N, b: q + kd, ldb: ld, c: dq, ldc: ld)
                                    // dk (N, kd) = scale · dSᵀ (N, N) · q (N, kd)
                                    gemm(transA: true, m: N, n: kd, k: N, alpha: scale, a: S, lda: N, b: q, ldb: ld,
                                         c: dq + kd, ldc: ld)
                                }
                            }
                            // Bias table: sum dS over windows per head (dense, Double), then scatter.
                            let idx = biasIndices
                            tableGrad.withUnsafeMutableBufferPointer { tgb in
                                let tg = tgb.baseAddress!
                                parallelFor(H, costPerItem: Bw * NN) { h in
                                    var dense = [Double](repeating: 0, count: NN)
                                    for b in 0..<Bw {
                                        let s = sp + (b * H + h) * NN
                                        for ij in 0..<NN { dense[ij] += Double(s[ij]) }
                                    }
                                    let row = tg + h * O
                                    for ij in 0..<NN { row[Int(idx[ij])] += dense[ij] }
                                }
                            }
                        }
                    }
                }
            }
        }
        if attentionBiases.requiresGradient {
            attentionBiases.grad.data.withUnsafeMutableBufferPointer { g in
                for i in 0..<(H * O) { g[i] += Float(tableGrad[i]) }
            }
        }
        return dT
    }
}

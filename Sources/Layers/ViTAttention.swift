import Foundation
import Tensor

/// SAM ViT image-encoder attention (`image_encoder.py` `Attention`): multi-head self-attention
/// over an (H, W) grid of tokens, with optional decomposed relative position embeddings
/// (`add_decomposed_rel_pos`, from MViTv2).
///
///     t = qkv(x): (B, H·W, 3C), columns [q | k | v], each split into heads of d = C / heads
///     per head:  S = (q·scale) kᵀ (+ rel_h + rel_w): (N, N), N = H·W, scale = d^-½
///                rel_h[(qh, qw), (kh, kw)] = q[(qh, qw)] · rel_pos_h[qh − kh + H − 1]
///                rel_w[(qh, qw), (kh, kw)] = q[(qh, qw)] · rel_pos_w[qw − kw + W − 1]
///                (q unscaled, as in the reference), P = softmax(S), o = P v
///     y = proj(o): (B, H, W, C)
///
/// The relative tables are gathered by the reference's index rule `q − k + (k_size − 1)`, which
/// is exact only when the query and key grids have the size the tables were built for
/// (`inputSize`): the reference linearly interpolates the tables otherwise, which this layer does
/// not support (it stops with a precondition instead).
///
/// Checkpoint keys: `qkv.weight` (3C, C), `qkv.bias` (3C, when `qkvBias`), `proj.weight` (C, C),
/// `proj.bias` (C), and with `useRelPos`: `rel_pos_h` (2H − 1, d), `rel_pos_w` (2W − 1, d).
/// The relative tables are created with `decays: false` (no AdamW weight decay, like the bias
/// tables elsewhere); SAM's own training recipe does not say, so this is our choice.
public final class ViTAttention: Module {
    public let dim: Int
    public let heads: Int
    public var headDim: Int { dim / heads }
    public let useRelPos: Bool
    /// The grid the relative tables are built for (required with `useRelPos`).
    public let inputSize: (height: Int, width: Int)?

    public let qkv: Linear
    public let proj: Linear
    /// `rel_pos_h`: (2H − 1, headDim), zero-initialised as in the reference
    public let relPosH: Parameter?
    /// `rel_pos_w`: (2W − 1, headDim), zero-initialised as in the reference
    public let relPosW: Parameter?

    // Kept for backward (training mode only):
    // t: (B, H, W, 3C) the qkv projection; probabilities: (B, heads, N, N)
    private var qkvOutput: Tensor?
    private var probabilities: Tensor?

    public init(dim: Int, heads: Int, qkvBias: Bool = true, useRelPos: Bool = false,
                inputSize: (height: Int, width: Int)? = nil) {
        precondition(heads > 0 && dim % heads == 0, "ViTAttention: heads \(heads) must divide dim \(dim)")
        precondition(!useRelPos || inputSize != nil,
                     "ViTAttention: inputSize must be given when useRelPos is true")
        self.dim = dim
        self.heads = heads
        self.useRelPos = useRelPos
        self.inputSize = inputSize
        qkv = Linear(dim, 3 * dim, bias: qkvBias)
        proj = Linear(dim, dim)
        if useRelPos, let s = inputSize {
            relPosH = Parameter(Tensor(zeros: [2 * s.height - 1, dim / heads]), decays: false)
            relPosW = Parameter(Tensor(zeros: [2 * s.width - 1, dim / heads]), decays: false)
        } else {
            relPosH = nil
            relPosW = nil
        }
    }

    public func namedParameters() -> [(String, Parameter)] {
        var p = prefixed("qkv.", qkv) + prefixed("proj.", proj)
        if let relPosH, let relPosW { p += [("rel_pos_h", relPosH), ("rel_pos_w", relPosW)] }
        return p
    }

    private var name: String { "ViTAttention(\(dim), heads \(heads)\(useRelPos ? ", rel pos" : ""))" }

    /// Stops with a message naming the layer when x has the wrong shape.
    public func checkInput(_ x: Tensor) {
        precondition(x.rank == 4 && x.shape[3] == dim, "\(name): expected (B, H, W, \(dim)), got \(x.shape)")
        if useRelPos, let s = inputSize {
            precondition(x.shape[1] == s.height && x.shape[2] == s.width,
                         "\(name): relative position tables are built for a \(s.height)×\(s.width) grid, "
                         + "got input \(x.shape); the reference would interpolate them, which is not supported")
        }
    }

    /// x: (B, H, W, C) -> y: (B, H, W, C)
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        checkInput(x)
        let B = x.shape[0], H = x.shape[1], W = x.shape[2], C = dim, d = headDim, nh = heads
        let N = H * W, LH = 2 * H - 1, LW = 2 * W - 1
        let keep = mode.keepsActivations
        let t = qkv.forward(x, mode: mode)  // (B, H, W, 3C)
        var o = Tensor.empty([B, H, W, C])
        // p: (B, heads, N, N) when kept, else one (N, N) scratch reused by every head
        var p = Tensor.empty(keep ? [B, nh, N, N] : [N, N])
        let pStride = keep ? N * N : 0
        // ph: (N, 2H − 1) = q · rel_pos_hᵀ, pw: (N, 2W − 1) = q · rel_pos_wᵀ (scratch)
        var ph = Tensor.empty(useRelPos ? [N, LH] : [0])
        var pw = Tensor.empty(useRelPos ? [N, LW] : [0])
        let rh = relPosH?.value ?? Tensor(zeros: [0]), rw = relPosW?.value ?? Tensor(zeros: [0])
        let scale = 1 / Float(d).squareRoot()
        let rel = useRelPos
        t.data.withUnsafeBufferPointer { tb in
        o.data.withUnsafeMutableBufferPointer { ob in
        p.data.withUnsafeMutableBufferPointer { pb in
        ph.data.withUnsafeMutableBufferPointer { phb in
        pw.data.withUnsafeMutableBufferPointer { pwb in
        rh.data.withUnsafeBufferPointer { rhb in
        rw.data.withUnsafeBufferPointer { rwb in
            for b in 0..<B {
                for h in 0..<nh {
                    let q = tb.baseAddress! + b * N * 3 * C + h * d  // (N, d), row stride 3C
                    let k = q + C, v = q + 2 * C
                    let s = pb.baseAddress! + (b * nh + h) * pStride  // (N, N)
                    // S (N, N) = scale · q · kᵀ
                    gemm(transB: true, m: N, n: N, k: d, alpha: scale, a: q, lda: 3 * C, b: k, ldb: 3 * C,
                         c: s, ldc: N)
                    if rel {
                        let phP = phb.baseAddress!, pwP = pwb.baseAddress!
                        // ph (N, LH) = q · rel_pos_hᵀ;  pw (N, LW) = q · rel_pos_wᵀ
                        gemm(transB: true, m: N, n: LH, k: d, a: q, lda: 3 * C, b: rhb.baseAddress!, ldb: d,
                             c: phP, ldc: LH)
                        gemm(transB: true, m: N, n: LW, k: d, a: q, lda: 3 * C, b: rwb.baseAddress!, ldb: d,
                             c: pwP, ldc: LW)
                        // S[(qh,qw), (kh,kw)] += ph[n, qh − kh + H − 1] + pw[n, qw − kw + W − 1]
                        parallelChunks(N, costPerItem: N) { range in
                            for n in range {
                                let qh = n / W, qw = n % W
                                let row = s + n * N, hr = phP + n * LH + qh + H - 1, wr = pwP + n * LW + qw + W - 1
                                for kh in 0..<H {
                                    let a = hr[-kh], r = row + kh * W
                                    for kw in 0..<W { r[kw] += a + wr[-kw] }
                                }
                            }
                        }
                    }
                    softmaxRows(s, rows: N, n: N)
                    // o_h (N, d) = P (N, N) · v (N, d)
                    gemm(m: N, n: d, k: N, a: s, lda: N, b: v, ldb: 3 * C,
                         c: ob.baseAddress! + b * N * C + h * d, ldc: C)
                }
            }
        } } } } } } }
        if keep {
            qkvOutput = t
            probabilities = p
        } else {
            qkvOutput = nil
            probabilities = nil
        }
        return proj.forward(o, mode: mode)
    }

    /// dy: (B, H, W, C) -> dx: (B, H, W, C); accumulates the gradients of qkv, proj and the
    /// relative tables (scatter-added over every query/key pair, batch and head).
    public func backward(_ dy: Tensor) -> Tensor {
        guard let t = qkvOutput, let p = probabilities else {
            preconditionFailure("\(name).backward without a training-mode forward")
        }
        let B = t.shape[0], H = t.shape[1], W = t.shape[2], C = dim, d = headDim, nh = heads
        let N = H * W, LH = 2 * H - 1, LW = 2 * W - 1
        precondition(dy.shape == [B, H, W, C], "\(name).backward: expected dy of shape \([B, H, W, C]), got \(dy.shape)")
        let dO = proj.backward(dy)  // (B, H, W, C)
        var dt = Tensor.empty([B, H, W, 3 * C])
        // ds: (N, N) scratch: dL/dP, then dL/dS;  dph: (N, LH), dpw: (N, LW) scratch
        var ds = Tensor.empty([N, N])
        var dph = Tensor.empty(useRelPos ? [N, LH] : [0])
        var dpw = Tensor.empty(useRelPos ? [N, LW] : [0])
        let rh = relPosH?.value ?? Tensor(zeros: [0]), rw = relPosW?.value ?? Tensor(zeros: [0])
        var grh = relPosH?.grad ?? Tensor(zeros: [0]), grw = relPosW?.grad ?? Tensor(zeros: [0])
        let scale = 1 / Float(d).squareRoot()
        let rel = useRelPos
        t.data.withUnsafeBufferPointer { tb in
        p.data.withUnsafeBufferPointer { pb in
        dO.data.withUnsafeBufferPointer { gb in
        dt.data.withUnsafeMutableBufferPointer { dtb in
        ds.data.withUnsafeMutableBufferPointer { sb in
        dph.data.withUnsafeMutableBufferPointer { dphb in
        dpw.data.withUnsafeMutableBufferPointer { dpwb in
        rh.data.withUnsafeBufferPointer { rhb in
        rw.data.withUnsafeBufferPointer { rwb in
        grh.data.withUnsafeMutableBufferPointer { grhb in
        grw.data.withUnsafeMutableBufferPointer { grwb in
            let s = sb.baseAddress!
            for b in 0..<B {
                for h in 0..<nh {
                    let off = b * N * 3 * C + h * d
                    let q = tb.baseAddress! + off, k = q + C, v = q + 2 * C  // (N, d), stride 3C
                    let dq = dtb.baseAddress! + off, dk = dq + C, dv = dq + 2 * C
                    let ph = pb.baseAddress! + (b * nh + h) * N * N     // (N, N)
                    let go = gb.baseAddress! + b * N * C + h * d        // dO_h: (N, d), stride C
                    // dP (N, N) = dO_h · vᵀ
                    gemm(transB: true, m: N, n: N, k: d, a: go, lda: C, b: v, ldb: 3 * C, c: s, ldc: N)
                    // dv (N, d) = Pᵀ · dO_h
                    gemm(transA: true, m: N, n: d, k: N, a: ph, lda: N, b: go, ldb: C, c: dv, ldc: 3 * C)
                    softmaxRowsBackward(probabilities: ph, gradient: s, rows: N, n: N)
                    // dq (N, d) = scale · dS · k;  dk (N, d) = scale · dSᵀ · q
                    gemm(m: N, n: d, k: N, alpha: scale, a: s, lda: N, b: k, ldb: 3 * C, c: dq, ldc: 3 * C)
                    gemm(transA: true, m: N, n: d, k: N, alpha: scale, a: s, lda: N, b: q, ldb: 3 * C,
                         c: dk, ldc: 3 * C)
                    if rel {
                        let dphP = dphb.baseAddress!, dpwP = dpwb.baseAddress!
                        // dph[n, qh − kh + H − 1] = Σ_kw dS[n, (kh, kw)];  dpw[n, qw − kw + W − 1] = Σ_kh dS[n, (kh, kw)]
                        parallelChunks(N, costPerItem: N) { range in
                            for n in range {
                                let qh = n / W, qw = n % W
                                let hr = dphP + n * LH, wr = dpwP + n * LW, row = s + n * N
                                hr.update(repeating: 0, count: LH)
                                wr.update(repeating: 0, count: LW)
                                let hc = hr + qh + H - 1, wc = wr + qw + W - 1
                                for kh in 0..<H {
                                    let r = row + kh * W
                                    var sum: Float = 0
                                    for kw in 0..<W { sum += r[kw]; wc[-kw] += r[kw] }
                                    hc[-kh] = sum
                                }
                            }
                        }
                        // dq += dph · rel_pos_h + dpw · rel_pos_w
                        gemm(m: N, n: d, k: LH, a: dphP, lda: LH, b: rhb.baseAddress!, ldb: d,
                             beta: 1, c: dq, ldc: 3 * C)
                        gemm(m: N, n: d, k: LW, a: dpwP, lda: LW, b: rwb.baseAddress!, ldb: d,
                             beta: 1, c: dq, ldc: 3 * C)
                        // d rel_pos_h (LH, d) += dphᵀ · q;  d rel_pos_w (LW, d) += dpwᵀ · q
                        gemm(transA: true, m: LH, n: d, k: N, a: dphP, lda: LH, b: q, ldb: 3 * C,
                             beta: 1, c: grhb.baseAddress!, ldc: d)
                        gemm(transA: true, m: LW, n: d, k: N, a: dpwP, lda: LW, b: q, ldb: 3 * C,
                             beta: 1, c: grwb.baseAddress!, ldc: d)
                    }
                }
            }
        } } } } } } } } } } }
        if let relPosH, let relPosW {
            relPosH.grad = grh
            relPosW.grad = grw
        }
        qkvOutput = nil
        probabilities = nil
        return qkv.backward(dt)
    }
}

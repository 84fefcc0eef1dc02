import Foundation
import Tensor

/// SAM's mask-decoder attention (`transformer.py` `Attention`): queries, keys and values are
/// projected from the embedding dimension to an internal dimension `embeddingDim / downsampleRate`,
/// split into heads, combined by per-head scaled dot-product softmax attention, and projected back.
///
///     q' = q_proj(q): (B, Nq, I)   k' = k_proj(k): (B, Nk, I)   v' = v_proj(v): (B, Nk, I)
///     per head h (columns h·d ..< (h+1)·d, d = I / heads):
///         P_h = softmax(q'_h k'_hᵀ / √d): (Nq, Nk)      o_h = P_h v'_h: (Nq, d)
///     y = out_proj(o): (B, Nq, C)
///
/// Checkpoint keys: `q_proj.weight` (I, C), `q_proj.bias` (I), `k_proj.*`, `v_proj.*` likewise,
/// `out_proj.weight` (C, I), `out_proj.bias` (C).
///
/// Three inputs, three input gradients: `forward(q:k:v:mode:)` and `backward(_:) -> (dq, dk, dv)`.
/// Callers that pass one tensor as several inputs (self-attention) add the matching gradients.
public final class MaskDecoderAttention: Module {
    public let embeddingDim: Int
    public let heads: Int
    public let downsampleRate: Int
    /// `embeddingDim / downsampleRate`
    public let internalDim: Int
    /// `internalDim / heads`
    public var headDim: Int { internalDim / heads }

    public let qProj: Linear
    public let kProj: Linear
    public let vProj: Linear
    public let outProj: Linear

    // Kept for backward (training mode only):
    // qp: (B, Nq, I), kp: (B, Nk, I), vp: (B, Nk, I) projected inputs;
    // probabilities: (B, heads, Nq, Nk) softmax outputs.
    private var projected: (q: Tensor, k: Tensor, v: Tensor)?
    private var probabilities: Tensor?
    // after a training-mode folded forward instead (MaskDecoderAttentionFolded.swift)
    var foldedSaved: FoldedSaved?
    // after a training-mode shared-image forward (MaskDecoderAttentionShared.swift)
    var sharedSaved: SharedSaved?

    /// Drops what an earlier training-mode forward kept.
    func resetSaved() {
        projected = nil
        probabilities = nil
        foldedSaved = nil
        sharedSaved = nil
    }

    public init(embeddingDim: Int, heads: Int, downsampleRate: Int = 1) {
        precondition(downsampleRate > 0 && embeddingDim % downsampleRate == 0,
                     "MaskDecoderAttention: downsampleRate \(downsampleRate) must divide embeddingDim \(embeddingDim)")
        let internalDim = embeddingDim / downsampleRate
        precondition(heads > 0 && internalDim % heads == 0,
                     "MaskDecoderAttention: heads \(heads) must divide the internal dimension \(internalDim)")
        self.embeddingDim = embeddingDim
        self.heads = heads
        self.downsampleRate = downsampleRate
        self.internalDim = internalDim
        qProj = Linear(embeddingDim, internalDim)
        kProj = Linear(embeddingDim, internalDim)
        vProj = Linear(embeddingDim, internalDim)
        outProj = Linear(internalDim, embeddingDim)
    }

    public func namedParameters() -> [(String, Parameter)] {
        prefixed("q_proj.", qProj) + prefixed("k_proj.", kProj) + prefixed("v_proj.", vProj)
            + prefixed("out_proj.", outProj)
    }

    /// No projection takes gradients (`freezeParameters()`): training may fold.
    /// (Asked on every training forward: the four projections' flags, no key strings built.)
    public var isFrozen: Bool {
        [qProj, kProj, vProj, outProj].allSatisfy { !$0.weight.requiresGradient && !($0.bias?.requiresGradient ?? false) }
    }

    var name: String { "MaskDecoderAttention(\(embeddingDim), heads \(heads), downsample \(downsampleRate))" }

    /// q: (B, Nq, C), k: (B, Nk, C), v: (B, Nk, C) -> y: (B, Nq, C), C = embeddingDim.
    public func forward(q: Tensor, k: Tensor, v: Tensor, mode: ForwardMode) -> Tensor {
        let C = embeddingDim
        precondition(q.rank == 3 && q.shape[2] == C,
                     "\(name): expected q of shape (B, Nq, \(C)), got \(q.shape)")
        precondition(k.rank == 3 && k.shape[0] == q.shape[0] && k.shape[2] == C,
                     "\(name): expected k of shape (\(q.shape[0]), Nk, \(C)) for q \(q.shape), got \(k.shape)")
        precondition(v.shape == k.shape, "\(name): v \(v.shape) must have the shape of k \(k.shape)")
        let B = q.shape[0], Nq = q.shape[1], Nk = k.shape[1]
        let I = internalDim, d = headDim, nh = heads
        let keep = mode.keepsActivations
        resetSaved()
        if let f = fold(queries: Nq, keys: Nk), !keep || isFrozen {
            // Over many image tokens the big side's projections fold away (MaskDecoderAttentionFolded.swift):
            // in inference, and in training through a frozen layer (input gradients only).
            return keep ? forwardFoldedTraining(q: q, k: k, v: v, fold: f) : forwardFolded(q: q, k: k, v: v, fold: f)
        }
        let qp = qProj.forward(q, mode: mode)  // (B, Nq, I)
        let kp = kProj.forward(k, mode: mode)  // (B, Nk, I)
        let vp = vProj.forward(v, mode: mode)  // (B, Nk, I)
        var o = Tensor.empty([B, Nq, I])
        // p: (B, heads, Nq, Nk) when kept, else one (Nq, Nk) scratch reused by every head
        var p = Tensor.empty(keep ? [B, nh, Nq, Nk] : [Nq, Nk])
        let pStride = keep ? Nq * Nk : 0
        let scale = 1 / Float(d).squareRoot()
        qp.data.withUnsafeBufferPointer { qb in
            kp.data.withUnsafeBufferPointer { kb in
                vp.data.withUnsafeBufferPointer { vb in
                    o.data.withUnsafeMutableBufferPointer { ob in
                        p.data.withUnsafeMutableBufferPointer { pb in
                            for b in 0..<B {
                                for h in 0..<nh {
                                    let qh = qb.baseAddress! + b * Nq * I + h * d  // (Nq, d), row stride I
                                    let kh = kb.baseAddress! + b * Nk * I + h * d  // (Nk, d), row stride I
                                    let vh = vb.baseAddress! + b * Nk * I + h * d  // (Nk, d), row stride I
                                    let ph = pb.baseAddress! + (b * nh + h) * pStride  // (Nq, Nk)
                                    // scores (Nq, Nk) = scale · q_h · k_hᵀ
                                    gemm(transB: true, m: Nq, n: Nk, k: d, alpha: scale, a: qh, lda: I,
                                         b: kh, ldb: I, c: ph, ldc: Nk)
                                    softmaxRows(ph, rows: Nq, n: Nk)
                                    // o_h (Nq, d) = P_h (Nq, Nk) · v_h (Nk, d)
                                    gemm(m: Nq, n: d, k: Nk, a: ph, lda: Nk, b: vh, ldb: I,
                                         c: ob.baseAddress! + b * Nq * I + h * d, ldc: I)
                                }
                            }
                        }
                    }
                }
            }
        }
        if keep {
            projected = (qp, kp, vp)
            probabilities = p
        } else {
            projected = nil
            probabilities = nil
        }
        return outProj.forward(o, mode: mode)
    }

    /// dy: (B, Nq, C) -> (dq: (B, Nq, C), dk: (B, Nk, C), dv: (B, Nk, C)); accumulates the
    /// gradients of all four projections.
    public func backward(_ dy: Tensor) -> (dq: Tensor, dk: Tensor, dv: Tensor) {
        if foldedSaved != nil { return backwardFolded(dy) }
        guard let (qp, kp, vp) = projected, let p = probabilities else {
            preconditionFailure("\(name).backward without a training-mode forward")
        }
        let B = qp.shape[0], Nq = qp.shape[1], Nk = kp.shape[1]
        let I = internalDim, d = headDim, nh = heads
        precondition(dy.shape == [B, Nq, embeddingDim],
                     "\(name).backward: expected dy of shape \([B, Nq, embeddingDim]), got \(dy.shape)")
        let dO = outProj.backward(dy)  // (B, Nq, I)
        var dqp = Tensor.empty([B, Nq, I])
        var dkp = Tensor.empty([B, Nk, I])
        var dvp = Tensor.empty([B, Nk, I])
        // ds: (Nq, Nk) scratch: dL/dP, then dL/dscores
        var ds = Tensor.empty([Nq, Nk])
        let scale = 1 / Float(d).squareRoot()
        qp.data.withUnsafeBufferPointer { qb in
        kp.data.withUnsafeBufferPointer { kb in
        vp.data.withUnsafeBufferPointer { vb in
        p.data.withUnsafeBufferPointer { pb in
        dO.data.withUnsafeBufferPointer { gb in
        dqp.data.withUnsafeMutableBufferPointer { dqb in
        dkp.data.withUnsafeMutableBufferPointer { dkb in
        dvp.data.withUnsafeMutableBufferPointer { dvb in
        ds.data.withUnsafeMutableBufferPointer { sb in
            let s = sb.baseAddress!
            for b in 0..<B {
                for h in 0..<nh {
                    let qOff = b * Nq * I + h * d, kOff = b * Nk * I + h * d
                    let ph = pb.baseAddress! + (b * nh + h) * Nq * Nk  // (Nq, Nk)
                    let go = gb.baseAddress! + qOff                    // dO_h: (Nq, d), stride I
                    // dP (Nq, Nk) = dO_h · v_hᵀ
                    gemm(transB: true, m: Nq, n: Nk, k: d, a: go, lda: I, b: vb.baseAddress! + kOff, ldb: I,
                         c: s, ldc: Nk)
                    // dv_h (Nk, d) = P_hᵀ · dO_h
                    gemm(transA: true, m: Nk, n: d, k: Nq, a: ph, lda: Nk, b: go, ldb: I,
                         c: dvb.baseAddress! + kOff, ldc: I)
                    softmaxRowsBackward(probabilities: ph, gradient: s, rows: Nq, n: Nk)
                    // dq_h (Nq, d) = scale · dS · k_h
                    gemm(m: Nq, n: d, k: Nk, alpha: scale, a: s, lda: Nk, b: kb.baseAddress! + kOff, ldb: I,
                         c: dqb.baseAddress! + qOff, ldc: I)
                    // dk_h (Nk, d) = scale · dSᵀ · q_h
                    gemm(transA: true, m: Nk, n: d, k: Nq, alpha: scale, a: s, lda: Nk,
                         b: qb.baseAddress! + qOff, ldb: I, c: dkb.baseAddress! + kOff, ldc: I)
                }
            }
        } } } } } } } } }
        projected = nil
        probabilities = nil
        return (qProj.backward(dqp), kProj.backward(dkp), vProj.backward(dvp))
    }
}

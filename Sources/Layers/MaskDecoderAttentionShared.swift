import Foundation
import Tensor

// Inference paths of MaskDecoderAttention for the first two-way block when every prompt of a
// batch sees the same image side (one image embedding, no mask input: the reference repeats it
// per prompt). The many image tokens are then projected once for the whole batch, and only the
// few prompt tokens are per prompt:
//
//   tokens → image, k and v shared (1, Nk, C): k' = X_k W_kᵀ + b_k, v' = X_v W_vᵀ + b_v once;
//     per head h, the B·Nq query rows of all prompts together: P_h = softmax(s·q'_h k'_hᵀ),
//     o_h = P_h v'_h (one product per head for the batch, B·Nq·Nk·d multiply-adds each).
//   image → tokens, q shared (1, Nq, C): q' = X_q W_qᵀ + b_q once; per prompt b and head h
//     scores_bh = s·q'_h k'_bhᵀ (Nq, Nk), softmax per row, y_b = b_o + Σ_h P_bh (v'_bh W_o,hᵀ)
//     (the output projection folded into the values, as in the queries fold).
// Against the folds (MaskDecoderAttentionFolded.swift), which multiply the image tokens by a
// per-prompt matrix, this removes 2·Nbig·heads·Nsmall·C multiply-adds per prompt from the first
// and Nbig·heads·Nsmall·C from the second; the projections of the image tokens are made once
// per image by the caller (`TwoWayAttentionBlock.sharedImage`) and reused by every batch.

extension MaskDecoderAttention {
    /// Inference, tokens → image, the keys and values shared by every prompt and projected once:
    /// q: (B, Nq, C), kp = k_proj(k): (1, Nk, I), vp = v_proj(v): (1, Nk, I) → y: (B, Nq, C),
    /// equal to `forward` with k and v repeated B times (up to rounding).
    public func forwardSharedKeys(q: Tensor, projectedKeys kp: Tensor, projectedValues vp: Tensor) -> Tensor {
        let C = embeddingDim, I = internalDim
        precondition(q.rank == 3 && q.shape[2] == C, "\(name).forwardSharedKeys: expected q of shape (B, Nq, \(C)), got \(q.shape)")
        precondition(kp.rank == 3 && kp.shape[0] == 1 && kp.shape[2] == I && vp.shape == kp.shape,
                     "\(name).forwardSharedKeys: expected projected keys and values of shape (1, Nk, \(I)), got \(kp.shape), \(vp.shape)")
        let B = q.shape[0], Nq = q.shape[1], Nk = kp.shape[1], rows = B * Nq
        let d = headDim, nh = heads
        let scale = 1 / Float(d).squareRoot()
        let qp = qProj.forward(q, mode: .inference)  // (B, Nq, I)
        // o: (B, Nq, I); p: (B·Nq, Nk) one head's probabilities, reused
        var o = Tensor.empty([B, Nq, I]), p = Tensor.empty([rows, Nk])
        qp.data.withUnsafeBufferPointer { qb in
        kp.data.withUnsafeBufferPointer { kb in
        vp.data.withUnsafeBufferPointer { vb in
        o.data.withUnsafeMutableBufferPointer { ob in
        p.data.withUnsafeMutableBufferPointer { pb in
            let ps = pb.baseAddress!
            for h in 0..<nh {
                // p (B·Nq, Nk) = softmax(s · q'_h k'_hᵀ), all prompts' query rows at once
                gemm(transB: true, m: rows, n: Nk, k: d, alpha: scale, a: qb.baseAddress! + h * d, lda: I,
                     b: kb.baseAddress! + h * d, ldb: I, c: ps, ldc: Nk)
                softmaxRows(ps, rows: rows, n: Nk)
                // o_h (B·Nq, d) = p · v'_h
                gemm(m: rows, n: d, k: Nk, a: ps, lda: Nk, b: vb.baseAddress! + h * d, ldb: I,
                     c: ob.baseAddress! + h * d, ldc: I)
            }
        } } } } }
        return outProj.forward(o, mode: .inference)
    }

    /// Inference, image → tokens, the queries shared by every prompt and projected once:
    /// qp = q_proj(q): (1, Nq, I), k: (B, Nk, C), v: (B, Nk, C) → y: (B, Nq, C), equal to
    /// `forward` with q repeated B times (up to rounding).
    public func forwardSharedQueries(projectedQueries qp: Tensor, k: Tensor, v: Tensor) -> Tensor {
        let C = embeddingDim, I = internalDim
        precondition(qp.rank == 3 && qp.shape[0] == 1 && qp.shape[2] == I,
                     "\(name).forwardSharedQueries: expected projected queries of shape (1, Nq, \(I)), got \(qp.shape)")
        precondition(k.rank == 3 && k.shape[2] == C && v.shape == k.shape,
                     "\(name).forwardSharedQueries: expected k and v of shape (B, Nk, \(C)), got \(k.shape), \(v.shape)")
        let B = k.shape[0], Nq = qp.shape[1], Nk = k.shape[1]
        let d = headDim, nh = heads, hN = nh * Nk
        let scale = 1 / Float(d).squareRoot()
        let kp = kProj.forward(k, mode: .inference)  // (B, Nk, I)
        let vp = vProj.forward(v, mode: .inference)  // (B, Nk, I)
        // y: (B, Nq, C); p: (Nq, heads·Nk) one prompt's scores → per-head probabilities;
        // u: (heads·Nk, C) its values folded with the output projection
        var y = Tensor.empty([B, Nq, C]), p = Tensor.empty([Nq, hN]), u = Tensor.empty([hN, C])
        let bo = outProj.bias?.value.data ?? [Float](repeating: 0, count: C)
        qp.data.withUnsafeBufferPointer { qb in
        kp.data.withUnsafeBufferPointer { kb in
        vp.data.withUnsafeBufferPointer { vb in
        outProj.weight.value.data.withUnsafeBufferPointer { wob in
        bo.withUnsafeBufferPointer { obb in
        y.data.withUnsafeMutableBufferPointer { yb in
        p.data.withUnsafeMutableBufferPointer { pb in
        u.data.withUnsafeMutableBufferPointer { ub in
            let wo = wob.baseAddress!, sp = pb.baseAddress!, up = ub.baseAddress!
            for b in 0..<B {
                let kbase = kb.baseAddress! + b * Nk * I, vbase = vb.baseAddress! + b * Nk * I
                let ybase = yb.baseAddress! + b * Nq * C
                for h in 0..<nh {
                    // p_h (Nq, Nk) = s · q'_h (Nq, d) · k'_hᵀ (d, Nk), columns h·Nk ..< (h+1)·Nk
                    gemm(transB: true, m: Nq, n: Nk, k: d, alpha: scale, a: qb.baseAddress! + h * d, lda: I,
                         b: kbase + h * d, ldb: I, c: sp + h * Nk, ldc: hN)
                    // u_h (Nk, C) = v'_h (Nk, d) · W_o,hᵀ (d, C)
                    gemm(transB: true, m: Nk, n: C, k: d, a: vbase + h * d, lda: I, b: wo + h * d, ldb: I,
                         c: up + h * Nk * C, ldc: C)
                }
                parallelChunks(Nq, costPerItem: hN * 8) { r in
                    for i in r { for h in 0..<nh { softmaxRow(sp + i * hN + h * Nk, Nk) } }
                }
                // y_b (Nq, C) = b_o + p · u
                for i in 0..<Nq { (ybase + i * C).update(from: obb.baseAddress!, count: C) }
                gemm(m: Nq, n: C, k: hN, a: sp, lda: hN, b: up, ldb: C, beta: 1, c: ybase, ldc: C)
            }
        } } } } } } } }
        return y
    }
}

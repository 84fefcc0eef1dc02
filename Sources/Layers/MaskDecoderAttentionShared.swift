import Foundation
import Tensor

// Paths of MaskDecoderAttention for the first two-way block when every prompt of a batch sees
// the same image side (one image embedding, no mask input: the reference repeats it per prompt).
// The many image tokens are then projected once, and only the few prompt tokens are per prompt:
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
//
// Training through a frozen layer (prompt-in-the-loop) keeps the probabilities and gives the
// gradients of the shared projections summed over the prompts (the caller takes them back
// through the projections once), and the token side's input gradients per prompt:
//   shared keys:    dP_h = dO_h v'_hᵀ, dv'_h = P_hᵀ dO_h, dS = softmax'(dP), dq'_h = s·dS k'_h,
//                   dk'_h = s·dSᵀ q'_h (all prompts' rows stacked: the sums come with the products)
//   shared queries: dP_b = dy_b u_bᵀ, du_b = P_bᵀ dy_b, dS = softmax'(dP) per head,
//                   dv'_bh = du_bh W_o,h, dk'_bh = s·dS_bhᵀ q'_h, dq'_h += s·dS_bh k'_bh

extension MaskDecoderAttention {
    /// Tokens → image, the keys and values shared by every prompt and projected once:
    /// q: (B, Nq, C), kp = k_proj(k): (1, Nk, I), vp = v_proj(v): (1, Nk, I) → y: (B, Nq, C),
    /// equal to `forward` with k and v repeated B times (up to rounding).
    /// In training (`mode.keepsActivations`) it keeps what `backwardSharedKeys` needs.
    public func forwardSharedKeys(q: Tensor, projectedKeys kp: Tensor, projectedValues vp: Tensor,
                                  mode: ForwardMode = .inference) -> Tensor {
        let C = embeddingDim, I = internalDim
        precondition(q.rank == 3 && q.shape[2] == C, "\(name).forwardSharedKeys: expected q of shape (B, Nq, \(C)), got \(q.shape)")
        precondition(kp.rank == 3 && kp.shape[0] == 1 && kp.shape[2] == I && vp.shape == kp.shape,
                     "\(name).forwardSharedKeys: expected projected keys and values of shape (1, Nk, \(I)), got \(kp.shape), \(vp.shape)")
        let B = q.shape[0], Nq = q.shape[1], Nk = kp.shape[1], rows = B * Nq
        let d = headDim, nh = heads
        let scale = 1 / Float(d).squareRoot()
        let keep = mode.keepsActivations
        resetSaved()
        let qp = qProj.forward(q, mode: mode)  // (B, Nq, I)
        // o: (B, Nq, I); p: (heads, B·Nq, Nk) probabilities when kept, else one head's, reused
        var o = Tensor.empty([B, Nq, I]), p = Tensor.empty(keep ? [nh, rows, Nk] : [rows, Nk])
        qp.data.withUnsafeBufferPointer { qb in
        kp.data.withUnsafeBufferPointer { kb in
        vp.data.withUnsafeBufferPointer { vb in
        o.data.withUnsafeMutableBufferPointer { ob in
        p.data.withUnsafeMutableBufferPointer { pb in
            for h in 0..<nh {
                let ps = pb.baseAddress! + (keep ? h * rows * Nk : 0)
                // p (B·Nq, Nk) = softmax(s · q'_h k'_hᵀ), all prompts' query rows at once
                gemm(transB: true, m: rows, n: Nk, k: d, alpha: scale, a: qb.baseAddress! + h * d, lda: I,
                     b: kb.baseAddress! + h * d, ldb: I, c: ps, ldc: Nk)
                softmaxRows(ps, rows: rows, n: Nk)
                // o_h (B·Nq, d) = p · v'_h
                gemm(m: rows, n: d, k: Nk, a: ps, lda: Nk, b: vb.baseAddress! + h * d, ldb: I,
                     c: ob.baseAddress! + h * d, ldc: I)
            }
        } } } } }
        if keep { sharedSaved = .keys(qp: qp, p: p, kp: kp, vp: vp) }
        return outProj.forward(o, mode: mode)
    }

    /// Image → tokens, the queries shared by every prompt and projected once:
    /// qp = q_proj(q): (1, Nq, I), k: (B, Nk, C), v: (B, Nk, C) → y: (B, Nq, C), equal to
    /// `forward` with q repeated B times (up to rounding).
    /// In training (`mode.keepsActivations`) it keeps what `backwardSharedQueries` needs.
    public func forwardSharedQueries(projectedQueries qp: Tensor, k: Tensor, v: Tensor,
                                     mode: ForwardMode = .inference) -> Tensor {
        let C = embeddingDim, I = internalDim
        precondition(qp.rank == 3 && qp.shape[0] == 1 && qp.shape[2] == I,
                     "\(name).forwardSharedQueries: expected projected queries of shape (1, Nq, \(I)), got \(qp.shape)")
        precondition(k.rank == 3 && k.shape[2] == C && v.shape == k.shape,
                     "\(name).forwardSharedQueries: expected k and v of shape (B, Nk, \(C)), got \(k.shape), \(v.shape)")
        let B = k.shape[0], Nq = qp.shape[1], Nk = k.shape[1]
        let d = headDim, nh = heads, hN = nh * Nk
        let scale = 1 / Float(d).squareRoot()
        let keep = mode.keepsActivations
        resetSaved()
        let kp = kProj.forward(k, mode: mode)  // (B, Nk, I)
        let vp = vProj.forward(v, mode: mode)  // (B, Nk, I)
        // y: (B, Nq, C); p: (B or 1, Nq, heads·Nk) scores → per-head probabilities;
        // u: (B or 1, heads·Nk, C) values folded with the output projection (every prompt's
        // kept in training, else one prompt's scratch reused)
        let kept = keep ? B : 1
        var y = Tensor.empty([B, Nq, C]), p = Tensor.empty([kept, Nq, hN]), u = Tensor.empty([kept, hN, C])
        let bo = outProj.bias?.value.data ?? [Float](repeating: 0, count: C)
        qp.data.withUnsafeBufferPointer { qb in
        kp.data.withUnsafeBufferPointer { kb in
        vp.data.withUnsafeBufferPointer { vb in
        outProj.weight.value.data.withUnsafeBufferPointer { wob in
        bo.withUnsafeBufferPointer { obb in
        y.data.withUnsafeMutableBufferPointer { yb in
        p.data.withUnsafeMutableBufferPointer { pb in
        u.data.withUnsafeMutableBufferPointer { ub in
            let wo = wob.baseAddress!
            for b in 0..<B {
                let sp = pb.baseAddress! + (keep ? b * Nq * hN : 0), up = ub.baseAddress! + (keep ? b * hN * C : 0)
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
        if keep { sharedSaved = .queries(qp: qp, kp: kp, p: p, u: u) }
        return y
    }

    /// What a training-mode shared forward keeps (the projections keep their own inputs).
    enum SharedSaved {
        /// qp: (B, Nq, I) projected queries; p: (heads, B·Nq, Nk); kp, vp: (1, Nk, I)
        case keys(qp: Tensor, p: Tensor, kp: Tensor, vp: Tensor)
        /// qp: (1, Nq, I); kp: (B, Nk, I); p: (B, Nq, heads·Nk); u: (B, heads·Nk, C)
        case queries(qp: Tensor, kp: Tensor, p: Tensor, u: Tensor)
    }

    /// After a training-mode `forwardSharedKeys`: dy (B, Nq, C) → dq (B, Nq, C) and the gradients
    /// of the shared projected keys and values (1, Nk, I), summed over the prompts. Inputs only.
    public func backwardSharedKeys(_ dy: Tensor) -> (dq: Tensor, dProjectedKeys: Tensor, dProjectedValues: Tensor) {
        guard case let .keys(qp, p, kp, vp)? = sharedSaved else {
            preconditionFailure("\(name).backwardSharedKeys without a training-mode forwardSharedKeys")
        }
        sharedSaved = nil
        let B = qp.shape[0], Nq = qp.shape[1], Nk = kp.shape[1], rows = B * Nq
        let I = internalDim, d = headDim, nh = heads
        precondition(dy.shape == [B, Nq, embeddingDim], "\(name).backwardSharedKeys: expected dy of shape \([B, Nq, embeddingDim]), got \(dy.shape)")
        let scale = 1 / Float(d).squareRoot()
        let dO = outProj.backward(dy)  // (B, Nq, I)
        // dqp: (B, Nq, I); dkp, dvp: (1, Nk, I); ds: (B·Nq, Nk) one head's dL/dP, then dL/dS
        var dqp = Tensor.empty([B, Nq, I]), dkp = Tensor.empty([1, Nk, I]), dvp = Tensor.empty([1, Nk, I])
        var ds = Tensor.empty([rows, Nk])
        dO.data.withUnsafeBufferPointer { gb in
        qp.data.withUnsafeBufferPointer { qb in
        p.data.withUnsafeBufferPointer { pb in
        kp.data.withUnsafeBufferPointer { kb in
        vp.data.withUnsafeBufferPointer { vb in
        dqp.data.withUnsafeMutableBufferPointer { dqb in
        dkp.data.withUnsafeMutableBufferPointer { dkb in
        dvp.data.withUnsafeMutableBufferPointer { dvb in
        ds.data.withUnsafeMutableBufferPointer { sb in
            let go = gb.baseAddress!, sp = sb.baseAddress!
            for h in 0..<nh {
                let ph = pb.baseAddress! + h * rows * Nk  // (B·Nq, Nk)
                // dP (B·Nq, Nk) = dO_h (B·Nq, d) · v'_hᵀ (d, Nk)
                gemm(transB: true, m: rows, n: Nk, k: d, a: go + h * d, lda: I, b: vb.baseAddress! + h * d, ldb: I,
                     c: sp, ldc: Nk)
                // dv'_h (Nk, d) = Pᵀ (Nk, B·Nq) · dO_h (B·Nq, d)
                gemm(transA: true, m: Nk, n: d, k: rows, a: ph, lda: Nk, b: go + h * d, ldb: I,
                     c: dvb.baseAddress! + h * d, ldc: I)
                softmaxRowsBackward(probabilities: ph, gradient: sp, rows: rows, n: Nk)
                // dq'_h (B·Nq, d) = s · dS · k'_h
                gemm(m: rows, n: d, k: Nk, alpha: scale, a: sp, lda: Nk, b: kb.baseAddress! + h * d, ldb: I,
                     c: dqb.baseAddress! + h * d, ldc: I)
                // dk'_h (Nk, d) = s · dSᵀ · q'_h
                gemm(transA: true, m: Nk, n: d, k: rows, alpha: scale, a: sp, lda: Nk, b: qb.baseAddress! + h * d, ldb: I,
                     c: dkb.baseAddress! + h * d, ldc: I)
            }
        } } } } } } } } }
        return (qProj.backward(dqp), dkp, dvp)
    }

    /// After a training-mode `forwardSharedQueries`: dy (B, Nq, C) → the gradient of the shared
    /// projected queries (1, Nq, I), summed over the prompts, and dk, dv (B, Nk, C). Inputs only.
    public func backwardSharedQueries(_ dy: Tensor) -> (dProjectedQueries: Tensor, dk: Tensor, dv: Tensor) {
        guard case let .queries(qp, kp, p, u)? = sharedSaved else {
            preconditionFailure("\(name).backwardSharedQueries without a training-mode forwardSharedQueries")
        }
        sharedSaved = nil
        let B = kp.shape[0], Nk = kp.shape[1], Nq = qp.shape[1], C = embeddingDim
        let I = internalDim, d = headDim, nh = heads, hN = nh * Nk
        precondition(dy.shape == [B, Nq, C], "\(name).backwardSharedQueries: expected dy of shape \([B, Nq, C]), got \(dy.shape)")
        let scale = 1 / Float(d).squareRoot()
        // dqp: (1, Nq, I) summed over prompts; dkp, dvp: (B, Nk, I); ds: (Nq, heads·Nk) one
        // prompt's dL/dP, then dL/dS; du: (heads·Nk, C) one prompt's dL/du
        var dqp = Tensor(zeros: [1, Nq, I]), dkp = Tensor.empty([B, Nk, I]), dvp = Tensor.empty([B, Nk, I])
        var ds = Tensor.empty([Nq, hN]), du = Tensor.empty([hN, C])
        dy.data.withUnsafeBufferPointer { gb in
        qp.data.withUnsafeBufferPointer { qb in
        kp.data.withUnsafeBufferPointer { kb in
        p.data.withUnsafeBufferPointer { pb in
        u.data.withUnsafeBufferPointer { ub in
        outProj.weight.value.data.withUnsafeBufferPointer { wob in
        dqp.data.withUnsafeMutableBufferPointer { dqb in
        dkp.data.withUnsafeMutableBufferPointer { dkb in
        dvp.data.withUnsafeMutableBufferPointer { dvb in
        ds.data.withUnsafeMutableBufferPointer { sb in
        du.data.withUnsafeMutableBufferPointer { db in
            let wo = wob.baseAddress!, sp = sb.baseAddress!, dup = db.baseAddress!, q = qb.baseAddress!
            for b in 0..<B {
                let g = gb.baseAddress! + b * Nq * C, pp = pb.baseAddress! + b * Nq * hN, up = ub.baseAddress! + b * hN * C
                let kbase = kb.baseAddress! + b * Nk * I
                // dP (Nq, heads·Nk) = dy_b · u_bᵀ; du (heads·Nk, C) = P_bᵀ · dy_b
                gemm(transB: true, m: Nq, n: hN, k: C, a: g, lda: C, b: up, ldb: C, c: sp, ldc: hN)
                gemm(transA: true, m: hN, n: C, k: Nq, a: pp, lda: hN, b: g, ldb: C, c: dup, ldc: C)
                parallelChunks(Nq, costPerItem: hN * 4) { r in
                    for i in r { for h in 0..<nh { softmaxRowBackward(pp + i * hN + h * Nk, sp + i * hN + h * Nk, Nk) } }
                }
                for h in 0..<nh {
                    // dv'_bh (Nk, d) = du_h (Nk, C) · W_o,h (C, d)
                    gemm(m: Nk, n: d, k: C, a: dup + h * Nk * C, lda: C, b: wo + h * d, ldb: I,
                         c: dvb.baseAddress! + b * Nk * I + h * d, ldc: I)
                    // dq'_h (Nq, d) += s · dS_h (Nq, Nk) · k'_bh (Nk, d)
                    gemm(m: Nq, n: d, k: Nk, alpha: scale, a: sp + h * Nk, lda: hN, b: kbase + h * d, ldb: I,
                         beta: 1, c: dqb.baseAddress! + h * d, ldc: I)
                    // dk'_bh (Nk, d) = s · dS_hᵀ (Nk, Nq) · q'_h (Nq, d)
                    gemm(transA: true, m: Nk, n: d, k: Nq, alpha: scale, a: sp + h * Nk, lda: hN, b: q + h * d, ldb: I,
                         c: dkb.baseAddress! + b * Nk * I + h * d, ldc: I)
                }
            }
        } } } } } } } } } } }
        return (dqp, kProj.backward(dkp), vProj.backward(dvp))
    }
}

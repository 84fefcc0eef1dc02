import Foundation
import Tensor

// Inference-only fast paths of MaskDecoderAttention for the mask decoder's shapes: a few prompt tokens
// (Nq ≈ 7) against thousands of image tokens (4096), or the other way round. The projections of
// the many tokens (Nk·C·I multiply-adds each) are folded into the few tokens' side, which is
// exact algebra (only the rounding differs):
//
//   tokens → image (few queries, many keys): per head h, with W_k,h / W_v,h the rows h·d..<(h+1)·d
//   of the key/value weights (d, C) and X_k, X_v the raw key/value inputs (Nk, C):
//     scores_h = s·q'_h (X_k W_k,hᵀ + b_k,h)ᵀ = (s·q'_h W_k,h) X_kᵀ + (a constant per row)
//     softmax is invariant to a per-row constant, so P_h = softmax((s·q'_h W_k,h) X_kᵀ);
//     o_h = P_h (X_v W_v,hᵀ + b_v,h) = (P_h X_v) W_v,hᵀ + b_v,h   (rows of P_h sum to 1).
//   image → tokens (many queries, few keys): with W_q,h (d, C) and W_o,h = out_proj columns (C, d):
//     scores_h = s·(X_q W_q,hᵀ + b_q,h) k'_hᵀ = X_q (s·W_q,hᵀ k'_hᵀ) + s·b_q,h k'_hᵀ
//     y = Σ_h P_h (v'_h W_o,hᵀ) + b_o
// Each costs 2·Nbig·(heads·Nsmall)·C multiply-adds instead of the projections' (2 to 4)·Nbig·C·I,
// a win when heads·Nsmall < I (8 · 7 = 56 < 128 in SAM's decoder).
//
// Training through a frozen layer (prompt-in-the-loop: the gradient reaches the embedding, the
// decoder's weights stay) keeps the folded forms' intermediates and backpropagates through them
// to the inputs alone (the dropped per-row score constant has no gradient: softmax ignores it):
//   tokens → image: dPX = dO_h W_v,h, dX_v = Pᵀ dPX, dP = dPX X_vᵀ, dS = softmax'(dP),
//                   dX_k = dSᵀ A, dA = dS X_k, dq'_h = s·dA_h W_k,hᵀ
//   image → tokens: dP = dY Uᵀ, dU = Pᵀ dY, dS = softmax'(dP) per head, dX_q = dS Gᵀ,
//                   dG = X_qᵀ dS, de = Σ_rows dS, dk'_h = s·(dG_hᵀ W_q,hᵀ + de_h b_q,hᵀ), dv'_h = dU_h W_o,h

extension MaskDecoderAttention {
    /// Which folded form `forward` uses in inference for these token counts, if any: the large
    /// side must have at least `foldMinimumTokens` tokens and heads · (small side) < internalDim.
    public enum Fold: Sendable, Equatable { case keys, queries }

    /// The smallest token count of the large side for which inference folds (below it the plain
    /// path is as fast and the rounding stays the plain path's).
    public static let foldMinimumTokens = 256

    /// The fold `forward` picks for Nq queries and Nk keys in inference (nil: the plain path).
    public func fold(queries Nq: Int, keys Nk: Int) -> Fold? {
        if Nk >= Self.foldMinimumTokens && Nk >= Nq && heads * Nq < internalDim { return .keys }
        if Nq >= Self.foldMinimumTokens && Nq > Nk && heads * Nk < internalDim { return .queries }
        return nil
    }

    /// Inference with one of the folded forms (for any sizes; `forward` calls it only where it
    /// pays). q: (B, Nq, C), k: (B, Nk, C), v: (B, Nk, C) -> y: (B, Nq, C). Keeps nothing.
    public func forwardFolded(q: Tensor, k: Tensor, v: Tensor, fold: Fold) -> Tensor {
        let C = embeddingDim
        precondition(q.rank == 3 && q.shape[2] == C,
                     "MaskDecoderAttention(\(C)).forwardFolded: expected q of shape (B, Nq, \(C)), got \(q.shape)")
        precondition(k.rank == 3 && k.shape[0] == q.shape[0] && k.shape[2] == C && v.shape == k.shape,
                     "MaskDecoderAttention(\(C)).forwardFolded: expected k and v of shape (\(q.shape[0]), Nk, \(C)), got \(k.shape), \(v.shape)")
        switch fold {
        case .keys: return foldedOverKeys(q: q, k: k, v: v, mode: .inference)
        case .queries: return foldedOverQueries(q: q, k: k, v: v, mode: .inference)
        }
    }

    // MARK: The folds, in inference and in training through a frozen layer

    /// What a training-mode folded forward keeps (the projections keep their own inputs).
    enum FoldedSaved {
        /// a: (B, heads·Nq, C) folded queries; p: (B, heads·Nq, Nk); k, v: (B, Nk, C) the inputs
        case keys(a: Tensor, p: Tensor, k: Tensor, v: Tensor)
        /// q: (B, Nq, C) the input; g: (B, C, heads·Nk); p: (B, Nq, heads·Nk); u: (B, heads·Nk, C)
        case queries(q: Tensor, g: Tensor, p: Tensor, u: Tensor)
    }

    /// Training-mode forward of a frozen layer in a folded form; `backward` then goes through it.
    func forwardFoldedTraining(q: Tensor, k: Tensor, v: Tensor, fold: Fold) -> Tensor {
        switch fold {
        case .keys: return foldedOverKeys(q: q, k: k, v: v, mode: .training)
        case .queries: return foldedOverQueries(q: q, k: k, v: v, mode: .training)
        }
    }

    /// Few queries, many keys: the key and value projections fold into the queries' side. In
    /// training (`mode.keepsActivations`) a and p are kept for every batch item, else one item's
    /// scratch is reused.
    private func foldedOverKeys(q: Tensor, k: Tensor, v: Tensor, mode: ForwardMode) -> Tensor {
        let B = q.shape[0], Nq = q.shape[1], Nk = k.shape[1], C = embeddingDim
        let I = internalDim, d = headDim, nh = heads, hN = nh * Nq, keep = mode.keepsActivations
        let scale = 1 / Float(d).squareRoot()
        let qp = qProj.forward(q, mode: mode)  // (B, Nq, I)
        var o = Tensor.empty([B, Nq, I])
        // a: (B or 1, heads·Nq, C) folded queries; p: (B or 1, heads·Nq, Nk) scores → probabilities;
        // px: (heads·Nq, C) scratch
        var a = Tensor.empty([keep ? B : 1, hN, C]), p = Tensor.empty([keep ? B : 1, hN, Nk]), px = Tensor.empty([hN, C])
        let aStride = keep ? hN * C : 0, pStride = keep ? hN * Nk : 0
        let bv = vProj.bias?.value.data ?? [Float](repeating: 0, count: I)
        qp.data.withUnsafeBufferPointer { qb in
        k.data.withUnsafeBufferPointer { kb in
        v.data.withUnsafeBufferPointer { vb in
        kProj.weight.value.data.withUnsafeBufferPointer { wkb in
        vProj.weight.value.data.withUnsafeBufferPointer { wvb in
        bv.withUnsafeBufferPointer { bvb in
        o.data.withUnsafeMutableBufferPointer { ob in
        a.data.withUnsafeMutableBufferPointer { ab in
        p.data.withUnsafeMutableBufferPointer { sb in
        px.data.withUnsafeMutableBufferPointer { xb in
            let wk = wkb.baseAddress!, wv = wvb.baseAddress!, pp = xb.baseAddress!
            for b in 0..<B {
                let qbase = qb.baseAddress! + b * Nq * I, obase = ob.baseAddress! + b * Nq * I
                let ap = ab.baseAddress! + b * aStride, sp = sb.baseAddress! + b * pStride
                for h in 0..<nh {
                    // a_h (Nq, C) = s · q'_h (Nq, d) · W_k,h (d, C)
                    gemm(m: Nq, n: C, k: d, alpha: scale, a: qbase + h * d, lda: I, b: wk + h * d * C, ldb: C,
                         c: ap + h * Nq * C, ldc: C)
                }
                // p (heads·Nq, Nk) = softmax(a · X_kᵀ)
                gemm(transB: true, m: hN, n: Nk, k: C, a: ap, lda: C, b: kb.baseAddress! + b * Nk * C, ldb: C,
                     c: sp, ldc: Nk)
                softmaxRows(sp, rows: hN, n: Nk)
                // px (heads·Nq, C) = P · X_v
                gemm(m: hN, n: C, k: Nk, a: sp, lda: Nk, b: vb.baseAddress! + b * Nk * C, ldb: C, c: pp, ldc: C)
                for i in 0..<Nq { (obase + i * I).update(from: bvb.baseAddress!, count: I) }
                for h in 0..<nh {
                    // o_h (Nq, d) = px_h (Nq, C) · W_v,hᵀ (C, d) + b_v,h
                    gemm(transB: true, m: Nq, n: d, k: C, a: pp + h * Nq * C, lda: C, b: wv + h * d * C, ldb: C,
                         beta: 1, c: obase + h * d, ldc: I)
                }
            }
        } } } } } } } } } }
        if keep { foldedSaved = .keys(a: a, p: p, k: k, v: v) }
        return outProj.forward(o, mode: mode)
    }

    /// Many queries, few keys: the query and output projections fold into the keys' side. In
    /// training g, p and u are kept for every batch item, else one item's scratch is reused.
    private func foldedOverQueries(q: Tensor, k: Tensor, v: Tensor, mode: ForwardMode) -> Tensor {
        let B = q.shape[0], Nq = q.shape[1], Nk = k.shape[1], C = embeddingDim
        let I = internalDim, d = headDim, nh = heads, hN = nh * Nk, keep = mode.keepsActivations
        let scale = 1 / Float(d).squareRoot()
        let kp = kProj.forward(k, mode: mode)  // (B, Nk, I)
        let vp = vProj.forward(v, mode: mode)  // (B, Nk, I)
        var y = Tensor.empty([B, Nq, C])
        // g: (B or 1, C, heads·Nk) folded keys; p: (B or 1, Nq, heads·Nk) scores → per-head
        // probabilities; u: (B or 1, heads·Nk, C) values folded with the output projection
        let kept = keep ? B : 1
        var g = Tensor.empty([kept, C, hN]), p = Tensor.empty([kept, Nq, hN]), u = Tensor.empty([kept, hN, C])
        var e = [Float](repeating: 0, count: hN)
        let bq = qProj.bias?.value.data ?? [Float](repeating: 0, count: I)
        let bo = outProj.bias?.value.data ?? [Float](repeating: 0, count: C)
        q.data.withUnsafeBufferPointer { qb in
        kp.data.withUnsafeBufferPointer { kb in
        vp.data.withUnsafeBufferPointer { vb in
        qProj.weight.value.data.withUnsafeBufferPointer { wqb in
        outProj.weight.value.data.withUnsafeBufferPointer { wob in
        y.data.withUnsafeMutableBufferPointer { yb in
        g.data.withUnsafeMutableBufferPointer { gb in
        p.data.withUnsafeMutableBufferPointer { sb in
        u.data.withUnsafeMutableBufferPointer { ub in
            let wq = wqb.baseAddress!, wo = wob.baseAddress!
            for b in 0..<B {
                let kbase = kb.baseAddress! + b * Nk * I, vbase = vb.baseAddress! + b * Nk * I
                let ybase = yb.baseAddress! + b * Nq * C
                let item = keep ? b : 0
                let gp = gb.baseAddress! + item * C * hN, sp = sb.baseAddress! + item * Nq * hN, up = ub.baseAddress! + item * hN * C
                for h in 0..<nh {
                    // g_h (C, Nk) = s · W_q,hᵀ (C, d) · k'_hᵀ (d, Nk)
                    gemm(transA: true, transB: true, m: C, n: Nk, k: d, alpha: scale, a: wq + h * d * C, lda: C,
                         b: kbase + h * d, ldb: I, c: gp + h * Nk, ldc: hN)
                    // e_h (Nk) = s · b_q,h · k'_hᵀ
                    for j in 0..<Nk {
                        var acc: Float = 0
                        for t in 0..<d { acc += bq[h * d + t] * kbase[j * I + h * d + t] }
                        e[h * Nk + j] = scale * acc
                    }
                    // u_h (Nk, C) = v'_h (Nk, d) · W_o,hᵀ (d, C)
                    gemm(transB: true, m: Nk, n: C, k: d, a: vbase + h * d, lda: I, b: wo + h * d, ldb: I,
                         c: up + h * Nk * C, ldc: C)
                }
                // p (Nq, heads·Nk) = e + X_q · g, then a softmax per (row, head) segment
                e.withUnsafeBufferPointer { eb in
                    for i in 0..<Nq { (sp + i * hN).update(from: eb.baseAddress!, count: hN) }
                }
                gemm(m: Nq, n: hN, k: C, a: qb.baseAddress! + b * Nq * C, lda: C, b: gp, ldb: hN, beta: 1, c: sp, ldc: hN)
                parallelChunks(Nq, costPerItem: hN * 8) { rows in
                    for r in rows { for h in 0..<nh { softmaxRow(sp + r * hN + h * Nk, Nk) } }
                }
                // y (Nq, C) = b_o + P · u
                bo.withUnsafeBufferPointer { obb in
                    for i in 0..<Nq { (ybase + i * C).update(from: obb.baseAddress!, count: C) }
                }
                gemm(m: Nq, n: C, k: hN, a: sp, lda: hN, b: up, ldb: C, beta: 1, c: ybase, ldc: C)
            }
        } } } } } } } } }
        if keep { foldedSaved = .queries(q: q, g: g, p: p, u: u) }
        return y
    }

    /// `backward` after a training-mode folded forward: dy (B, Nq, C) -> (dq, dk, dv), inputs only.
    func backwardFolded(_ dy: Tensor) -> (dq: Tensor, dk: Tensor, dv: Tensor) {
        guard let saved = foldedSaved else { preconditionFailure("\(name).backward without a training-mode forward") }
        foldedSaved = nil
        switch saved {
        case let .keys(a, p, k, v): return foldedOverKeysBackward(dy, a: a, p: p, k: k, v: v)
        case let .queries(q, g, p, u): return foldedOverQueriesBackward(dy, q: q, g: g, p: p, u: u)
        }
    }

    private func foldedOverKeysBackward(_ dy: Tensor, a: Tensor, p: Tensor, k: Tensor, v: Tensor)
        -> (dq: Tensor, dk: Tensor, dv: Tensor) {
        let B = k.shape[0], Nk = k.shape[1], C = embeddingDim, hN = a.shape[1]
        let I = internalDim, d = headDim, nh = heads, Nq = hN / nh
        precondition(dy.shape == [B, Nq, C], "\(name).backward: expected dy of shape \([B, Nq, C]), got \(dy.shape)")
        let scale = 1 / Float(d).squareRoot()
        let dO = outProj.backward(dy)  // (B, Nq, I)
        var dqp = Tensor.empty([B, Nq, I]), dk = Tensor.empty([B, Nk, C]), dv = Tensor.empty([B, Nk, C])
        // dpx: (heads·Nq, C) dL/dPX, then dL/dA; ds: (heads·Nq, Nk) dL/dP, then dL/dS
        var dpx = Tensor.empty([hN, C]), ds = Tensor.empty([hN, Nk])
        dO.data.withUnsafeBufferPointer { gb in
        a.data.withUnsafeBufferPointer { ab in
        p.data.withUnsafeBufferPointer { pb in
        k.data.withUnsafeBufferPointer { kb in
        v.data.withUnsafeBufferPointer { vb in
        kProj.weight.value.data.withUnsafeBufferPointer { wkb in
        vProj.weight.value.data.withUnsafeBufferPointer { wvb in
        dqp.data.withUnsafeMutableBufferPointer { dqb in
        dk.data.withUnsafeMutableBufferPointer { dkb in
        dv.data.withUnsafeMutableBufferPointer { dvb in
        dpx.data.withUnsafeMutableBufferPointer { xb in
        ds.data.withUnsafeMutableBufferPointer { sb in
            let wk = wkb.baseAddress!, wv = wvb.baseAddress!, xp = xb.baseAddress!, sp = sb.baseAddress!
            for b in 0..<B {
                let go = gb.baseAddress! + b * Nq * I, ap = ab.baseAddress! + b * hN * C, pp = pb.baseAddress! + b * hN * Nk
                let xk = kb.baseAddress! + b * Nk * C, xv = vb.baseAddress! + b * Nk * C
                for h in 0..<nh {
                    // dpx_h (Nq, C) = dO_h (Nq, d) · W_v,h (d, C)
                    gemm(m: Nq, n: C, k: d, a: go + h * d, lda: I, b: wv + h * d * C, ldb: C, c: xp + h * Nq * C, ldc: C)
                }
                // dX_v (Nk, C) = Pᵀ (Nk, heads·Nq) · dpx (heads·Nq, C)
                gemm(transA: true, m: Nk, n: C, k: hN, a: pp, lda: Nk, b: xp, ldb: C, c: dvb.baseAddress! + b * Nk * C, ldc: C)
                // dP (heads·Nq, Nk) = dpx · X_vᵀ, then dS
                gemm(transB: true, m: hN, n: Nk, k: C, a: xp, lda: C, b: xv, ldb: C, c: sp, ldc: Nk)
                softmaxRowsBackward(probabilities: pp, gradient: sp, rows: hN, n: Nk)
                // dX_k (Nk, C) = dSᵀ (Nk, heads·Nq) · A (heads·Nq, C)
                gemm(transA: true, m: Nk, n: C, k: hN, a: sp, lda: Nk, b: ap, ldb: C, c: dkb.baseAddress! + b * Nk * C, ldc: C)
                // dA (heads·Nq, C) = dS · X_k (into dpx's buffer)
                gemm(m: hN, n: C, k: Nk, a: sp, lda: Nk, b: xk, ldb: C, c: xp, ldc: C)
                for h in 0..<nh {
                    // dq'_h (Nq, d) = s · dA_h (Nq, C) · W_k,hᵀ (C, d)
                    gemm(transB: true, m: Nq, n: d, k: C, alpha: scale, a: xp + h * Nq * C, lda: C, b: wk + h * d * C, ldb: C,
                         c: dqb.baseAddress! + b * Nq * I + h * d, ldc: I)
                }
            }
        } } } } } } } } } } } }
        return (qProj.backward(dqp), dk, dv)
    }

    private func foldedOverQueriesBackward(_ dy: Tensor, q: Tensor, g: Tensor, p: Tensor, u: Tensor)
        -> (dq: Tensor, dk: Tensor, dv: Tensor) {
        let B = q.shape[0], Nq = q.shape[1], C = embeddingDim, hN = g.shape[2]
        let I = internalDim, d = headDim, nh = heads, Nk = hN / nh
        precondition(dy.shape == [B, Nq, C], "\(name).backward: expected dy of shape \([B, Nq, C]), got \(dy.shape)")
        let scale = 1 / Float(d).squareRoot()
        var dq = Tensor.empty([B, Nq, C]), dkp = Tensor.empty([B, Nk, I]), dvp = Tensor.empty([B, Nk, I])
        // ds: (Nq, heads·Nk) dL/dP, then dL/dS; dg: (C, heads·Nk); du: (heads·Nk, C)
        var ds = Tensor.empty([Nq, hN]), dg = Tensor.empty([C, hN]), du = Tensor.empty([hN, C])
        let bq = qProj.bias?.value.data ?? [Float](repeating: 0, count: I)
        dy.data.withUnsafeBufferPointer { yb in
        q.data.withUnsafeBufferPointer { qb in
        g.data.withUnsafeBufferPointer { gb in
        p.data.withUnsafeBufferPointer { pb in
        u.data.withUnsafeBufferPointer { ub in
        qProj.weight.value.data.withUnsafeBufferPointer { wqb in
        outProj.weight.value.data.withUnsafeBufferPointer { wob in
        dq.data.withUnsafeMutableBufferPointer { dqb in
        dkp.data.withUnsafeMutableBufferPointer { dkb in
        dvp.data.withUnsafeMutableBufferPointer { dvb in
        ds.data.withUnsafeMutableBufferPointer { sb in
        dg.data.withUnsafeMutableBufferPointer { dgb in
        du.data.withUnsafeMutableBufferPointer { dub in
            let wq = wqb.baseAddress!, wo = wob.baseAddress!, sp = sb.baseAddress!, dgp = dgb.baseAddress!, dup = dub.baseAddress!
            for b in 0..<B {
                let gy = yb.baseAddress! + b * Nq * C, xq = qb.baseAddress! + b * Nq * C
                let gp = gb.baseAddress! + b * C * hN, pp = pb.baseAddress! + b * Nq * hN, up = ub.baseAddress! + b * hN * C
                // dP (Nq, heads·Nk) = dY · uᵀ; du (heads·Nk, C) = Pᵀ · dY
                gemm(transB: true, m: Nq, n: hN, k: C, a: gy, lda: C, b: up, ldb: C, c: sp, ldc: hN)
                gemm(transA: true, m: hN, n: C, k: Nq, a: pp, lda: hN, b: gy, ldb: C, c: dup, ldc: C)
                // dS per (row, head) segment
                parallelChunks(Nq, costPerItem: hN * 4) { rows in
                    for r in rows { for h in 0..<nh { softmaxRowBackward(pp + r * hN + h * Nk, sp + r * hN + h * Nk, Nk) } }
                }
                // dX_q (Nq, C) = dS · gᵀ; dg (C, heads·Nk) = X_qᵀ · dS
                gemm(transB: true, m: Nq, n: C, k: hN, a: sp, lda: hN, b: gp, ldb: hN, c: dqb.baseAddress! + b * Nq * C, ldc: C)
                gemm(transA: true, m: C, n: hN, k: Nq, a: xq, lda: C, b: sp, ldb: hN, c: dgp, ldc: hN)
                // de (heads·Nk) = Σ_rows dS
                var de = [Double](repeating: 0, count: hN)
                for r in 0..<Nq { for j in 0..<hN { de[j] += Double(sp[r * hN + j]) } }
                let kbase = dkb.baseAddress! + b * Nk * I, vbase = dvb.baseAddress! + b * Nk * I
                for h in 0..<nh {
                    // dk'_h (Nk, d) = s · (dg_hᵀ (Nk, C) · W_q,hᵀ (C, d) + de_h b_q,hᵀ)
                    gemm(transA: true, transB: true, m: Nk, n: d, k: C, alpha: scale, a: dgp + h * Nk, lda: hN,
                         b: wq + h * d * C, ldb: C, c: kbase + h * d, ldc: I)
                    for j in 0..<Nk {
                        let e = scale * Float(de[h * Nk + j])
                        for t in 0..<d { kbase[j * I + h * d + t] += e * bq[h * d + t] }
                    }
                    // dv'_h (Nk, d) = du_h (Nk, C) · W_o,h (C, d), W_o,h = out_proj.weight[:, h·d..<(h+1)·d]
                    gemm(m: Nk, n: d, k: C, a: dup + h * Nk * C, lda: C, b: wo + h * d, ldb: I, c: vbase + h * d, ldc: I)
                }
            }
        } } } } } } } } } } } } }
        return (dq, kProj.backward(dkp), vProj.backward(dvp))
    }
}

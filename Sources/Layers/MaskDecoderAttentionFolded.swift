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
        case .keys: return foldedOverKeys(q: q, k: k, v: v)
        case .queries: return foldedOverQueries(q: q, k: k, v: v)
        }
    }

    /// Few queries, many keys: the key and value projections fold into the queries' side.
    private func foldedOverKeys(q: Tensor, k: Tensor, v: Tensor) -> Tensor {
        let B = q.shape[0], Nq = q.shape[1], Nk = k.shape[1], C = embeddingDim
        let I = internalDim, d = headDim, nh = heads, hN = nh * Nq
        let scale = 1 / Float(d).squareRoot()
        let qp = qProj.forward(q, mode: .inference)  // (B, Nq, I)
        var o = Tensor.empty([B, Nq, I])
        // a: (heads·Nq, C) folded queries; s: (heads·Nq, Nk) scores → probabilities; px: (heads·Nq, C)
        var a = Tensor.empty([hN, C]), s = Tensor.empty([hN, Nk]), px = Tensor.empty([hN, C])
        let bv = vProj.bias?.value.data ?? [Float](repeating: 0, count: I)
        qp.data.withUnsafeBufferPointer { qb in
        k.data.withUnsafeBufferPointer { kb in
        v.data.withUnsafeBufferPointer { vb in
        kProj.weight.value.data.withUnsafeBufferPointer { wkb in
        vProj.weight.value.data.withUnsafeBufferPointer { wvb in
        bv.withUnsafeBufferPointer { bvb in
        o.data.withUnsafeMutableBufferPointer { ob in
        a.data.withUnsafeMutableBufferPointer { ab in
        s.data.withUnsafeMutableBufferPointer { sb in
        px.data.withUnsafeMutableBufferPointer { pb in
            let ap = ab.baseAddress!, sp = sb.baseAddress!, pp = pb.baseAddress!
            let wk = wkb.baseAddress!, wv = wvb.baseAddress!
            for b in 0..<B {
                let qbase = qb.baseAddress! + b * Nq * I, obase = ob.baseAddress! + b * Nq * I
                for h in 0..<nh {
                    // a_h (Nq, C) = s · q'_h (Nq, d) · W_k,h (d, C)
                    gemm(m: Nq, n: C, k: d, alpha: scale, a: qbase + h * d, lda: I, b: wk + h * d * C, ldb: C,
                         c: ap + h * Nq * C, ldc: C)
                }
                // s (heads·Nq, Nk) = a · X_kᵀ
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
        return outProj.forward(o, mode: .inference)
    }

    /// Many queries, few keys: the query and output projections fold into the keys' side.
    private func foldedOverQueries(q: Tensor, k: Tensor, v: Tensor) -> Tensor {
        let B = q.shape[0], Nq = q.shape[1], Nk = k.shape[1], C = embeddingDim
        let I = internalDim, d = headDim, nh = heads, hN = nh * Nk
        let scale = 1 / Float(d).squareRoot()
        let kp = kProj.forward(k, mode: .inference)  // (B, Nk, I)
        let vp = vProj.forward(v, mode: .inference)  // (B, Nk, I)
        var y = Tensor.empty([B, Nq, C])
        // g: (C, heads·Nk) folded keys; e: (heads·Nk) their bias row; s: (Nq, heads·Nk) scores →
        // per-head probabilities; u: (heads·Nk, C) values folded with the output projection
        var g = Tensor.empty([C, hN]), e = [Float](repeating: 0, count: hN)
        var s = Tensor.empty([Nq, hN]), u = Tensor.empty([hN, C])
        let bq = qProj.bias?.value.data ?? [Float](repeating: 0, count: I)
        let bo = outProj.bias?.value.data ?? [Float](repeating: 0, count: C)
        q.data.withUnsafeBufferPointer { qb in
        kp.data.withUnsafeBufferPointer { kb in
        vp.data.withUnsafeBufferPointer { vb in
        qProj.weight.value.data.withUnsafeBufferPointer { wqb in
        outProj.weight.value.data.withUnsafeBufferPointer { wob in
        y.data.withUnsafeMutableBufferPointer { yb in
        g.data.withUnsafeMutableBufferPointer { gb in
        s.data.withUnsafeMutableBufferPointer { sb in
        u.data.withUnsafeMutableBufferPointer { ub in
            let gp = gb.baseAddress!, sp = sb.baseAddress!, up = ub.baseAddress!
            let wq = wqb.baseAddress!, wo = wob.baseAddress!
            for b in 0..<B {
                let kbase = kb.baseAddress! + b * Nk * I, vbase = vb.baseAddress! + b * Nk * I
                let ybase = yb.baseAddress! + b * Nq * C
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
                    // u_h (Nk, C) = v'_h (Nk, d) · W_o,hᵀ (d, C), W_o,h = out_proj.weight[:, h·d..<(h+1)·d]
                    gemm(transB: true, m: Nk, n: C, k: d, a: vbase + h * d, lda: I, b: wo + h * d, ldb: I,
                         c: up + h * Nk * C, ldc: C)
                }
                // s (Nq, heads·Nk) = e + X_q · g, then a softmax per (row, head) segment
                e.withUnsafeBufferPointer { eb in
                    for i in 0..<Nq { (sp + i * hN).update(from: eb.baseAddress!, count: hN) }
                }
                gemm(m: Nq, n: hN, k: C, a: qb.baseAddress! + b * Nq * C, lda: C, b: gp, ldb: hN, beta: 1, c: sp, ldc: hN)
                parallelChunks(Nq, costPerItem: hN * 8) { rows in
                    for r in rows { for h in 0..<nh { softmaxRow(sp + r * hN + h * Nk, Nk) } }
                }
                // y (Nq, C) = b_o + P (Nq, heads·Nk) · u (heads·Nk, C)
                bo.withUnsafeBufferPointer { obb in
                    for i in 0..<Nq { (ybase + i * C).update(from: obb.baseAddress!, count: C) }
                }
                gemm(m: Nq, n: C, k: hN, a: sp, lda: hN, b: up, ldb: C, beta: 1, c: ybase, ldc: C)
            }
        } } } } } } } } }
        return y
    }
}

import Layers
import LayersReference
import Tensor
import TestSupport
import XCTest

/// MaskDecoderAttention's folded inference paths (MaskDecoderAttentionFolded.swift) against the naive Double
/// reference `forwardReference`: relative error ≤ 1e-5 (the folds only reassociate sums), and the
/// dispatch rule `fold(queries:keys:)`.
final class MaskDecoderAttentionFoldedTests: XCTestCase {
    /// Few queries against many keys and many queries against few keys, both folds called
    /// directly at small shapes, with biases (the query bias matters in the queries fold, the key
    /// bias drops out of the keys fold through softmax's shift invariance).
    func testFoldsMatchNaiveReference() {
        var rng = SeededRandom(seed: 71)
        let attn = MaskDecoderAttention(embeddingDim: 32, heads: 4, downsampleRate: 2)
        randomiseParameters(attn, std: 0.3, rng: &rng)
        for (Nq, Nk, fold) in [(3, 50, MaskDecoderAttention.Fold.keys), (50, 3, .queries), (5, 5, .keys), (5, 5, .queries)] {
            let q = Tensor.randomNormal([2, Nq, 32], rng: &rng)
            let k = Tensor.randomNormal([2, Nk, 32], rng: &rng), v = Tensor.randomNormal([2, Nk, 32], rng: &rng)
            let ref = attn.forwardReference(q: q, k: k, v: v)
            let y = attn.forwardFolded(q: q, k: k, v: v, fold: fold)
            XCTAssertEqual(y.shape, [2, Nq, 32])
            XCTAssertLessThanOrEqual(relativeError(y, ref), 1e-5, "Nq \(Nq), Nk \(Nk), fold \(fold)")
        }
    }

    /// `forward` in inference takes the folds at decoder-like shapes (a few tokens against
    /// hundreds of image tokens) and still equals the reference; training mode never folds.
    func testInferenceDispatchAtDecoderShapes() {
        var rng = SeededRandom(seed: 72)
        let attn = MaskDecoderAttention(embeddingDim: 64, heads: 4, downsampleRate: 1)  // internal dim 64
        randomiseParameters(attn, std: 0.2, rng: &rng)
        XCTAssertEqual(attn.fold(queries: 7, keys: 300), .keys)
        XCTAssertEqual(attn.fold(queries: 300, keys: 7), .queries)
        XCTAssertNil(attn.fold(queries: 7, keys: 7))          // both small: plain path
        XCTAssertNil(attn.fold(queries: 16, keys: 300))       // 4·16 = 64 ≥ internal dim 64: no gain
        XCTAssertNil(attn.fold(queries: 3, keys: 200))        // below foldMinimumTokens
        let tokens = Tensor.randomNormal([1, 3, 64], rng: &rng), image = Tensor.randomNormal([1, 300, 64], rng: &rng)
        for (q, k) in [(tokens, image), (image, tokens)] {
            let ref = attn.forwardReference(q: q, k: k, v: k)
            XCTAssertLessThanOrEqual(relativeError(attn.forward(q: q, k: k, v: k, mode: .inference), ref), 1e-5)
            XCTAssertLessThanOrEqual(relativeError(attn.forward(q: q, k: k, v: k, mode: .training), ref), 1e-5)
            _ = attn.backward(Tensor(zeros: [1, q.shape[1], 64]))
        }
    }
}

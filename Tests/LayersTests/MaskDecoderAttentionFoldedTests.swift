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
    /// hundreds of image tokens) and still equals the reference; training mode of a layer that
    /// takes gradients never folds.
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

    /// Training through a frozen layer folds too (`forwardFoldedTraining`, `backwardFolded`): at
    /// decoder-like shapes its output and its three input gradients equal the plain path's (the
    /// same weights, not frozen), relative error ≤ 1e-5, both folds, with biases (the query bias
    /// has its own term in the queries fold's key gradient). The frozen layer forms no parameter
    /// gradients.
    func testFrozenTrainingFoldsMatchThePlainPath() throws {
        var rng = SeededRandom(seed: 73)
        let plain = MaskDecoderAttention(embeddingDim: 64, heads: 4, downsampleRate: 2)  // internal dim 32
        randomiseParameters(plain, std: 0.2, rng: &rng)
        let frozen = MaskDecoderAttention(embeddingDim: 64, heads: 4, downsampleRate: 2)
        try frozen.load(plain.stateDict())
        frozen.freezeParameters()
        for (Nq, Nk) in [(3, 300), (300, 3)] {
            XCTAssertNotNil(frozen.fold(queries: Nq, keys: Nk))
            let q = Tensor.randomNormal([2, Nq, 64], rng: &rng)
            let k = Tensor.randomNormal([2, Nk, 64], rng: &rng), v = Tensor.randomNormal([2, Nk, 64], rng: &rng)
            let dy = Tensor.randomNormal([2, Nq, 64], rng: &rng)
            let y = frozen.forward(q: q, k: k, v: v, mode: .training)
            let yRef = plain.forward(q: q, k: k, v: v, mode: .training)
            XCTAssertLessThanOrEqual(relativeError(y, yRef), 1e-5, "Nq \(Nq), Nk \(Nk): output")
            let g = frozen.backward(dy), gRef = plain.backward(dy)
            XCTAssertLessThanOrEqual(relativeError(g.dq, gRef.dq), 1e-5, "Nq \(Nq), Nk \(Nk): dq")
            XCTAssertLessThanOrEqual(relativeError(g.dk, gRef.dk), 1e-5, "Nq \(Nq), Nk \(Nk): dk")
            XCTAssertLessThanOrEqual(relativeError(g.dv, gRef.dv), 1e-5, "Nq \(Nq), Nk \(Nk): dv")
        }
        XCTAssertTrue(frozen.namedParameters().allSatisfy { $0.1.grad.data.allSatisfy { $0 == 0 } })
    }

    /// The shared-image inference paths (MaskDecoderAttentionShared.swift): B prompts against one
    /// image side projected once equal the naive reference with that side repeated per prompt,
    /// relative error ≤ 1e-5, in both directions, with biases (the queries' bias sits in the
    /// shared projection, the output bias in every prompt's result).
    func testSharedImagePathsMatchNaiveReference() {
        var rng = SeededRandom(seed: 74)
        let attn = MaskDecoderAttention(embeddingDim: 32, heads: 4, downsampleRate: 2)
        randomiseParameters(attn, std: 0.3, rng: &rng)
        let B = 3, tokens = 5, image = 60
        let q = Tensor.randomNormal([B, tokens, 32], rng: &rng)
        let k = Tensor.randomNormal([1, image, 32], rng: &rng), v = Tensor.randomNormal([1, image, 32], rng: &rng)
        func repeated(_ x: Tensor) -> Tensor { Tensor(shape: [B] + x.shape.dropFirst(), data: Array((0..<B).map { _ in x.data }.joined())) }
        // tokens → image: k and v shared
        let y = attn.forwardSharedKeys(q: q, projectedKeys: attn.kProj.forward(k, mode: .inference),
                                       projectedValues: attn.vProj.forward(v, mode: .inference))
        XCTAssertEqual(y.shape, [B, tokens, 32])
        XCTAssertLessThanOrEqual(relativeError(y, attn.forwardReference(q: q, k: repeated(k), v: repeated(v))), 1e-5, "shared keys")
        // image → tokens: the image side is the queries
        let keys = Tensor.randomNormal([B, tokens, 32], rng: &rng), values = Tensor.randomNormal([B, tokens, 32], rng: &rng)
        let z = attn.forwardSharedQueries(projectedQueries: attn.qProj.forward(k, mode: .inference), k: keys, v: values)
        XCTAssertEqual(z.shape, [B, image, 32])
        XCTAssertLessThanOrEqual(relativeError(z, attn.forwardReference(q: repeated(k), k: keys, v: values)), 1e-5, "shared queries")
    }
}

import Layers
import LayersReference
import Tensor
import TestSupport
import XCTest

final class TinyViTAttentionTests: XCTestCase {
    private func randomAttention(dim: Int, keyDim: Int, heads: Int, ratio: Double, resolution: (Int, Int),
                                 rng: inout SeededRandom) -> TinyViTAttention {
        let a = TinyViTAttention(dim: dim, keyDim: keyDim, heads: heads, attentionRatio: ratio, resolution: resolution)
        randomiseParameters(a, rng: &rng)
        a.norm.weight.value = a.norm.weight.value.map { 1 + $0 }
        a.attentionBiases.value = .randomNormal(a.attentionBiases.shape, rng: &rng)
        return a
    }

    /// `forward(map:window:mode:)` (LayerNorm, qkv and proj on the map's own tokens, the padded
    /// tokens filled with qkv(LayerNorm(0)) = Wqkv·β + b) equals the reference's order — zero-pad
    /// the map to whole windows, attend, crop — in its output, the input gradient and every
    /// parameter gradient, with a nonzero β (the padding row's own gradient path): relative error
    /// ≤ 1e-5. 5×6 in 4² windows pads to 8×8; 8×4 needs none.
    func testMapForwardEqualsZeroPaddedWindows() {
        var rng = SeededRandom(seed: 77)
        for (H, W) in [(5, 6), (8, 4)] {
            let a = randomAttention(dim: 8, keyDim: 4, heads: 2, ratio: 1, resolution: (4, 4), rng: &rng)
            let x = Tensor.randomNormal([2, H, W, 8], rng: &rng)
            let dy = Tensor.randomNormal([2, H, W, 8], rng: &rng)
            // the reference's order
            a.zeroGradients()
            let windows = windowPartition(x, window: 4)
            let yRef = windowReverse(a.forward(windows, mode: .training), window: 4, batch: 2, height: H, width: W)
            let dxRef = windowReverse(a.backward(windowPartition(dy, window: 4)), window: 4, batch: 2, height: H, width: W)
            let gradsRef = a.namedParameters().map { $0.1.grad }
            // the map's own tokens
            a.zeroGradients()
            let y = a.forward(map: x, window: 4, mode: .training)
            let dx = a.backward(dy)
            XCTAssertLessThan(relativeError(y, yRef), 1e-5, "\(H)×\(W): output")
            XCTAssertLessThan(relativeError(dx, dxRef), 1e-5, "\(H)×\(W): input gradient")
            for ((name, p), gRef) in zip(a.namedParameters(), gradsRef) {
                XCTAssertLessThan(relativeError(p.grad, gRef), 1e-5, "\(H)×\(W): \(name) gradient")
            }
            XCTAssertGreaterThan(gradsRef[2].data.map(abs).max()!, 0.01, "norm.bias gets a gradient")
        }
    }

    /// A frozen attention (`freezeParameters()`: empty gradients) still gives the input gradient,
    /// the padded map's included, and writes no parameter gradient.
    func testFrozenAttentionGivesTheInputGradientOnly() {
        var rng = SeededRandom(seed: 78)
        let a = randomAttention(dim: 8, keyDim: 4, heads: 2, ratio: 1, resolution: (4, 4), rng: &rng)
        let x = Tensor.randomNormal([1, 5, 6, 8], rng: &rng), dy = Tensor.randomNormal([1, 5, 6, 8], rng: &rng)
        _ = a.forward(map: x, window: 4, mode: .training)
        let dxRef = a.backward(dy)
        a.freezeParameters()
        _ = a.forward(map: x, window: 4, mode: .training)
        XCTAssertLessThan(relativeError(a.backward(dy), dxRef), 1e-6)
        XCTAssertTrue(a.namedParameters().allSatisfy { $0.1.grad.count == 0 })
    }

    /// The offset table follows the reference's first-seen order, which for row-major token pairs
    /// starting at (0, 0) is |Δrow| · width + |Δcol|; and the keys/shapes are the checkpoint's.
    func testOffsetIndicesAndKeys() {
        for (R, C) in [(3, 4), (7, 7), (1, 5)] {
            let (idx, count) = TinyViTAttention.offsetIndices((R, C))
            XCTAssertEqual(count, R * C)
            let N = R * C
            for i in 0..<N { for j in 0..<N {
                XCTAssertEqual(Int(idx[i * N + j]), abs(i / C - j / C) * C + abs(i % C - j % C))
            } }
        }
        let a = TinyViTAttention(dim: 8, keyDim: 3, heads: 2, attentionRatio: 2, resolution: (3, 4))
        XCTAssertEqual(a.valueDim, 6)
        let shapes = a.namedParameters().map { "\($0.0) \($0.1.shape)" }
        XCTAssertEqual(shapes, ["attention_biases [2, 12]", "norm.weight [8]", "norm.bias [8]",
                                "qkv.weight [24, 8]", "qkv.bias [24]", "proj.weight [8, 12]", "proj.bias [8]"])
        XCTAssertFalse(a.attentionBiases.decays)
        XCTAssertTrue(a.qkv.weight.decays)
        // Python's int(): 0.5 · 5 → 2.
        XCTAssertEqual(TinyViTAttention(dim: 6, keyDim: 5, heads: 2, attentionRatio: 0.5, resolution: (2, 3)).valueDim, 2)
    }

    /// Finite differences (eps 1e-2, atol 1e-3, rtol 1e-2, the GradientCheck defaults; every
    /// coordinate of the small tensors, 40 samples of the larger ones): a non-square window with
    /// d ≠ keyDim ≠ dim/heads, and a square MobileSAM-style one.
    func testAttentionFiniteDifferences() {
        var rng = SeededRandom(seed: 31)
        for (dim, kd, heads, ratio, res) in [(6, 3, 2, 2.0, (2, 3)), (8, 4, 2, 1.0, (2, 2))] {
            let a = randomAttention(dim: dim, keyDim: kd, heads: heads, ratio: ratio, resolution: res, rng: &rng)
            assertGradientsMatchFiniteDifferences(
                a, input: .randomNormal([2, res.0 * res.1, dim], rng: &rng), check: GradientCheck(samples: 40),
                forward: { a.forward($0, mode: .training) }, backward: { a.backward($0) })
        }
    }

    /// Finite differences for the MLP (same tolerances as above).
    func testMlpFiniteDifferences() {
        var rng = SeededRandom(seed: 32)
        let m = TinyViTMlp(inputFeatures: 5, hiddenFeatures: 9, outputFeatures: 4)
        randomiseParameters(m, rng: &rng)
        m.norm.weight.value = m.norm.weight.value.map { 1 + $0 }
        assertGradientsMatchFiniteDifferences(m, input: .randomNormal([2, 3, 5], rng: &rng), check: GradientCheck(samples: 40),
            forward: { m.forward($0, mode: .training) }, backward: { m.backward($0) })
    }

    /// PyTorch autograd through mobile_sam's own `Attention` in train() mode
    /// (Scripts/refdump/tinyvit_attention.py): forward, dx and every parameter gradient, relative
    /// error ≤ 1e-5; the index table equals the reference's `attention_bias_idxs` exactly.
    func testAttentionMatchesPyTorch() throws {
        for name in ["tinyvit_attention_a", "tinyvit_attention_b", "tinyvit_attention_c"] {
            let f = try Fixture(name)
            let ratio = Double(f.metadata["attn_ratio"]!)!
            let a = TinyViTAttention(dim: f.int("dim"), keyDim: f.int("key_dim"), heads: f.int("heads"),
                                     attentionRatio: ratio, resolution: (f.int("res0"), f.int("res1")))
            XCTAssertEqual(a.biasIndices.map(Float.init), f["index.attention_bias_idxs"].data, name)
            try assertMatchesFixture(f, module: a, tolerance: 1e-5,
                forward: { a.forward($0, mode: .training) }, backward: { a.backward($0) })
            // The naive reference agrees with PyTorch too.
            XCTAssertLessThanOrEqual(relativeError(a.forwardReference(f["x"]), f["y"]), 1e-5, name)
            let r = a.backwardReference(f["x"], f["dy"])
            XCTAssertLessThanOrEqual(relativeError(r.dx, f["dx"]), 1e-5, name)
            for (k, g) in r.gradients {
                XCTAssertLessThanOrEqual(relativeError(g, f["grad." + k]), 1e-5, "\(name) reference \(k)")
            }
        }
    }

    /// PyTorch autograd through mobile_sam's `Mlp`: relative error ≤ 1e-5.
    func testMlpMatchesPyTorch() throws {
        for name in ["tinyvit_mlp", "tinyvit_mlp_default"] {
            let f = try Fixture(name)
            let m = name == "tinyvit_mlp_default"
                ? TinyViTMlp(inputFeatures: f.int("in"))
                : TinyViTMlp(inputFeatures: f.int("in"), hiddenFeatures: f.int("hidden"), outputFeatures: f.int("out"))
            XCTAssertEqual([m.hiddenFeatures, m.outputFeatures], [f.int("hidden"), f.int("out")])
            try assertMatchesFixture(f, module: m, tolerance: 1e-5,
                forward: { m.forward($0, mode: .training) }, backward: { m.backward($0) })
        }
    }

    /// The gemm path against the plain-loop Double reference at a MobileSAM-like shape (3 windows
    /// of 7×7 tokens, dim 64, 2 heads, keyDim 32, ratio 1; large enough for the parallel paths):
    /// forward, dx and every parameter gradient within 1e-5 relative. Gradients accumulate (+=).
    func testAttentionMatchesNaiveReferenceAtRealisticShape() {
        var rng = SeededRandom(seed: 33)
        let a = randomAttention(dim: 64, keyDim: 32, heads: 2, ratio: 1, resolution: (7, 7), rng: &rng)
        a.qkv.weight.value.scale(by: 0.5)  // keep the scores O(1–10): a realistic softmax, not one-hot
        let x = Tensor.randomNormal([3, 49, 64], rng: &rng)
        let dy = Tensor.randomNormal([3, 49, 64], rng: &rng)
        let y = a.forward(x, mode: .training)
        let yr = a.forwardReference(x)
        XCTAssertLessThanOrEqual(relativeError(y, yr), 1e-5)
        a.zeroGradients()
        let dx = a.backward(dy)
        let r = a.backwardReference(x, dy)
        XCTAssertLessThanOrEqual(relativeError(dx, r.dx), 1e-5)
        for (k, p) in a.namedParameters() {
            XCTAssertLessThanOrEqual(relativeError(p.grad, r.gradients[k]!), 1e-5, k)
        }
        // A second forward/backward adds the same gradients again.
        _ = a.forward(x, mode: .training)
        _ = a.backward(dy)
        for (k, p) in a.namedParameters() {
            XCTAssertLessThanOrEqual(relativeError(p.grad, r.gradients[k]! * 2), 1e-5, "accumulated \(k)")
        }
        // Inference gives the same output.
        XCTAssertEqual(a.forward(x, mode: .inference).data, y.data)
    }
}

import Layers
import LayersReference
import Tensor
import TestSupport
import XCTest

/// MaskDecoderAttention, ViTAttention, MLPBlock, MLP and ViTBlock.
///
/// Finite differences use the GradientCheck defaults (eps 1e-2, atol 1e-3, rtol 1e-2) unless a
/// test says otherwise: every layer here is smooth except ReLU, whose kinks the MLP test keeps
/// away from (see there). PyTorch fixtures (Scripts/refdump/sam_attention.py, built from
/// MobileSAM's own classes): relative error ≤ 1e-5 on the output, every input gradient and every
/// parameter gradient. Naive references vs the gemm path: relative error ≤ 1e-5.
final class MaskDecoderAttentionTests: XCTestCase {
    // MARK: MaskDecoderAttention

    /// Three separate inputs, Nq ≠ Nk, downsample 1 and 2.
    func testMaskDecoderAttentionFiniteDifferences() {
        var rng = SeededRandom(seed: 31)
        for (rate, Nq, Nk) in [(1, 3, 5), (2, 4, 2)] {
            let attn = MaskDecoderAttention(embeddingDim: 8, heads: 2, downsampleRate: rate)
            randomiseParameters(attn, rng: &rng)
            var inputs = [Tensor.randomNormal([2, Nq, 8], rng: &rng), .randomNormal([2, Nk, 8], rng: &rng),
                          .randomNormal([2, Nk, 8], rng: &rng)]
            let report = GradientCheck().run(
                inputs: &inputs, parameters: attn.namedParameters(),
                forward: { attn.forward(q: $0[0], k: $0[1], v: $0[2], mode: .training) },
                backward: { let g = attn.backward($0); return [g.dq, g.dk, g.dv] })
            XCTAssertTrue(report.passed, "downsample \(rate): \(report)")
        }
    }

    /// Self-attention (one tensor as q, k and v): the caller's sum of the three gradients is the
    /// gradient of the shared input.
    func testMaskDecoderAttentionSharedInputFiniteDifferences() {
        var rng = SeededRandom(seed: 32)
        let attn = MaskDecoderAttention(embeddingDim: 6, heads: 3, downsampleRate: 1)
        randomiseParameters(attn, rng: &rng)
        assertGradientsMatchFiniteDifferences(attn, input: .randomNormal([2, 4, 6], rng: &rng),
            forward: { attn.forward(q: $0, k: $0, v: $0, mode: .training) },
            backward: { let g = attn.backward($0); return g.dq + g.dk + g.dv })
    }

    func testMaskDecoderAttentionMatchesPyTorch() throws {
        for name in ["sam_attention_ds1", "sam_attention_ds2"] {
            let f = try Fixture(name)
            let attn = MaskDecoderAttention(embeddingDim: f.int("embedding"), heads: f.int("heads"),
                                    downsampleRate: f.int("downsample"))
            try attn.load(f.stateDict())
            attn.zeroGradients()
            let y = attn.forward(q: f["x"], k: f["x1"], v: f["x2"], mode: .training)
            XCTAssertLessThanOrEqual(relativeError(y, f["y"]), 1e-5, "\(name) forward")
            let g = attn.backward(f["dy"])
            XCTAssertLessThanOrEqual(relativeError(g.dq, f["dx"]), 1e-5, "\(name) dq")
            XCTAssertLessThanOrEqual(relativeError(g.dk, f["dx1"]), 1e-5, "\(name) dk")
            XCTAssertLessThanOrEqual(relativeError(g.dv, f["dx2"]), 1e-5, "\(name) dv")
            for (k, p) in attn.namedParameters() where k != "k_proj.bias" {
                XCTAssertLessThanOrEqual(relativeError(p.grad, f["grad." + k]), 1e-5, "\(name) grad \(k)")
            }
            // A key bias shifts every score of a query row by the same q·b, which softmax ignores:
            // its gradient is exactly zero (PyTorch's is rounding noise), so compare it in absolute
            // terms against the scale of the key weights' gradient.
            let scale = Double(f["grad.k_proj.weight"].maxAbs())
            XCTAssertLessThanOrEqual(Double(attn.kProj.bias!.grad.maxAbs()), 1e-6 * scale, "\(name) k_proj.bias")
            XCTAssertLessThanOrEqual(Double(f["grad.k_proj.bias"].maxAbs()), 1e-6 * scale, "\(name) k_proj.bias (PyTorch)")
        }
    }

    /// The gemm path equals plain loops at a bigger shape, in training and inference mode.
    func testMaskDecoderAttentionMatchesNaiveReference() {
        var rng = SeededRandom(seed: 33)
        let attn = MaskDecoderAttention(embeddingDim: 32, heads: 4, downsampleRate: 2)
        randomiseParameters(attn, std: 0.3, rng: &rng)
        let q = Tensor.randomNormal([2, 40, 32], rng: &rng)
        let k = Tensor.randomNormal([2, 70, 32], rng: &rng), v = Tensor.randomNormal([2, 70, 32], rng: &rng)
        let ref = attn.forwardReference(q: q, k: k, v: v)
        let yTrain = attn.forward(q: q, k: k, v: v, mode: .training)
        let yInfer = attn.forward(q: q, k: k, v: v, mode: .inference)
        XCTAssertEqual(yTrain.shape, [2, 40, 32])
        XCTAssertLessThanOrEqual(relativeError(yTrain, ref), 1e-5)
        XCTAssertLessThanOrEqual(relativeError(yInfer, ref), 1e-5)
    }

    // MARK: ViTAttention

    func testViTAttentionFiniteDifferences() {
        var rng = SeededRandom(seed: 34)
        // Relative positions on a non-square 3×4 grid, and plain attention without qkv bias.
        let withRel = ViTAttention(dim: 8, heads: 2, useRelPos: true, inputSize: (3, 4))
        randomiseParameters(withRel, rng: &rng)
        assertGradientsMatchFiniteDifferences(withRel, input: .randomNormal([2, 3, 4, 8], rng: &rng),
            check: GradientCheck(samples: 40),
            forward: { withRel.forward($0, mode: .training) }, backward: { withRel.backward($0) })
        let plain = ViTAttention(dim: 6, heads: 3, qkvBias: false)
        randomiseParameters(plain, rng: &rng)
        assertGradientsMatchFiniteDifferences(plain, input: .randomNormal([1, 2, 3, 6], rng: &rng),
            forward: { plain.forward($0, mode: .training) }, backward: { plain.backward($0) })
    }

    func testViTAttentionMatchesPyTorch() throws {
        for name in ["vit_attention_relpos", "vit_attention_plain"] {
            let f = try Fixture(name)
            let attn = ViTAttention(dim: f.int("dim"), heads: f.int("heads"), qkvBias: f.int("qkv_bias") == 1,
                                    useRelPos: f.int("rel_pos") == 1, inputSize: (f.int("height"), f.int("width")))
            XCTAssertEqual(attn.namedParameters().map(\.0).sorted(),
                           f.stateDict().keys.sorted(), "\(name): keys are the reference state dict's")
            try assertMatchesFixture(f, module: attn, tolerance: 1e-5,
                forward: { attn.forward($0, mode: .training) }, backward: { attn.backward($0) })
        }
    }

    /// The gemm path (with the gathered relative terms) equals plain loops at bigger grids; the
    /// 14×14 grid (SAM's window) is large enough for the relative-position loops to run split
    /// across threads.
    func testViTAttentionMatchesNaiveReference() {
        var rng = SeededRandom(seed: 35)
        for (B, H, W, C, nh) in [(2, 7, 9, 32, 4), (1, 14, 14, 16, 2)] {
            let attn = ViTAttention(dim: C, heads: nh, useRelPos: true, inputSize: (H, W))
            randomiseParameters(attn, std: 0.3, rng: &rng)
            let x = Tensor.randomNormal([B, H, W, C], rng: &rng)
            let ref = attn.forwardReference(x)
            XCTAssertLessThanOrEqual(relativeError(attn.forward(x, mode: .training), ref), 1e-5, "\(H)×\(W)")
            XCTAssertLessThanOrEqual(relativeError(attn.forward(x, mode: .inference), ref), 1e-5, "\(H)×\(W)")
        }
    }

    /// At SAM's 14×14 window the backward's relative-position scatter runs split across threads:
    /// it must give the single-threaded result (to float32 rounding of the gemm, 1e-6 relative).
    func testViTAttentionBackwardParallelMatchesSerial() {
        var rng = SeededRandom(seed: 40)
        let attn = ViTAttention(dim: 16, heads: 2, useRelPos: true, inputSize: (14, 14))
        randomiseParameters(attn, std: 0.3, rng: &rng)
        let x = Tensor.randomNormal([1, 14, 14, 16], rng: &rng), dy = Tensor.randomNormal([1, 14, 14, 16], rng: &rng)
        func run(threads: Int) -> [Tensor] {
            let saved = Threads.count
            Threads.count = threads
            defer { Threads.count = saved }
            attn.zeroGradients()
            _ = attn.forward(x, mode: .training)
            return [attn.backward(dy)] + attn.namedParameters().map { $0.1.grad }
        }
        let serial = run(threads: 1), parallel = run(threads: max(2, Threads.count))
        for (i, (a, b)) in zip(serial, parallel).enumerated() {
            XCTAssertLessThanOrEqual(relativeError(b, a), 1e-6, "tensor \(i)")
        }
    }

    /// Parameter gradients accumulate (+=) across backward passes, the relative tables included.
    func testViTAttentionAccumulatesGradients() {
        var rng = SeededRandom(seed: 36)
        let attn = ViTAttention(dim: 8, heads: 2, useRelPos: true, inputSize: (2, 3))
        randomiseParameters(attn, rng: &rng)
        let x = Tensor.randomNormal([1, 2, 3, 8], rng: &rng), dy = Tensor.randomNormal([1, 2, 3, 8], rng: &rng)
        attn.zeroGradients()
        _ = attn.forward(x, mode: .training); _ = attn.backward(dy)
        let once = attn.namedParameters().map { $0.1.grad }
        _ = attn.forward(x, mode: .training); _ = attn.backward(dy)
        for ((k, p), g) in zip(attn.namedParameters(), once) {
            XCTAssertGreaterThan(g.maxAbs(), 0, k)
            XCTAssertLessThanOrEqual(relativeError(p.grad, g * 2), 1e-6, k)
        }
    }

    // MARK: MLPs

    func testMLPBlockFiniteDifferences() {
        var rng = SeededRandom(seed: 37)
        let mlp = MLPBlock(embeddingDim: 6, mlpDim: 12)
        randomiseParameters(mlp, rng: &rng)
        assertGradientsMatchFiniteDifferences(mlp, input: .randomNormal([2, 3, 6], rng: &rng),
            forward: { mlp.forward($0, mode: .training) }, backward: { mlp.backward($0) })
    }

    /// 3 layers, ReLU, sigmoid output. ReLU has kinks: the check first verifies that no hidden
    /// pre-activation of the unperturbed input lies within 0.01 of 0, and uses eps 1e-3, so no
    /// perturbation crosses a kink (one value moved by 1e-3 moves a pre-activation by at most
    /// 1e-3 · |w| ≲ 2e-3, or 1e-3 · |w₀| · |w₁| ≲ 4e-3 through the first ReLU, for these N(0, 0.5²)
    /// weights); atol 1e-3, rtol 1e-2 as usual (float32 noise in the difference quotient is ~1e-4).
    func testMLPFiniteDifferences() {
        var rng = SeededRandom(seed: 43)
        let mlp = MLP(inputDim: 5, hiddenDim: 7, outputDim: 4, layers: 3, sigmoidOutput: true)
        randomiseParameters(mlp, rng: &rng)
        let x = Tensor.randomNormal([2, 2, 5], rng: &rng)
        // Pre-activations of both ReLUs, recomputed with the layers themselves.
        var h = x
        var closest = Float.infinity
        for i in 0..<2 {
            h = mlp.layers[i].forward(h, mode: .inference)
            closest = min(closest, h.data.map(abs).min()!)
            h = Activation.relu.forward(h)
        }
        XCTAssertGreaterThan(closest, 0.01, "seed puts a ReLU input next to its kink; pick another")
        assertGradientsMatchFiniteDifferences(mlp, input: x, check: GradientCheck(eps: 1e-3, samples: 40),
            forward: { mlp.forward($0, mode: .training) }, backward: { mlp.backward($0) })
    }

    func testMLPsMatchPyTorch() throws {
        let f = try Fixture("mlp_block")
        let block = MLPBlock(embeddingDim: f.int("embedding"), mlpDim: f.int("mlp"))
        try assertMatchesFixture(f, module: block, tolerance: 1e-5,
            forward: { block.forward($0, mode: .training) }, backward: { block.backward($0) })
        let g = try Fixture("mlp3_sigmoid")
        let mlp = MLP(inputDim: g.int("in"), hiddenDim: g.int("hidden"), outputDim: g.int("out"),
                      layers: g.int("layers"), sigmoidOutput: g.int("sigmoid") == 1)
        XCTAssertEqual(mlp.namedParameters().map(\.0),
                       ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias",
                        "layers.2.weight", "layers.2.bias"])
        try assertMatchesFixture(g, module: mlp, tolerance: 1e-5,
            forward: { mlp.forward($0, mode: .training) }, backward: { mlp.backward($0) })
    }

    // MARK: ViTBlock

    /// Windowed with padding (5×6 grid, window 4 -> 2×2 windows over an 8×8 padded map) and
    /// global (window 0) on a 3×4 grid, both with relative positions.
    func testViTBlockFiniteDifferences() {
        var rng = SeededRandom(seed: 39)
        for (H, W, ws) in [(5, 6, 4), (3, 4, 0)] {
            let block = ViTBlock(dim: 8, heads: 2, mlpRatio: 2, useRelPos: true, windowSize: ws, inputSize: (H, W))
            randomiseParameters(block, std: 0.4, rng: &rng)
            // LayerNorm weights near 1 keep the block in a moderate regime.
            for n in [block.norm1, block.norm2] { n.weight.value = n.weight.value.map { 1 + $0 } }
            assertGradientsMatchFiniteDifferences(block, input: .randomNormal([2, H, W, 8], rng: &rng),
                check: GradientCheck(samples: 32),
                forward: { block.forward($0, mode: .training) }, backward: { block.backward($0) })
        }
    }

    func testViTBlockMatchesPyTorch() throws {
        for name in ["vit_block_window", "vit_block_global"] {
            let f = try Fixture(name)
            let block = ViTBlock(dim: f.int("dim"), heads: f.int("heads"), mlpRatio: Double(f.int("mlp_ratio")),
                                 useRelPos: true, windowSize: f.int("window"), inputSize: (f.int("height"), f.int("width")))
            XCTAssertEqual(block.namedParameters().map(\.0).sorted(), f.stateDict().keys.sorted(), name)
            try assertMatchesFixture(f, module: block, tolerance: 1e-5,
                forward: { block.forward($0, mode: .training) }, backward: { block.backward($0) })
            // Inference mode gives the same output.
            XCTAssertLessThanOrEqual(relativeError(block.forward(f["x"], mode: .inference), f["y"]), 1e-5, name)
        }
    }
}

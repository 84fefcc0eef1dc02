import Layers
import Tensor
import TestSupport
import XCTest

/// The RepViT family (Sources/Layers/RepViT.swift) and the bicubic upsampling EdgeSAM's fusion
/// uses: finite differences, PyTorch autograd dumps (Scripts/refdump/repvit.py, float64), and the
/// structural re-parameterisation (fused == unfused in eval mode).
final class RepViTLayerTests: XCTestCase {
    func block(_ f: Fixture) -> RepViTBlock {
        RepViTBlock(inputChannels: f.int("in"), outputChannels: f.int("out"), stride: f.int("stride"),
                    squeezeExcite: f.int("se") == 1, fused: false)
    }

    /// Stride-1 (RepVGGDW + SE) and stride-2 (downsampling + SE) blocks, train mode (batch
    /// statistics, running statistics after the step): relative error ≤ 1e-4 (measured: ≤ 1e-5 but
    /// for the 1×1 depthwise branch's weight, 2.5e-5: it feeds a train-mode BatchNorm alone, which is
    /// invariant to its scale but for eps, so its gradient is an ill-conditioned 1% of the others).
    func testBlocksMatchPyTorch() throws {
        for name in ["repvit_block_s1", "repvit_block_s2"] {
            let f = try Fixture(name)
            let b = block(f)
            try assertMatchesFixture(f, module: b, tolerance: 1e-4, gradientFloor: 0.01,
                                     forward: { b.forward($0, mode: .training) }, backward: { b.backward($0) })
        }
    }

    /// `F.interpolate(×2, bicubic, align_corners=False)` and its gradient (border taps clamped).
    func testBicubicUpsampleMatchesPyTorch() throws {
        let f = try Fixture("bicubic_upsample")
        let y = BicubicUpsample.forward(f["x"], factor: f.int("factor"))
        XCTAssertEqual(y.shape, f["y"].shape)
        XCTAssertLessThanOrEqual(relativeError(y, f["y"]), 1e-6)
        XCTAssertLessThanOrEqual(relativeError(BicubicUpsample.backward(f["dy"], factor: 2), f["dx"]), 1e-6)
    }

    /// Central differences through both block kinds, with and without SE, in train mode (BatchNorm
    /// couples the batch; GELU and the SE's sigmoid curve the loss) and eval mode on 8×8 maps: eps 3e-3, atol
    /// 2e-3, rtol 2e-2 (float32 sums). The 1×1 depthwise branch's weights are kept at |w| ≥ 0.2:
    /// a train-mode BatchNorm of w·x is w's sign times a constant, except within eps of w = 0, where
    /// its slope is ~1/√eps and a difference step crosses it.
    func testBlocksFiniteDifferences() {
        var rng = SeededRandom(seed: 71)
        for (cin, cout, stride, se) in [(6, 6, 1, true), (6, 6, 1, false), (4, 8, 2, true), (4, 6, 2, false)] {
            let b = RepViTBlock(inputChannels: cin, outputChannels: cout, stride: stride, squeezeExcite: se, fused: false)
            randomiseParameters(b, std: 0.4, rng: &rng)
            if let w = b.mixer?.conv1?.conv.weight { w.value = w.value.map { $0 < 0 ? $0 - 0.2 : $0 + 0.2 } }
            for mode in [ForwardMode.training, .evaluationWithGradients] {
                assertGradientsMatchFiniteDifferences(b, input: .randomNormal([2, cin, 8, 8], rng: &rng),
                    check: GradientCheck(eps: 3e-3, atol: 2e-3, rtol: 2e-2),
                    forward: { b.forward($0, mode: mode) }, backward: { b.backward($0) })
            }
        }
    }

    /// The stem, a fused block (plain biased convs: the fused network can be fine-tuned) and the
    /// fusion neck (two inputs).
    func testStemFusedBlockAndNeckFiniteDifferences() {
        var rng = SeededRandom(seed: 72)
        let stem = RepViTStem(inputChannels: 3, outputChannels: 8, fused: false)
        randomiseParameters(stem, std: 0.4, rng: &rng)
        assertGradientsMatchFiniteDifferences(stem, input: .randomNormal([2, 3, 9, 8], rng: &rng),
            check: GradientCheck(atol: 2e-3, rtol: 2e-2),
            forward: { stem.forward($0, mode: .training) }, backward: { stem.backward($0) })
        let fb = RepViTBlock(inputChannels: 4, outputChannels: 6, stride: 2, squeezeExcite: true, fused: true)
        randomiseParameters(fb, std: 0.4, rng: &rng)
        assertGradientsMatchFiniteDifferences(fb, input: .randomNormal([2, 4, 6, 6], rng: &rng),
            check: GradientCheck(atol: 2e-3, rtol: 2e-2),
            forward: { fb.forward($0, mode: .training) }, backward: { fb.backward($0) })
        // LayerNorm2d over few channels curves sharply: eps 1e-3
        let neck = RepViTFusionNeck(stage2Channels: 5, stage3Channels: 6, channels: 8, outputChannels: 8)
        randomiseParameters(neck, std: 0.5, rng: &rng)
        var inputs = [Tensor.randomNormal([2, 5, 4, 6], rng: &rng), Tensor.randomNormal([2, 6, 2, 3], rng: &rng)]
        let report = GradientCheck(eps: 1e-3, atol: 2e-3, rtol: 2e-2).run(inputs: &inputs, parameters: neck.namedParameters(),
            forward: { neck.forward(stage2: $0[0], stage3: $0[1], mode: .training) },
            backward: { let d = neck.backward($0); return [d.stage2, d.stage3] })
        XCTAssertTrue(report.passed, "RepViTFusionNeck: \(report)")
    }

    /// Structural re-parameterisation: each block kind and the stem, with random BatchNorm
    /// statistics, fused into single convs, equal the multi-branch form in eval mode (the layer
    /// path, not the folded inference path) to ≤ 1e-5 relative; the unfused inference path (folded
    /// on the fly) too.
    func testFusedEqualsUnfusedInEvalMode() {
        var rng = SeededRandom(seed: 73)
        func randomiseStatistics(_ m: Module) {
            randomiseParameters(m, std: 0.5, rng: &rng)
            for (k, p) in m.namedParameters() where !p.isTrainable {
                p.value = k.hasSuffix("running_var") ? p.value.map { _ in rng.uniform(0.5, 2) } : .randomNormal(p.shape, std: 0.3, rng: &rng)
            }
        }
        for (cin, cout, stride, se) in [(8, 8, 1, true), (8, 8, 1, false), (8, 16, 2, true), (8, 12, 2, false)] {
            let b = RepViTBlock(inputChannels: cin, outputChannels: cout, stride: stride, squeezeExcite: se, fused: false)
            randomiseStatistics(b)
            let f = RepViTBlock(inputChannels: cin, outputChannels: cout, stride: stride, squeezeExcite: se, fused: true)
            b.fuse(into: f)
            let x = Tensor.randomNormal([2, cin, 9, 7], rng: &rng)
            let reference = b.forward(x, mode: .evaluationWithGradients)
            XCTAssertLessThanOrEqual(relativeError(f.forward(x, mode: .inference), reference), 1e-5, "block \(cin)→\(cout) s\(stride)")
            XCTAssertLessThanOrEqual(relativeError(b.forward(x, mode: .inference), reference), 1e-5, "folded block \(cin)→\(cout) s\(stride)")
            XCTAssertTrue(f.namedParameters().allSatisfy { !$0.0.contains("bn.") && !$0.0.contains("conv1") }, "fused keys")
        }
        let stem = RepViTStem(inputChannels: 3, outputChannels: 8, fused: false)
        randomiseStatistics(stem)
        let fs = RepViTStem(inputChannels: 3, outputChannels: 8, fused: true)
        stem.fuse(into: fs)
        let x = Tensor.randomNormal([1, 3, 16, 16], rng: &rng)
        XCTAssertLessThanOrEqual(relativeError(fs.forward(x, mode: .inference), stem.forward(x, mode: .evaluationWithGradients)), 1e-5)
        XCTAssertEqual(fs.namedParameters().map(\.0), ["0.weight", "0.bias", "2.weight", "2.bias"])
    }

    func testSqueezeExciteWidthsAreTimms() {
        // timm make_divisible(C / 4, 8, round_limit 0): 48 → 16, 96 → 24, 192 → 48, 384 → 96, 8 → 8, 40 → 8
        XCTAssertEqual([48, 96, 192, 384, 8, 40, 24].map(SqueezeExcite.reducedChannels), [16, 24, 48, 96, 8, 8, 8])
    }
}

import Foundation
import Layers
import LayersReference
import Tensor
import TestSupport
import XCTest

/// Conv2d (every kernel path), ConvTranspose2d, BatchNorm2d and TinyViT's conv blocks.
///
/// Tolerances:
/// - fast kernels vs the naive Double references: relative error ≤ 1e-5 (float32 sums of ≤ 2k terms);
/// - PyTorch autograd dumps (Scripts/refdump/conv.py, float64 from float32 values): ≤ 1e-5, forward,
///   input gradient, every parameter gradient and the running statistics after the forward;
/// - finite differences: GradientCheck defaults (eps 1e-2, atol 1e-3, rtol 1e-2) unless a test says
///   otherwise. Convolutions are linear, so only float32 rounding remains; BatchNorm (train mode:
///   the loss couples the whole batch, and GradientCheck simply reruns the full-batch forward) and
///   GELU are smooth, with central-difference error O(eps²). Measured worst error/tolerance ratios
///   (1 = failure): plain convs ≤ 0.01, BatchNorm2d ≈ 0.02, Conv2dBN ≤ 0.05, PatchEmbed ≈ 0.13,
///   MBConv ≤ 0.46, PatchMerging ≤ 0.62 (the 320-wide stride-1 case: large sums, float32 rounding).
final class ConvTests: XCTestCase {

    // MARK: - Helpers

    /// Conv weights ~ N(0, 1/fan_in), conv/BN biases ~ N(0, 0.5²), BN weights 1 + N(0, 0.5²),
    /// running means N(0, 0.5²), running variances U(0.5, 1.5): values of a trained network's size.
    private func randomiseConvParameters(_ module: Module, rng: inout SeededRandom) {
        for (key, p) in module.namedParameters() {
            let shape = p.value.shape
            if key.hasSuffix("running_var") {
                p.value = .randomUniform(shape, 0.5, 1.5, rng: &rng)
            } else if key.hasSuffix("running_mean") || key.hasSuffix("bias") {
                p.value = .randomNormal(shape, std: 0.5, rng: &rng)
            } else if shape.count == 1 {  // BatchNorm weight
                p.value = Tensor.randomNormal(shape, std: 0.5, rng: &rng).map { $0 + 1 }
            } else {
                let fanIn = shape.dropFirst().reduce(1, *)
                p.value = .randomNormal(shape, std: 1 / Float(fanIn).squareRoot(), rng: &rng)
            }
        }
    }

    private func finiteDifferences(_ module: Module, input: Tensor, check: GradientCheck = GradientCheck(),
                                   forward: @escaping (Tensor) -> Tensor, backward: @escaping (Tensor) -> Tensor,
                                   file: StaticString = #filePath, line: UInt = #line) {
        assertGradientsMatchFiniteDifferences(module, input: input, check: check, forward: forward, backward: backward,
                                              file: file, line: line)
    }

    // MARK: - Conv2d kernels vs the naive reference

    private func checkConvAgainstReference(B: Int, C: Int, O: Int, H: Int, W: Int, k: Int, s: Int, p: Int,
                                           groups: Int, bias: Bool = true, expectedPath: Conv2d.Path,
                                           seed: UInt64, file: StaticString = #filePath, line: UInt = #line) {
        var rng = SeededRandom(seed: seed)
        let conv = Conv2d(inputChannels: C, outputChannels: O, kernelSize: k, stride: s, padding: p,
                          groups: groups, bias: bias)
        let label = "\(B)×\(C)×\(H)×\(W) k\(k) s\(s) p\(p) g\(groups) → \(O)"
        XCTAssertEqual(conv.path, expectedPath, label, file: file, line: line)
        randomiseConvParameters(conv, rng: &rng)
        let x = Tensor.randomNormal([B, C, H, W], rng: &rng)
        let y = conv.forward(x, mode: .training)
        let ref = conv2dReference(x, weight: conv.weight.value, bias: conv.bias?.value, stride: s, padding: p, groups: groups)
        XCTAssertEqual(y.shape, ref.shape, label, file: file, line: line)
        XCTAssertLessThanOrEqual(relativeError(y, ref), 1e-5, "forward \(label)", file: file, line: line)

        let dy = Tensor.randomNormal(y.shape, rng: &rng)
        conv.zeroGradients()
        let dx = conv.backward(dy)
        let r = conv2dBackwardReference(x, weight: conv.weight.value, dy: dy, stride: s, padding: p, groups: groups)
        XCTAssertLessThanOrEqual(relativeError(dx, r.dx), 1e-5, "dx \(label)", file: file, line: line)
        XCTAssertLessThanOrEqual(relativeError(conv.weight.grad, r.dWeight), 1e-5, "dW \(label)", file: file, line: line)
        if let b = conv.bias {
            XCTAssertLessThanOrEqual(relativeError(b.grad, r.dBias), 1e-5, "db \(label)", file: file, line: line)
        }

        // Gradients accumulate: a second forward/backward doubles them.
        let once = conv.weight.grad
        _ = conv.forward(x, mode: .training)
        _ = conv.backward(dy)
        XCTAssertLessThanOrEqual(relativeError(conv.weight.grad, once * 2), 1e-6, "accumulation \(label)", file: file, line: line)

        // Without the input gradient: nothing returned, the same parameter gradients (bit for bit).
        conv.zeroGradients()
        _ = conv.forward(x, mode: .training)
        XCTAssertEqual(conv.backward(dy, inputGradient: false).shape, [0], label, file: file, line: line)
        XCTAssertEqual(conv.weight.grad.data, once.data, "dW without dx \(label)", file: file, line: line)
        if let b = conv.bias {
            XCTAssertLessThanOrEqual(relativeError(b.grad, r.dBias), 1e-5, "db without dx \(label)", file: file, line: line)
        }
    }

    func testConvKernelsMatchNaiveReference() {
        // 2×8×17×19 maps (odd sizes: partial windows at the right/bottom edges).
        checkConvAgainstReference(B: 2, C: 8, O: 6, H: 17, W: 19, k: 1, s: 1, p: 0, groups: 1, expectedPath: .pointwise, seed: 1)
        checkConvAgainstReference(B: 2, C: 8, O: 6, H: 17, W: 19, k: 1, s: 1, p: 0, groups: 2, bias: false, expectedPath: .pointwise, seed: 2)
        checkConvAgainstReference(B: 2, C: 8, O: 6, H: 17, W: 19, k: 3, s: 1, p: 1, groups: 1, expectedPath: .im2col, seed: 3)
        checkConvAgainstReference(B: 2, C: 8, O: 6, H: 17, W: 19, k: 3, s: 2, p: 1, groups: 1, expectedPath: .im2col, seed: 4)
        checkConvAgainstReference(B: 2, C: 8, O: 6, H: 17, W: 19, k: 2, s: 2, p: 0, groups: 1, expectedPath: .im2col, seed: 5)
        checkConvAgainstReference(B: 2, C: 8, O: 12, H: 17, W: 19, k: 3, s: 1, p: 1, groups: 4, expectedPath: .im2col, seed: 6)
        checkConvAgainstReference(B: 2, C: 8, O: 4, H: 17, W: 19, k: 3, s: 2, p: 1, groups: 2, bias: false, expectedPath: .im2col, seed: 7)
        checkConvAgainstReference(B: 2, C: 8, O: 8, H: 17, W: 19, k: 3, s: 1, p: 1, groups: 8, expectedPath: .depthwise, seed: 8)
        checkConvAgainstReference(B: 2, C: 8, O: 8, H: 17, W: 19, k: 3, s: 2, p: 1, groups: 8, expectedPath: .depthwise, seed: 9)
        checkConvAgainstReference(B: 2, C: 8, O: 8, H: 17, W: 19, k: 5, s: 1, p: 2, groups: 8, bias: false, expectedPath: .depthwise, seed: 10)
        checkConvAgainstReference(B: 2, C: 8, O: 8, H: 17, W: 19, k: 3, s: 2, p: 0, groups: 8, expectedPath: .depthwise, seed: 11)
        checkConvAgainstReference(B: 2, C: 8, O: 6, H: 17, W: 19, k: 5, s: 3, p: 2, groups: 1, expectedPath: .im2col, seed: 12)
        // SAM ViT's patch embedding: 16×16 kernel, stride 16 (sizes not multiples of 16: the rest is dropped).
        checkConvAgainstReference(B: 2, C: 3, O: 8, H: 34, W: 50, k: 16, s: 16, p: 0, groups: 1, expectedPath: .im2col, seed: 13)
        // Padding larger than needed, 1-pixel-wide input.
        checkConvAgainstReference(B: 1, C: 2, O: 3, H: 1, W: 5, k: 3, s: 1, p: 2, groups: 1, expectedPath: .im2col, seed: 14)
        checkConvAgainstReference(B: 1, C: 3, O: 3, H: 1, W: 5, k: 3, s: 2, p: 2, groups: 3, expectedPath: .depthwise, seed: 15)
    }

    /// Shapes big enough that im2col/col2im, the depthwise loops and the bias sums run on several
    /// workers (work above parallelChunks' threshold).
    func testConvKernelsMatchNaiveReferenceOnParallelShapes() {
        checkConvAgainstReference(B: 2, C: 16, O: 8, H: 33, W: 31, k: 3, s: 1, p: 1, groups: 1, expectedPath: .im2col, seed: 21)
        checkConvAgainstReference(B: 2, C: 16, O: 16, H: 33, W: 31, k: 3, s: 1, p: 1, groups: 16, expectedPath: .depthwise, seed: 22)
        checkConvAgainstReference(B: 2, C: 16, O: 16, H: 33, W: 31, k: 3, s: 2, p: 1, groups: 16, expectedPath: .depthwise, seed: 23)
        checkConvAgainstReference(B: 2, C: 16, O: 8, H: 33, W: 31, k: 1, s: 1, p: 0, groups: 1, expectedPath: .pointwise, seed: 24)
    }

    // MARK: - ConvTranspose2d vs its naive reference

    func testConvTranspose2dMatchesNaiveReference() {
        var rng = SeededRandom(seed: 31)
        for (Ci, Co, k, H, W) in [(6, 4, 2, 5, 7), (3, 5, 3, 4, 3), (16, 8, 2, 17, 19)] {
            let ct = ConvTranspose2d(inputChannels: Ci, outputChannels: Co, kernelSize: k, stride: k)
            randomiseParameters(ct, rng: &rng)
            let x = Tensor.randomNormal([2, Ci, H, W], rng: &rng)
            let y = ct.forward(x, mode: .inference)
            let ref = convTranspose2dReference(x, weight: ct.weight.value, bias: ct.bias?.value, stride: k)
            XCTAssertEqual(y.shape, [2, Co, H * k, W * k])
            XCTAssertLessThanOrEqual(relativeError(y, ref), 1e-5, "ConvTranspose2d \(Ci)→\(Co) k\(k)")
        }
    }

    // MARK: - Finite differences

    func testConv2dFiniteDifferences() {
        var rng = SeededRandom(seed: 41)
        // (C, O, k, s, p, groups, bias, H, W): 3×3, 1×1 without bias, grouped s2, depthwise s1/s2, patchify.
        let configs: [(Int, Int, Int, Int, Int, Int, Bool, Int, Int)] = [
            (3, 4, 3, 1, 1, 1, true, 5, 6), (4, 3, 1, 1, 0, 1, false, 4, 5), (4, 6, 3, 2, 1, 2, true, 7, 6),
            (5, 5, 3, 1, 1, 5, true, 5, 4), (5, 5, 3, 2, 1, 5, false, 7, 6), (3, 4, 4, 4, 0, 1, true, 8, 9),
        ]
        for (C, O, k, s, p, g, bias, H, W) in configs {
            let conv = Conv2d(inputChannels: C, outputChannels: O, kernelSize: k, stride: s, padding: p, groups: g, bias: bias)
            randomiseConvParameters(conv, rng: &rng)
            finiteDifferences(conv, input: .randomNormal([2, C, H, W], rng: &rng),
                              forward: { conv.forward($0, mode: .training) }, backward: { conv.backward($0) })
        }
    }

    func testConvTranspose2dFiniteDifferences() {
        var rng = SeededRandom(seed: 42)
        let ct = ConvTranspose2d(inputChannels: 5, outputChannels: 3, kernelSize: 2, stride: 2)
        randomiseConvParameters(ct, rng: &rng)
        finiteDifferences(ct, input: .randomNormal([2, 5, 3, 4], rng: &rng),
                          forward: { ct.forward($0, mode: .training) }, backward: { ct.backward($0) })
    }

    func testBatchNorm2dFiniteDifferences() {
        var rng = SeededRandom(seed: 43)
        for mode in [ForwardMode.training, .evaluationWithGradients] {
            let bn = BatchNorm2d(4)
            randomiseConvParameters(bn, rng: &rng)
            // Train mode: x̂ couples every value of a channel; FD on the full-batch forward, defaults hold.
            finiteDifferences(bn, input: Tensor.randomNormal([3, 4, 3, 2], std: 1.5, rng: &rng).map { $0 + 0.5 },
                              forward: { bn.forward($0, mode: mode) }, backward: { bn.backward($0) })
        }
    }

    /// BatchNorm with its activation fused (the MBConv / PatchMerging / PatchEmbed path): finite
    /// differences, and the same values as BatchNorm followed by the activation as a separate layer,
    /// bit for bit (the fused passes evaluate the same float expressions, f' from the output as
    /// `Activation.backward(_:input:output:)`), forward, dx and parameter gradients.
    func testBatchNorm2dWithFusedActivation() {
        var rng = SeededRandom(seed: 47)
        for mode in [ForwardMode.training, .evaluationWithGradients] {
            for act in [Activation.gelu, .relu] {
                let fused = BatchNorm2d(4), plain = BatchNorm2d(4)
                randomiseConvParameters(fused, rng: &rng)
                for ((_, p), (_, q)) in zip(fused.namedParameters(), plain.namedParameters()) { q.value = p.value }
                let x = Tensor.randomNormal([3, 4, 5, 6], std: 1.5, rng: &rng).map { $0 + 0.5 }
                let dy = Tensor.randomNormal(x.shape, rng: &rng)
                let y = fused.forward(x, mode: mode, activation: act)
                let h = plain.forward(x, mode: mode)
                let yPlain = act.forward(h)
                XCTAssertEqual(y.data, yPlain.data, "\(act) \(mode): forward")
                fused.zeroGradients(); plain.zeroGradients()
                let dx = fused.backward(dy)
                let dxPlain = plain.backward(act.backward(dy, input: h, output: yPlain))
                XCTAssertEqual(dx.data, dxPlain.data, "\(act) \(mode): dx")
                XCTAssertEqual(fused.weight.grad.data, plain.weight.grad.data, "\(act) \(mode): dγ")
                XCTAssertEqual(fused.bias.grad.data, plain.bias.grad.data, "\(act) \(mode): dβ")
                if act == .gelu {
                    finiteDifferences(fused, input: x, forward: { fused.forward($0, mode: mode, activation: act) },
                                      backward: { fused.backward($0) })
                }
            }
        }
    }

    func testConv2dBNFiniteDifferences() {
        var rng = SeededRandom(seed: 44)
        for (mode, g) in [(ForwardMode.training, 1), (.evaluationWithGradients, 1), (.training, 4)] {
            let m = Conv2dBN(inputChannels: 4, outputChannels: 4, kernelSize: 3, stride: 2, padding: 1, groups: g)
            randomiseConvParameters(m, rng: &rng)
            finiteDifferences(m, input: .randomNormal([2, 4, 6, 5], rng: &rng),
                              forward: { m.forward($0, mode: mode) }, backward: { m.backward($0) })
        }
    }

    func testPatchEmbedFiniteDifferences() {
        var rng = SeededRandom(seed: 45)
        let m = PatchEmbed(inputChannels: 3, embedDim: 6)
        randomiseConvParameters(m, rng: &rng)
        finiteDifferences(m, input: .randomNormal([2, 3, 8, 12], rng: &rng),
                          forward: { m.forward($0, mode: .training) }, backward: { m.backward($0) })
    }

    func testMBConvFiniteDifferences() {
        var rng = SeededRandom(seed: 46)
        for mode in [ForwardMode.training, .evaluationWithGradients] {
            let m = MBConv(inputChannels: 3, outputChannels: 3, expandRatio: 2)
            randomiseConvParameters(m, rng: &rng)
            finiteDifferences(m, input: .randomNormal([2, 3, 5, 4], rng: &rng),
                              forward: { m.forward($0, mode: mode) }, backward: { m.backward($0) })
        }
    }

    func testPatchMergingFiniteDifferences() {
        var rng = SeededRandom(seed: 47)
        // Tokens input, stride 2.
        let a = PatchMerging(inputResolution: (5, 4), dim: 3, outputDim: 5)
        randomiseConvParameters(a, rng: &rng)
        finiteDifferences(a, input: .randomNormal([2, 20, 3], rng: &rng),
                          forward: { a.forward($0, mode: .training) }, backward: { a.backward($0) })
        // NCHW input, eval-mode BatchNorm.
        let b = PatchMerging(inputResolution: (4, 4), dim: 3, outputDim: 4)
        randomiseConvParameters(b, rng: &rng)
        finiteDifferences(b, input: .randomNormal([2, 3, 4, 4], rng: &rng),
                          forward: { b.forward($0, mode: .evaluationWithGradients) }, backward: { b.backward($0) })
        // Stride 1 (out 320), tokens input, batch statistics. 2×3×4 = 24 values per channel: with only
        // 6, train-mode BatchNorm curves too much for a central difference at eps 1e-2 (ratio 1.6).
        let c = PatchMerging(inputResolution: (3, 4), dim: 2, outputDim: 320)
        XCTAssertEqual(c.stride, 1)
        randomiseConvParameters(c, rng: &rng)
        finiteDifferences(c, input: .randomNormal([2, 12, 2], rng: &rng),
                          forward: { c.forward($0, mode: .training) }, backward: { c.backward($0) })
    }

    // MARK: - PyTorch autograd dumps

    func testConv2dMatchesPyTorch() throws {
        for name in ["conv2d_3x3", "conv2d_1x1_nobias", "conv2d_grouped_s2", "conv2d_depthwise_s1",
                     "conv2d_depthwise_s2", "conv2d_patch4"] {
            let f = try Fixture(name)
            let conv = Conv2d(inputChannels: f.int("in"), outputChannels: f.int("out"), kernelSize: f.int("kernel"),
                              stride: f.int("stride"), padding: f.int("padding"), groups: f.int("groups"),
                              bias: f.int("bias") == 1)
            try assertMatchesFixture(f, module: conv, tolerance: 1e-5,
                forward: { conv.forward($0, mode: .training) }, backward: { conv.backward($0) })
        }
    }

    func testConvTranspose2dMatchesPyTorch() throws {
        let f = try Fixture("convtranspose2d")
        let ct = ConvTranspose2d(inputChannels: f.int("in"), outputChannels: f.int("out"), kernelSize: f.int("kernel"),
                                 stride: f.int("kernel"))
        try assertMatchesFixture(f, module: ct, tolerance: 1e-5,
            forward: { ct.forward($0, mode: .training) }, backward: { ct.backward($0) })
    }

    /// Train mode: batch statistics for the output, running stats updated with the unbiased
    /// variance (compared after the forward); eval mode: running stats used and left untouched.
    func testBatchNorm2dMatchesPyTorch() throws {
        for (name, mode) in [("batchnorm2d_train", ForwardMode.training), ("batchnorm2d_eval", .evaluationWithGradients)] {
            let f = try Fixture(name)
            let bn = BatchNorm2d(f.int("channels"))
            try assertMatchesFixture(f, module: bn, tolerance: 1e-5,
                forward: { bn.forward($0, mode: mode) }, backward: { bn.backward($0) })
            XCTAssertLessThanOrEqual(relativeError(bn.runningMean.value, f["buffer.running_mean"]), 1e-6, name)
            XCTAssertLessThanOrEqual(relativeError(bn.runningVar.value, f["buffer.running_var"]), 1e-6, name)
            if mode == .training {
                XCTAssertGreaterThan(relativeError(f["buffer.running_var"], f["buffer.initial.running_var"]), 1e-3,
                                     "the fixture's running variance moved")
            }
        }
    }

    func testTinyViTBlocksMatchPyTorch() throws {
        for (name, mode) in [("conv2d_bn_train", ForwardMode.training), ("conv2d_bn_eval", .evaluationWithGradients)] {
            let f = try Fixture(name)
            let m = Conv2dBN(inputChannels: f.int("in"), outputChannels: f.int("out"), kernelSize: f.int("kernel"),
                             stride: f.int("stride"), padding: f.int("padding"), groups: f.int("groups"))
            try assertMatchesFixture(f, module: m, tolerance: 1e-5,
                forward: { m.forward($0, mode: mode) }, backward: { m.backward($0) })
        }
        do {
            let f = try Fixture("patch_embed")
            let m = PatchEmbed(inputChannels: f.int("in"), embedDim: f.int("embed"))
            try assertMatchesFixture(f, module: m, tolerance: 1e-5,
                forward: { m.forward($0, mode: .training) }, backward: { m.backward($0) })
        }
        for (name, mode) in [("mbconv_train", ForwardMode.training), ("mbconv_eval", .evaluationWithGradients)] {
            let f = try Fixture(name)
            let m = MBConv(inputChannels: f.int("channels"), outputChannels: f.int("channels"),
                           expandRatio: Float(f.int("expand")))
            try assertMatchesFixture(f, module: m, tolerance: 1e-5,
                forward: { m.forward($0, mode: mode) }, backward: { m.backward($0) })
        }
        for (name, mode) in [("patch_merging_tokens", ForwardMode.training), ("patch_merging_map", .evaluationWithGradients)] {
            let f = try Fixture(name)
            let m = PatchMerging(inputResolution: (f.int("height"), f.int("width")), dim: f.int("dim"), outputDim: f.int("out"))
            XCTAssertEqual(m.stride, 2)
            try assertMatchesFixture(f, module: m, tolerance: 1e-5,
                forward: { m.forward($0, mode: mode) }, backward: { m.backward($0) })
        }
    }

    /// The stride-1 PatchMerging (out_dim 320) from the reference class. Parameters and buffers
    /// come from the generator's deterministic formula (the 320×320 weight is too big to store);
    /// conv3's weight gradient is compared through its first 8 rows and its row and column sums.
    func testPatchMergingStride1MatchesPyTorch() throws {
        let f = try Fixture("patch_merging_stride1")
        XCTAssertEqual(f.int("formula"), 1)
        let m = PatchMerging(inputResolution: (f.int("height"), f.int("width")), dim: f.int("dim"), outputDim: f.int("out"))
        XCTAssertEqual(m.stride, 1)
        XCTAssertEqual(m.outputResolution.height, f.int("height"))
        for (salt, (key, p)) in m.namedParameters().enumerated() {
            let kind = key.split(separator: ".", maxSplits: 1)[1]
            let range: (Double, Double)
            switch kind {
            case "c.weight":
                let bound = (3.0 / Double(p.value.shape.dropFirst().reduce(1, *))).squareRoot()
                range = (-bound, bound)
            case "bn.weight", "bn.running_var": range = (0.5, 1.5)
            default: range = (-0.3, 0.3)
            }
            let (lo, hi) = range
            p.value = Tensor(shape: p.value.shape, data: (0..<p.value.count).map { i in
                Float(lo + (hi - lo) * (Double((i * 7919 + salt * 104729) % 2003) / 2003.0))
            })
        }
        m.zeroGradients()
        let y = m.forward(f["x"], mode: .training)
        XCTAssertEqual(y.shape, f["y"].shape)
        XCTAssertLessThanOrEqual(relativeError(y, f["y"]), 1e-5, "forward")
        let dx = m.backward(f["dy"])
        XCTAssertLessThanOrEqual(relativeError(dx, f["dx"]), 1e-5, "dx")
        for (k, p) in m.namedParameters() {
            if p.isTrainable {
                if k == "conv3.c.weight" { continue }
                XCTAssertLessThanOrEqual(relativeError(p.grad, f["grad." + k]), 1e-5, "grad \(k)")
            } else {
                XCTAssertLessThanOrEqual(relativeError(p.value, f["buffer." + k]), 1e-5, "buffer \(k)")
            }
        }
        let g3 = m.conv3.conv.weight.grad.reshaped([320, 320])
        let slice = Tensor(shape: [8, 320], data: Array(g3.data[0..<(8 * 320)]))
        XCTAssertLessThanOrEqual(relativeError(slice, f["gradslice.conv3.c.weight"]), 1e-5, "conv3 weight grad rows")
        var rows = Tensor(zeros: [320]), cols = Tensor(zeros: [320])
        for i in 0..<320 { for j in 0..<320 { rows.data[i] += g3.data[i * 320 + j]; cols.data[j] += g3.data[i * 320 + j] } }
        XCTAssertLessThanOrEqual(relativeError(rows, f["gradrowsum.conv3.c.weight"]), 1e-5, "conv3 weight grad row sums")
        XCTAssertLessThanOrEqual(relativeError(cols, f["gradcolsum.conv3.c.weight"]), 1e-5, "conv3 weight grad column sums")
    }

    // MARK: - Structure

    func testCheckpointKeysAndShapes() {
        let m = MBConv(inputChannels: 4, outputChannels: 4, expandRatio: 4)
        let bnKeys = ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"]
        XCTAssertEqual(m.namedParameters().map(\.0),
                       ["conv1", "conv2", "conv3"].flatMap { c in (["c.weight"] + bnKeys).map { "\(c).\($0)" } })
        XCTAssertEqual(m.conv2.conv.weight.shape, [16, 1, 3, 3])
        XCTAssertEqual(m.conv3.bn.weight.value.data, [Float](repeating: 0, count: 4), "bn_weight_init 0 on conv3")
        let pe = PatchEmbed(inputChannels: 3, embedDim: 64)
        XCTAssertEqual(pe.namedParameters().map(\.0),
                       ["seq.0", "seq.2"].flatMap { c in (["c.weight"] + bnKeys).map { "\(c).\($0)" } })
        XCTAssertEqual(pe.conv2.conv.weight.shape, [64, 32, 3, 3])
        XCTAssertEqual(Conv2d(inputChannels: 3, outputChannels: 8, kernelSize: 3).namedParameters().map(\.0), ["weight", "bias"])
        XCTAssertEqual(Conv2d(inputChannels: 3, outputChannels: 8, kernelSize: 3, bias: false).namedParameters().map(\.0), ["weight"])
        let conv = Conv2d(inputChannels: 3, outputChannels: 8, kernelSize: 3)
        XCTAssertEqual(conv.weight.decays, true)
        XCTAssertEqual(conv.bias?.decays, false)
        let bn = BatchNorm2d(3)
        XCTAssertEqual(bn.trainableParameters().count, 2, "running stats are buffers")
        XCTAssertFalse(bn.weight.decays || bn.bias.decays)
        XCTAssertEqual(ConvTranspose2d(inputChannels: 8, outputChannels: 4, kernelSize: 2, stride: 2).weight.shape, [8, 4, 2, 2])
        // The reference's stride rule and output sizes.
        for (out, stride) in [(64, 2), (128, 2), (160, 2), (320, 1), (448, 1), (576, 1)] {
            XCTAssertEqual(PatchMerging(inputResolution: (64, 64), dim: 8, outputDim: out).stride, stride, "out \(out)")
        }
        XCTAssertEqual(PatchMerging(inputResolution: (7, 5), dim: 4, outputDim: 6).outputResolution.height, 4)
        XCTAssertEqual(PatchMerging(inputResolution: (7, 5), dim: 4, outputDim: 6).outputResolution.width, 3)
    }

    func testPatchEmbedShapes() {
        let m = PatchEmbed(inputChannels: 3, embedDim: 8)
        XCTAssertEqual(m.forward(Tensor(zeros: [1, 3, 32, 24]), mode: .inference).shape, [1, 8, 8, 6])
    }

    /// Eval mode leaves running statistics alone; train mode moves them by momentum 0.1 with the
    /// unbiased variance.
    func testBatchNormRunningStatistics() {
        var rng = SeededRandom(seed: 51)
        let bn = BatchNorm2d(2)
        let x = Tensor.randomNormal([2, 2, 3, 3], rng: &rng)
        _ = bn.forward(x, mode: .inference)
        _ = bn.forward(x, mode: .evaluationWithGradients)
        XCTAssertEqual(bn.runningMean.value.data, [0, 0])
        XCTAssertEqual(bn.runningVar.value.data, [1, 1])
        _ = bn.forward(x, mode: ForwardMode(batchStatistics: true, keepsActivations: false))
        for c in 0..<2 {
            var v: [Double] = []
            for b in 0..<2 { for i in 0..<9 { v.append(Double(x.data[(b * 2 + c) * 9 + i])) } }
            let mean = v.reduce(0, +) / 18
            let unbiased = v.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / 17
            XCTAssertEqual(Double(bn.runningMean.value.data[c]), 0.1 * mean, accuracy: 1e-6)
            XCTAssertEqual(Double(bn.runningVar.value.data[c]), 0.9 + 0.1 * unbiased, accuracy: 1e-6)
        }
    }

    /// tokensToMap / mapToTokens are inverse transposes (PyTorch's view+permute and flatten+transpose).
    func testConvLayoutRoundTrip() {
        var rng = SeededRandom(seed: 52)
        let (B, H, W, C) = (2, 37, 35, 40)
        let t = Tensor.randomNormal([B, H * W, C], rng: &rng)
        let m = ConvLayout.tokensToMap(t, height: H, width: W)
        XCTAssertEqual(m.shape, [B, C, H, W])
        XCTAssertEqual(m.data[((1 * C + 7) * H + 5) * W + 3], t.data[(1 * H * W + 5 * W + 3) * C + 7])
        XCTAssertEqual(ConvLayout.mapToTokens(m).data, t.data)
        XCTAssertEqual(m.data, t.reshaped([B, H, W, C]).permuted([0, 3, 1, 2]).data)
    }
}

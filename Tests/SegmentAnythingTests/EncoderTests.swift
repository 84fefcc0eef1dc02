import CheckpointFormats
import Foundation
import Layers
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// Whole encoders against PyTorch (Scripts/refdump/models.py): a small TinyViT on MobileSAM's
/// code path and a small SAM ViT, forward in training mode (batch statistics), every parameter
/// gradient, the input gradient, the running statistics after the step, and an eval-mode forward.
/// Tolerance: relative error (max |a − e| / max |e|) ≤ 1e-4 for every tensor.
final class EncoderTests: XCTestCase {
    static func ints(_ s: String) -> [Int] { s.split(separator: ",").map { Int($0)! } }

    func checkEncoder(_ f: Fixture, _ model: Module, forward: (Tensor, ForwardMode) -> Tensor,
                      backward: (Tensor) -> Tensor, ignoring: (String) -> Bool = { _ in false }) throws {
        try model.load(f.stateDict(), ignoring: ignoring)
        model.zeroGradients()
        let y = forward(f["x"], .training)
        XCTAssertEqual(y.shape, f["y"].shape)
        XCTAssertLessThanOrEqual(relativeError(y, f["y"]), 1e-4, "\(f.name): forward")
        let dx = backward(f["dy"])
        XCTAssertLessThanOrEqual(relativeError(dx, f["dx"]), 1e-4, "\(f.name): input gradient")
        // Some gradients are exactly zero in exact arithmetic: the bias of a layer whose output
        // feeds a train-mode BatchNorm (through a linear map) only shifts the batch mean, which
        // the norm removes. Both sides then hold rounding noise, so for gradients whose reference
        // is below 1e-6 of the largest gradient in the model, we assert ours is below 1e-5 of it.
        let gradientScale = f.tensors.filter { $0.key.hasPrefix("grad.") }.values.map { Double($0.maxAbs()) }.max() ?? 0
        var checked = 0, worst = 0.0
        for (k, p) in model.namedParameters() where p.isTrainable && Double(f["grad." + k].maxAbs()) >= 1e-6 * gradientScale {
            worst = max(worst, relativeError(p.grad, f["grad." + k]))
        }
        print("\(f.name): forward \(relativeError(y, f["y"])), input gradient \(relativeError(dx, f["dx"])), worst parameter gradient \(worst)")
        for (k, p) in model.namedParameters() {
            if p.isTrainable {
                let expected = f["grad." + k]
                if Double(expected.maxAbs()) < 1e-6 * gradientScale {
                    XCTAssertLessThanOrEqual(Double(p.grad.maxAbs()), 1e-5 * gradientScale, "\(f.name): (zero) gradient of \(k)")
                } else {
                    XCTAssertLessThanOrEqual(relativeError(p.grad, expected), 1e-4, "\(f.name): gradient of \(k)")
                }
            } else {
                XCTAssertLessThanOrEqual(relativeError(p.value, f["buffer." + k]), 1e-4, "\(f.name): buffer \(k)")
            }
            checked += 1
        }
        XCTAssertEqual(checked, f.tensors.keys.filter { $0.hasPrefix("param.") }.count, "every fixture parameter checked")
        let yEval = forward(f["x"], .inference)
        XCTAssertLessThanOrEqual(relativeError(yEval, f["y_eval"]), 1e-4, "\(f.name): eval-mode forward")
    }

    func testSmallTinyViTMatchesPyTorch() throws {
        let f = try Fixture("tinyvit_small")
        var config = TinyViTConfig()
        config.imageSize = f.int("image_size")
        config.embedDims = Self.ints(f.metadata["embed_dims"]!)
        config.depths = Self.ints(f.metadata["depths"]!)
        config.numHeads = Self.ints(f.metadata["num_heads"]!)
        config.windowSizes = Self.ints(f.metadata["window_sizes"]!)
        config.mergeStrides = Self.ints(f.metadata["merge_strides"]!)
        config.neckChannels = f.int("neck_channels")
        let model = TinyViT(config)
        try checkEncoder(f, model, forward: { model.forward($0, mode: $1) }, backward: { model.backward($0) })

        // Without the image gradient (as the trainer runs it): an empty result, the same parameter
        // gradients bit for bit (only the first conv's dx GEMM and col2im are skipped).
        let full = model.namedParameters().map { ($0.0, $0.1.grad) }
        model.zeroGradients()
        _ = model.forward(f["x"], mode: .training)
        XCTAssertEqual(model.backward(f["dy"], imageGradient: false).shape, [0])
        for ((k, p), (_, g)) in zip(model.namedParameters(), full) where p.isTrainable {
            XCTAssertEqual(p.grad.data, g.data, "gradient of \(k) without the image gradient")
        }
    }

    /// A reduced-resolution TinyViT (`inputResize`) is `BilinearResample` → the same network at the
    /// smaller side → `BilinearResample` back up to the full-size grid (both PyTorch-checked on
    /// their own): training-mode forward, input and parameter gradients equal to relative 1e-6,
    /// and the multiply-accumulates are the smaller network's.
    func testInputResizeComposes() throws {
        var config = TinyViTConfig()
        config.imageSize = 128; config.embedDims = [16, 32, 48, 64]; config.depths = [1, 2, 1, 1]
        config.numHeads = [2, 2, 3, 4]; config.windowSizes = [7, 5, 7, 3]; config.mergeStrides = [2, 2, 1]
        config.mlpRatio = 2; config.mbconvExpandRatio = 3; config.neckChannels = 24; config.inputResize = 96
        var small = config
        small.imageSize = 96; small.inputResize = nil
        let resized = TinyViT(config), reference = TinyViT(small)
        XCTAssertEqual(config.stageResolutions, [24, 12, 6, 6]); XCTAssertEqual(resized.outputResolution, 8)
        var rng = SeededRandom(seed: 3)
        randomiseParameters(resized, std: 0.3, rng: &rng)
        try reference.load(resized.stateDict())
        XCTAssertEqual(resized.multiplyAccumulates, reference.multiplyAccumulates)

        let x = Tensor.randomNormal([2, 3, 128, 128], rng: &rng)
        let y = resized.forward(x, mode: .training)
        let expected = BilinearResample.forward(
            reference.forward(BilinearResample.forward(x, height: 96, width: 96), mode: .training), height: 8, width: 8)
        XCTAssertEqual(y.shape, [2, 24, 8, 8])
        XCTAssertLessThanOrEqual(relativeError(y, expected), 1e-6, "forward")
        let dy = Tensor.randomNormal(y.shape, rng: &rng)
        let dx = resized.backward(dy)
        let dxExpected = BilinearResample.backward(
            reference.backward(BilinearResample.backward(dy, height: 6, width: 6)), height: 128, width: 128)
        XCTAssertLessThanOrEqual(relativeError(dx, dxExpected), 1e-6, "input gradient")
        for ((k, p), (_, q)) in zip(resized.namedParameters(), reference.namedParameters()) where p.isTrainable {
            XCTAssertLessThanOrEqual(relativeError(p.grad, q.grad), 1e-6, "gradient of \(k)")
        }
    }

    func testSmallViTMatchesPyTorch() throws {
        let f = try Fixture("vit_small")
        var config = ViTConfig()
        config.imageSize = f.int("image_size")
        config.patchSize = f.int("patch_size")
        config.embedDim = f.int("embed_dim")
        config.depth = f.int("depth")
        config.numHeads = f.int("num_heads")
        config.outChannels = f.int("out_channels")
        config.windowSize = f.int("window_size")
        config.globalAttentionIndexes = Self.ints(f.metadata["global_attention_indexes"]!)
        let model = ImageEncoderViT(config)
        try checkEncoder(f, model, forward: { model.forward($0, mode: $1) }, backward: { model.backward($0) })
    }

    /// The real MobileSAM encoder (weights/mobile_sam.pt, strict loading) on a deterministic
    /// 1024×1024 input, inference mode, vs PyTorch in float64 (Scripts/refdump/mobilesam_encoder.py):
    /// relative error ≤ 1e-4 on a subsample of the embedding and on every channel's mean and std.
    func testMobileSAMEncoderMatchesPyTorch() throws {
        let weights = try WeightsFile(contentsOf: Fixture.mobileSAMCheckpoint())
        var encoderWeights: [String: Tensor] = [:]
        for (k, v) in weights.tensors where k.hasPrefix("image_encoder.") { encoderWeights[String(k.dropFirst(14))] = v }
        let model = TinyViT(.mobileSAM)
        try model.load(encoderWeights, ignoring: TinyViT.ignoredKeys)
        var x = Tensor(zeros: [1, 3, 1024, 1024])
        for c in 0..<3 { for h in 0..<1024 { for w in 0..<1024 {
            x.data[(c * 1024 + h) * 1024 + w] = Float(2 * sin(0.0123 * Double(h + 1) * Double(c + 1)) * cos(0.0071 * Double(w + 1)))
        } } }
        let y = model.forward(x, mode: .inference)
        XCTAssertEqual(y.shape, [1, 256, 64, 64])
        let f = try Fixture("mobilesam_encoder")
        var sub = Tensor(zeros: [64, 16, 16]), mean = Tensor(zeros: [256]), std = Tensor(zeros: [256])
        for c in 0..<256 {
            var s = 0.0, s2 = 0.0
            for i in 0..<4096 { let v = Double(y.data[c * 4096 + i]); s += v; s2 += v * v }
            mean.data[c] = Float(s / 4096); std.data[c] = Float((s2 / 4096 - (s / 4096) * (s / 4096)).squareRoot())
        }
        for c in 0..<64 { for h in 0..<16 { for w in 0..<16 {
            sub.data[(c * 16 + h) * 16 + w] = y.data[((c * 4) * 64 + h * 4) * 64 + w * 4]
        } } }
        let e = (relativeError(sub, f["y_subsample"]), relativeError(mean, f["y_channel_mean"]), relativeError(std, f["y_channel_std"]))
        print("MobileSAM encoder vs PyTorch: subsample \(e.0), channel means \(e.1), channel stds \(e.2)")
        XCTAssertLessThanOrEqual(e.0, 1e-4)
        XCTAssertLessThanOrEqual(e.1, 1e-4)
        XCTAssertLessThanOrEqual(e.2, 1e-4)
    }

    /// MobileSAM's configuration holds exactly the checkpoint's encoder values: the checkpoint's
    /// 6,075,415 minus the unused classification head (321,640: `head.*`, `norm_head.*`) and the
    /// 27 BatchNorm `num_batches_tracked` counters = 5,753,748 (counted from the PyTorch module).
    func testMobileSAMConfigurationParameterCount() {
        let model = TinyViT(.mobileSAM)
        let total = model.namedParameters().reduce(0) { $0 + $1.1.value.count }
        XCTAssertEqual(total, 6_075_415 - 321_640 - 27)
        XCTAssertEqual(model.config.stageResolutions, [256, 128, 64, 64])
    }

    func testConfigProblemsNameTheKey() {
        var c = TinyViTConfig()
        c.numHeads = [2, 4, 7, 10]
        XCTAssertTrue(c.problems().contains { $0.hasPrefix("num_heads[2]") }, "\(c.problems())")
        c = TinyViTConfig()
        c.depths = [2, 2]
        XCTAssertTrue(c.problems().contains { $0.hasPrefix("depths") })
    }
}

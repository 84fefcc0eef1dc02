import CheckpointFormats
import Foundation
import Layers
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// EdgeSAM's RepViT encoder (Sources/SegmentAnything/RepViT.swift): a small one against PyTorch
/// (Scripts/refdump/repvit.py: forward, input gradient, every parameter gradient and running
/// statistics, train and eval mode, ≤ 1e-4 relative), RepViT-M1's shapes, the fused network
/// against the multi-branch one, and the one loader reading both forms with and without metadata.
final class RepViTEncoderTests: XCTestCase {
    /// The architecture of Scripts/refdump/repvit.py's `RepViT()`.
    static let small: RepViTConfig = {
        var c = RepViTConfig()
        c.imageSize = 64
        c.embedDims = [8, 16, 24, 32]
        c.depths = [2, 2, 3, 2]
        c.seBlocks = [0, 3, 4, 7]
        c.fusionChannels = 16
        c.neckChannels = 12
        return c
    }()

    /// Train mode: a depthwise 1×1 conv's weight or a BatchNorm bias followed (linearly) by a
    /// train-mode BatchNorm has a gradient that is zero but for eps (scale / shift invariance:
    /// 2e-5 … 2e-4 of the largest here), which float32 resolves to ~1e-7 of the largest: errors are
    /// measured against at least 1% of the largest gradient (`gradientFloor`).
    func check(_ name: String, mode: ForwardMode) throws {
        let f = try Fixture(name)
        let m = RepViT(Self.small)
        try assertMatchesFixture(f, module: m, tolerance: 1e-4, gradientFloor: 0.01,
                                 forward: { m.forward($0, mode: mode) }, backward: { m.backward($0) })
        XCTAssertEqual(m.namedParameters().count, f.tensors.keys.filter { $0.hasPrefix("param.") }.count, "every fixture key")
    }

    func testSmallRepViTTrainModeMatchesPyTorch() throws { try check("repvit_small_train", mode: .training) }
    func testSmallRepViTEvalModeMatchesPyTorch() throws { try check("repvit_small_eval", mode: .evaluationWithGradients) }

    /// Finite differences through the whole small encoder in eval mode (GELU, sigmoid, bicubic,
    /// LayerNorm; smooth): eps 1e-2, atol 2e-3, rtol 2e-2, 6 coordinates per tensor.
    func testSmallRepViTFiniteDifferences() throws {
        let f = try Fixture("repvit_small_eval")
        let m = RepViT(Self.small)
        try m.load(f.stateDict())
        var rng = SeededRandom(seed: 81)
        assertGradientsMatchFiniteDifferences(m, input: .randomNormal([1, 3, 64, 64], rng: &rng),
            check: GradientCheck(atol: 2e-3, rtol: 2e-2, samples: 6),
            forward: { m.forward($0, mode: .evaluationWithGradients) }, backward: { m.backward($0) })
    }

    /// EdgeSAM's RepViT-M1: 26 blocks in [3, 4, 16, 3] at widths [48, 96, 192, 384], SE on 10 of
    /// them, 256×64×64 out of a 1024 input; 5.52 M encoder parameters (the PyTorch reference's
    /// count; EdgeSAM reports 9.6 M for the whole model: + SAM's 4.06 M mask decoder and prompt encoder).
    func testRepViTM1Shapes() {
        let m = RepViT(.m1)
        XCTAssertEqual(m.blocks.count, 26)
        XCTAssertEqual(m.blocks.filter { $0.se != nil }.count, 10)
        XCTAssertEqual(m.blocks.filter { $0.stride == 2 }.map(\.outputChannels), [96, 192, 384])
        XCTAssertEqual(m.stage2End, 22)
        let keys = Set(m.namedParameters().map(\.0))
        for k in ["features.0.0.c.weight", "features.1.token_mixer.0.conv.c.weight", "features.1.token_mixer.0.conv1.bn.running_var",
                  "features.1.token_mixer.1.fc1.weight", "features.4.token_mixer.2.c.weight", "features.26.channel_mixer.m.2.bn.weight",
                  "fuse_stage2.weight", "fuse_stage3.op_list.0.weight", "neck.3.bias"] {
            XCTAssertTrue(keys.contains(k), k)
        }
        XCTAssertEqual(m.fusion.fuseStage2.weight.shape, [256, 192, 1, 1])
        XCTAssertEqual(m.fusion.fuseStage3.weight.shape, [256, 384, 1, 1])
        XCTAssertEqual(m.parameterCount, 5_517_552)
        // Every Conv2d's output size × fan-in, counted by forward hooks on the PyTorch reference at
        // 1024 (20.0 G; EdgeSAM reports 22.1 GFLOPs, i.e. MACs, for the whole model with the decoder)
        XCTAssertEqual(m.multiplyAccumulates, 20_045_639_680)
    }

    static func randomised(_ config: RepViTConfig, seed: UInt64) -> RepViT {
        let m = RepViT(config)
        var rng = SeededRandom(seed: seed)
        for (k, p) in m.namedParameters() {
            if k.hasSuffix("running_var") { p.value = p.value.map { _ in rng.uniform(0.5, 2) } }
            else if k.hasSuffix("running_mean") { p.value = .randomNormal(p.shape, std: 0.2, rng: &rng) }
            else if p.value.rank == 4 {
                // PyTorch's default conv init (what `init: random` draws)
                let bound = Float(1 / Double(p.shape[1] * p.shape[2] * p.shape[3]).squareRoot())
                p.value = .randomUniform(p.shape, -bound, bound, rng: &rng)
            } else if k.hasSuffix("weight") { p.value = p.value.map { _ in 1 + 0.2 * (rng.uniform() - 0.5) } }
            else { p.value = .randomNormal(p.shape, std: 0.05, rng: &rng) }
        }
        return m
    }

    /// The fused network equals the multi-branch one in eval mode (its layer path: every branch
    /// and BatchNorm as in PyTorch's eval()) to ≤ 1e-5 relative: the small encoder and RepViT-M1
    /// itself at a 256 input; fused keys hold no BatchNorm and no 1×1 branch.
    func testFusedEqualsUnfusedInEvalMode() {
        var m1 = RepViTConfig.m1
        m1.imageSize = 256
        for (i, config) in [Self.small, m1].enumerated() {
            let m = Self.randomised(config, seed: 90 + UInt64(i))
            let f = m.fused()
            XCTAssertTrue(f.config.fused)
            XCTAssertTrue(f.namedParameters().allSatisfy { !$0.0.contains(".bn.") && !$0.0.contains(".c.") && !$0.0.contains("conv1") })
            XCTAssertTrue(f.namedParameters().contains { $0.0 == "features.1.token_mixer.0.weight" })
            var rng = SeededRandom(seed: 95)
            let x = Tensor.randomNormal([1, 3, config.imageSize, config.imageSize], rng: &rng)
            let reference = m.forward(x, mode: .evaluationWithGradients)
            let e = relativeError(f.forward(x, mode: .inference), reference)
            print("fused vs unfused (image \(config.imageSize)): \(e)")
            XCTAssertLessThanOrEqual(e, 1e-5)
            XCTAssertLessThanOrEqual(relativeError(m.forward(x, mode: .inference), reference), 1e-5)
        }
    }

    /// The one loader: a fused and an unfused RepViT read back with their metadata, and from keys
    /// alone (EdgeSAM's own checkpoint has none), under `image_encoder.`.
    func testLoaderReadsBothFormsWithAndWithoutMetadata() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("repvit-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let m = Self.randomised(Self.small, seed: 97)
        for net in [m, m.fused()] {
            var tensors: [String: Tensor] = [:]
            for (k, v) in net.stateDict() { tensors["image_encoder." + k] = v }
            for withMetadata in [true, false] {
                let url = dir.appendingPathComponent("w\(net.config.fused)\(withMetadata).safetensors")
                try SafeTensors.write(tensors, metadata: withMetadata ? net.encoderConfig.metadata : [:], to: url)
                let w = try SAMWeights.read(url)
                var expected = net.config
                if !withMetadata { expected.imageSize = 1024 }   // shapes cannot tell the image size
                XCTAssertEqual(w.architecture, .repViT(expected), "fused \(net.config.fused), metadata \(withMetadata)")
                let got = w.encoder.stateDict(), want = net.stateDict()
                XCTAssertEqual(Set(got.keys), Set(want.keys))
                XCTAssertTrue(want.allSatisfy { got[$0.key]?.data == $0.value.data })
            }
        }
    }
}

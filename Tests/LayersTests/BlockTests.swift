import Layers
import Tensor
import TestSupport
import XCTest

/// TinyViTBlock and EncoderNeck: compositions of already-verified layers, checked as wholes.
final class BlockTests: XCTestCase {
    /// Finite differences through a whole TinyViT block (BatchNorm in train mode couples the batch;
    /// GELU, softmax and LayerNorm curve the loss): eps 1e-2, atol 2e-3, rtol 2e-2.
    func testTinyViTBlockFiniteDifferences() {
        var rng = SeededRandom(seed: 41)
        for (H, W, ws) in [(5, 6, 4), (4, 4, 4)] {
            let block = TinyViTBlock(dim: 6, resolution: (H, W), heads: 2, windowSize: ws)
            randomiseParameters(block, std: 0.4, rng: &rng)
            assertGradientsMatchFiniteDifferences(block, input: .randomNormal([2, H * W, 6], rng: &rng),
                check: GradientCheck(atol: 2e-3, rtol: 2e-2),
                forward: { block.forward($0, mode: .training) }, backward: { block.backward($0) })
        }
    }

    func testEncoderNeckFiniteDifferences() {
        var rng = SeededRandom(seed: 42)
        let neck = EncoderNeck(inputChannels: 5, outputChannels: 4)
        randomiseParameters(neck, std: 0.5, rng: &rng)
        assertGradientsMatchFiniteDifferences(neck, input: .randomNormal([2, 5, 4, 3], rng: &rng),
            forward: { neck.forward($0, mode: .training) }, backward: { neck.backward($0) })
    }

    /// Against the reference `TinyViTBlock` (windowed with padding, and unpartitioned) and the
    /// neck, autograd in float64: relative error ≤ 1e-5.
    func testMatchPyTorch() throws {
        for name in ["tinyvit_block_windowed", "tinyvit_block_direct"] {
            let f = try Fixture(name)
            let block = TinyViTBlock(dim: f.int("dim"), resolution: (f.int("height"), f.int("width")),
                                     heads: f.int("heads"), windowSize: f.int("window"))
            try assertMatchesFixture(f, module: block, tolerance: 1e-5,
                forward: { block.forward($0, mode: .training) }, backward: { block.backward($0) })
        }
        let f = try Fixture("encoder_neck")
        let neck = EncoderNeck(inputChannels: f.int("in"), outputChannels: f.int("out"))
        try assertMatchesFixture(f, module: neck, tolerance: 1e-5,
            forward: { neck.forward($0, mode: .training) }, backward: { neck.backward($0) })
    }
}

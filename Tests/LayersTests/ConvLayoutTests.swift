import Layers
import LayersReference
import Tensor
import TestSupport
import XCTest

/// ConvLayout's tiled 4×4-register transposes against plain loops (exact equality: a transpose
/// only moves values), at sizes with and without ragged 4- and 32-edges.
final class ConvLayoutTests: XCTestCase {
    func testTransposesEqualPlainLoops() {
        var rng = SeededRandom(seed: 53)
        for (B, H, W, C) in [(2, 37, 35, 42), (1, 8, 8, 64), (3, 5, 3, 7), (1, 33, 32, 97)] {
            let t = Tensor.randomNormal([B, H * W, C], rng: &rng)
            let m = ConvLayout.tokensToMap(t, height: H, width: W)
            XCTAssertEqual(m.shape, [B, C, H, W])
            XCTAssertEqual(m.data, ConvLayout.tokensToMapReference(t, height: H, width: W).data, "\(B) \(H) \(W) \(C)")
            let back = ConvLayout.mapToTokens(m)
            XCTAssertEqual(back.data, ConvLayout.mapToTokensReference(m).data, "\(B) \(H) \(W) \(C)")
            XCTAssertEqual(back.data, t.data)
        }
    }
}

/// The register-blocked 3×3 / stride 1 / padding 1 depthwise plane (Conv2d.depthwise3x3Plane)
/// against `conv2dReference`, relative error ≤ 1e-5, at its edge cases: one row, two columns,
/// two rows, and a plane with interior rows.
final class Depthwise3x3Tests: XCTestCase {
    func testRegisterBlockedPlaneMatchesReference() {
        var rng = SeededRandom(seed: 54)
        for (H, W) in [(1, 2), (1, 7), (2, 2), (2, 9), (3, 3), (11, 6)] {
            let conv = Conv2d(inputChannels: 4, outputChannels: 4, kernelSize: 3, stride: 1, padding: 1, groups: 4)
            XCTAssertEqual(conv.path, .depthwise)
            conv.weight.value = .randomNormal([4, 1, 3, 3], rng: &rng)
            conv.bias!.value = .randomNormal([4], rng: &rng)
            let x = Tensor.randomNormal([2, 4, H, W], rng: &rng)
            let ref = conv2dReference(x, weight: conv.weight.value, bias: conv.bias!.value, stride: 1, padding: 1, groups: 4)
            XCTAssertLessThanOrEqual(relativeError(conv.forward(x, mode: .inference), ref), 1e-5, "\(H)×\(W)")
            let gelu = conv.forwardInference(x, weight: conv.weight.value, bias: conv.bias!.value.data, activation: .gelu)
            XCTAssertLessThanOrEqual(relativeError(gelu, Activation.gelu.forwardReference(ref)), 1e-5, "\(H)×\(W) + GELU")
        }
    }
}

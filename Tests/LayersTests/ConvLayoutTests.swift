import Layers
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

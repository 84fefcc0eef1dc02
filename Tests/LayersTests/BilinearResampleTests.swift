import Layers
import Tensor
import TestSupport
import XCTest

/// `BilinearResample` (antialiased bilinear, what a reduced-resolution student uses) against
/// PyTorch's `F.interpolate(mode="bilinear", align_corners=False, antialias=True)` and its autograd
/// gradient (Scripts/refdump/resample.py, float64 dumps), down, up and mixed per axis.
final class BilinearResampleTests: XCTestCase {
    /// Forward and backward: relative error ≤ 1e-6 (float32 sums of ≤ 6 taps).
    func testMatchesPyTorch() throws {
        for name in ["bilinear_resample_down", "bilinear_resample_up", "bilinear_resample_mixed"] {
            let f = try Fixture(name)
            let x = f["x"], H = f.int("height"), W = f.int("width")
            let y = BilinearResample.forward(x, height: H, width: W)
            XCTAssertEqual(y.shape, f["y"].shape, name)
            XCTAssertLessThanOrEqual(relativeError(y, f["y"]), 1e-6, "\(name): forward")
            let dx = BilinearResample.backward(f["dy"], height: x.shape[2], width: x.shape[3])
            XCTAssertEqual(dx.shape, x.shape, name)
            XCTAssertLessThanOrEqual(relativeError(dx, f["dx"]), 1e-6, "\(name): backward")
        }
    }

    /// The padded tap table (what the ONNX export gathers and weights) gives the forward's values,
    /// and each output's weights sum to 1.
    func testTapTableMatchesForward() {
        var rng = SeededRandom(seed: 5)
        for (n, m) in [(1024, 672), (42, 64), (17, 7)] {
            let t = BilinearResample.Taps(input: n, output: m)  // (m, K)
            for o in 0..<m { XCTAssertEqual(t.weights[(o * t.width)..<((o + 1) * t.width)].reduce(0, +), 1, accuracy: 1e-6) }
            let x = Tensor.randomNormal([1, 1, 2, n], rng: &rng)
            let y = BilinearResample.forward(x, height: 2, width: m)  // rows unchanged, columns resampled
            var expected = Tensor(zeros: [1, 1, 2, m])
            for r in 0..<2 {
                for o in 0..<m {
                    for k in 0..<t.width { expected.data[r * m + o] += t.weights[o * t.width + k] * x.data[r * n + t.indices[o * t.width + k]] }
                }
            }
            XCTAssertLessThanOrEqual(relativeError(y, expected), 1e-6, "\(n) → \(m)")
        }
    }
}

import Foundation
import Tensor
import XCTest

/// The vectorised approximations of FastMath against libm over dense grids.
final class FastMathTests: XCTestCase {
    /// Evaluates `f` on every value.
    private func lanes(_ xs: [Float], _ f: (Float) -> Float) -> [Float] { xs.map(f) }

    private func grid(_ lo: Float, _ hi: Float, _ n: Int) -> [Float] {
        (0..<n).map { lo + (hi - lo) * Float($0) / Float(n - 1) }
    }

    /// exp: relative error ≤ 3e-7 (≈ 2.5 ulp) on [−87, 88]; exactly 0 below −87.3.
    func testExpMatchesLibm() {
        let xs = grid(-87, 88, 200_003)
        let ys = lanes(xs, FastMath.exp)
        var worst: Double = 0
        for (x, y) in zip(xs, ys) {
            let e = Double(Foundation.exp(Double(x)))
            worst = max(worst, abs(Double(y) - e) / e)
        }
        XCTAssertLessThan(worst, 3e-7, "exp worst relative error \(worst)")
        XCTAssertEqual(lanes([-100, -88, -1000, 0, 1], FastMath.exp)[0..<3], [0, 0, 0])
        XCTAssertEqual(lanes([0], FastMath.exp)[0], 1)
    }

    /// erf: absolute error ≤ 4.5e-7 on [−6, 6] against erf in Double (the rational is 6.5e-8 from erf
    /// in exact arithmetic; Float32 evaluation adds up to ~6 ulp near |x| ≈ 3.6); ±1 beyond ±4.
    func testErfMatchesLibm() {
        let xs = grid(-6, 6, 240_007)
        let ys = lanes(xs, FastMath.erf)
        var worst: Double = 0
        for (x, y) in zip(xs, ys) { worst = max(worst, abs(Double(y) - Foundation.erf(Double(x)))) }
        XCTAssertLessThan(worst, 4.5e-7, "erf worst absolute error \(worst)")
        XCTAssertEqual(lanes([4, 5, 100, -4, -7], FastMath.erf), [1, 1, 1, -1, -1])
    }

    /// GELU and its derivative: absolute error ≤ 3e-7·max(1, |x|) on [−12, 12] against the
    /// Double formulas (the scalar float references `geluValue`/`geluDerivative` are ~1e-7 off too).
    func testGeluMatchesDouble() {
        let xs = grid(-12, 12, 240_011) + [-30, -100, 30, 100, 0]
        let ys = lanes(xs, FastMath.gelu), ds = lanes(xs, FastMath.geluDerivative)
        var worstY: Double = 0, worstD: Double = 0
        for i in xs.indices {
            let x = Double(xs[i])
            let cdf = 0.5 * (1 + Foundation.erf(x / 2.0.squareRoot()))
            let y = x * cdf, d = cdf + x * Foundation.exp(-0.5 * x * x) / (2 * Double.pi).squareRoot()
            worstY = max(worstY, abs(Double(ys[i]) - y) / max(1, abs(x)))
            worstD = max(worstD, abs(Double(ds[i]) - d))
        }
        XCTAssertLessThan(worstY, 3e-7, "gelu worst scaled error \(worstY)")
        XCTAssertLessThan(worstD, 5e-7, "gelu' worst absolute error \(worstD)")
        // far left tail: exactly zero (not −x·1e-8 noise)
        XCTAssertEqual(lanes([-30, -100], FastMath.gelu), [0, 0])
    }

    /// GELU' from the forward's output (Φ = GELU(x) / x, no erf): absolute error ≤ 5e-7 against the
    /// Double formula on [−12, 12], near zero (down to denormals and ±0, where Φ(0) = ½ is taken)
    /// and in the far tails.
    func testGeluDerivativeFromOutputMatchesDouble() {
        let tiny: [Float] = [0, -0.0, 1e-3, -1e-3, 1e-6, -1e-6, 1e-19, -1e-19, 1e-21, -1e-21,
                             Float.leastNormalMagnitude, -Float.leastNonzeroMagnitude]
        let xs = grid(-12, 12, 240_011) + tiny + [-30, -100, 30, 100]
        var worst: Double = 0
        for xf in xs {
            let d = Double(FastMath.geluDerivative(xf, gelu: FastMath.gelu(xf)))
            let x = Double(xf)
            let exact = 0.5 * (1 + Foundation.erf(x / 2.0.squareRoot())) + x * Foundation.exp(-0.5 * x * x) / (2 * Double.pi).squareRoot()
            XCTAssertFalse(d.isNaN, "NaN at \(xf)")
            worst = max(worst, abs(d - exact))
        }
        XCTAssertLessThan(worst, 5e-7, "gelu' from output: worst absolute error \(worst)")
    }

    /// The array kernels equal the scalar functions (whatever the vectoriser makes of them).
    func testArrayKernels() {
        var rng = SeededRandom(seed: 3)
        let n = 1003
        let x = (0..<n).map { _ in rng.normal() * 3 }, g = (0..<n).map { _ in rng.normal() }
        var dx = [Float](repeating: .nan, count: n), y = dx, yb = dx, yr = dx, e = dx, dxFromOutput = dx
        var sum: Float = 0
        x.withUnsafeBufferPointer { xb in g.withUnsafeBufferPointer { gb in
            let xp = xb.baseAddress!, gp = gb.baseAddress!
            dx.withUnsafeMutableBufferPointer { FastMath.geluBackward(gp, xp, $0.baseAddress!, n) }
            y.withUnsafeMutableBufferPointer { FastMath.gelu(xp, $0.baseAddress!, n) }
            y.withUnsafeBufferPointer { ybp in
                dxFromOutput.withUnsafeMutableBufferPointer {
                    FastMath.geluBackward(gp, xp, gelu: ybp.baseAddress!, $0.baseAddress!, n)
                }
            }
            yb = x; yb.withUnsafeMutableBufferPointer { FastMath.geluInPlace($0.baseAddress!, bias: 0.25, n) }
            yr = x; yr.withUnsafeMutableBufferPointer { FastMath.geluInPlace($0.baseAddress!, adding: gp, bias: 0.25, n) }
            e = x; sum = e.withUnsafeMutableBufferPointer { FastMath.expShiftedInPlace($0.baseAddress!, 2, n) }
        } }
        var total: Double = 0
        for i in 0..<n {
            XCTAssertEqual(dx[i], g[i] * FastMath.geluDerivative(x[i]))
            XCTAssertEqual(y[i], FastMath.gelu(x[i]))
            XCTAssertEqual(dxFromOutput[i], g[i] * FastMath.geluDerivative(x[i], gelu: y[i]))
            XCTAssertEqual(yb[i], FastMath.gelu(x[i] + 0.25))
            XCTAssertEqual(yr[i], FastMath.gelu(x[i] + g[i] + 0.25))
            XCTAssertEqual(e[i], FastMath.exp(x[i] - 2))
            total += Double(e[i])
        }
        XCTAssertEqual(Double(sum), total, accuracy: 1e-5 * total)
    }
}

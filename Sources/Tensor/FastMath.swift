import Foundation

/// Vectorisable elementwise math: exp, erf, exact-GELU and its derivative, written as branch-free
/// scalar code (selects, polynomials, a division, exponent-bit tricks; no libm calls) so that
/// LLVM's loop vectoriser turns the array kernels below into SIMD loops. Libm's `expf`/`erff` are
/// opaque calls that block vectorisation. (Swift's generic SIMD helpers — `clamped`,
/// `replacing(with:where:)`, mask conversions — compiled to per-lane scalar code here, which is
/// why these are scalar functions in vectorised loops rather than `SIMD8` code.)
///
/// Accuracy (tested against Double over dense grids in FastMathTests): exp ≤ 3e-7 relative;
/// erf ≤ 4.5e-7 absolute (the rational itself is 6.5e-8 from erf; Float32 rounding adds the rest
/// near |x| ≈ 3.6); GELU ≤ 3e-7·max(1, |x|) absolute.
public enum FastMath {
    /// e^x (Cephes `expf` scheme: x = n·ln2 + r, |r| ≤ ln2/2, degree-6 polynomial, 2ⁿ from the
    /// exponent bits). 0 below −87.3; clamped above 88.37 (no Inf).
    @inlinable @inline(__always)
    public static func exp(_ v: Float) -> Float {
        let x0 = v < -87.3 ? -87.3 : (v > 88.3762626647949 ? 88.3762626647949 : v)
        // n = round(x·log2 e) by the 1.5·2²³ trick: the sum's low mantissa bits hold n.
        let t = x0 * 1.44269504088896341 + 12582912
        let n = t - 12582912
        var x = x0 - n * 0.693359375
        x = x + n * 2.12194440e-4
        let z = x * x
        var y: Float = 1.9875691500e-4
        y = y * x + 1.3981999507e-3
        y = y * x + 8.3334519073e-3
        y = y * x + 4.1665795894e-2
        y = y * x + 1.6666665459e-1
        y = y * x + 5.0000001201e-1
        y = y * z + x + 1
        // 2ⁿ: exponent field n + 127 (bitPattern(t) = bitPattern(1.5·2²³) + n)
        let e = (t.bitPattern &- 0x4B40_0000 &+ 127) &<< 23
        let r = y * Float(bitPattern: e)
        return v < -87.3 ? 0 : r
    }

    /// erf(x): the odd/even rational minimax approximation on [−4, 4] used by Eigen and XLA for
    /// float32 (x·P(x²)/Q(x²)); ±1 beyond ±4 (|erf| is within 2e-8 of 1 there).
    @inline(__always)
    public static func erf(_ v: Float) -> Float {
        let x = v < -4 ? -4 : (v > 4 ? 4 : v)
        let x2 = x * x
        var p = x2 * (-2.72614225801306e-10) + 2.77068142495902e-08
        p = x2 * p + (-2.10102402082508e-06)
        p = x2 * p + (-5.69250639462346e-05)
        p = x2 * p + (-7.34990630326855e-04)
        p = x2 * p + (-2.95459980854025e-03)
        p = x2 * p + (-1.60960333262415e-02)
        p = x * p
        var q = x2 * (-1.45660718464996e-05) + (-2.13374055278905e-04)
        q = x2 * q + (-1.68282697438203e-03)
        q = x2 * q + (-7.37332916720468e-03)
        q = x2 * q + (-1.42647390514189e-02)
        let r = p / q
        return v >= 4 ? 1 : (v <= -4 ? -1 : r)
    }

    /// GELU(x) = 0.5 · x · (1 + erf(x/√2)).
    @inline(__always)
    public static func gelu(_ x: Float) -> Float { 0.5 * x * (1 + erf(x * 0.70710678118654752)) }

    /// GELU'(x) = Φ(x) + x·φ(x).
    @inline(__always)
    public static func geluDerivative(_ x: Float) -> Float {
        let cdf = 0.5 * (1 + erf(x * 0.70710678118654752))
        return cdf + x * (0.39894228040143268 * exp(-0.5 * x * x))
    }

    /// GELU'(x) given y = GELU(x), the forward's output: Φ(x) = y / x, so only φ's exponential is
    /// evaluated, not erf (backward ~1.5× faster). |x| < 1e-20 takes Φ(0) = ½.
    @inlinable @inline(__always)
    public static func geluDerivative(_ x: Float, gelu y: Float) -> Float {
        let q = y / x
        // (two comparisons rather than `abs`, which keeps the loop from vectorising)
        let cdf: Float = x < 1e-20 && x > -1e-20 ? 0.5 : q
        return cdf + x * (0.39894228040143268 * exp(-0.5 * x * x))
    }

    // MARK: Array kernels (serial; callers split the work across threads)

    // Separate in-place kernels: an out-of-place loop called with x == y fails LLVM's runtime
    // overlap check and runs its scalar fallback.

    /// y[i] = GELU(x[i]) for `n` values (x and y distinct).
    public static func gelu(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
        for i in 0..<n { y[i] = gelu(x[i]) }
    }

    /// y[i] = GELU(y[i] + b) in place: a bias and the activation in one pass.
    public static func geluInPlace(_ y: UnsafeMutablePointer<Float>, bias b: Float = 0, _ n: Int) {
        for i in 0..<n { y[i] = gelu(y[i] + b) }
    }

    /// y[i] = GELU(y[i] + r[i] + b) in place (r distinct from y).
    public static func geluInPlace(_ y: UnsafeMutablePointer<Float>, adding r: UnsafePointer<Float>, bias b: Float = 0,
                                   _ n: Int) {
        for i in 0..<n { y[i] = gelu(y[i] + r[i] + b) }
    }

    /// dx[i] = dy[i] · GELU'(x[i]) for `n` values (give distinct buffers: aliased ones take the scalar fallback).
    public static func geluBackward(_ dy: UnsafePointer<Float>, _ x: UnsafePointer<Float>,
                                    _ dx: UnsafeMutablePointer<Float>, _ n: Int) {
        for i in 0..<n { dx[i] = dy[i] * geluDerivative(x[i]) }
    }

    /// dx[i] = dy[i] · GELU'(x[i]) given y[i] = GELU(x[i]) (`geluDerivative(_:gelu:)`; distinct buffers).
    public static func geluBackward(_ dy: UnsafePointer<Float>, _ x: UnsafePointer<Float>, gelu y: UnsafePointer<Float>,
                                    _ dx: UnsafeMutablePointer<Float>, _ n: Int) {
        for i in 0..<n { dx[i] = dy[i] * geluDerivative(x[i], gelu: y[i]) }
    }

    /// y[i] = e^(y[i] − m) in place; returns Σ y[i].
    public static func expShiftedInPlace(_ y: UnsafeMutablePointer<Float>, _ m: Float, _ n: Int) -> Float {
        for i in 0..<n { y[i] = exp(y[i] - m) }
        return Reductions.sum(y, n)
    }
}

/// Float reductions with 2×8 independent SIMD accumulators (a plain `s += p[i]` loop is one serial
/// dependency chain that the compiler may not reorder). Used by the conv, BatchNorm,
/// LayerNorm and softmax kernels; inlinable so that they inline into those loops across modules.
public enum Reductions {
    /// Σ p[i]
    @inlinable @inline(__always)
    public static func sum(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
        let raw = UnsafeRawPointer(p)
        var a0 = SIMD8<Float>(), a1 = SIMD8<Float>()
        var i = 0
        while i + 16 <= n {
            a0 += raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            a1 += raw.loadUnaligned(fromByteOffset: (i + 8) * 4, as: SIMD8<Float>.self)
            i += 16
        }
        var s = (a0 + a1).sum()
        while i < n { s += p[i]; i += 1 }
        return s
    }

    /// Σ a[i] · b[i]
    @inlinable @inline(__always)
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        let ra = UnsafeRawPointer(a), rb = UnsafeRawPointer(b)
        var a0 = SIMD8<Float>(), a1 = SIMD8<Float>()
        var i = 0
        while i + 16 <= n {
            a0 += ra.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
                * rb.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            a1 += ra.loadUnaligned(fromByteOffset: (i + 8) * 4, as: SIMD8<Float>.self)
                * rb.loadUnaligned(fromByteOffset: (i + 8) * 4, as: SIMD8<Float>.self)
            i += 16
        }
        var s = (a0 + a1).sum()
        while i < n { s += a[i] * b[i]; i += 1 }
        return s
    }

    /// Σ a[i] · b[i] · c[i]
    @inlinable @inline(__always)
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafePointer<Float>,
                           _ n: Int) -> Float {
        let ra = UnsafeRawPointer(a), rb = UnsafeRawPointer(b), rc = UnsafeRawPointer(c)
        var a0 = SIMD8<Float>(), a1 = SIMD8<Float>()
        var i = 0
        while i + 16 <= n {
            a0 += ra.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
                * rb.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
                * rc.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            a1 += ra.loadUnaligned(fromByteOffset: (i + 8) * 4, as: SIMD8<Float>.self)
                * rb.loadUnaligned(fromByteOffset: (i + 8) * 4, as: SIMD8<Float>.self)
                * rc.loadUnaligned(fromByteOffset: (i + 8) * 4, as: SIMD8<Float>.self)
            i += 16
        }
        var s = (a0 + a1).sum()
        while i < n { s += a[i] * b[i] * c[i]; i += 1 }
        return s
    }

    /// max p[i] (n ≥ 1; NaN-free input)
    @inlinable @inline(__always)
    public static func max(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
        let raw = UnsafeRawPointer(p)
        var m = -Float.infinity
        var i = 0
        if n >= 16 {
            var a0 = SIMD8<Float>(repeating: -.infinity), a1 = a0
            while i + 16 <= n {  // (stdlib's pointwiseMax is not inlined here)
                let v0 = raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
                let v1 = raw.loadUnaligned(fromByteOffset: (i + 8) * 4, as: SIMD8<Float>.self)
                a0.replace(with: v0, where: v0 .> a0)
                a1.replace(with: v1, where: v1 .> a1)
                i += 16
            }
            a0.replace(with: a1, where: a1 .> a0)
            m = a0.max()
        }
        while i < n { m = Swift.max(m, p[i]); i += 1 }
        return m
    }

    /// Σ (p[i] − m)²
    @inlinable @inline(__always)
    public static func sumSquaredDeviations(_ p: UnsafePointer<Float>, _ n: Int, from m: Float) -> Float {
        let raw = UnsafeRawPointer(p)
        let mv = SIMD8<Float>(repeating: m)
        var a0 = SIMD8<Float>(), a1 = SIMD8<Float>()
        var i = 0
        while i + 16 <= n {
            let d0 = raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self) - mv
            let d1 = raw.loadUnaligned(fromByteOffset: (i + 8) * 4, as: SIMD8<Float>.self) - mv
            a0 += d0 * d0; a1 += d1 * d1
            i += 16
        }
        var s = (a0 + a1).sum()
        while i < n { let d = p[i] - m; s += d * d; i += 1 }
        return s
    }
}

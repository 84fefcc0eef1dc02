import Tensor

/// Float32 ⇄ IEEE half conversions (round to nearest even), parallel over large arrays.
public enum FloatConversion {
    public static func toHalfBits(_ x: [Float]) -> [UInt16] {
        var out = [UInt16](repeating: 0, count: x.count)
        x.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                let s = src.baseAddress!, d = dst.baseAddress!
                parallelChunks(x.count, minimumWork: 1 << 16) { r in
                    for i in r { d[i] = Float16(s[i]).bitPattern }
                }
            }
        }
        return out
    }

    public static func fromHalfBits(_ h: UnsafeBufferPointer<UInt16>, into out: UnsafeMutablePointer<Float>) {
        let s = h.baseAddress!
        parallelChunks(h.count, minimumWork: 1 << 16) { r in
            for i in r { out[i] = Float(Float16(bitPattern: s[i])) }
        }
    }
}

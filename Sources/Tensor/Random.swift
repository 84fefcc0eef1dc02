import Foundation

/// A seeded, reproducible random generator (xoshiro256**, seeded through SplitMix64).
/// Same seed, same sequence, on every machine.
public struct SeededRandom: RandomNumberGenerator, Sendable, Codable {
    public var state: [UInt64]

    public init(seed: UInt64) {
        var z = seed
        func splitmix() -> UInt64 {
            z &+= 0x9E37_79B9_7F4A_7C15
            var x = z
            x = (x ^ (x >> 30)) &* 0xBF58_476D_1CE4_E5B9
            x = (x ^ (x >> 27)) &* 0x94D0_49BB_1331_11EB
            return x ^ (x >> 31)
        }
        state = [splitmix(), splitmix(), splitmix(), splitmix()]
    }

    public mutating func next() -> UInt64 {
        let result = ((state[1] &* 5) << 7 | (state[1] &* 5) >> 57) &* 9
        let t = state[1] << 17
        state[2] ^= state[0]; state[3] ^= state[1]; state[1] ^= state[2]; state[0] ^= state[3]
        state[2] ^= t
        state[3] = (state[3] << 45) | (state[3] >> 19)
        return result
    }

    /// Uniform in [0, 1).
    public mutating func uniform() -> Float { Float(next() >> 40) * (1.0 / Float(1 << 24)) }

    /// Uniform in [lo, hi).
    public mutating func uniform(_ lo: Float, _ hi: Float) -> Float { lo + (hi - lo) * uniform() }

    /// Standard normal (Box–Muller).
    public mutating func normal() -> Float {
        var u1 = Double(next() >> 11) * (1.0 / Double(1 << 53))
        if u1 < 1e-300 { u1 = 1e-300 }
        let u2 = Double(next() >> 11) * (1.0 / Double(1 << 53))
        return Float((-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2))
    }

    /// Normal(0, std) truncated to [a, b] by rejection (as timm's trunc_normal_ with a=-2, b=2).
    public mutating func truncatedNormal(std: Float, a: Float = -2, b: Float = 2) -> Float {
        while true {
            let v = normal() * std
            if v >= a && v <= b { return v }
        }
    }
}


extension Tensor {
    /// Values drawn from N(0, std²).
    public static func randomNormal(_ shape: [Int], std: Float = 1, rng: inout SeededRandom) -> Tensor {
        var t = Tensor(zeros: shape)
        for i in 0..<t.count { t.data[i] = rng.normal() * std }
        return t
    }

    /// Values drawn uniformly from [lo, hi).
    public static func randomUniform(_ shape: [Int], _ lo: Float, _ hi: Float, rng: inout SeededRandom) -> Tensor {
        var t = Tensor(zeros: shape)
        for i in 0..<t.count { t.data[i] = rng.uniform(lo, hi) }
        return t
    }
}

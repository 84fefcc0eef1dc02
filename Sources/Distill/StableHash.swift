/// FNV-1a 64: a hash stable across runs and machines (Swift's `Hasher` is seeded per process),
/// for prompt seeds, augmentation seeds, validation splits and memo keys.
public struct FNV1a {
    public private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325

    public init() {}

    /// Mixes in one word (a byte, a dimension, a float's bits).
    public mutating func combine(_ word: UInt64) { value = (value ^ word) &* 0x100_0000_01b3 }

    /// Mixes in the string's UTF-8 bytes.
    public mutating func combine(_ s: String) { for b in s.utf8 { combine(UInt64(b)) } }

    /// The hash of the string's UTF-8 bytes.
    public static func hash(_ s: String) -> UInt64 {
        var h = FNV1a()
        h.combine(s)
        return h.value
    }
}

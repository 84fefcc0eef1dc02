import Foundation

/// A dense Float32 tensor: an explicit shape and row-major contiguous storage.
///
/// Feature maps are NCHW, token sequences (B, N, C). `Tensor` is a value type (copy-on-write
/// through `[Float]`); kernels reach the storage with `withUnsafe…` so no copies happen in hot loops.
public struct Tensor: Sendable {
    public var shape: [Int]
    public var data: [Float]

    public init(shape: [Int], data: [Float]) {
        precondition(shape.reduce(1, *) == data.count,
                     "Tensor: shape \(shape) holds \(shape.reduce(1, *)) values, data has \(data.count)")
        self.shape = shape
        self.data = data
    }

    public init(zeros shape: [Int]) {
        self.shape = shape
        self.data = [Float](repeating: 0, count: shape.reduce(1, *))
    }

    public init(repeating value: Float, shape: [Int]) {
        self.shape = shape
        self.data = [Float](repeating: value, count: shape.reduce(1, *))
    }

    /// UNINITIALISED storage for outputs that a kernel overwrites completely (every value must be
    /// written before it is read). Zero-filling a 67 MB activation costs as much as a GELU pass;
    /// use `Tensor(zeros:)` where a kernel accumulates into its output.
    public static func empty(_ shape: [Int]) -> Tensor {
        let n = shape.reduce(1, *)
        // (capacity 0 would write into the stdlib's shared empty-array storage: a race that
        // ThreadSanitizer reports when threads do it at once)
        guard n > 0 else { return Tensor(shape: shape, data: []) }
        return Tensor(shape: shape, data: [Float](unsafeUninitializedCapacity: n) { _, count in count = n })
    }

    public var count: Int { data.count }
    public var rank: Int { shape.count }

    /// Size of dimension `i`; negative indices count from the end.
    public func dim(_ i: Int) -> Int { shape[i < 0 ? shape.count + i : i] }

    /// The same values under another shape with the same element count.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        var s = newShape
        if let inferred = s.firstIndex(of: -1) {
            let known = s.enumerated().filter { $0.offset != inferred }.map(\.element).reduce(1, *)
            s[inferred] = count / Swift.max(known, 1)
        }
        precondition(s.reduce(1, *) == count, "reshape: \(shape) -> \(newShape) changes the element count")
        return Tensor(shape: s, data: data)
    }

    public subscript(flat i: Int) -> Float {
        get { data[i] }
        set { data[i] = newValue }
    }

    /// Checks a layer-boundary shape and names the layer and both shapes when it does not match.
    @inlinable
    public func expectShape(_ expected: [Int], _ layer: @autoclosure () -> String) {
        if shape != expected {
            preconditionFailure("\(layer()): expected input of shape \(expected), got \(shape)")
        }
    }

    /// Checks rank and names the layer when it does not match.
    @inlinable
    public func expectRank(_ r: Int, _ layer: @autoclosure () -> String) {
        if shape.count != r {
            preconditionFailure("\(layer()): expected a rank-\(r) input, got shape \(shape)")
        }
    }
}

extension Tensor: CustomStringConvertible {
    public var description: String {
        let head = data.prefix(6).map { String(format: "%.5g", Double($0)) }.joined(separator: ", ")
        return "Tensor(\(shape), [\(head)\(count > 6 ? ", …" : "")])"
    }
}

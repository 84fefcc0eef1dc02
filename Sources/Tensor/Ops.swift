/// Elementwise operations and reductions. Large tensors are split across both cores;
/// small ones run serially (threads cost more than they save below ~32k values).

extension Tensor {
    /// self += other (same shape). Used for gradient accumulation and residuals.
    public mutating func add(_ other: Tensor) {
        precondition(shape == other.shape, "add: shapes \(shape) and \(other.shape) differ")
        let n = count
        data.withUnsafeMutableBufferPointer { y in
            other.data.withUnsafeBufferPointer { x in
                let yp = y.baseAddress!, xp = x.baseAddress!
                parallelChunks(n) { r in for i in r { yp[i] += xp[i] } }
            }
        }
    }

    /// self += alpha · other.
    public mutating func add(_ other: Tensor, scaledBy alpha: Float) {
        precondition(shape == other.shape, "add: shapes \(shape) and \(other.shape) differ")
        let n = count
        data.withUnsafeMutableBufferPointer { y in
            other.data.withUnsafeBufferPointer { x in
                let yp = y.baseAddress!, xp = x.baseAddress!
                parallelChunks(n) { r in for i in r { yp[i] += alpha * xp[i] } }
            }
        }
    }

    /// self *= alpha.
    public mutating func scale(by alpha: Float) {
        let n = count
        data.withUnsafeMutableBufferPointer { y in
            let yp = y.baseAddress!
            parallelChunks(n) { r in for i in r { yp[i] *= alpha } }
        }
    }

    /// Sets every value to zero, keeping the storage.
    public mutating func zero() {
        let n = count
        data.withUnsafeMutableBufferPointer { y in
            let yp = y.baseAddress!
            parallelChunks(n) { r in (yp + r.lowerBound).update(repeating: 0, count: r.count) }
        }
    }

    // One parallel pass into new storage (`var c = a; c.add(b)` would first copy a on one thread).
    public static func + (a: Tensor, b: Tensor) -> Tensor { a.combined(with: b, subtracting: false) }
    public static func - (a: Tensor, b: Tensor) -> Tensor { a.combined(with: b, subtracting: true) }

    /// out[i] = self[i] ± other[i] (same shape). Two plain loops: an operator passed as a closure
    /// is called per value inside the parallel chunks (not inlined, not vectorised).
    func combined(with other: Tensor, subtracting: Bool) -> Tensor {
        precondition(shape == other.shape, "\(subtracting ? "-" : "+"): shapes \(shape) and \(other.shape) differ")
        var out = Tensor.empty(shape)
        let n = count
        out.data.withUnsafeMutableBufferPointer { y in
            data.withUnsafeBufferPointer { a in
                other.data.withUnsafeBufferPointer { b in
                    let yp = y.baseAddress!, ap = a.baseAddress!, bp = b.baseAddress!
                    parallelChunks(n) { r in
                        if subtracting {
                            for i in r { yp[i] = ap[i] - bp[i] }
                        } else {
                            for i in r { yp[i] = ap[i] + bp[i] }
                        }
                    }
                }
            }
        }
        return out
    }
    public static func * (a: Tensor, s: Float) -> Tensor { var c = a; c.scale(by: s); return c }

    /// Applies `f` to every value, in parallel for large tensors.
    public func map(_ f: (Float) -> Float) -> Tensor {
        var out = Tensor.empty(shape)
        let n = count
        out.data.withUnsafeMutableBufferPointer { y in
            data.withUnsafeBufferPointer { x in
                let yp = y.baseAddress!, xp = x.baseAddress!
                parallelChunks(n) { r in for i in r { yp[i] = f(xp[i]) } }
            }
        }
        return out
    }

    /// Sum of all values in Double (deterministic for any thread count: `blockedSum`).
    public func sum() -> Double {
        data.withUnsafeBufferPointer { xb in
            let x = xb.baseAddress!
            return blockedSum(count) { r in
                var s: Double = 0
                for i in r { s += Double(x[i]) }
                return s
            }
        }
    }

    public func mean() -> Double { count == 0 ? 0 : sum() / Double(count) }

    /// Σ self · other, in Double.
    public func dot(_ other: Tensor) -> Double {
        precondition(count == other.count, "dot: \(shape) vs \(other.shape)")
        var s: Double = 0
        for i in 0..<count { s += Double(data[i]) * Double(other.data[i]) }
        return s
    }

    /// Euclidean norm squared, in Double (deterministic for any thread count: `blockedSum`).
    public func squaredNorm() -> Double {
        data.withUnsafeBufferPointer { xb in
            let x = xb.baseAddress!
            return blockedSum(count, costPerItem: 2) { r in
                var s: Double = 0
                for i in r { let v = Double(x[i]); s += v * v }
                return s
            }
        }
    }

    public func maxAbs() -> Float { data.reduce(0) { Swift.max($0, abs($1)) } }

    public var hasNonFinite: Bool { data.contains { !$0.isFinite } }

    /// Permutes dimensions: `out.shape[i] = shape[order[i]]`.
    public func permuted(_ order: [Int]) -> Tensor {
        precondition(order.sorted() == Array(0..<rank), "permute: \(order) is not a permutation of rank \(rank)")
        let outShape = order.map { shape[$0] }
        var inStrides = [Int](repeating: 1, count: rank)
        for i in stride(from: rank - 2, through: 0, by: -1) { inStrides[i] = inStrides[i + 1] * shape[i + 1] }
        let strides = order.map { inStrides[$0] }
        var out = Tensor.empty(outShape)
        let n = count, r = rank
        data.withUnsafeBufferPointer { x in
            out.data.withUnsafeMutableBufferPointer { y in
                var idx = [Int](repeating: 0, count: r)
                var src = 0
                for i in 0..<n {
                    y[i] = x[src]
                    var d = r - 1
                    while d >= 0 {
                        idx[d] += 1; src += strides[d]
                        if idx[d] < outShape[d] { break }
                        src -= strides[d] * outShape[d]; idx[d] = 0; d -= 1
                    }
                }
            }
        }
        return out
    }
}

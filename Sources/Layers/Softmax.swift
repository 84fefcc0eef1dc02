import Foundation
import Tensor

/// Row-wise softmax over contiguous rows of length `n` (attention scores), in place.
/// Stateless kernels: attention layers keep the probabilities themselves for backward.

/// p[r, :] = softmax(x[r, :]) for `rows` rows of `n` values, in place (parallel over rows when large).
@inline(__always)
public func softmaxRows(_ x: UnsafeMutablePointer<Float>, rows: Int, n: Int) {
    parallelChunks(rows, costPerItem: n * 8) { range in
        for r in range { softmaxRow(x + r * n, n) }
    }
}

/// One row in place: max, vectorised e^(x − max) with its sum, scale.
@inline(__always)
public func softmaxRow(_ row: UnsafeMutablePointer<Float>, _ n: Int) {
    let m = Reductions.max(row, n)
    let inv = 1 / FastMath.expShiftedInPlace(row, m, n)
    for j in 0..<n { row[j] *= inv }
}

/// Backward of one row in place on the gradient: g = p ⊙ (g − Σ_j g_j p_j).
@inline(__always)
public func softmaxRowBackward(_ p: UnsafePointer<Float>, _ g: UnsafeMutablePointer<Float>, _ n: Int) {
    let dot = Reductions.dot(p, UnsafePointer(g), n)
    for j in 0..<n { g[j] = p[j] * (g[j] - dot) }
}

/// Backward of softmax, in place on the gradient: dx = p ⊙ (dp − Σ_j dp_j p_j), row by row.
/// p: (rows, n) probabilities from the forward; g: (rows, n) dL/dp on entry, dL/dx on return.
@inline(__always)
public func softmaxRowsBackward(probabilities p: UnsafePointer<Float>, gradient g: UnsafeMutablePointer<Float>,
                                rows: Int, n: Int) {
    parallelChunks(rows, costPerItem: n * 4) { range in
        for r in range {
            let pr = p + r * n, gr = g + r * n
            let dot = Reductions.dot(pr, UnsafePointer(gr), n)
            for j in 0..<n { gr[j] = pr[j] * (gr[j] - dot) }
        }
    }
}

/// `nn.Softmax(dim=-1)` as a layer over the last dimension (keeps its output for backward).
public final class Softmax: Module {
    // p: (..., n), kept for backward
    private var output: Tensor?

    public init() {}
    public func namedParameters() -> [(String, Parameter)] { [] }

    /// x: (..., n) -> softmax over the last dimension
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        var y = x
        let n = x.shape.last ?? 1
        y.data.withUnsafeMutableBufferPointer { softmaxRows($0.baseAddress!, rows: x.count / n, n: n) }
        output = mode.keepsActivations ? y : nil
        return y
    }

    public func backward(_ dy: Tensor) -> Tensor {
        guard let p = output else { preconditionFailure("Softmax.backward without a training-mode forward") }
        precondition(dy.shape == p.shape, "Softmax.backward: dy \(dy.shape) vs output \(p.shape)")
        var dx = dy
        let n = p.shape.last ?? 1
        p.data.withUnsafeBufferPointer { pb in
            dx.data.withUnsafeMutableBufferPointer { softmaxRowsBackward(probabilities: pb.baseAddress!, gradient: $0.baseAddress!, rows: p.count / n, n: n) }
        }
        output = nil
        return dx
    }
}

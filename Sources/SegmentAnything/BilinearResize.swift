import Foundation
import Tensor

// The bilinear kernels behind `SAMModel.postprocessMasks`: PyTorch's resize, per axis and
// streamed row by row through two chained resizes.

/// One axis of PyTorch's bilinear resize (align_corners=False, no scale factor), in Float as its
/// CPU kernel: scale = in/out, source = max(scale·(d + 0.5) − 0.5, 0), i0 = ⌊source⌋,
/// i1 = i0 + 1 unless at the edge, λ = source − i0. Tables for output indices 0..<count.
struct BilinearAxis {
    let i0: [Int]
    let i1: [Int]
    let lambda: [Float]

    init(inSize: Int, outSize: Int, count: Int) {
        let scale = Float(inSize) / Float(outSize)
        var i0 = [Int](repeating: 0, count: count), i1 = i0, lambda = [Float](repeating: 0, count: count)
        for d in 0..<count {
            let s = max(scale * (Float(d) + 0.5) - 0.5, 0)
            let a = min(Int(s), inSize - 1)
            i0[d] = a
            i1[d] = a < inSize - 1 ? a + 1 : a
            lambda[d] = min(max(s - Float(a), 0), 1)
        }
        self.i0 = i0; self.i1 = i1; self.lambda = lambda
    }
}

/// Two chained bilinear resizes (low → mid → out) computed row by row: an output row is
/// (1−λr)·top + λr·bottom of two mid rows already interpolated across (widths `outWidth`), a mid row
/// is (1−λr)·top + λr·bottom of two low-res rows interpolated across (width `midWidth`). Each
/// level keeps its last two rows, so rows are interpolated across once per job while the output
/// rows advance (row indices only grow). Per value the arithmetic is the per-pixel
/// `(1−λr)·((1−λc)·x00 + λc·x01) + λr·((1−λc)·x10 + λc·x11)`: the same floats.
struct BilinearStream {
    // low: 2 × (midWidth) low-res rows interpolated across, for low-res rows lowIndex
    // mid: (midWidth) one mid row; midAcross: 2 × (outWidth) mid rows interpolated across
    let lowWidth: Int, midWidth: Int, outWidth: Int
    let low: UnsafeMutablePointer<Float>, mid: UnsafeMutablePointer<Float>, midAcross: UnsafeMutablePointer<Float>
    var lowIndex = (-1, -1), midIndex = (-1, -1)
    var source: UnsafePointer<Float>? = nil

    init(lowWidth: Int, midWidth: Int, outWidth: Int) {
        self.lowWidth = lowWidth; self.midWidth = midWidth; self.outWidth = outWidth
        low = .allocate(capacity: 2 * midWidth)
        mid = .allocate(capacity: midWidth)
        midAcross = .allocate(capacity: 2 * outWidth)
    }

    func deallocate() { low.deallocate(); mid.deallocate(); midAcross.deallocate() }

    /// y[c] = (1−λc)·x[i0[c]] + λc·x[i1[c]] for c < cols.count.
    @inline(__always)
    static func across(_ x: UnsafePointer<Float>, _ cols: BilinearAxis, _ y: UnsafeMutablePointer<Float>) {
        cols.i0.withUnsafeBufferPointer { c0 in cols.i1.withUnsafeBufferPointer { c1 in cols.lambda.withUnsafeBufferPointer { cl in
            for c in 0..<c0.count {
                let lc = cl[c]
                y[c] = (1 - lc) * x[c0[c]] + lc * x[c1[c]]
            }
        } } }
    }

    /// y = (1−λ)·top + λ·bottom over n values (vectorised).
    @inline(__always)
    static func blend(_ top: UnsafePointer<Float>, _ bottom: UnsafePointer<Float>, _ lambda: Float,
                      _ y: UnsafeMutablePointer<Float>, _ n: Int) {
        let k = 1 - lambda
        for c in 0..<n { y[c] = k * top[c] + lambda * bottom[c] }
    }

    /// Slot (0 or 1) holding row `r` at a level, computing it into the slot not holding the
    /// other needed row `other` when missing.
    @inline(__always)
    static func slot(_ index: inout (Int, Int), _ r: Int, other: Int, _ compute: (Int) -> Void) -> Int {
        if index.0 == r { return 0 }
        if index.1 == r { return 1 }
        let s = index.0 == other ? 1 : 0
        if s == 0 { index.0 = r } else { index.1 = r }
        compute(s)
        return s
    }

    /// Output rows `outputRows` of one mask x: (h, lowWidth) into y: (Ho, outWidth), as logits or
    /// thresholded to 0/1.
    mutating func resize(_ x: UnsafePointer<Float>, rows1: BilinearAxis, cols1: BilinearAxis,
                         rows2: BilinearAxis, cols2: BilinearAxis, outputRows: Range<Int>,
                         into y: UnsafeMutablePointer<Float>, threshold: Float?) {
        if source != x { lowIndex = (-1, -1); midIndex = (-1, -1); source = x }
        let Wl = lowWidth, Wm = midWidth, Wo = outWidth
        let low = low, mid = mid, midAcross = midAcross
        var lowIndex = lowIndex
        // The mid row m interpolated across into midAcross slot s.
        func midRow(_ m: Int, _ s: Int) {
            let a = rows1.i0[m], b = rows1.i1[m]
            let sa = Self.slot(&lowIndex, a, other: b) { Self.across(x + a * Wl, cols1, low + $0 * Wm) }
            let sb = Self.slot(&lowIndex, b, other: a) { Self.across(x + b * Wl, cols1, low + $0 * Wm) }
            Self.blend(low + sa * Wm, low + sb * Wm, rows1.lambda[m], mid, Wm)
            Self.across(mid, cols2, midAcross + s * Wo)
        }
        for r in outputRows {
            let a = rows2.i0[r], b = rows2.i1[r]
            let sa = Self.slot(&midIndex, a, other: b) { midRow(a, $0) }
            let sb = Self.slot(&midIndex, b, other: a) { midRow(b, $0) }
            let yr = y + r * Wo
            Self.blend(midAcross + sa * Wo, midAcross + sb * Wo, rows2.lambda[r], yr, Wo)
            if let t = threshold { for c in 0..<Wo { yr[c] = yr[c] > t ? 1 : 0 } }
        }
        self.lowIndex = lowIndex
    }
}

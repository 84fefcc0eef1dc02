import Foundation
import Tensor

/// Conversions between token sequences (B, H·W, C) and NCHW maps (B, C, H, W): a per-image
/// transpose, tiled and parallel over (image, tile). Each is the other's adjoint (and inverse),
/// so each one's backward is the other.
public enum ConvLayout {
    /// x: (B, H·W, C) -> (B, C, H, W)  (PyTorch: x.view(B, H, W, C).permute(0, 3, 1, 2))
    public static func tokensToMap(_ x: Tensor, height H: Int, width W: Int) -> Tensor {
        precondition(x.rank == 3 && x.shape[1] == H * W,
                     "ConvLayout.tokensToMap: expected (B, \(H * W), C) for \(H)×\(W), got \(x.shape)")
        let B = x.shape[0], C = x.shape[2]
        var y = Tensor.empty([B, C, H, W])
        transposeBatched(x, into: &y, batch: B, rows: H * W, cols: C)
        return y
    }

    /// x: (B, C, H, W) -> (B, H·W, C)  (PyTorch: x.flatten(2).transpose(1, 2))
    public static func mapToTokens(_ x: Tensor) -> Tensor {
        precondition(x.rank == 4, "ConvLayout.mapToTokens: expected (B, C, H, W), got \(x.shape)")
        let B = x.shape[0], C = x.shape[1], HW = x.shape[2] * x.shape[3]
        var y = Tensor.empty([B, HW, C])
        transposeBatched(x, into: &y, batch: B, rows: C, cols: HW)
        return y
    }

    /// For each of `batch` (rows, cols) matrices of x: y_b = x_bᵀ (cols, rows), in 32×32 tiles of
    /// 4×4 register transposes (scalar at ragged edges). Parallel over (matrix, row tile).
    private static func transposeBatched(_ x: Tensor, into y: inout Tensor, batch: Int, rows: Int, cols: Int) {
        let t = 32
        let rowTiles = (rows + t - 1) / t, colTiles = (cols + t - 1) / t
        x.data.withUnsafeBufferPointer { xb in
            y.data.withUnsafeMutableBufferPointer { yb in
                let xp = xb.baseAddress!, yp = yb.baseAddress!
                parallelFor(batch * rowTiles, costPerItem: t * cols) { job in
                    let b = job / rowTiles, r0 = (job % rowTiles) * t, r1 = Swift.min(rows, r0 + t)
                    let xi = xp + b * rows * cols, yi = yp + b * rows * cols
                    for ct in 0..<colTiles {
                        let c0 = ct * t, c1 = Swift.min(cols, c0 + t)
                        transposeTile(xi, ldx: cols, yi, ldy: rows, rows: r0..<r1, cols: c0..<c1)
                    }
                }
            }
        }
    }

    /// y[c·ldy + r] = x[r·ldx + c] for r in `rows`, c in `cols`.
    @inline(__always)
    static func transposeTile(_ x: UnsafePointer<Float>, ldx: Int, _ y: UnsafeMutablePointer<Float>, ldy: Int,
                              rows: Range<Int>, cols: Range<Int>) {
        let r4 = rows.lowerBound + rows.count / 4 * 4, c4 = cols.lowerBound + cols.count / 4 * 4
        var r = rows.lowerBound
        while r < r4 {
            var c = cols.lowerBound
            while c < c4 {
                transpose4x4(x + r * ldx + c, ldx, y + c * ldy + r, ldy)
                c += 4
            }
            for c in c4..<cols.upperBound { for i in r..<(r + 4) { y[c * ldy + i] = x[i * ldx + c] } }
            r += 4
        }
        for r in r4..<rows.upperBound { for c in cols { y[c * ldy + r] = x[r * ldx + c] } }
    }

    /// One 4×4 block: rows of x (stride ldx) become columns of y (stride ldy), in SSE shuffles.
    @inline(__always)
    static func transpose4x4(_ x: UnsafePointer<Float>, _ ldx: Int, _ y: UnsafeMutablePointer<Float>, _ ldy: Int) {
        let src = UnsafeRawPointer(x), dst = UnsafeMutableRawPointer(y)
        let r0 = src.loadUnaligned(as: SIMD4<Float>.self)
        let r1 = (src + 4 * ldx).loadUnaligned(as: SIMD4<Float>.self)
        let r2 = (src + 8 * ldx).loadUnaligned(as: SIMD4<Float>.self)
        let r3 = (src + 12 * ldx).loadUnaligned(as: SIMD4<Float>.self)
        // a = (r0 r1), b = (r2 r3); e/o: even/odd columns of each pair, then split again
        let a = SIMD8(lowHalf: r0, highHalf: r1), b = SIMD8(lowHalf: r2, highHalf: r3)
        let e = SIMD8(lowHalf: a.evenHalf, highHalf: b.evenHalf), o = SIMD8(lowHalf: a.oddHalf, highHalf: b.oddHalf)
        dst.storeBytes(of: e.evenHalf, as: SIMD4<Float>.self)               // column 0
        (dst + 4 * ldy).storeBytes(of: o.evenHalf, as: SIMD4<Float>.self)   // column 1
        (dst + 8 * ldy).storeBytes(of: e.oddHalf, as: SIMD4<Float>.self)    // column 2
        (dst + 12 * ldy).storeBytes(of: o.oddHalf, as: SIMD4<Float>.self)   // column 3
    }
}

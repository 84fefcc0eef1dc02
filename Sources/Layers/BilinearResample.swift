import Foundation
import Tensor

/// `F.interpolate(x, size: (Ho, Wo), mode: "bilinear", align_corners: False, antialias: True)` on
/// NCHW maps, down or up: a reduced-resolution student shrinks its input with it and brings its
/// embedding grid back up to the teacher's. No parameters.
///
/// PyTorch's antialiased kernel (PIL's resize), separably per axis, scale s = in/out: output index
/// o has centre c = s·(o + ½) and support r = max(s, 1); it reads source indices
/// j ∈ [max(⌊c − r + ½⌋, 0), min(⌊c + r + ½⌋, in)) with triangle weights
/// max(0, 1 − |(j + ½ − c)/max(s, 1)|), normalised to sum 1. Upsampling (s < 1) is plain bilinear
/// with half-pixel centres; downsampling averages over s source pixels, so nothing aliases.
/// Backward scatters dy through the same taps (the transpose).
public enum BilinearResample {
    /// One axis's taps, padded to the longest: `indices` and `weights` (output, width) row-major,
    /// y[o] = Σ_k weights[o, k]·x[indices[o, k]]; a padding tap reads the output's first source
    /// index with weight 0. The forward, the backward and the ONNX export all read this table.
    public struct Taps: Sendable {
        public let width: Int
        public let indices: [Int]
        public let weights: [Float]

        public init(input n: Int, output m: Int) {
            let s = Double(n) / Double(m), r = max(s, 1)
            var rows: [(start: Int, weights: [Float])] = []
            for o in 0..<m {
                let c = s * (Double(o) + 0.5)
                let lo = max(Int(c - r + 0.5), 0), hi = min(Int(c + r + 0.5), n)
                let w = (lo..<hi).map { j in max(0, 1 - abs((Double(j) + 0.5 - c) / r)) }
                let total = w.reduce(0, +)
                rows.append((lo, w.map { Float(total > 0 ? $0 / total : 0) }))
            }
            let K = rows.map(\.weights.count).max() ?? 0
            var indices = [Int](repeating: 0, count: m * K), weights = [Float](repeating: 0, count: m * K)
            for (o, row) in rows.enumerated() {
                for k in 0..<K {
                    indices[o * K + k] = row.start + (k < row.weights.count ? k : 0)
                    weights[o * K + k] = k < row.weights.count ? row.weights[k] : 0
                }
            }
            width = K
            self.indices = indices
            self.weights = weights
        }
    }

    /// x: (B, C, H, W) -> (B, C, height, width)
    public static func forward(_ x: Tensor, height Ho: Int, width Wo: Int) -> Tensor {
        precondition(x.rank == 4 && Ho > 0 && Wo > 0, "BilinearResample(\(Ho)×\(Wo)): expected (B, C, H, W), got \(x.shape)")
        let H = x.shape[2], W = x.shape[3]
        let th = Taps(input: H, output: Ho), tw = Taps(input: W, output: Wo), kh = th.width, kw = tw.width
        var y = Tensor.empty([x.shape[0], x.shape[1], Ho, Wo])
        perPlane(x, &y, rows: H * Wo) { src, dst, rows in
            // rows: (H, Wo) the horizontal pass of the plane
            for yy in 0..<H {
                let line = src + yy * W
                for ox in 0..<Wo {
                    var s: Float = 0
                    for k in (ox * kw)..<((ox + 1) * kw) { s += tw.weights[k] * line[tw.indices[k]] }
                    rows[yy * Wo + ox] = s
                }
            }
            for oy in 0..<Ho {
                let d = dst + oy * Wo
                for ox in 0..<Wo { d[ox] = 0 }
                for k in (oy * kh)..<((oy + 1) * kh) {
                    let w = th.weights[k], r = th.indices[k] * Wo
                    for ox in 0..<Wo { d[ox] += w * rows[r + ox] }
                }
            }
        }
        return y
    }

    /// dy: (B, C, Ho, Wo) -> dx: (B, C, height, width), the input's shape.
    public static func backward(_ dy: Tensor, height H: Int, width W: Int) -> Tensor {
        precondition(dy.rank == 4, "BilinearResample.backward: expected (B, C, Ho, Wo), got \(dy.shape)")
        let Ho = dy.shape[2], Wo = dy.shape[3]
        let th = Taps(input: H, output: Ho), tw = Taps(input: W, output: Wo), kh = th.width, kw = tw.width
        var dx = Tensor(zeros: [dy.shape[0], dy.shape[1], H, W])
        perPlane(dy, &dx, rows: H * Wo) { g, d, rows in
            // rows: (H, Wo) the gradient at the horizontal pass's output
            for oy in 0..<Ho {
                let gr = g + oy * Wo
                for k in (oy * kh)..<((oy + 1) * kh) {
                    let w = th.weights[k], r = th.indices[k] * Wo
                    for ox in 0..<Wo { rows[r + ox] += w * gr[ox] }
                }
            }
            for yy in 0..<H {
                let line = d + yy * W
                for ox in 0..<Wo {
                    let v = rows[yy * Wo + ox]
                    for k in (ox * kw)..<((ox + 1) * kw) { line[tw.indices[k]] += tw.weights[k] * v }
                }
            }
        }
        return dx
    }

    /// body(input plane, output plane, zeroed scratch of `rows` floats) for each of the B·C planes
    /// of `input` and `output`, in parallel.
    static func perPlane(_ input: Tensor, _ output: inout Tensor, rows n: Int,
                         _ body: (UnsafePointer<Float>, UnsafeMutablePointer<Float>, inout [Float]) -> Void) {
        let P = input.shape[0] * input.shape[1]
        let inPlane = input.count / max(P, 1), outPlane = output.count / max(P, 1)
        input.data.withUnsafeBufferPointer { ib in
            output.data.withUnsafeMutableBufferPointer { ob in
                let ip = ib.baseAddress!, op = ob.baseAddress!
                parallelFor(P, costPerItem: (inPlane + outPlane + n) * 4) { p in
                    var rows = [Float](repeating: 0, count: n)
                    body(ip + p * inPlane, op + p * outPlane, &rows)
                }
            }
        }
    }
}

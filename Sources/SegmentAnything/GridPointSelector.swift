import Tensor

// Which grid points the fast mode of segment everything decodes next. A grid point is worth
// decoding when it looks unlike every point decoded so far: the image embedding at the point
// (what the mask decoder will see there) is far, in cosine distance, from the embedding at each
// decoded point. Farthest-point sampling over that distance spreads a fixed budget of prompts
// over everything that differs in the image, small objects among them, instead of over the
// image's area. Measured on five photos in Experiments/performance/results.md (session 17).

/// Farthest-first choice of grid points by the image embedding at each point.
public struct GridPointSelector {
    /// Grid points (G).
    public let count: Int
    let side: Int, channels: Int, spatialWeight: Float
    // features: (G, C), the embedding at each point, unit length
    let features: [Float]

    /// `embedding`: (1, C, g, g), the image's embedding, whose cell (i, j) sees input pixels
    /// [s·i, s·i + s) × [s·j, s·j + s) with s = `inputSide` / g. `points`: the grid in the
    /// encoder's input frame (pixels), row-major, `side`² of them. The distance of points p and
    /// q is 1 − cos(f_p, f_q) + `spatialWeight` · max(|Δrow|, |Δcol|) / `side`.
    public init(embedding: Tensor, inputSide: Int, points: [(x: Double, y: Double)], side: Int, spatialWeight: Float) {
        precondition(embedding.rank == 4 && embedding.shape[0] == 1 && embedding.shape[2] == embedding.shape[3],
                     "GridPointSelector: expected a (1, C, g, g) embedding, got \(embedding.shape)")
        precondition(side * side == points.count, "GridPointSelector: \(points.count) points is not a \(side)×\(side) grid")
        let C = embedding.shape[1], g = embedding.shape[2], G = points.count
        let cell = Double(inputSide) / Double(g)
        // features: (G, C), bilinear samples at the points (align_corners=False), then unit length
        var f = [Float](repeating: 0, count: G * C)
        embedding.data.withUnsafeBufferPointer { e in
            for (p, point) in points.enumerated() {
                let fx = point.x / cell - 0.5, fy = point.y / cell - 0.5
                let x0 = min(max(Int(fx.rounded(.down)), 0), g - 1), y0 = min(max(Int(fy.rounded(.down)), 0), g - 1)
                let x1 = min(x0 + 1, g - 1), y1 = min(y0 + 1, g - 1)
                let ax = Float(min(max(fx - Double(x0), 0), 1)), ay = Float(min(max(fy - Double(y0), 0), 1))
                let w00 = (1 - ax) * (1 - ay), w01 = ax * (1 - ay), w10 = (1 - ax) * ay, w11 = ax * ay
                var norm: Float = 0
                for c in 0..<C {
                    let m = e.baseAddress! + c * g * g
                    let v = w00 * m[y0 * g + x0] + w01 * m[y0 * g + x1] + w10 * m[y1 * g + x0] + w11 * m[y1 * g + x1]
                    f[p * C + c] = v
                    norm += v * v
                }
                let scale = norm > 0 ? 1 / norm.squareRoot() : 0
                for c in 0..<C { f[p * C + c] *= scale }
            }
        }
        count = G
        self.side = side
        channels = C
        self.spatialWeight = spatialWeight
        features = f
    }

    /// Lowers `nearest[p]` to the distance from p to each of `from` (one product per 64 of them).
    func lower(_ nearest: inout [Float], from points: [Int]) {
        let G = count, C = channels
        for start in stride(from: 0, to: points.count, by: 64) {
            let chunk = Array(points[start..<min(points.count, start + 64)])
            // rows: (b, C) the chunk's features; dots: (G, b) = features · rowsᵀ
            var rows = [Float](repeating: 0, count: chunk.count * C)
            for (j, q) in chunk.enumerated() { rows.replaceSubrange((j * C)..<((j + 1) * C), with: features[(q * C)..<((q + 1) * C)]) }
            var dots = [Float](repeating: 0, count: G * chunk.count)
            features.withUnsafeBufferPointer { fb in
                rows.withUnsafeBufferPointer { rb in
                    dots.withUnsafeMutableBufferPointer { db in
                        gemm(transB: true, m: G, n: chunk.count, k: C, a: fb.baseAddress!, lda: C, b: rb.baseAddress!, ldb: C,
                             c: db.baseAddress!, ldc: chunk.count)
                    }
                }
            }
            for p in 0..<G {
                for (j, q) in chunk.enumerated() {
                    let chebyshev = max(abs(p / side - q / side), abs(p % side - q % side))
                    let d = 1 - dots[p * chunk.count + j] + spatialWeight * Float(chebyshev) / Float(side)
                    if d < nearest[p] { nearest[p] = d }
                }
            }
        }
    }

    /// Up to `size` points not yet decoded, each the farthest from every decoded or already
    /// chosen point; a covered point's distances count `coveredWeight` times (it lies inside a
    /// confident mask, so it more likely finds that mask again). Empty when every point is decoded.
    public func nextBatch(decoded: [Bool], covered: [Bool], coveredWeight: Float, size: Int) -> [Int] {
        precondition(decoded.count == count && covered.count == count, "GridPointSelector.nextBatch: expected \(count) flags")
        // nearest: (G,), distance to the nearest decoded or chosen point
        var nearest = [Float](repeating: .infinity, count: count)
        lower(&nearest, from: (0..<count).filter { decoded[$0] })
        var taken = decoded
        var chosen: [Int] = []
        while chosen.count < size {
            // The largest weighted distance (an untouched +∞ only before anything is decoded).
            var best = -1, bestPriority: Float = -1
            for p in 0..<count where !taken[p] {
                let priority = nearest[p].isFinite ? nearest[p] * (covered[p] ? coveredWeight : 1) : .infinity
                if best < 0 || priority > bestPriority { best = p; bestPriority = priority }
            }
            if best < 0 { break }
            chosen.append(best)
            taken[best] = true
            lower(&nearest, from: [best])
        }
        return chosen
    }
}

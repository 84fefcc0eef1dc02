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
    // distance: (G, G), 1 − cos(f_p, f_q) + spatialWeight · max(|Δrow|, |Δcol|) / side
    let distance: [Float]

    /// `embedding`: (1, C, g, g), the image's embedding, whose cell (i, j) sees input pixels
    /// [s·i, s·i + s) × [s·j, s·j + s) with s = `inputSide` / g. `points`: the grid in the
    /// encoder's input frame (pixels), row-major, `side`² of them.
    public init(embedding: Tensor, inputSide: Int, points: [(x: Double, y: Double)], side: Int, spatialWeight: Float) {
        precondition(embedding.rank == 4 && embedding.shape[0] == 1 && embedding.shape[2] == embedding.shape[3],
                     "GridPointSelector: expected a (1, C, g, g) embedding, got \(embedding.shape)")
        precondition(side * side == points.count, "GridPointSelector: \(points.count) points is not a \(side)×\(side) grid")
        let C = embedding.shape[1], g = embedding.shape[2], G = points.count
        let cell = Double(inputSide) / Double(g)
        // features: (G, C), the embedding bilinearly sampled at each point (align_corners=False), unit length
        var features = [Float](repeating: 0, count: G * C)
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
                    features[p * C + c] = v
                    norm += v * v
                }
                let scale = norm > 0 ? 1 / norm.squareRoot() : 0
                for c in 0..<C { features[p * C + c] *= scale }
            }
        }
        // distance: (G, G) = 1 − features · featuresᵀ, then the spatial term
        var d = [Float](repeating: 0, count: G * G)
        features.withUnsafeBufferPointer { f in
            d.withUnsafeMutableBufferPointer { db in
                gemm(transB: true, m: G, n: G, k: C, alpha: -1, a: f.baseAddress!, lda: C, b: f.baseAddress!, ldb: C,
                     beta: 0, c: db.baseAddress!, ldc: G)
            }
        }
        for p in 0..<G {
            for q in 0..<G {
                let chebyshev = max(abs(p / side - q / side), abs(p % side - q % side))
                d[p * G + q] += 1 + spatialWeight * Float(chebyshev) / Float(side)
            }
        }
        count = G
        distance = d
    }

    /// Up to `size` points not yet decoded, each the farthest from every decoded or already
    /// chosen point; a covered point's distances count `coveredWeight` times (it lies inside a
    /// confident mask, so it more likely finds that mask again). Empty when every point is decoded.
    public func nextBatch(decoded: [Bool], covered: [Bool], coveredWeight: Float, size: Int) -> [Int] {
        precondition(decoded.count == count && covered.count == count, "GridPointSelector.nextBatch: expected \(count) flags")
        let weight = covered.map { $0 ? coveredWeight : 1 }
        // priority: (G,), weighted distance to the nearest decoded point; −1 once decoded or chosen
        var priority = [Float](repeating: .infinity, count: count)
        for q in 0..<count where decoded[q] {
            for p in 0..<count { priority[p] = min(priority[p], distance[q * count + p]) }  // symmetric: row q
        }
        for p in 0..<count { priority[p] = decoded[p] ? -1 : priority[p].isFinite ? priority[p] * weight[p] : priority[p] }
        var chosen: [Int] = []
        while chosen.count < size {
            var best = -1
            for p in 0..<count where priority[p] >= 0 && (best < 0 || priority[p] > priority[best]) { best = p }
            if best < 0 { break }
            chosen.append(best)
            priority[best] = -1
            for p in 0..<count where priority[p] >= 0 {
                priority[p] = min(priority[p], distance[p * count + best] * weight[p])
            }
        }
        return chosen
    }
}

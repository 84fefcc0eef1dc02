import Foundation
import Layers
import SegmentAnything
import Tensor

public enum EmbeddingEvaluation {
    public struct Result: Equatable, Sendable {
        /// Mean squared error over the valid region's elements.
        public var mse: Double
        /// Mean over valid grid cells of the cosine similarity of the C-dimensional embedding vectors.
        public var cosine: Double
    }

    /// Student vs teacher embeddings on `rows` of `data`, inference mode, restricted to each
    /// sample's valid region.
    public static func evaluate(_ student: Student, on data: TrainingData, rows: [Int], batchSize: Int) throws -> Result {
        result(try sums(student, on: data, rows: rows, batchSize: batchSize))
    }

    /// The sums behind `Result` (squared error, elements, cosine sum, cells): additive over row
    /// subsets, so ranks that split the rows add theirs (all-reduce) and form one result.
    public static func sums(_ student: Student, on data: TrainingData, rows: [Int], batchSize: Int) throws -> [Double] {
        var se = 0.0, elements = 0, cosSum = 0.0, cells = 0
        var start = 0
        while start < rows.count {
            let chunk = Array(rows[start..<min(rows.count, start + batchSize)])
            start += chunk.count
            let b = try data.batch(chunk, seed: 0)
            let p = student.forward(b.images, mode: .inference)
            precondition(p.shape == b.targets.shape, "EmbeddingEvaluation: student gives \(p.shape), teacher \(b.targets.shape)")
            let C = p.shape[1], H = p.shape[2], W = p.shape[3]
            for (i, r) in b.validRegions.enumerated() {
                for y in 0..<r.height {
                    for x in 0..<r.width {
                        var dot = 0.0, pp = 0.0, tt = 0.0
                        for c in 0..<C {
                            let o = ((i * C + c) * H + y) * W + x
                            let a = Double(p.data[o]), t = Double(b.targets.data[o])
                            se += (a - t) * (a - t); dot += a * t; pp += a * a; tt += t * t
                        }
                        elements += C
                        cosSum += dot / max((pp * tt).squareRoot(), 1e-12)
                        cells += 1
                    }
                }
            }
        }
        return [se, Double(elements), cosSum, Double(cells)]
    }

    /// The result of `sums` (of one rank's rows or of every rank's added).
    public static func result(_ s: [Double]) -> Result {
        Result(mse: s[1] > 0 ? s[0] / s[1] : 0, cosine: s[3] > 0 ? s[2] / s[3] : 0)
    }
}

import SegmentAnything
import Tensor
import XCTest

/// The fast mode's choice of grid points (`GridPointSelector`) on hand-made embeddings: a
/// 4×4 grid over an 8×8 embedding of a 16-pixel input, so each grid point sits at the centre of
/// a 2×2 block of cells (bilinear sampling there averages the block).
final class GridPointSelectorTests: XCTestCase {
    let side = 4

    /// Grid point p = (row, col) at input pixel (4·col + 2, 4·row + 2).
    var points: [(x: Double, y: Double)] { (0..<(side * side)).map { (x: Double(4 * ($0 % side) + 2), y: Double(4 * ($0 / side) + 2)) } }

    /// An (1, C, 8, 8) embedding whose 2×2 block under grid point p holds `vectors[p]`.
    func embedding(_ vectors: [[Float]]) -> Tensor {
        let C = vectors[0].count
        var data = [Float](repeating: 0, count: C * 64)
        for p in 0..<(side * side) {
            let r = p / side, c = p % side
            for ch in 0..<C { for dy in 0..<2 { for dx in 0..<2 { data[ch * 64 + (2 * r + dy) * 8 + 2 * c + dx] = vectors[p][ch] } } }
        }
        return Tensor(shape: [1, C, 8, 8], data: data)
    }

    func selector(_ vectors: [[Float]], spatialWeight: Float = 0) -> GridPointSelector {
        GridPointSelector(embedding: embedding(vectors), inputSide: 16, points: points, side: side, spatialWeight: spatialWeight)
    }

    func flags(_ set: Set<Int>) -> [Bool] { (0..<(side * side)).map { set.contains($0) } }

    /// An object unlike the rest of the image comes first, then the spatially farthest point;
    /// a point like a decoded one (cosine distance 0) comes after every unlike point.
    func testFarthestFirstByEmbeddingThenSpace() {
        var v = [[Float]](repeating: [1, 0, 0], count: 16)
        v[6] = [0, 1, 0]   // (1, 2): an object
        v[9] = [0, 0, 2]   // (2, 1): another one (length does not matter: cosine)
        let s = selector(v, spatialWeight: 0.1)
        let batch = s.nextBatch(decoded: flags([0]), covered: flags([]), coveredWeight: 0.5, size: 3)
        XCTAssertEqual(Set(batch.prefix(2)), [6, 9])
        XCTAssertEqual(max(batch[2] / side, batch[2] % side), 3, "then a point farthest from (0, 0) in grid steps: \(batch)")
    }

    /// A covered point's distance counts `coveredWeight` times.
    func testCoveredPointsComeLater() {
        var v = [[Float]](repeating: [1, 0, 0], count: 16)
        v[6] = [0, 1, 0]; v[9] = [0, 0, 1]
        let s = selector(v)
        XCTAssertEqual(s.nextBatch(decoded: flags([0]), covered: flags([6]), coveredWeight: 0.5, size: 1), [9])
        XCTAssertEqual(s.nextBatch(decoded: flags([0]), covered: flags([9]), coveredWeight: 0.5, size: 1), [6])
        // Both covered: distance 1 × 0.5 still beats an uncovered look-alike (0).
        XCTAssertEqual(Set(s.nextBatch(decoded: flags([0]), covered: flags([6, 9]), coveredWeight: 0.5, size: 2)), [6, 9])
    }

    /// Within a batch, a chosen point counts as decoded: two identical objects are not both taken
    /// before a third, different one.
    func testBatchSpreadsOverDistinctPoints() {
        var v = [[Float]](repeating: [1, 0, 0], count: 16)
        v[5] = [0, 1, 0]; v[10] = [0, 1, 0]; v[15] = [0, 0, 1]
        let batch = selector(v).nextBatch(decoded: flags([0]), covered: flags([]), coveredWeight: 0.5, size: 2)
        XCTAssertEqual(batch.count, 2)
        XCTAssertTrue(batch.contains(15))
        XCTAssertEqual(batch.filter { $0 == 5 || $0 == 10 }.count, 1)
    }

    /// Never a decoded point; every point once when the batch is large; nothing once all are decoded.
    func testReturnsEachUndecodedPointOnce() {
        let v = (0..<16).map { p -> [Float] in [Float(p % 3), Float(p % 5), 1] }
        let s = selector(v, spatialWeight: 0.1)
        let decoded: Set = [0, 3, 7]
        let batch = s.nextBatch(decoded: flags(decoded), covered: flags([1, 2]), coveredWeight: 0.5, size: 100)
        XCTAssertEqual(batch.count, 13)
        XCTAssertEqual(Set(batch), Set(0..<16).subtracting(decoded))
        XCTAssertEqual(s.nextBatch(decoded: flags(Set(0..<16)), covered: flags([]), coveredWeight: 0.5, size: 4), [])
        // Nothing decoded yet: still a batch (the first point, then farthest-first).
        XCTAssertEqual(s.nextBatch(decoded: flags([]), covered: flags([]), coveredWeight: 0.5, size: 4).count, 4)
    }
}

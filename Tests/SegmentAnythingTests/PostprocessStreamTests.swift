import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// The streamed separable `postprocessMasks` (SAM.swift `BilinearStream`) against the literal
/// reference loops: equal within 1e-6 relative as logits (the arithmetic per value is the same;
/// only the order of evaluation across rows differs), and the fused binarisation equals
/// thresholding the logits, exactly, for blocks of rows that split the output (parallel jobs).
final class PostprocessStreamTests: XCTestCase {
    func testThresholdedEqualsThresholdedLogits() {
        var rng = SeededRandom(seed: 19)
        let low = Tensor.randomNormal([3, 2, 16, 16], std: 3, rng: &rng)
        for (input, original) in [((64, 43), (700, 467)), ((30, 64), (45, 97)), ((64, 64), (9, 9))] {
            let i = ImageSize(height: input.0, width: input.1), o = ImageSize(height: original.0, width: original.1)
            let logits = SAMModel.postprocessMasks(low, inputSize: i, originalSize: o, imageSize: 64)
            let reference = SAMModel.postprocessMasksReference(low, inputSize: i, originalSize: o, imageSize: 64)
            XCTAssertLessThanOrEqual(relativeError(logits, reference), 1e-6, "\(i) → \(o)")
            let binary = SAMModel.postprocessMasks(low, inputSize: i, originalSize: o, imageSize: 64, threshold: 0.25)
            XCTAssertEqual(binary.shape, [3, 2, o.height, o.width])
            XCTAssertEqual(binary.data, logits.data.map { $0 > 0.25 ? 1 : 0 }, "\(i) → \(o)")
            XCTAssertGreaterThan(binary.data.reduce(0, +), 0)
        }
    }
}

import ImageCodecs
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// The streamed separable `postprocessMasks` (BilinearResize.swift `BilinearStream`) against the literal
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

extension SAMModelTests {
    /// One batch of 5 same-structure prompts (3 decoder chunks of `SAMPredictor.promptChunk` = 2)
    /// equals each prompt predicted alone: masks ≤ 1e-5 relative, IoU predictions and low-res
    /// logits likewise, single-mask output too.
    func testChunkedBatchEqualsSinglePrompts() throws {
        let predictor = try predictorWithSyntheticEmbedding()
        var prompts: [SAMPrompt] = []
        for i in 0..<5 {
            let x = Double(40 + 70 * i), y = Double(30 + 50 * i)
            prompts.append(SAMPrompt(points: [PromptPoint(x: x, y: y)]))
        }
        for multimask in [true, false] {
            let K = multimask ? 3 : 1
            let all = try predictor.predict(prompts, multimaskOutput: multimask, returnLogits: true)
            XCTAssertEqual(all.masks.shape, [5, K, 300, 400])
            let n = K * 300 * 400, l = K * 256 * 256
            for (b, p) in prompts.enumerated() {
                let alone = try predictor.predict(points: p.points, multimaskOutput: multimask, returnLogits: true)
                let slice = Tensor(shape: [1, K, 300, 400], data: Array(all.masks.data[(b * n)..<((b + 1) * n)]))
                XCTAssertLessThanOrEqual(relativeError(alone.masks, slice), 1e-5, "prompt \(b)")
                let low = Tensor(shape: [1, K, 256, 256], data: Array(all.lowResLogits.data[(b * l)..<((b + 1) * l)]))
                XCTAssertLessThanOrEqual(relativeError(alone.lowResLogits, low), 1e-5, "prompt \(b) low-res")
                for k in 0..<K { XCTAssertEqual(alone.iou(prompt: 0, index: k), all.iou(prompt: b, index: k), accuracy: 1e-5) }
            }
        }
    }
}

import Foundation
import Layers
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// The mask decoder's backward (gradient of a loss on the mask logits and IoU predictions with
/// respect to the image embedding): against PyTorch autograd with MobileSAM's real, frozen
/// decoder (Scripts/refdump/sam_decoder_backward.py; relative error max |Δ| / max |ref| ≤ 1e-4),
/// and against central finite differences on a small random decoder.
final class DecoderBackwardTests: XCTestCase {
    /// The loss weights of sam_decoder_backward.py: dL/d(low-res logits) (B, K, 256, 256),
    /// sin(0.05x + 0.3k + 0.7b) · cos(0.043y − 0.2k) / 4096 in Double, rounded to Float.
    static func maskWeights(_ B: Int, _ K: Int, size: Int = 256) -> Tensor {
        var r = Tensor(zeros: [B, K, size, size])
        for b in 0..<B { for k in 0..<K { for y in 0..<size { for x in 0..<size {
            let v = sin(0.05 * Double(x) + 0.3 * Double(k) + 0.7 * Double(b)) * cos(0.043 * Double(y) - 0.2 * Double(k)) / 4096
            r.data[((b * K + k) * size + y) * size + x] = Float(v)
        } } } }
        return r
    }

    /// dL/d(iou) (B, K): 0.5 + 0.25k − 0.3b.
    static func iouWeights(_ B: Int, _ K: Int) -> Tensor {
        var r = Tensor(zeros: [B, K])
        for b in 0..<B { for k in 0..<K { r.data[b * K + k] = Float(0.5 + 0.25 * Double(k) - 0.3 * Double(b)) } }
        return r
    }

    func frozenMobileSAM() throws -> (PromptEncoder, MaskDecoder) {
        let w = try TestData.mobileSAMWeights()
        let pe = PromptEncoder(), md = MaskDecoder()
        try pe.load(TestData.under("prompt_encoder.", w))
        try md.load(TestData.under("mask_decoder.", w))
        md.freezeParameters()
        return (pe, md)
    }

    func testEmbeddingGradientMatchesPyTorch() throws {
        let f = try Fixture("mask_decoder_backward")
        let (pe, md) = try frozenMobileSAM()
        let embedding = TestData.syntheticEmbedding()
        var cases = 0
        for (key, value) in f.metadata.sorted(by: { $0.key < $1.key }) where key.hasPrefix("case.") {
            let name = String(key.dropFirst(5))
            let multimask = value.contains("multimask=1"), withMask = value.contains("mask_input=1")
            let (points, boxes) = TestData.prompts(f, name)
            let B = points?.batchSize ?? boxes!.shape[0]
            let (sparse, dense) = pe.forward(points: points, boxes: boxes,
                                             masks: withMask ? TestData.syntheticMasks(B) : nil, mode: .inference)
            let (masks, iou) = md.forward(imageEmbeddings: embedding, imagePE: pe.densePositionalEncoding(),
                                          sparsePromptEmbeddings: sparse, densePromptEmbeddings: dense,
                                          multimaskOutput: multimask, mode: .training)
            let K = multimask ? 3 : 1
            let R = Self.maskWeights(B, K), r = Self.iouWeights(B, K)
            let loss = masks.dot(R) + iou.dot(r)
            let grad = md.backward(masks: R, iouPredictions: r)
            XCTAssertEqual(grad.shape, [1, 256, 64, 64], name)
            let sub = subsample(grad, channelStride: 8, rowOffset: 1, rowStride: 4, columnOffset: 2, columnStride: 4)
            let e = relativeError(sub.reshaped([32, 16, 16]), f["case.\(name).grad_sub"])
            let eLoss = abs(loss - Double(f["case.\(name).loss"].data[0])) / max(abs(Double(f["case.\(name).loss"].data[0])), 1e-12)
            print("\(name): embedding gradient relative error \(e), loss \(loss) (relative error \(eLoss))")
            XCTAssertLessThanOrEqual(e, 1e-4, "\(name): dL/d(image embedding)")
            XCTAssertLessThanOrEqual(eLoss, 1e-4, "\(name): loss")
            cases += 1
        }
        XCTAssertEqual(cases, 7)
        // Frozen: no parameter gradient was formed or stored.
        for (k, p) in md.namedParameters() {
            XCTAssertFalse(p.requiresGradient, k)
            XCTAssertEqual(p.grad.count, 0, k)
        }
    }

    /// Training-mode forward (plain attention, activations kept) equals the folded inference
    /// path; one embedding shared by B prompts gets the sum of the per-prompt gradients of the
    /// same embedding repeated B times.
    func testTrainingForwardAndSharedEmbedding() throws {
        let (pe, md) = try frozenMobileSAM()
        let embedding = TestData.syntheticEmbedding()
        let points = PromptPoints(coords: Tensor(shape: [2, 2, 2], data: [100, 200, 300, 400, 800, 50, 512, 512]),
                                  labels: [1, 0, 1, 1])
        let (sparse, dense) = pe.forward(points: points, boxes: nil, masks: nil, mode: .inference)
        let densePE = pe.densePositionalEncoding()
        let inference = md.predictMasks(imageEmbeddings: embedding, imagePE: densePE, sparsePromptEmbeddings: sparse,
                                        densePromptEmbeddings: dense, mode: .inference)
        let shared = md.predictMasks(imageEmbeddings: embedding, imagePE: densePE, sparsePromptEmbeddings: sparse,
                                     densePromptEmbeddings: dense, mode: .training)
        XCTAssertLessThanOrEqual(relativeError(shared.masks, inference.masks), 1e-5)
        XCTAssertLessThanOrEqual(relativeError(shared.iouPredictions, inference.iouPredictions), 1e-5)
        let R = Self.maskWeights(2, 4), r = Self.iouWeights(2, 4)
        let gShared = md.backward(masks: R, iouPredictions: r)
        var repeated = Tensor(zeros: [2, 256, 64, 64])
        repeated.data = embedding.data + embedding.data
        _ = md.predictMasks(imageEmbeddings: repeated, imagePE: densePE, sparsePromptEmbeddings: sparse,
                            densePromptEmbeddings: dense, mode: .training)
        let gPer = md.backward(masks: R, iouPredictions: r)
        XCTAssertEqual(gPer.shape, [2, 256, 64, 64])
        let n = 256 * 64 * 64
        let sum = Tensor(shape: [1, 256, 64, 64], data: (0..<n).map { gPer.data[$0] + gPer.data[n + $0] })
        XCTAssertLessThanOrEqual(relativeError(gShared, sum), 1e-6)
    }

    /// A small random, frozen decoder (C = 32, 2 heads, downsample 2, 4×4 embedding): the
    /// gradient of Σ masks·R + Σ iou·r with respect to the embedding against central finite
    /// differences (eps 1e-2, |a − n| ≤ 1e-3 + 1e-2·max(|a|, |n|)) at 80 coordinates, for a
    /// multimask batch of 2 prompts sharing one embedding and for per-prompt embeddings; no
    /// parameter gradient is formed.
    func testFiniteDifferencesSmallDecoder() throws {
        let C = 32
        var rng = SeededRandom(seed: 77)
        let md = Self.smallRandomDecoder(C, rng: &rng)
        let h = 4, w = 4, B = 2, N = 3
        let pe = Tensor.randomNormal([1, C, h, w], std: 0.5, rng: &rng)
        let sparse = Tensor.randomNormal([B, N, C], std: 0.5, rng: &rng)
        let dense = Tensor.randomNormal([B, C, h, w], std: 0.2, rng: &rng)
        for embeddingBatch in [1, B] {
            let inputs = [Tensor.randomNormal([embeddingBatch, C, h, w], std: 0.5, rng: &rng)]
            Self.checkEmbeddingGradient(md, embedding: inputs, imagePE: pe, sparse: sparse, dense: dense,
                                        label: "small decoder, embedding batch \(embeddingBatch)")
        }
        XCTAssertTrue(md.namedParameters().allSatisfy { $0.1.grad.count == 0 })
    }

    /// The shared image side in training (one embedding and one dense embedding for B ≥
    /// `MaskDecoder.sharedImageMinimumPrompts` prompts: the first block projects the image once
    /// and sums its gradients over the prompts) against central finite differences, as above.
    /// (With 4 prompts, eps 1e-2 crosses the MLPs' ReLU kinks at some seeds, for the plain path
    /// as much as for this one: this seed does not; a dropped term fails by far more.)
    func testFiniteDifferencesSharedImageSide() throws {
        let C = 32
        var rng = SeededRandom(seed: 79)
        let md = Self.smallRandomDecoder(C, rng: &rng)
        let h = 4, w = 4, B = MaskDecoder.sharedImageMinimumPrompts, N = 3
        let pe = Tensor.randomNormal([1, C, h, w], std: 0.5, rng: &rng)
        let sparse = Tensor.randomNormal([B, N, C], std: 0.5, rng: &rng)
        let dense = Tensor.randomNormal([1, C, h, w], std: 0.2, rng: &rng)
        let inputs = [Tensor.randomNormal([1, C, h, w], std: 0.5, rng: &rng)]
        Self.checkEmbeddingGradient(md, embedding: inputs, imagePE: pe, sparse: sparse, dense: dense, label: "shared image side")
        XCTAssertTrue(md.namedParameters().allSatisfy { $0.1.grad.count == 0 })
    }

    /// The shared image side's training forward and backward through MobileSAM's transformer
    /// equal the plain path's with the image repeated per prompt (outputs, and the gradient
    /// summed over the prompts; relative error ≤ 1e-5), called directly; and the decoder with a
    /// one-image dense embedding (which takes that side) equals it with the dense embedding per
    /// prompt, masks, IoU and embedding gradient.
    func testSharedImageSideTrainingMatchesThePlainPath() throws {
        let (pe, md) = try frozenMobileSAM()
        var rng = SeededRandom(seed: 79)
        let embedding = TestData.syntheticEmbedding(), densePE = pe.densePositionalEncoding()
        let B = 5, T = 7, C = 256, n = C * 64 * 64
        let tokens = Tensor.randomNormal([B, T, C], rng: &rng)
        let src = pe.noMaskDenseEmbedding(batch: 1) + embedding
        let dQ = Tensor.randomNormal([B, T, C], rng: &rng), dK = Tensor.randomNormal([B, 64 * 64, C], std: 0.1, rng: &rng)
        let side = md.transformer.sharedImage(imageEmbedding: src, imagePE: densePE, mode: .training)
        let shared = md.transformer.forward(sharedImage: side, pointEmbedding: tokens, mode: .training)
        let gShared = md.transformer.backward(dQueries: dQ, dKeys: dK, height: 64, width: 64)
        XCTAssertEqual(gShared.shape, [1, C, 64, 64])
        let repeated = Tensor(shape: [B, C, 64, 64], data: Array((0..<B).map { _ in src.data }.joined()))
        let plain = md.transformer.forward(imageEmbedding: repeated, imagePE: densePE, pointEmbedding: tokens, mode: .training)
        let gPlain = md.transformer.backward(dQueries: dQ, dKeys: dK, height: 64, width: 64)
        let gSum = Tensor(shape: [1, C, 64, 64], data: (0..<n).map { i in (0..<B).reduce(Float(0)) { $0 + gPlain.data[$1 * n + i] } })
        XCTAssertLessThanOrEqual(relativeError(shared.queries, plain.queries), 1e-5, "transformer queries")
        XCTAssertLessThanOrEqual(relativeError(shared.keys, plain.keys), 1e-5, "transformer keys")
        XCTAssertLessThanOrEqual(relativeError(gShared, gSum), 1e-5, "transformer: embedding gradient")

        let coords = Tensor(shape: [B, 2, 2], data: (0..<(B * 4)).map { _ in Float(rng.next() % 1024) })
        let points = PromptPoints(coords: coords, labels: (0..<B).flatMap { [1, $0 % 2] })
        let (sparse, dense) = pe.forward(points: points, boxes: nil, masks: nil, mode: .inference)
        let R = Self.maskWeights(B, 4), r = Self.iouWeights(B, 4)
        let one = md.predictMasks(imageEmbeddings: embedding, imagePE: densePE, sparsePromptEmbeddings: sparse,
                                  densePromptEmbeddings: pe.noMaskDenseEmbedding(batch: 1), mode: .training)
        let gOne = md.backward(masks: R, iouPredictions: r)
        let per = md.predictMasks(imageEmbeddings: embedding, imagePE: densePE, sparsePromptEmbeddings: sparse,
                                  densePromptEmbeddings: dense, mode: .training)
        let gPer = md.backward(masks: R, iouPredictions: r)
        XCTAssertLessThanOrEqual(relativeError(one.masks, per.masks), 1e-5, "decoder masks")
        XCTAssertLessThanOrEqual(relativeError(one.iouPredictions, per.iouPredictions), 1e-5, "decoder IoU")
        XCTAssertEqual(gOne.shape, [1, C, 64, 64])
        XCTAssertLessThanOrEqual(relativeError(gOne, gPer), 1e-5, "decoder: embedding gradient")
    }

    /// A frozen random decoder (C, 2 heads, downsample 2, MLP 48, IoU head 24 wide).
    static func smallRandomDecoder(_ C: Int, rng: inout SeededRandom) -> MaskDecoder {
        let md = MaskDecoder(transformerDim: C, transformer: TwoWayTransformer(depth: 2, embeddingDim: C, heads: 2, mlpDim: 48),
                             numMultimaskOutputs: 3, iouHeadDepth: 3, iouHeadHiddenDim: 24)
        for (k, p) in md.namedParameters() {
            let isNormWeight = (k.contains("norm") && k.hasSuffix(".weight")) || k == "output_upscaling.1.weight"
            if isNormWeight {
                p.value = Tensor.randomNormal(p.shape, std: 0.1, rng: &rng) + Tensor(repeating: 1, shape: p.shape)
            } else if p.shape.count >= 2 {
                let fanIn = p.shape.count == 4 ? p.shape[0] : p.shape[1]
                p.value = Tensor.randomNormal(p.shape, std: 1 / Float(fanIn).squareRoot(), rng: &rng)
            } else {
                p.value = Tensor.randomNormal(p.shape, std: 0.1, rng: &rng)
            }
        }
        md.freezeParameters()
        return md
    }

    /// The gradient of Σ masks·R + Σ iou·r with respect to `embedding` (one input) against
    /// central finite differences at 80 coordinates.
    static func checkEmbeddingGradient(_ md: MaskDecoder, embedding: [Tensor], imagePE: Tensor, sparse: Tensor, dense: Tensor,
                                       label: String) {
        let B = sparse.shape[0], h = imagePE.shape[2], w = imagePE.shape[3]
        let check = GradientCheck(eps: 1e-2, atol: 1e-3, rtol: 1e-2, samples: 80)
        var inputs = embedding
        // The output checked: masks (B, 3, 4h, 4w) and IoU (B, 3) flattened into one vector.
        let report = check.run(inputs: &inputs, parameters: [],
            forward: { x in
                let (m, iou) = md.forward(imageEmbeddings: x[0], imagePE: imagePE, sparsePromptEmbeddings: sparse,
                                          densePromptEmbeddings: dense, multimaskOutput: true, mode: .training)
                return Tensor(shape: [m.count + iou.count], data: m.data + iou.data)
            },
            backward: { dy in
                let nm = B * 3 * 4 * h * 4 * w
                let dm = Tensor(shape: [B, 3, 4 * h, 4 * w], data: Array(dy.data[0..<nm]))
                let di = Tensor(shape: [B, 3], data: Array(dy.data[nm...]))
                return [md.backward(masks: dm, iouPredictions: di)]
            })
        print("\(label): \(report)")
        XCTAssertTrue(report.passed, "\(label): \(report)")
        XCTAssertEqual(report.checked, 80, label)
    }
}

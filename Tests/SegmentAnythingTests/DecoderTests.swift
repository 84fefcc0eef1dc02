import CheckpointFormats
import Foundation
import Layers
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// Files the tests fetch with Scripts/ (CI runs Scripts/test, which fetches them first), and the
/// synthetic inputs of Scripts/refdump/sam_decoder.py. A missing file fails the test with the
/// command to run; nothing is skipped silently.
enum TestData {
    /// A photo from Debian's opencv-doc examples (Scripts/fetch-images).
    static func photo(_ name: String) throws -> URL {
        let url = Fixture.repositoryRoot.appendingPathComponent("data/opencv-doc/usr/share/doc/opencv-doc/examples/data/\(name)")
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw FixtureError("\(url.path) is missing: run Scripts/fetch-images (Scripts/test does)")
        }
        return url
    }

    /// The checkpoint's tensors, read once per test process.
    nonisolated(unsafe) private static var cachedWeights: [String: Tensor]?
    static func mobileSAMWeights() throws -> [String: Tensor] {
        if let w = cachedWeights { return w }
        let w = try loadWeights(try Fixture.mobileSAMCheckpoint()).tensors
        cachedWeights = w
        return w
    }

    /// The tensors under `prefix` ("prompt_encoder."), keyed without it.
    static func under(_ prefix: String, _ tensors: [String: Tensor]) -> [String: Tensor] {
        var d: [String: Tensor] = [:]
        for (k, v) in tensors where k.hasPrefix(prefix) { d[String(k.dropFirst(prefix.count))] = v }
        return d
    }

    /// The synthetic image embedding of Scripts/refdump/sam_decoder.py: (1, 256, 64, 64),
    /// 0.12 · sin(2π((1 + c mod 4)·u + 0.137c)) · cos(2π((1 + 7c mod 5)·v + 0.071c)) + 0.05 · sin(0.7c + 6uv),
    /// u = x/64, v = y/64, in Double, rounded to Float.
    static func syntheticEmbedding() -> Tensor {
        var e = Tensor(zeros: [1, 256, 64, 64])
        for c in 0..<256 {
            let cd = Double(c)
            for y in 0..<64 {
                for x in 0..<64 {
                    let u = Double(x) / 64, v = Double(y) / 64
                    let a = 0.12 * sin(2 * Double.pi * (Double(1 + c % 4) * u + 0.137 * cd))
                        * cos(2 * Double.pi * (Double(1 + (7 * c) % 5) * v + 0.071 * cd))
                    e.data[(c * 64 + y) * 64 + x] = Float(a + 0.05 * sin(0.7 * cd + 6 * u * v))
                }
            }
        }
        return e
    }

    /// The synthetic mask inputs of sam_decoder.py: (B, 1, 256, 256),
    /// (3600 − ((x − 128 − 20b)² + (y − 110)²)) / 400 in Float.
    static func syntheticMasks(_ B: Int) -> Tensor {
        var m = Tensor(zeros: [B, 1, 256, 256])
        for b in 0..<B {
            for y in 0..<256 {
                for x in 0..<256 {
                    let dx = Float(x) - Float(128 + 20 * b), dy = Float(y) - 110
                    m.data[(b * 256 + y) * 256 + x] = (3600 - (dx * dx + dy * dy)) / 400
                }
            }
        }
        return m
    }

    /// The prompts of fixture case `name`: points (B, N, 2) with labels, boxes (B, 4).
    static func prompts(_ f: Fixture, _ name: String) -> (PromptPoints?, Tensor?) {
        var points: PromptPoints?
        if let p = f.tensors["case.\(name).points"] {
            points = PromptPoints(coords: p, labels: f["case.\(name).labels"].data.map { Int($0) })
        }
        return (points, f.tensors["case.\(name).boxes"])
    }
}

/// Strided sub-sampling of a rank-4 tensor: out[a, b, c, d] = x[a, b·sb, oc + c·sc, od + d·sd].
func subsample(_ x: Tensor, channelStride sb: Int = 1, rowOffset oc: Int, rowStride sc: Int,
               columnOffset od: Int, columnStride sd: Int) -> Tensor {
    let (A, Bc, H, W) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
    let nb = (Bc + sb - 1) / sb, nh = (H - oc + sc - 1) / sc, nw = (W - od + sd - 1) / sd
    var out = Tensor(zeros: [A, nb, nh, nw])
    var i = 0
    for a in 0..<A { for b in 0..<nb { for c in 0..<nh { for d in 0..<nw {
        out.data[i] = x.data[((a * Bc + b * sb) * H + oc + c * sc) * W + od + d * sd]
        i += 1
    } } } }
    return out
}

/// The prompt encoder and the mask decoder with MobileSAM's real weights against PyTorch's
/// reference modules run in float64 (Scripts/refdump/sam_decoder.py), on a synthetic image
/// embedding both sides compute from one formula. Tolerance: relative error (max |Δ| / max |ref|)
/// ≤ 1e-4 for every output (sparse and dense embeddings, positional encoding, low-res mask logits
/// at every 8th pixel, IoU predictions).
final class DecoderTests: XCTestCase {
    func promptEncoder() throws -> PromptEncoder {
        let pe = PromptEncoder()
        try pe.load(TestData.under("prompt_encoder.", try TestData.mobileSAMWeights()))
        return pe
    }

    func maskDecoder() throws -> MaskDecoder {
        let md = MaskDecoder()
        try md.load(TestData.under("mask_decoder.", try TestData.mobileSAMWeights()))
        return md
    }

    func prompts(_ f: Fixture, _ name: String) -> (PromptPoints?, Tensor?) { TestData.prompts(f, name) }

    func testPromptEncoderMatchesPyTorch() throws {
        let f = try Fixture("prompt_encoder")
        let pe = try promptEncoder()
        let names = Set(f.tensors.keys.filter { $0.hasSuffix(".sparse") }.map { $0.split(separator: ".")[1] })
        XCTAssertEqual(names.count, 6)
        for name in names.sorted() {
            let (points, boxes) = prompts(f, String(name))
            let (sparse, dense) = pe.forward(points: points, boxes: boxes, masks: nil, mode: .inference)
            let expected = f["case.\(name).sparse"]
            XCTAssertEqual(sparse.shape, expected.shape, "\(name)")
            let e = relativeError(sparse, expected)
            print("\(name): sparse embeddings relative error \(e)")
            XCTAssertLessThanOrEqual(e, 1e-4, "\(name): sparse embeddings")
            // No mask: no_mask_embed broadcast over (B, 256, 64, 64).
            XCTAssertEqual(dense.shape, [expected.shape[0], 256, 64, 64])
            for c in [0, 17, 255] {
                XCTAssertEqual(dense.data[c * 4096 + 1234], pe.noMaskEmbed.value.data[c], "\(name): no_mask_embed")
            }
        }
        let dense = pe.forward(points: nil, boxes: nil, masks: TestData.syntheticMasks(2), mode: .inference).dense
        XCTAssertEqual(dense.shape, [2, 256, 64, 64])
        let denseSub = subsample(dense, channelStride: 8, rowOffset: 0, rowStride: 8, columnOffset: 0, columnStride: 8)
        let eDense = relativeError(denseSub, f["masks.dense_sub"])
        print("mask embedding relative error \(eDense)")
        XCTAssertLessThanOrEqual(eDense, 1e-4, "mask embedding")
        let densePE = pe.densePositionalEncoding()
        XCTAssertEqual(densePE.shape, [1, 256, 64, 64])
        let peSub = subsample(densePE, channelStride: 4, rowOffset: 0, rowStride: 8, columnOffset: 0, columnStride: 8)
        let ePE = relativeError(peSub.reshaped([64, 8, 8]), f["dense_pe_sub"])
        print("dense positional encoding relative error \(ePE)")
        XCTAssertLessThanOrEqual(ePE, 1e-4, "dense PE")
    }

    func testMaskDecoderMatchesPyTorch() throws {
        let pe = try promptEncoder(), md = try maskDecoder()
        let embedding = TestData.syntheticEmbedding()
        var cases = 0, sharedCases = 0
        for file in ["mask_decoder_a", "mask_decoder_b"] {
            let f = try Fixture(file)
            for (key, value) in f.metadata.sorted(by: { $0.key < $1.key }) where key.hasPrefix("case.") {
                let name = String(key.dropFirst(5))
                let multimask = value.contains("multimask=1"), withMask = value.contains("mask_input=1")
                let (points, boxes) = prompts(f, name)
                let B = points?.batchSize ?? boxes!.shape[0]
                let (sparse, dense) = pe.forward(points: points, boxes: boxes,
                                                 masks: withMask ? TestData.syntheticMasks(B) : nil, mode: .inference)
                let (masks, iou) = md.forward(imageEmbeddings: embedding, imagePE: pe.densePositionalEncoding(),
                                              sparsePromptEmbeddings: sparse, densePromptEmbeddings: dense,
                                              multimaskOutput: multimask, mode: .inference)
                let K = multimask ? 3 : 1
                XCTAssertEqual(masks.shape, [B, K, 256, 256], name)
                XCTAssertEqual(iou.shape, [B, K], name)
                let sub = subsample(masks, rowOffset: 3, rowStride: 8, columnOffset: 5, columnStride: 8)
                let eMasks = relativeError(sub, f["case.\(name).low_res_sub"])
                let eIoU = relativeError(iou, f["case.\(name).iou"])
                print("\(name): low-res logits relative error \(eMasks), IoU \(eIoU)")
                XCTAssertLessThanOrEqual(eMasks, 1e-4, "\(name): low-res mask logits")
                XCTAssertLessThanOrEqual(eIoU, 1e-4, "\(name): IoU predictions")
                cases += 1
                guard !withMask else { continue }
                // Without a mask input the prompts may share the image side (what SAMPredictor
                // does from a few prompts on): the same reference values, and the plain path's.
                let side = md.sharedImage(imageEmbedding: embedding, imagePE: pe.densePositionalEncoding(),
                                          densePromptEmbedding: pe.noMaskDenseEmbedding(batch: 1))
                let shared = md.forward(sharedImage: side, sparsePromptEmbeddings: sparse, multimaskOutput: multimask)
                let sharedSub = subsample(shared.masks, rowOffset: 3, rowStride: 8, columnOffset: 5, columnStride: 8)
                XCTAssertLessThanOrEqual(relativeError(sharedSub, f["case.\(name).low_res_sub"]), 1e-4, "\(name): shared image side, logits")
                XCTAssertLessThanOrEqual(relativeError(shared.iouPredictions, f["case.\(name).iou"]), 1e-4, "\(name): shared image side, IoU")
                XCTAssertLessThanOrEqual(relativeError(shared.masks, masks), 1e-5, "\(name): shared image side vs the plain path")
                sharedCases += 1
            }
        }
        XCTAssertEqual(cases, 7)
        XCTAssertGreaterThan(sharedCases, 0)
    }

    /// One embedding shared by B prompts equals the embedding repeated per prompt, and each
    /// prompt of a batch equals that prompt run alone; `forward`'s multimask slicing picks
    /// masks 1…3 or mask 0 of `predictMasks`.
    func testBatchingAndSlicing() throws {
        let pe = try promptEncoder(), md = try maskDecoder()
        let embedding = TestData.syntheticEmbedding()
        let points = PromptPoints(coords: Tensor(shape: [2, 2, 2], data: [100, 200, 300, 400, 800, 50, 512, 512]),
                                  labels: [1, 0, 1, 1])
        let (sparse, dense) = pe.forward(points: points, boxes: nil, masks: nil, mode: .inference)
        let densePE = pe.densePositionalEncoding()
        let all = md.predictMasks(imageEmbeddings: embedding, imagePE: densePE, sparsePromptEmbeddings: sparse,
                                  densePromptEmbeddings: dense, mode: .inference)
        XCTAssertEqual(all.masks.shape, [2, 4, 256, 256])
        XCTAssertEqual(all.iouPredictions.shape, [2, 4])
        var repeated = Tensor(zeros: [2, 256, 64, 64])
        repeated.data = embedding.data + embedding.data
        let perPrompt = md.predictMasks(imageEmbeddings: repeated, imagePE: densePE, sparsePromptEmbeddings: sparse,
                                        densePromptEmbeddings: dense, mode: .inference)
        XCTAssertLessThanOrEqual(relativeError(perPrompt.masks, all.masks), 1e-6)
        let P = 256 * 256
        for b in 0..<2 {
            let one = PromptPoints(coords: Tensor(shape: [1, 2, 2], data: Array(points.coords.data[(b * 4)..<(b * 4 + 4)])),
                                   labels: Array(points.labels[(b * 2)..<(b * 2 + 2)]))
            let (s1, d1) = pe.forward(points: one, boxes: nil, masks: nil, mode: .inference)
            let alone = md.predictMasks(imageEmbeddings: embedding, imagePE: densePE, sparsePromptEmbeddings: s1,
                                        densePromptEmbeddings: d1, mode: .inference)
            let slice = Tensor(shape: [1, 4, 256, 256], data: Array(all.masks.data[(b * 4 * P)..<((b + 1) * 4 * P)]))
            XCTAssertLessThanOrEqual(relativeError(alone.masks, slice), 1e-5, "prompt \(b) alone")
        }
        for multimask in [true, false] {
            let (masks, iou) = md.forward(imageEmbeddings: embedding, imagePE: densePE, sparsePromptEmbeddings: sparse,
                                          densePromptEmbeddings: dense, multimaskOutput: multimask, mode: .inference)
            let range = multimask ? 1..<4 : 0..<1
            for b in 0..<2 {
                for (j, i) in range.enumerated() {
                    XCTAssertEqual(iou.data[b * range.count + j], all.iouPredictions.data[b * 4 + i])
                    let got = Array(masks.data[((b * range.count + j) * P)..<((b * range.count + j + 1) * P)])
                    let want = Array(all.masks.data[((b * 4 + i) * P)..<((b * 4 + i + 1) * P)])
                    XCTAssertLessThanOrEqual(relativeError(Tensor(shape: [P], data: got), Tensor(shape: [P], data: want)), 1e-6)
                }
            }
        }
    }
}

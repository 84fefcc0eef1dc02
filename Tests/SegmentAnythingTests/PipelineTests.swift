import Foundation
import ImageCodecs
import Layers
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// The whole pipeline with MobileSAM's real checkpoint on real photos (Scripts/fetch-weights,
/// Scripts/fetch-images) against PyTorch's MobileSAM + SamPredictor in float32
/// (Scripts/refdump/sam_masks.py): decode → preprocess → TinyViT → prompt encoder → mask
/// decoder → postprocess, for point, multi-point, box, point+box and mask-input (refine) prompts,
/// single and multimask. Per mask: IoU prediction within 1e-3 (absolute) of PyTorch's, mask IoU
/// with PyTorch's mask ≥ 0.99. The embedding and the low-res logits are compared too (printed;
/// asserted loosely, ≤ 1e-3 relative, since PyTorch's float32 run is itself only one rounding of
/// the exact result).
final class PipelineTests: XCTestCase {
    struct PromptSpec: Decodable {
        let points: [[Double]]
        let box: [Double]?
        let multimask: Bool
        let refine: Bool
    }

    func testMobileSAMOnPhotosMatchesPyTorch() throws {
        let model = try SAMModel.load(contentsOf: try Fixture.mobileSAMCheckpoint())
        XCTAssertEqual(model.encoderConfig, .tinyViT(.mobileSAM))
        let predictor = SAMPredictor(model: model)
        let f = try Fixture("sam_masks")
        let specs = try JSONDecoder().decode([String: [PromptSpec]].self, from: Data(f.metadata["prompts"]!.utf8))
        XCTAssertGreaterThanOrEqual(specs.count, 3)
        var worstIoUDelta: Float = 0, worstMaskIoU = 1.0, masksChecked = 0
        for (image, prompts) in specs.sorted(by: { $0.key < $1.key }) {
            let stem = String(image.split(separator: ".")[0])
            let photo = try ImageIO.read(try TestData.photo(image))
            let t0 = Date()
            predictor.setImage(photo)
            let encodeSeconds = Date().timeIntervalSince(t0)
            let embedding = subsample(predictor.features!, channelStride: 8, rowOffset: 0, rowStride: 8,
                                      columnOffset: 0, columnStride: 8).reshaped([32, 8, 8])
            let eEmbedding = relativeError(embedding, f["\(stem).embedding_sub"])
            print("\(image) \(photo.width)×\(photo.height): encoded in \(String(format: "%.2f", encodeSeconds)) s, "
                  + "embedding relative error vs PyTorch float32 \(eEmbedding)")
            XCTAssertLessThanOrEqual(eEmbedding, 1e-3, "\(image): embedding")
            var previous: SAMPrediction?
            for (i, spec) in prompts.enumerated() {
                let name = "\(stem)_\(i)"
                let points = spec.points.map { PromptPoint(x: $0[0], y: $0[1], label: Int($0[2])) }
                let box = spec.box.map { PromptBox(x0: $0[0], y0: $0[1], x1: $0[2], y1: $0[3]) }
                var maskInput: Tensor?
                if spec.refine, let p = previous { maskInput = p.lowResLogits(prompt: 0, index: p.bestIndex(prompt: 0)) }
                let r = try predictor.predict(points: points, box: box, maskInput: maskInput, multimaskOutput: spec.multimask)
                previous = r
                let K = spec.multimask ? 3 : 1
                XCTAssertEqual(r.masks.shape, [1, K, photo.height, photo.width], name)
                let expected = try ImageIO.read(Fixture.directory.appendingPathComponent("sam_masks/\(name).png"))
                XCTAssertEqual(expected.width, photo.width, name)
                XCTAssertEqual(expected.height, K * photo.height, name)
                let lowRes = subsample(r.lowResLogits, rowOffset: 3, rowStride: 8, columnOffset: 5, columnStride: 8)
                let eLow = relativeError(lowRes.reshaped([K, 32, 32]), f["\(stem).\(i).low_res_sub"])
                var line = "  \(name):"
                for k in 0..<K {
                    let n = photo.width * photo.height
                    let theirs = BinaryMask(width: photo.width, height: photo.height,
                                            pixels: (0..<n).map { expected.pixels[3 * (k * n + $0)] >= 128 })
                    let ours = r.mask(prompt: 0, index: k)
                    let maskIoU = ours.iou(theirs)
                    let dIoU = abs(r.iou(prompt: 0, index: k) - f["\(stem).\(i).iou"].data[k])
                    line += String(format: " [mask IoU %.5f, area %d vs %d, ΔIoU pred %.2e]", maskIoU, ours.area, theirs.area, dIoU)
                    XCTAssertGreaterThanOrEqual(maskIoU, 0.99, "\(name) mask \(k)")
                    XCTAssertLessThanOrEqual(dIoU, 1e-3, "\(name) mask \(k): IoU prediction")
                    worstIoUDelta = max(worstIoUDelta, dIoU)
                    worstMaskIoU = min(worstMaskIoU, maskIoU)
                    masksChecked += 1
                }
                print(line + String(format: " low-res logits rel. error %.2e", eLow))
                XCTAssertLessThanOrEqual(eLow, 1e-3, "\(name): low-res logits")
            }
        }
        print("pipeline: \(masksChecked) masks, worst mask IoU \(worstMaskIoU), worst |ΔIoU prediction| \(worstIoUDelta)")
    }
}

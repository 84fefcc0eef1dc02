import ArgumentParser
import Foundation
import SegmentAnything
import Tensor

/// `samdistill segment --everything`: SAM's automatic mask generator, the fast mode, FastSAM-style
/// selection among the generated masks.
extension Segment {
    func runEverything() throws {
        let clock = { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
        let picture = try ImageIO.read(URL(fileURLWithPath: image))
        let selectionPoints = selectPoints.map(\.point)
        for p in selectionPoints where p.x < 0 || p.y < 0 || p.x >= Double(picture.width) || p.y >= Double(picture.height) {
            throw SegmentError(description: "\(image): --select-point \(p.x),\(p.y) is outside the \(picture.width)×\(picture.height) image")
        }
        var t = clock()
        let model = try SAMModel.load(contentsOf: URL(fileURLWithPath: checkpoint),
                                      decoderWeights: decoderCheckpoint.map { URL(fileURLWithPath: $0) })
        let loadSeconds = clock() - t
        print(String(format: "load    %7.3f s  %@ (%@)", loadSeconds, checkpoint, model.encoderConfig.description))

        let options = generatorOptions
        let predictor = SAMPredictor(model: model)
        t = clock()
        let result = try AutomaticMaskGenerator(predictor: predictor, options: options).generate(picture)
        let generateSeconds = clock() - t
        print(String(format: "encode  %7.3f s  %@ %d×%d, %d crop(s)", result.encodeSeconds, image, picture.width, picture.height, result.encoderRuns))
        print(String(format: "decode  %7.3f s  %d of %d grid prompts%@", result.decodeSeconds, result.decodedPrompts, result.gridPoints,
                     fast ? " (fast mode)" : ""))
        print(String(format: "masks   %d in %.3f s", result.masks.count, generateSeconds))

        var comparison: [String: Any]?
        if compareFull {
            var fullOptions = options
            fullOptions.hierarchical = nil
            t = clock()
            let full = try AutomaticMaskGenerator(predictor: predictor, options: fullOptions).generate(picture)
            let fullSeconds = clock() - t
            let (fraction, _) = result.agreement(with: full, threshold: 0.9)
            let (reverse, _) = full.agreement(with: result, threshold: 0.9)
            let saved = 1 - Double(result.decodedPrompts) / Double(full.decodedPrompts)
            print(String(format: "full    %d masks in %.3f s, %d prompts; fast: %.2f× faster, %.0f%% of the prompts saved, "
                         + "%.1f%% of the full grid's masks matched (IoU ≥ 0.9), %.1f%% of the fast masks in the full grid",
                         full.masks.count, fullSeconds, full.decodedPrompts, fullSeconds / generateSeconds, 100 * saved,
                         100 * fraction, 100 * reverse))
            comparison = ["full_masks": full.masks.count, "full_seconds": fullSeconds, "full_prompts": full.decodedPrompts,
                          "fast_seconds": generateSeconds, "speedup": fullSeconds / generateSeconds, "prompts_saved": saved,
                          "full_matched_fraction": fraction, "fast_matched_fraction": reverse, "match_iou": 0.9]
        }

        // FastSAM-style selection.
        var selection: (mask: BinaryMask, indices: [Int], removed: [Int], iou: Double?)?
        if selectBox != nil || !selectionPoints.isEmpty {
            let masks = result.masks.map(\.mask)
            if let b = selectBox?.box {
                if let s = MaskUtilities.selectByBox(masks, box: b) { selection = (masks[s.index], [s.index], [], s.iou) }
            } else if let s = MaskUtilities.selectByPoints(masks, points: selectionPoints) {
                selection = (s.mask, s.added, s.removed, nil)
            }
            guard let selection else {
                throw SegmentError(description: "\(image): no masks were generated, so there is nothing to select")
            }
            print("select  masks \(selection.indices)" + (selection.removed.isEmpty ? "" : " minus \(selection.removed)")
                  + ", area \(selection.mask.area) px" + (selection.iou.map { String(format: ", box IoU %.4f", $0) } ?? ""))
        }

        let overlayImage: RGBImage
        if let selection {
            overlayImage = Self.overlay(picture, mask: selection.mask, points: selectionPoints, box: selectBox?.box)
        } else {
            overlayImage = Self.overlay(picture, masks: result.masks)
        }
        try ImageIO.writePNG(overlayImage, to: URL(fileURLWithPath: out))
        if let maskOut, let selection { try ImageIO.writePNG(selection.mask.greyImage, to: URL(fileURLWithPath: maskOut)) }
        print("wrote   \(out)" + (maskOut.map { ", \($0)" } ?? "") + (json.map { ", \($0)" } ?? ""))

        if let json {
            var object: [String: Any] = [
                "image": image, "checkpoint": checkpoint, "encoder": model.encoderConfig.description,
                "width": picture.width, "height": picture.height, "masks": result.masks.map(\.jsonObject),
                "options": [
                    "points_per_side": options.pointsPerSide, "points_per_batch": options.pointsPerBatch,
                    "pred_iou_thresh": options.predIoUThresh, "stability_score_thresh": options.stabilityScoreThresh,
                    "stability_score_offset": options.stabilityScoreOffset, "box_nms_thresh": options.boxNMSThresh,
                    "crop_n_layers": options.cropNLayers, "crop_nms_thresh": options.cropNMSThresh,
                    "crop_overlap_ratio": options.cropOverlapRatio, "min_mask_region_area": options.minMaskRegionArea,
                    "fast": fast,
                ] as [String: Any],
                "decoded_prompts": result.decodedPrompts, "grid_points": result.gridPoints, "encoder_runs": result.encoderRuns,
                "seconds": ["load": loadSeconds, "encode": result.encodeSeconds, "decode": result.decodeSeconds, "generate": generateSeconds],
            ]
            if let h = options.hierarchical {
                object["fast"] = ["stride": h.stride, "cover_logit": Double(h.coverLogit), "confident_iou": h.confidentIoU]
            }
            if let comparison { object["comparison"] = comparison }
            if let selection {
                var s: [String: Any] = ["segmentation": MaskRLE(selection.mask).jsonObject, "area": selection.mask.area,
                                        "bbox": MaskUtilities.box(of: selection.mask).xywh, "masks": selection.indices]
                if let b = selectBox?.box { s["box"] = [b.x0, b.y0, b.x1, b.y1] }
                if !selectionPoints.isEmpty { s["points"] = selectionPoints.map { [$0.x, $0.y, Double($0.label)] }; s["removed"] = selection.removed }
                if let iou = selection.iou { s["box_iou"] = iou }
                object["selection"] = s
            }
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            try AtomicFile.write(data + Data("\n".utf8), to: URL(fileURLWithPath: json))
        }
    }

    /// A colour per mask index (golden-ratio hues, deterministic).
    static func maskColour(_ index: Int) -> (Float, Float, Float) {
        let h = (Double(index) * 0.618_033_988_749_895 + 0.1).truncatingRemainder(dividingBy: 1) * 6
        let s = 0.8, v = 0.95, c = v * s, x = c * (1 - abs(h.truncatingRemainder(dividingBy: 2) - 1)), m = v - c
        let (r, g, b): (Double, Double, Double) = switch Int(h) {
        case 0: (c, x, 0)
        case 1: (x, c, 0)
        case 2: (0, c, x)
        case 3: (0, x, c)
        case 4: (x, 0, c)
        default: (c, 0, x)
        }
        return (Float((r + m) * 255), Float((g + m) * 255), Float((b + m) * 255))
    }

    /// The image with every mask tinted in its colour (55%), largest first so that smaller masks
    /// stay visible on top, with white outlines.
    static func overlay(_ image: RGBImage, masks: [GeneratedMask]) -> RGBImage {
        var out = image
        let W = image.width, H = image.height
        for i in masks.indices.sorted(by: { masks[$0].area > masks[$1].area || (masks[$0].area == masks[$1].area && $0 < $1) }) {
            let mask = masks[i].mask, colour = maskColour(i)
            for y in 0..<H {
                for x in 0..<W where mask.pixels[y * W + x] {
                    let p = 3 * (y * W + x)
                    let edge = x == 0 || y == 0 || x == W - 1 || y == H - 1 || !mask.pixels[y * W + x - 1]
                        || !mask.pixels[y * W + x + 1] || !mask.pixels[(y - 1) * W + x] || !mask.pixels[(y + 1) * W + x]
                    if edge {
                        out.pixels[p] = 255; out.pixels[p + 1] = 255; out.pixels[p + 2] = 255
                    } else {
                        out.pixels[p] = UInt8(0.45 * Float(image.pixels[p]) + 0.55 * colour.0)
                        out.pixels[p + 1] = UInt8(0.45 * Float(image.pixels[p + 1]) + 0.55 * colour.1)
                        out.pixels[p + 2] = UInt8(0.45 * Float(image.pixels[p + 2]) + 0.55 * colour.2)
                    }
                }
            }
        }
        return out
    }
}

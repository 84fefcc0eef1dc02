import Foundation
import ImageCodecs
import Tensor

// SAM's automatic mask generator ("segment everything"), side by side with MobileSAM's
// automatic_mask_generator.py (`SamAutomaticMaskGenerator`), plus a fast mode that decodes a
// budget of the grid's points: a coarse grid first, then the points least like any decoded one.

/// `SamAutomaticMaskGenerator`'s settings, with its defaults.
public struct AutomaticMaskGeneratorOptions: Sendable, Equatable {
    /// Points per side of the grid of crop layer 0 (`points_per_side`); 32 → 1024 prompts.
    public var pointsPerSide: Int = 32
    /// Prompts decoded together (`points_per_batch`).
    public var pointsPerBatch: Int = 64
    /// Keep masks whose predicted IoU is above this (`pred_iou_thresh`; 0 disables).
    public var predIoUThresh: Double = 0.88
    /// Keep masks whose stability score is at least this (`stability_score_thresh`; 0 disables).
    public var stabilityScoreThresh: Double = 0.95
    /// The logit offset of the stability score (`stability_score_offset`).
    public var stabilityScoreOffset: Double = 1
    /// Box IoU above which NMS drops the lower-scored mask within a crop (`box_nms_thresh`).
    public var boxNMSThresh: Double = 0.7
    /// Crop layers after the whole image; layer i has (2^i)² crops (`crop_n_layers`).
    public var cropNLayers: Int = 0
    /// Box IoU for the NMS across crops, which prefers smaller crops (`crop_nms_thresh`).
    public var cropNMSThresh: Double = 0.7
    /// Crop overlap as a fraction of the image's short side in layer 1 (`crop_overlap_ratio`).
    public var cropOverlapRatio: Double = 512.0 / 1500.0
    /// Layer i's grid has pointsPerSide / factor^i points per side (`crop_n_points_downscale_factor`).
    public var cropNPointsDownscaleFactor: Int = 1
    /// If > 0, fill holes and drop islands smaller than this many pixels, then NMS again
    /// (`min_mask_region_area`).
    public var minMaskRegionArea: Int = 0
    /// Memory for the resized logits of a batch's masks: they are resized this many bytes' worth
    /// at a time (at least 8 masks). Only memory and speed change, never the masks.
    public var postprocessBytes: Int = 256 << 20
    /// The fast mode (a budget of the grid); nil decodes every grid point (SAM's algorithm).
    public var fastMode: FastModeOptions?

    public init() {}

    /// Throws `AutomaticMaskGeneratorError.invalidOptions` naming the first bad setting.
    public func validate() throws {
        func fail(_ why: String) throws { throw AutomaticMaskGeneratorError.invalidOptions(why) }
        if pointsPerSide < 1 { try fail("points per side must be at least 1, got \(pointsPerSide)") }
        if pointsPerBatch < 1 { try fail("points per batch must be at least 1, got \(pointsPerBatch)") }
        for (name, v) in [("predicted IoU threshold", predIoUThresh), ("stability score threshold", stabilityScoreThresh),
                          ("box NMS threshold", boxNMSThresh), ("crop NMS threshold", cropNMSThresh)] where !(v >= 0 && v <= 1) {
            try fail("\(name) must be in [0, 1], got \(v)")
        }
        if !(stabilityScoreOffset.isFinite && stabilityScoreOffset >= 0) { try fail("stability score offset must be ≥ 0, got \(stabilityScoreOffset)") }
        if cropNLayers < 0 { try fail("crop layers must be ≥ 0, got \(cropNLayers)") }
        if !(cropOverlapRatio >= 0 && cropOverlapRatio < 1) { try fail("crop overlap ratio must be in [0, 1), got \(cropOverlapRatio)") }
        if cropNPointsDownscaleFactor < 1 { try fail("crop points downscale factor must be at least 1, got \(cropNPointsDownscaleFactor)") }
        if cropNLayers > 0 {
            let last = Int(Double(pointsPerSide) / pow(Double(cropNPointsDownscaleFactor), Double(cropNLayers)))
            if last < 1 { try fail("crop layer \(cropNLayers) would have no points (\(pointsPerSide) points per side, downscale factor \(cropNPointsDownscaleFactor))") }
        }
        if minMaskRegionArea < 0 { try fail("min mask region area must be ≥ 0, got \(minMaskRegionArea)") }
        if postprocessBytes < 1 { try fail("postprocess bytes must be at least 1, got \(postprocessBytes)") }
        if let h = fastMode {
            if h.stride < 2 { try fail("the fast mode's coarse stride must be at least 2, got \(h.stride)") }
            if !h.coverLogit.isFinite { try fail("the fast mode's cover logit must be finite") }
            if !(h.confidentIoU >= 0 && h.confidentIoU <= 1) { try fail("the fast mode's confident IoU must be in [0, 1], got \(h.confidentIoU)") }
            if !(h.budget > 0 && h.budget <= 1) { try fail("the fast mode's budget must be in (0, 1], got \(h.budget)") }
            if !(h.coveredWeight >= 0 && h.coveredWeight <= 1) { try fail("the fast mode's covered weight must be in [0, 1], got \(h.coveredWeight)") }
            if !(h.spatialWeight >= 0 && h.spatialWeight.isFinite) { try fail("the fast mode's spatial weight must be ≥ 0, got \(h.spatialWeight)") }
        }
    }
}

/// The fast mode: a coarse subset of the grid first, then, a batch at a time, the grid points
/// that look least like any decoded point (`GridPointSelector`: the image embedding at the
/// points, cosine distance, plus a little spatial distance), until `budget` of the grid is
/// decoded. Points inside a confident decoded mask (its logit there above `coverLogit`) count
/// as nearer. Every decoded prompt is a prompt the full grid decodes too, so each fast-mode
/// mask is one the full grid also produces before NMS.
public struct FastModeOptions: Sendable, Equatable {
    /// The coarse grid: every `stride`-th row and column of the full grid (centred), e.g. 4×4
    /// of 32×32 for 8.
    public var stride: Int = 8
    /// The fraction of the grid's points decoded in all (0.28: 287 of 32×32). Segment everything
    /// spends ≥ 95% of its time decoding, so this is about the fraction of the full grid's time.
    public var budget: Double = 0.28
    /// A decoded mask is confident when it passes the usual filters and its predicted IoU is at
    /// least this.
    public var confidentIoU: Double = 0.88
    /// A grid point counts as covered by a confident mask when the mask's logit at the point's
    /// pixel exceeds this (8.5: the mask's confident interior).
    public var coverLogit: Float = 8.5
    /// Only the smallest confident mask of each decoded prompt covers points (its multimask
    /// outputs nest: a point inside the finest one would decode about the same masks again,
    /// while a point inside only a coarser one may find other parts).
    public var finestOnly: Bool = true
    /// A covered point's distances count this many times (0.5: covered points come later).
    public var coveredWeight: Float = 0.5
    /// Weight of the spatial distance (grid steps / points per side) beside the cosine distance.
    public var spatialWeight: Float = 0.1

    public init(stride: Int = 8, budget: Double = 0.28, confidentIoU: Double = 0.88, coverLogit: Float = 8.5,
                finestOnly: Bool = true, coveredWeight: Float = 0.5, spatialWeight: Float = 0.1) {
        self.stride = stride; self.budget = budget; self.confidentIoU = confidentIoU; self.coverLogit = coverLogit
        self.finestOnly = finestOnly; self.coveredWeight = coveredWeight; self.spatialWeight = spatialWeight
    }
}

public enum AutomaticMaskGeneratorError: Error, CustomStringConvertible, Equatable {
    case invalidOptions(String)

    public var description: String {
        switch self {
        case .invalidOptions(let why): "invalid automatic mask generator options: \(why)"
        }
    }
}

/// One mask record of `SamAutomaticMaskGenerator.generate` (output mode "uncompressed_rle").
public struct GeneratedMask: Sendable, Equatable {
    /// The mask at the image's size, column-major RLE (`segmentation`).
    public var rle: MaskRLE
    /// The mask's box in the image, inclusive pixel indices (x0, y0, x1, y1).
    public var box: PixelBox
    /// The model's IoU prediction (`predicted_iou`).
    public var predictedIoU: Float
    /// IoU of the mask at logit thresholds ±offset (`stability_score`).
    public var stabilityScore: Float
    /// The point prompt that produced the mask, in image pixels (`point_coords`).
    public var pointX: Double
    public var pointY: Double
    /// The crop the mask came from, (x0, y0, x1, y1) with exclusive x1, y1 (`crop_box`).
    public var cropBox: PixelBox

    public init(rle: MaskRLE, box: PixelBox, predictedIoU: Float, stabilityScore: Float,
                pointX: Double, pointY: Double, cropBox: PixelBox) {
        self.rle = rle; self.box = box; self.predictedIoU = predictedIoU; self.stabilityScore = stabilityScore
        self.pointX = pointX; self.pointY = pointY; self.cropBox = cropBox
    }

    /// `area` (pixels of the mask).
    public var area: Int { rle.area }
    /// `bbox` [x, y, w, h] (w = x1 − x0 of the inclusive box, as the reference writes it).
    public var bbox: [Int] { box.xywh }
    /// The decoded mask.
    public var mask: BinaryMask { rle.decode() }

    /// The reference's record as JSON: segmentation, area, bbox, predicted_iou, point_coords,
    /// stability_score, crop_box (XYWH).
    public var jsonObject: [String: Any] {
        ["segmentation": rle.jsonObject, "area": area, "bbox": bbox, "predicted_iou": Double(predictedIoU),
         "point_coords": [[pointX, pointY]], "stability_score": Double(stabilityScore), "crop_box": cropBox.xywh]
    }
}

/// What `AutomaticMaskGenerator.generate` returns: the masks and what it took.
public struct AutomaticMaskResult: Sendable {
    public var masks: [GeneratedMask]
    public var imageSize: ImageSize
    /// The point prompts decoded, in image pixels, in decoding order (the full grid decodes
    /// all of `gridPoints`).
    public var decodedPoints: [(x: Double, y: Double)]
    /// How many point prompts were decoded.
    public var decodedPrompts: Int { decodedPoints.count }
    /// Points in the grids of all crops.
    public var gridPoints: Int
    /// Image encoder runs (one per crop).
    public var encoderRuns: Int
    public var encodeSeconds: Double
    /// Prompt encoder, mask decoder, mask postprocessing and filtering.
    public var decodeSeconds: Double
}

/// `SamAutomaticMaskGenerator`: prompts the model with a grid of points over the image (and over
/// crops of it), keeps confident and stable masks and removes duplicates with box NMS.
/// Decoding goes through `SAMPredictor` (batched prompts); the image encoder runs once per crop.
public final class AutomaticMaskGenerator {
    public let predictor: SAMPredictor
    public let options: AutomaticMaskGeneratorOptions
    /// `point_grids`: one per crop layer, normalised to [0, 1]².
    public let pointGrids: [[(x: Double, y: Double)]]

    public init(predictor: SAMPredictor, options: AutomaticMaskGeneratorOptions = .init()) throws {
        try options.validate()
        self.predictor = predictor
        self.options = options
        pointGrids = MaskUtilities.allLayerPointGrids(pointsPerSide: options.pointsPerSide, cropLayers: options.cropNLayers,
                                                      scalePerLayer: options.cropNPointsDownscaleFactor)
    }

    public convenience init(model: SAMModel, options: AutomaticMaskGeneratorOptions = .init()) throws {
        try self.init(predictor: SAMPredictor(model: model), options: options)
    }

    /// A mask candidate before NMS: crop-frame box and point, mask RLE in the image frame.
    struct Candidate {
        var rle: MaskRLE
        var box: PixelBox
        var iou: Float
        var stability: Float
        var x: Double, y: Double
    }

    /// Counters of one `generate`.
    struct Stats {
        var decodedPoints: [(x: Double, y: Double)] = []
        var gridPoints = 0, encoderRuns = 0
        var encodeSeconds = 0.0, decodeSeconds = 0.0
    }

    /// `generate`: masks for the whole image. `embedding` (1, C, g, g), when given, is the
    /// image's own embedding (e.g. a cached teacher embedding of exactly this image, already at
    /// the encoder's input size): the whole-image crop decodes from it instead of encoding again.
    public func generate(_ image: RGBImage, embedding: Tensor? = nil) throws -> AutomaticMaskResult {
        let size = image.size
        let crops = MaskUtilities.cropBoxes(imageSize: size, cropLayers: options.cropNLayers, overlapRatio: options.cropOverlapRatio)
        var stats = Stats()
        var masks: [GeneratedMask] = []
        for (cropBox, layer) in crops {
            masks += try processCrop(image, cropBox: cropBox, layer: layer, embedding: layer == 0 ? embedding : nil, stats: &stats)
        }
        if crops.count > 1 {
            // Duplicates across crops: prefer masks from smaller crops (score 1 / crop area).
            let keep = MaskUtilities.batchedNMS(boxes: masks.map(\.box), scores: masks.map { 1 / Float($0.cropBox.area) },
                                                iouThreshold: options.cropNMSThresh)
            masks = keep.map { masks[$0] }
        }
        if options.minMaskRegionArea > 0 {
            masks = Self.postprocessSmallRegions(masks, minArea: options.minMaskRegionArea,
                                                 nmsThreshold: max(options.boxNMSThresh, options.cropNMSThresh))
        }
        return AutomaticMaskResult(masks: masks, imageSize: size, decodedPoints: stats.decodedPoints, gridPoints: stats.gridPoints,
                                   encoderRuns: stats.encoderRuns, encodeSeconds: stats.encodeSeconds, decodeSeconds: stats.decodeSeconds)
    }

    /// `_process_crop`: encode the crop, decode its grid (all of it, or a budget of it), NMS
    /// within the crop, back to the image frame.
    func processCrop(_ image: RGBImage, cropBox: PixelBox, layer: Int, embedding: Tensor? = nil,
                     stats: inout Stats) throws -> [GeneratedMask] {
        let clock = { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
        var t = clock()
        let crop = Self.crop(image, cropBox)
        if let embedding {
            try predictor.setEmbedding(embedding, originalSize: crop.size)
        } else {
            predictor.setImage(crop)
            stats.encoderRuns += 1
        }
        stats.encodeSeconds += clock() - t
        t = clock()
        defer { predictor.resetImage(); stats.decodeSeconds += clock() - t }

        let grid = pointGrids[layer]
        let W = Double(crop.width), H = Double(crop.height)
        let points = grid.map { (x: $0.x * W, y: $0.y * H) }
        let inImage = { (p: (x: Double, y: Double)) in (x: p.x + Double(cropBox.x0), y: p.y + Double(cropBox.y0)) }
        stats.gridPoints += points.count
        var candidates: [Candidate] = []
        if let h = options.fastMode {
            let n = Int(Double(grid.count).squareRoot().rounded())
            precondition(n * n == grid.count, "AutomaticMaskGenerator: the fast mode needs a square grid, got \(grid.count) points")
            let coarseStride = min(h.stride, n)
            let coarseSide = Array(stride(from: coarseStride / 2, to: n, by: coarseStride))
            let toInput = (x: Double(predictor.inputSize!.width) / W, y: Double(predictor.inputSize!.height) / H)
            let selector = GridPointSelector(embedding: predictor.features!, inputSide: predictor.model.imageSize,
                                             points: points.map { (x: $0.x * toInput.x, y: $0.y * toInput.y) }, side: n,
                                             spatialWeight: h.spatialWeight)
            let budget = min(grid.count, max(coarseSide.count * coarseSide.count, Int((h.budget * Double(grid.count)).rounded())))
            var decoded = [Bool](repeating: false, count: grid.count), covered = decoded
            var next = coarseSide.flatMap { r in coarseSide.map { r * n + $0 } }
            while !next.isEmpty {
                for batch in Self.batches(next.count, options.pointsPerBatch) {
                    let r = try processBatch(batch.map { points[next[$0]] }, crop: crop.size, cropBox: cropBox, imageSize: image.size,
                                             probes: points, fastMode: h)
                    candidates += r.candidates
                    for (i, c) in r.covered.enumerated() where c { covered[i] = true }
                }
                for i in next { decoded[i] = true }
                stats.decodedPoints += next.map { inImage(points[$0]) }
                let left = budget - decoded.lazy.filter { $0 }.count
                next = left > 0 ? selector.nextBatch(decoded: decoded, covered: covered, coveredWeight: h.coveredWeight,
                                                     size: min(left, options.pointsPerBatch)) : []
            }
        } else {
            for batch in Self.batches(points.count, options.pointsPerBatch) {
                candidates += try processBatch(Array(points[batch]), crop: crop.size, cropBox: cropBox, imageSize: image.size,
                                               probes: [], fastMode: nil).candidates
            }
            stats.decodedPoints += points.map(inImage)
        }
        // Duplicates within the crop, by predicted IoU.
        let keep = MaskUtilities.batchedNMS(boxes: candidates.map(\.box), scores: candidates.map(\.iou), iouThreshold: options.boxNMSThresh)
        return keep.map { i in
            let c = candidates[i]
            return GeneratedMask(rle: c.rle, box: c.box.offset(dx: cropBox.x0, dy: cropBox.y0), predictedIoU: c.iou,
                                 stabilityScore: c.stability, pointX: c.x + Double(cropBox.x0), pointY: c.y + Double(cropBox.y0),
                                 cropBox: cropBox)
        }
    }

    /// `batch_iterator`: consecutive ranges of at most `size`.
    static func batches(_ n: Int, _ size: Int) -> [Range<Int>] {
        stride(from: 0, to: n, by: size).map { $0..<min(n, $0 + size) }
    }

    /// The crop (x0..<x1, y0..<y1) of an image.
    public static func crop(_ image: RGBImage, _ box: PixelBox) -> RGBImage {
        if box == PixelBox(x0: 0, y0: 0, x1: image.width, y1: image.height) { return image }
        precondition(box.x0 >= 0 && box.y0 >= 0 && box.x1 <= image.width && box.y1 <= image.height && box.width > 0 && box.height > 0,
                     "AutomaticMaskGenerator.crop: box \(box) outside the \(image.width)×\(image.height) image")
        var pixels = [UInt8]()
        pixels.reserveCapacity(box.width * box.height * 3)
        for y in box.y0..<box.y1 {
            pixels += image.pixels[(3 * (y * image.width + box.x0))..<(3 * (y * image.width + box.x1))]
        }
        return RGBImage(width: box.width, height: box.height, pixels: pixels)
    }

    /// `_process_batch`: decode point prompts (crop pixels) with three masks each, keep masks by
    /// predicted IoU and stability, threshold, box, drop masks at a crop edge (not an image
    /// edge), uncrop and encode as RLE. With `fastMode`, also reports which `probes` (crop
    /// pixels) lie where a confident kept mask's logit exceeds the cover logit.
    func processBatch(_ points: [(x: Double, y: Double)], crop: ImageSize, cropBox: PixelBox, imageSize: ImageSize,
                      probes: [(x: Double, y: Double)], fastMode: FastModeOptions?) throws -> (candidates: [Candidate], covered: [Bool]) {
        let (low, iouPredictions) = try predictor.predictLowRes(points: points.map { PromptPoint(x: $0.x, y: $0.y, label: 1) })
        let K = iouPredictions.shape[1], h = crop.height, w = crop.width, hw = h * w
        let lh = low.shape[2], lw = low.shape[3]
        // The reference's order: prompt-major, then mask (`flatten(0, 1)`), filtered in place.
        // The predicted-IoU filter does not look at the masks, so only the masks it keeps are
        // resized to the crop (the reference resizes all: the same values, far less work on
        // large photos).
        let ious = iouPredictions.data
        let kept = (0..<(points.count * K)).filter { options.predIoUThresh <= 0 || ious[$0] > Float(options.predIoUThresh) }
        let offset = Float(options.stabilityScoreOffset), threshold = SAMModel.maskThreshold
        var stability = [Float](repeating: 0, count: kept.count)
        var results = [Candidate?](repeating: nil, count: kept.count)
        var coveredBy = [[Bool]](repeating: [], count: kept.count)
        let imageBox = PixelBox(x0: 0, y0: 0, x1: imageSize.width, y1: imageSize.height)
        // A few masks at a time (`postprocessBytes` of logits, at least 8): on a 10-megapixel
        // photo a mask's logits are 42 MB, and a whole batch's at once took GBs of fresh memory
        // whose first touch (the kernel zeroing it) was a third of the run.
        let chunk = max(8, options.postprocessBytes / (4 * hw))
        for start in stride(from: 0, to: kept.count, by: chunk) {
            let part = start..<min(kept.count, start + chunk)
            var partLow = Tensor.empty([part.count, 1, lh, lw])
            for (j, i) in kept[part].enumerated() {
                partLow.data.replaceSubrange((j * lh * lw)..<((j + 1) * lh * lw), with: low.data[(i * lh * lw)..<((i + 1) * lh * lw)])
            }
            // logits: (part, 1, h, w) at the crop's size
            let logits = SAMModel.postprocessMasks(partLow, inputSize: predictor.inputSize!, originalSize: crop,
                                                   imageSize: predictor.model.imageSize)
            precondition(logits.shape == [part.count, 1, h, w],
                         "AutomaticMaskGenerator: resized masks \(logits.shape), expected \([part.count, 1, h, w])")
            logits.data.withUnsafeBufferPointer { lb in
                let src = lb.baseAddress!
                stability.withUnsafeMutableBufferPointer { sb in
                    parallelFor(part.count, costPerItem: hw, minimumWork: 1 << 18) { j in
                        sb[start + j] = MaskUtilities.stabilityScore(UnsafeBufferPointer(start: src + j * hw, count: hw),
                                                                     maskThreshold: threshold, offset: offset)
                    }
                }
                results.withUnsafeMutableBufferPointer { rb in
                    coveredBy.withUnsafeMutableBufferPointer { cb in
                        parallelFor(part.count, costPerItem: 4 * hw, minimumWork: 1 << 18) { j in
                            let J = start + j
                            if options.stabilityScoreThresh > 0 && !(stability[J] >= Float(options.stabilityScoreThresh)) { return }
                            let m = src + j * hw
                            var pixels = [Bool](repeating: false, count: hw)
                            for i in 0..<hw { pixels[i] = m[i] > threshold }
                            let mask = BinaryMask(width: w, height: h, pixels: pixels)
                            let box = MaskUtilities.box(of: mask)
                            if MaskUtilities.isBoxNearCropEdge(box, cropBox: cropBox, imageBox: imageBox) { return }
                            let b = kept[J] / K
                            rb[J] = Candidate(rle: MaskRLE(MaskUtilities.uncrop(mask, cropBox: cropBox, imageSize: imageSize)),
                                              box: box, iou: ious[kept[J]], stability: stability[J], x: points[b].x, y: points[b].y)
                            if let fastMode, Double(ious[kept[J]]) >= fastMode.confidentIoU {
                                cb[J] = probes.map { p in
                                    let px = min(max(Int(p.x.rounded(.down)), 0), w - 1), py = min(max(Int(p.y.rounded(.down)), 0), h - 1)
                                    return m[py * w + px] > fastMode.coverLogit
                                }
                            }
                        }
                    }
                }
            }
        }
        var covered = [Bool](repeating: false, count: probes.count)
        var covering = coveredBy.indices.filter { !coveredBy[$0].isEmpty }
        if fastMode?.finestOnly == true {
            // Per prompt, the confident candidate with the smallest area (the first of equals).
            var finest: [Int: Int] = [:]
            for j in covering {
                let b = kept[j] / K
                if let f = finest[b], results[f]!.rle.area <= results[j]!.rle.area { continue }
                finest[b] = j
            }
            covering = finest.values.sorted()
        }
        for j in covering {
            for (i, c) in coveredBy[j].enumerated() where c { covered[i] = true }
        }
        return (results.compactMap { $0 }, covered)
    }

    /// `postprocess_small_regions`: fill small holes, drop small islands, then NMS (unchanged
    /// masks score 1, changed ones 0) and update the kept changed masks' RLEs and boxes.
    public static func postprocessSmallRegions(_ masks: [GeneratedMask], minArea: Int, nmsThreshold: Double) -> [GeneratedMask] {
        guard !masks.isEmpty else { return masks }
        var cleaned = [BinaryMask?](repeating: nil, count: masks.count)
        var scores = [Float](repeating: 0, count: masks.count)
        cleaned.withUnsafeMutableBufferPointer { cb in
            scores.withUnsafeMutableBufferPointer { sb in
                parallelFor(masks.count, costPerItem: 1 << 16, minimumWork: 1 << 17) { i in
                    let (holesFilled, c1) = MaskUtilities.removeSmallRegions(masks[i].mask, areaThreshold: Double(minArea), mode: .holes)
                    let (m, c2) = MaskUtilities.removeSmallRegions(holesFilled, areaThreshold: Double(minArea), mode: .islands)
                    cb[i] = m
                    sb[i] = (c1 || c2) ? 0 : 1
                }
            }
        }
        let boxes = cleaned.map { MaskUtilities.box(of: $0!) }
        let keep = MaskUtilities.batchedNMS(boxes: boxes, scores: scores, iouThreshold: nmsThreshold)
        return keep.map { i in
            var m = masks[i]
            if scores[i] == 0 {
                m.rle = MaskRLE(cleaned[i]!)
                m.box = boxes[i]
            }
            return m
        }
    }
}

extension AutomaticMaskResult {
    /// The fraction of `reference`'s masks that some mask of `self` matches with IoU ≥
    /// `threshold` (1 when `reference` has none), and each reference mask's best IoU.
    public func agreement(with reference: AutomaticMaskResult, threshold: Double = 0.9) -> (fraction: Double, bestIoUs: [Double]) {
        let ours = masks.map(\.mask)
        var best = [Double](repeating: 0, count: reference.masks.count)
        best.withUnsafeMutableBufferPointer { bb in
            parallelFor(reference.masks.count, costPerItem: ours.count << 16, minimumWork: 1 << 20) { i in
                let r = reference.masks[i], m = r.mask
                // Masks whose boxes (inclusive) do not meet share no pixel: IoU 0 without a pixel count.
                bb[i] = zip(masks, ours).map { g, o in
                    let apart = g.box.x1 < r.box.x0 || r.box.x1 < g.box.x0 || g.box.y1 < r.box.y0 || r.box.y1 < g.box.y0
                    return apart && g.area > 0 && r.area > 0 ? 0 : o.iou(m)
                }.max() ?? 0
            }
        }
        let matched = best.filter { $0 >= threshold }.count
        return (best.isEmpty ? 1 : Double(matched) / Double(best.count), best)
    }
}

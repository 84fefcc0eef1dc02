import Foundation
import ImageCodecs
import SegmentAnything
import Tensor

// The teacher's everything-masks of a cache row (`data.everything_masks`, `samdistill cache
// --everything-masks`): SAM's automatic mask generator run on the row's own image, decoding from
// the row's teacher embedding (no second encoder pass), so that prompt-in-the-loop can sample
// its prompts from real object masks.
//
// Frame: the low-res mask grid of the padded S×S input (L = S/4: 256² for SAM), the frame of the
// decoder's low-res logits that prompt-in-the-loop trains on. Mask pixel (y, x) covers input
// pixels [4y, 4y+4) × [4x, 4x+4) and is set when at least half of those 16 pixels are in the
// generator's full-resolution mask. Storage: COCO-style uncompressed RLE (pycocotools' `counts`
// list: run lengths over the column-major (Fortran order) flattening, starting with a run of
// zeros), fixed capacity per row so that writing a row changes no HDF5 metadata (FeatureCache).

/// Which masks are generated and how many of them a row can hold.
public struct EverythingMaskSettings: Codable, Equatable, Sendable {
    /// The generator's grid (`points_per_side`).
    public var pointsPerSide = 16
    /// The fast mode (`segment everything --fast`: 28% of the grid's points).
    public var fast = true
    public var predIoUThresh = 0.88
    public var stabilityScoreThresh = 0.95
    public var boxNMSThresh = 0.7
    /// At most this many masks per row (the highest predicted IoU first).
    public var maxMasks = 64
    /// At most this many RLE counts per row, all masks together (4 bytes each on disk, reserved).
    public var maxCounts = 32768

    enum CodingKeys: String, CodingKey {
        case pointsPerSide = "points_per_side", fast, predIoUThresh = "pred_iou_thresh"
        case stabilityScoreThresh = "stability_score_thresh", boxNMSThresh = "box_nms_thresh"
        case maxMasks = "max_masks", maxCounts = "max_counts"
    }

    public init() {}

    /// Problems, one per key (config key names).
    public func problems() -> [String] {
        var p: [String] = []
        if pointsPerSide < 1 { p.append("points_per_side: must be at least 1, got \(pointsPerSide)") }
        if fast && pointsPerSide < 4 { p.append("points_per_side: the fast mode needs at least 4, got \(pointsPerSide)") }
        for (k, v) in [("pred_iou_thresh", predIoUThresh), ("stability_score_thresh", stabilityScoreThresh),
                       ("box_nms_thresh", boxNMSThresh)] where !(0...1).contains(v) {
            p.append("\(k): must be in [0, 1], got \(v)")
        }
        if maxMasks < 1 { p.append("max_masks: must be at least 1, got \(maxMasks)") }
        if maxCounts < 2 { p.append("max_counts: must be at least 2, got \(maxCounts)") }
        return p
    }

    /// The automatic mask generator's options (no crop layers: the row's embedding is the whole image's).
    public var generatorOptions: AutomaticMaskGeneratorOptions {
        var o = AutomaticMaskGeneratorOptions()
        o.pointsPerSide = pointsPerSide
        o.predIoUThresh = predIoUThresh
        o.stabilityScoreThresh = stabilityScoreThresh
        o.boxNMSThresh = boxNMSThresh
        if fast { o.fastMode = FastModeOptions() }
        return o
    }

    /// The cache's `everything_masks` attribute (a resumed run must match it).
    public var json: String { TeacherEncoder.json(self) }
}

/// One stored mask: low-res RLE and the generator's scores.
public struct EverythingMask: Equatable, Sendable {
    public var rle: MaskRLE
    public var predictedIoU: Float
    public var stabilityScore: Float

    public init(rle: MaskRLE, predictedIoU: Float, stabilityScore: Float) {
        self.rle = rle; self.predictedIoU = predictedIoU; self.stabilityScore = stabilityScore
    }
}

/// A row's masks and how many generated masks it could not hold (over max_masks or max_counts,
/// or empty on the low-res grid).
public struct EverythingRow: Equatable, Sendable {
    public var masks: [EverythingMask]
    public var dropped: Int
}

/// Runs the generator on cache rows (`FeatureCacheBuilder`).
public final class EverythingMasker {
    public let settings: EverythingMaskSettings
    let generator: AutomaticMaskGenerator
    /// L: the low-res grid's side (the prompt encoder's mask input size).
    public let maskSize: Int

    /// `model`: the teacher (its prompt encoder and mask decoder decode the cached embeddings).
    public init(settings: EverythingMaskSettings, model: SAMModel) throws {
        if let p = settings.problems().first { throw CacheError("everything masks: \(p)") }
        self.settings = settings
        generator = try AutomaticMaskGenerator(model: model, options: settings.generatorOptions)
        maskSize = model.promptEncoder.maskInputSize.height
    }

    /// The teacher SAM checkpoint's model (nil settings: none).
    public static func load(_ settings: EverythingMaskSettings?, checkpoint: String) throws -> EverythingMasker? {
        guard let settings else { return nil }
        let model: SAMModel
        do { model = try SAMModel.load(contentsOf: URL(fileURLWithPath: checkpoint)) } catch {
            throw CacheError("\(checkpoint): everything masks need the teacher's prompt encoder and mask decoder: \(error)")
        }
        return try EverythingMasker(settings: settings, model: model)
    }

    /// The row's masks: the generator on the valid region of `image` (already at the input
    /// size), decoding from `embedding` (1, C, g, g), the row's teacher embedding.
    public func masks(image: PaddedImage, embedding: Tensor) throws -> EverythingRow {
        let S = image.size, H = image.validSize.height, W = image.validSize.width
        guard max(H, W) == S else { throw CacheError("everything masks: the row's image is \(W)×\(H), not resized to \(S)") }
        var px = [UInt8](repeating: 0, count: H * W * 3)
        for y in 0..<H { px.replaceSubrange((y * W * 3)..<((y + 1) * W * 3), with: image.pixels[(y * S * 3)..<(y * S * 3 + W * 3)]) }
        let generated = try generator.generate(RGBImage(width: W, height: H, pixels: px), embedding: embedding).masks
        let low = generated.map { m in
            EverythingMask(rle: MaskRLE(Self.lowRes(m.mask, frame: S, side: maskSize)), predictedIoU: m.predictedIoU,
                           stabilityScore: m.stabilityScore)
        }
        return Self.pack(low, maxMasks: settings.maxMasks, maxCounts: settings.maxCounts)
    }

    /// `mask` (the valid region, top-left of an S×S frame) on the side×side grid: a cell is set
    /// when at least half of its (S/side)² pixels are.
    static func lowRes(_ mask: BinaryMask, frame S: Int, side: Int) -> BinaryMask {
        let f = S / side
        var count = [Int](repeating: 0, count: side * side)
        for y in 0..<mask.height { for x in 0..<mask.width where mask.pixels[y * mask.width + x] { count[(y / f) * side + x / f] += 1 } }
        return BinaryMask(width: side, height: side, pixels: count.map { 2 * $0 >= f * f })
    }

    /// The non-empty masks, highest predicted IoU first (ties: generator order), each kept while
    /// it fits in `maxMasks` masks and `maxCounts` counts.
    public static func pack(_ masks: [EverythingMask], maxMasks: Int, maxCounts: Int) -> EverythingRow {
        let order = masks.indices.sorted { masks[$0].predictedIoU > masks[$1].predictedIoU || (masks[$0].predictedIoU == masks[$1].predictedIoU && $0 < $1) }
        var kept: [EverythingMask] = [], used = 0
        for i in order where masks[i].rle.area > 0 && kept.count < maxMasks && used + masks[i].rle.counts.count <= maxCounts {
            kept.append(masks[i])
            used += masks[i].rle.counts.count
        }
        return EverythingRow(masks: kept, dropped: masks.count - kept.count)
    }
}

extension MaskRLE {
    /// The inclusive box (x0, y0, x1, y1) of the set pixels, from the runs (nil when empty).
    public var runBox: (x0: Int, y0: Int, x1: Int, y1: Int)? {
        var box: (x0: Int, y0: Int, x1: Int, y1: Int)?
        var start = 0
        for (i, c) in counts.enumerated() {
            defer { start += c }
            guard i % 2 == 1, c > 0 else { continue }
            let a = start, b = start + c - 1  // first and last pixel of the run, column-major
            let oneColumn = a / height == b / height
            let r = (x0: a / height, y0: oneColumn ? a % height : 0, x1: b / height, y1: oneColumn ? b % height : height - 1)
            box = box.map { (min($0.x0, r.x0), min($0.y0, r.y0), max($0.x1, r.x1), max($0.y1, r.y1)) } ?? r
        }
        return box
    }

    /// The (x, y) of the n-th set pixel in column-major order, 0 ≤ n < area.
    public func setPixel(_ n: Int) -> (x: Int, y: Int) {
        var start = 0, seen = 0
        for (i, c) in counts.enumerated() {
            if i % 2 == 1 && n < seen + c {
                let p = start + n - seen
                return (p / height, p % height)
            }
            if i % 2 == 1 { seen += c }
            start += c
        }
        preconditionFailure("MaskRLE.setPixel: \(n) outside the mask's \(seen) pixels")
    }
}

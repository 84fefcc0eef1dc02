import Foundation
import ImageCodecs
import Tensor

// The helpers of SAM's automatic mask generator, side by side with MobileSAM's utils/amg.py:
// uncompressed RLE, stability score, mask → box, box NMS (torchvision's `batched_nms`), point
// grids, crop boxes, uncropping, small-region removal (OpenCV's 8-connected components), and
// FastSAM-style prompt selection over "everything" masks.

/// A box (x0, y0, x1, y1) in integer pixels: inclusive pixel indices for a mask's box
/// (`batched_mask_to_box`), exclusive right/bottom for a crop box (`generate_crop_boxes`).
public struct PixelBox: Sendable, Hashable, CustomStringConvertible {
    public var x0: Int, y0: Int, x1: Int, y1: Int

    public init(x0: Int, y0: Int, x1: Int, y1: Int) {
        self.x0 = x0; self.y0 = y0; self.x1 = x1; self.y1 = y1
    }

    /// The same box shifted by (dx, dy) (`uncrop_boxes_xyxy`).
    public func offset(dx: Int, dy: Int) -> PixelBox { PixelBox(x0: x0 + dx, y0: y0 + dy, x1: x1 + dx, y1: y1 + dy) }

    /// [x, y, w, h] with w = x1 − x0, h = y1 − y0 (`box_xyxy_to_xywh`; note: no +1).
    public var xywh: [Int] { [x0, y0, x1 - x0, y1 - y0] }

    /// [x0, y0, x1, y1].
    public var xyxy: [Int] { [x0, y0, x1, y1] }

    /// (x1 − x0)·(y1 − y0) (`torchvision.ops.box_area`).
    public var area: Int { (x1 - x0) * (y1 - y0) }

    public var width: Int { x1 - x0 }
    public var height: Int { y1 - y0 }

    public var description: String { "[\(x0), \(y0), \(x1), \(y1)]" }
}

/// An uncompressed COCO run-length encoding: `counts` alternate runs of 0s and 1s over the
/// pixels in column-major (Fortran) order, starting with a run of 0s (0 when the first pixel is
/// set); `size` is [height, width] (`mask_to_rle_pytorch` / `rle_to_mask`).
public struct MaskRLE: Sendable, Equatable, Codable {
    public let height: Int
    public let width: Int
    public var counts: [Int]

    public init(height: Int, width: Int, counts: [Int]) {
        self.height = height; self.width = width; self.counts = counts
    }

    /// Encodes a mask (`mask_to_rle_pytorch` for one mask).
    public init(_ mask: BinaryMask) {
        let H = mask.height, W = mask.width
        var counts: [Int] = []
        counts.reserveCapacity(64)
        // The runs go down the columns of a row-major mask: 64 columns at a time are copied into
        // a column-major tile (64·H values, cache-resident), so the scan reads memory in order
        // (a column-by-column walk of a 13-megapixel mask missed the cache at every pixel).
        let T = 64
        var tile = [Bool](repeating: false, count: T * H)
        var current = false, run = 0
        mask.pixels.withUnsafeBufferPointer { p in
            tile.withUnsafeMutableBufferPointer { t in
                for x0 in stride(from: 0, to: W, by: T) {
                    let n = min(T, W - x0)
                    for y in 0..<H {
                        let row = p.baseAddress! + y * W + x0
                        for c in 0..<n { t[c * H + y] = row[c] }
                    }
                    for i in 0..<(n * H) {
                        let v = t[i]
                        if v != current {
                            counts.append(run)
                            run = 0
                            current = v
                        }
                        run += 1
                    }
                }
            }
        }
        counts.append(run)
        self.init(height: H, width: W, counts: counts)
    }

    /// `mask_to_rle_pytorch` written as the reference does it: column-major flatten, change
    /// indices, differences (for the tests).
    public static func encodeReference(_ mask: BinaryMask) -> MaskRLE {
        let H = mask.height, W = mask.width, n = H * W
        var flat = [Bool](repeating: false, count: n)
        for y in 0..<H { for x in 0..<W { flat[x * H + y] = mask.pixels[y * W + x] } }
        var idxs = [0]
        for i in 0..<max(0, n - 1) where flat[i + 1] != flat[i] { idxs.append(i + 1) }
        idxs.append(n)
        var counts: [Int] = (n > 0 && flat[0]) ? [0] : []
        for i in 1..<idxs.count { counts.append(idxs[i] - idxs[i - 1]) }
        return MaskRLE(height: H, width: W, counts: counts)
    }

    /// `rle_to_mask`. Precondition: the counts add up to height·width.
    public func decode() -> BinaryMask {
        let H = height, W = width
        precondition(counts.reduce(0, +) == H * W, "MaskRLE.decode: counts add up to \(counts.reduce(0, +)), size \(H)×\(W) needs \(H * W)")
        var pixels = [Bool](repeating: false, count: H * W)
        var index = 0, value = false
        for c in counts {
            if value {
                for i in index..<(index + c) { pixels[(i % H) * W + i / H] = true }
            }
            index += c
            value.toggle()
        }
        return BinaryMask(width: W, height: H, pixels: pixels)
    }

    /// `area_from_rle`: the sum of the runs of 1s.
    public var area: Int {
        var a = 0
        for i in stride(from: 1, to: counts.count, by: 2) { a += counts[i] }
        return a
    }

    /// The JSON object `{"size": [h, w], "counts": [...]}`.
    public var jsonObject: [String: Any] { ["size": [height, width], "counts": counts] }

    enum CodingKeys: String, CodingKey { case size, counts }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let size = try c.decode([Int].self, forKey: .size)
        guard size.count == 2, size[0] >= 0, size[1] >= 0 else {
            throw DecodingError.dataCorruptedError(forKey: .size, in: c, debugDescription: "size must be [height, width], got \(size)")
        }
        let counts = try c.decode([Int].self, forKey: .counts)
        guard counts.allSatisfy({ $0 >= 0 }), counts.reduce(0, +) == size[0] * size[1] else {
            throw DecodingError.dataCorruptedError(forKey: .counts, in: c,
                                                   debugDescription: "counts must be non-negative and add up to \(size[0])·\(size[1])")
        }
        self.init(height: size[0], width: size[1], counts: counts)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode([height, width], forKey: .size)
        try c.encode(counts, forKey: .counts)
    }
}

/// How `MaskUtilities.removeSmallRegions` treats a mask: fill small holes, or drop small
/// islands.
public enum SmallRegionMode: String, Sendable {
    case holes, islands
}

/// SAM's amg.py helpers.
public enum MaskUtilities {
    /// `calculate_stability_score` for one mask's logits: |logits > t + o| / |logits > t − o|, in
    /// float32 as PyTorch divides two int32 counts (NaN when both are 0).
    public static func stabilityScore(_ logits: UnsafeBufferPointer<Float>, maskThreshold: Float = SAMModel.maskThreshold,
                                      offset: Float = 1) -> Float {
        let hi = maskThreshold + offset, lo = maskThreshold - offset
        var intersections = 0, unions = 0
        for v in logits {
            if v > hi { intersections += 1 }
            if v > lo { unions += 1 }
        }
        return Float(intersections) / Float(unions)
    }

    /// Stability scores of masks (…, H, W) logits, one per leading index, in parallel.
    public static func stabilityScores(_ masks: Tensor, maskThreshold: Float = SAMModel.maskThreshold, offset: Float = 1) -> [Float] {
        precondition(masks.rank >= 2, "MaskUtilities.stabilityScores: expected masks (…, H, W), got \(masks.shape)")
        let hw = masks.shape[masks.rank - 2] * masks.shape[masks.rank - 1], n = hw == 0 ? 0 : masks.count / hw
        var out = [Float](repeating: 0, count: n)
        masks.data.withUnsafeBufferPointer { mb in
            out.withUnsafeMutableBufferPointer { ob in
                let src = mb.baseAddress!, dst = ob.baseAddress!
                parallelFor(n, costPerItem: hw, minimumWork: 1 << 18) { i in
                    dst[i] = stabilityScore(UnsafeBufferPointer(start: src + i * hw, count: hw),
                                            maskThreshold: maskThreshold, offset: offset)
                }
            }
        }
        return out
    }

    /// `batched_mask_to_box` for one mask: inclusive (x0, y0, x1, y1), [0, 0, 0, 0] when empty.
    public static func box(of mask: BinaryMask) -> PixelBox {
        guard let b = mask.boundingBox else { return PixelBox(x0: 0, y0: 0, x1: 0, y1: 0) }
        return PixelBox(x0: b.x0, y0: b.y0, x1: b.x1, y1: b.y1)
    }

    /// `is_box_near_crop_edge`: whether the box (in crop coordinates) lies within `tolerance`
    /// pixels of an edge of the crop box that is not also an edge of the image box.
    public static func isBoxNearCropEdge(_ box: PixelBox, cropBox: PixelBox, imageBox: PixelBox, tolerance: Int = 20) -> Bool {
        let b = box.offset(dx: cropBox.x0, dy: cropBox.y0)
        let v = b.xyxy, c = cropBox.xyxy, o = imageBox.xyxy
        for i in 0..<4 where abs(v[i] - c[i]) <= tolerance && !(abs(v[i] - o[i]) <= tolerance) { return true }
        return false
    }

    /// `torchvision.ops.batched_nms`: non-maximum suppression per category, boxes as float32
    /// (x0, y0, x1, y1). Boxes are visited by decreasing score (stable on ties); a box is
    /// dropped when its IoU (float32, (x1 − x0)·(y1 − y0) areas) with a kept box of its category
    /// exceeds `iouThreshold`. Returns the kept indices by decreasing score.
    public static func batchedNMS(boxes: [PixelBox], scores: [Float], categories: [Int]? = nil, iouThreshold: Double) -> [Int] {
        precondition(boxes.count == scores.count && (categories?.count ?? boxes.count) == boxes.count,
                     "MaskUtilities.batchedNMS: \(boxes.count) boxes, \(scores.count) scores, \(categories?.count ?? boxes.count) categories")
        let n = boxes.count
        let order = (0..<n).sorted { scores[$0] > scores[$1] || (scores[$0] == scores[$1] && $0 < $1) }
        let x0 = boxes.map { Float($0.x0) }, y0 = boxes.map { Float($0.y0) }
        let x1 = boxes.map { Float($0.x1) }, y1 = boxes.map { Float($0.y1) }
        let areas = (0..<n).map { (x1[$0] - x0[$0]) * (y1[$0] - y0[$0]) }
        var suppressed = [Bool](repeating: false, count: n)
        var keep: [Int] = []
        for (oi, i) in order.enumerated() where !suppressed[i] {
            keep.append(i)
            for j in order[(oi + 1)...] where !suppressed[j] && (categories == nil || categories![j] == categories![i]) {
                let w = max(0, min(x1[i], x1[j]) - max(x0[i], x0[j]))
                let h = max(0, min(y1[i], y1[j]) - max(y0[i], y0[j]))
                let inter = w * h
                let iou = inter / (areas[i] + areas[j] - inter)
                if Double(iou) > iouThreshold { suppressed[j] = true }
            }
        }
        return keep
    }

    /// `build_point_grid`: n×n points evenly spaced in [0, 1]², (x, y) row by row (x fastest),
    /// as numpy's `linspace(1/(2n), 1 − 1/(2n), n)`.
    public static func pointGrid(_ n: Int) -> [(x: Double, y: Double)] {
        precondition(n >= 1, "MaskUtilities.pointGrid: need at least one point per side, got \(n)")
        let offset = 1 / (2 * Double(n))
        let side = linspace(offset, 1 - offset, n)
        var points: [(x: Double, y: Double)] = []
        points.reserveCapacity(n * n)
        for y in side { for x in side { points.append((x, y)) } }
        return points
    }

    /// numpy's `linspace(start, stop, num)` (endpoint included, the last value exactly `stop`).
    public static func linspace(_ start: Double, _ stop: Double, _ num: Int) -> [Double] {
        if num == 1 { return [start] }
        let step = (stop - start) / Double(num - 1)
        var v = (0..<num).map { Double($0) * step + start }
        v[num - 1] = stop
        return v
    }

    /// `build_all_layer_point_grids`: the grid of crop layer i has ⌊n / scale^i⌋ points per side.
    public static func allLayerPointGrids(pointsPerSide n: Int, cropLayers: Int, scalePerLayer: Int) -> [[(x: Double, y: Double)]] {
        (0...cropLayers).map { i in
            pointGrid(Int(Double(n) / pow(Double(scalePerLayer), Double(i))))
        }
    }

    /// `generate_crop_boxes`: the whole image (layer 0), then for layer i ≥ 1 (2^i)² overlapping
    /// crops (x0 outer, y0 inner), boxes (x0, y0, x1, y1) with exclusive x1, y1.
    public static func cropBoxes(imageSize: ImageSize, cropLayers: Int, overlapRatio: Double) -> [(box: PixelBox, layer: Int)] {
        let H = imageSize.height, W = imageSize.width, shortSide = min(H, W)
        var out: [(box: PixelBox, layer: Int)] = [(PixelBox(x0: 0, y0: 0, x1: W, y1: H), 0)]
        func cropLength(_ length: Int, _ crops: Int, _ overlap: Int) -> Int {
            Int((Double(overlap * (crops - 1) + length) / Double(crops)).rounded(.up))
        }
        guard cropLayers > 0 else { return out }
        for layer in 0..<cropLayers {
            let crops = 1 << (layer + 1)
            let overlap = Int(overlapRatio * Double(shortSide) * (2 / Double(crops)))
            let cw = cropLength(W, crops, overlap), ch = cropLength(H, crops, overlap)
            let xs = (0..<crops).map { (cw - overlap) * $0 }, ys = (0..<crops).map { (ch - overlap) * $0 }
            for x0 in xs {
                for y0 in ys {
                    out.append((PixelBox(x0: x0, y0: y0, x1: min(x0 + cw, W), y1: min(y0 + ch, H)), layer + 1))
                }
            }
        }
        return out
    }

    /// `uncrop_masks`: a mask of the crop placed into an image of `imageSize` (zeros around).
    public static func uncrop(_ mask: BinaryMask, cropBox: PixelBox, imageSize: ImageSize) -> BinaryMask {
        let H = imageSize.height, W = imageSize.width
        if cropBox == PixelBox(x0: 0, y0: 0, x1: W, y1: H) { return mask }
        precondition(mask.width == cropBox.width && mask.height == cropBox.height,
                     "MaskUtilities.uncrop: mask \(mask.width)×\(mask.height) for crop box \(cropBox)")
        var pixels = [Bool](repeating: false, count: H * W)
        for y in 0..<mask.height {
            for x in 0..<mask.width { pixels[(y + cropBox.y0) * W + x + cropBox.x0] = mask.pixels[y * mask.width + x] }
        }
        return BinaryMask(width: W, height: H, pixels: pixels)
    }

    /// Connected components with 8-connectivity of the set pixels (OpenCV's
    /// `connectedComponentsWithStats(·, 8)`): labels (0 = unset pixels, components 1… numbered
    /// in raster order of their first pixel) and each component's area (index 0 unused, 0).
    public static func connectedComponents(_ mask: BinaryMask) -> (labels: [Int32], areas: [Int]) {
        let H = mask.height, W = mask.width
        var labels = [Int32](repeating: 0, count: H * W)
        var areas = [0]
        var stack: [Int] = []
        for start in 0..<(H * W) where mask.pixels[start] && labels[start] == 0 {
            let label = Int32(areas.count)
            var area = 0
            labels[start] = label
            stack.append(start)
            while let p = stack.popLast() {
                area += 1
                let py = p / W, px = p % W
                for dy in -1...1 {
                    let y = py + dy
                    guard y >= 0 && y < H else { continue }
                    for dx in -1...1 where dx != 0 || dy != 0 {
                        let x = px + dx
                        guard x >= 0 && x < W else { continue }
                        let q = y * W + x
                        if mask.pixels[q] && labels[q] == 0 { labels[q] = label; stack.append(q) }
                    }
                }
            }
            areas.append(area)
        }
        return (labels, areas)
    }

    /// `remove_small_regions`: fills holes (`.holes`: 8-connected regions of unset pixels) or
    /// drops islands (`.islands`: 8-connected regions of set pixels) smaller than `areaThreshold`
    /// pixels; when every island is small, keeps the largest (the first of equals). Returns the
    /// mask and whether anything changed.
    public static func removeSmallRegions(_ mask: BinaryMask, areaThreshold: Double, mode: SmallRegionMode) -> (mask: BinaryMask, changed: Bool) {
        let holes = mode == .holes
        let working = BinaryMask(width: mask.width, height: mask.height, pixels: mask.pixels.map { $0 != holes })
        let (labels, areas) = connectedComponents(working)
        let small = Set((1..<areas.count).filter { Double(areas[$0]) < areaThreshold })
        if small.isEmpty { return (mask, false) }
        var fill: Set<Int>
        if holes {
            fill = small.union([0])
        } else {
            fill = Set((1..<areas.count).filter { !small.contains($0) })
            if fill.isEmpty {
                var best = 1
                for l in 2..<max(2, areas.count) where areas[l] > areas[best] { best = l }
                fill = [best]
            }
        }
        return (BinaryMask(width: mask.width, height: mask.height, pixels: labels.map { fill.contains(Int($0)) }), true)
    }

    // MARK: FastSAM-style selection over everything-masks

    /// The index of the mask with the highest IoU with the box taken as a filled rectangle,
    /// FastSAM's `box_prompt`: the box's pixels are columns ⌊x0⌉..<⌊x1⌉, rows ⌊y0⌉..<⌊y1⌉
    /// (rounded, clamped to the image); IoU = |mask ∩ box| / (|box| + |mask| − |mask ∩ box|).
    /// The first of equals; nil when there are no masks.
    public static func selectByBox(_ masks: [BinaryMask], box: PromptBox) -> (index: Int, iou: Double)? {
        guard let first = masks.first else { return nil }
        let W = first.width, H = first.height
        let x0 = min(max(Int(box.x0.rounded()), 0), W), x1 = min(max(Int(box.x1.rounded()), 0), W)
        let y0 = min(max(Int(box.y0.rounded()), 0), H), y1 = min(max(Int(box.y1.rounded()), 0), H)
        let boxArea = max(0, x1 - x0) * max(0, y1 - y0)
        var best: (index: Int, iou: Double)?
        for (i, m) in masks.enumerated() {
            precondition(m.width == W && m.height == H, "MaskUtilities.selectByBox: mask \(i) is \(m.width)×\(m.height), mask 0 is \(W)×\(H)")
            var inside = 0
            for y in y0..<max(y0, y1) { for x in x0..<max(x0, x1) where m.pixels[y * W + x] { inside += 1 } }
            let union = boxArea + m.area - inside
            let iou = union == 0 ? 0 : Double(inside) / Double(union)
            if best == nil || iou > best!.iou { best = (i, iou) }
        }
        return best
    }

    /// FastSAM's point selection: the union of the masks that contain a foreground point (label
    /// 1), minus the masks that contain a background point (label 0). A point (x, y) hits a mask
    /// when the pixel (⌊x⌋, ⌊y⌋) is set. Returns the mask and the indices of the masks added and
    /// removed; nil when there are no masks.
    public static func selectByPoints(_ masks: [BinaryMask], points: [PromptPoint]) -> (mask: BinaryMask, added: [Int], removed: [Int])? {
        guard let first = masks.first else { return nil }
        let W = first.width, H = first.height
        var added: [Int] = [], removed: [Int] = []
        for (i, m) in masks.enumerated() {
            precondition(m.width == W && m.height == H, "MaskUtilities.selectByPoints: mask \(i) is \(m.width)×\(m.height), mask 0 is \(W)×\(H)")
            func hit(_ label: Int) -> Bool {
                points.contains { p in
                    let x = Int(p.x.rounded(.down)), y = Int(p.y.rounded(.down))
                    return p.label == label && x >= 0 && y >= 0 && x < W && y < H && m.pixels[y * W + x]
                }
            }
            if hit(1) { added.append(i) }
            if hit(0) { removed.append(i) }
        }
        var pixels = [Bool](repeating: false, count: W * H)
        for i in added { for p in 0..<(W * H) where masks[i].pixels[p] { pixels[p] = true } }
        for i in removed { for p in 0..<(W * H) where masks[i].pixels[p] { pixels[p] = false } }
        return (BinaryMask(width: W, height: H, pixels: pixels), added, removed)
    }
}

import ArgumentParser
import Foundation
import SegmentAnything
import Tensor

/// `--point X,Y[,LABEL]`: a point prompt in image pixels, label 1 (foreground, default) or 0.
struct PointArgument: ExpressibleByArgument {
    let point: PromptPoint

    init?(argument: String) {
        let parts = argument.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        guard parts.count == 2 || parts.count == 3, let x = Double(parts[0]), let y = Double(parts[1]),
              x.isFinite, y.isFinite else { return nil }
        var label = 1
        if parts.count == 3 {
            guard let l = Int(parts[2]), l == 0 || l == 1 else { return nil }
            label = l
        }
        point = PromptPoint(x: x, y: y, label: label)
    }

    static var defaultCompletionKind: CompletionKind { .default }
}

/// `--box X0,Y0,X1,Y1`: a box prompt in image pixels.
struct BoxArgument: ExpressibleByArgument {
    let box: PromptBox

    init?(argument: String) {
        let v = argument.split(separator: ",", omittingEmptySubsequences: false).compactMap {
            Double($0.trimmingCharacters(in: .whitespaces))
        }
        guard v.count == 4, v.allSatisfy(\.isFinite), v[2] >= v[0], v[3] >= v[1] else { return nil }
        box = PromptBox(x0: v[0], y0: v[1], x1: v[2], y1: v[3])
    }
}

/// A problem found while running (after argument validation), naming the file.
struct SegmentError: Error, CustomStringConvertible {
    let description: String
}

struct Segment: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Segment an object from point and box prompts, or everything in an image (SAM / MobileSAM).",
        discussion: """
            Loads a SAM checkpoint (.pt/.pth or .safetensors; MobileSAM's TinyViT or SAM's ViT \
            encoder, detected from the file), encodes the image once, and predicts a mask for the \
            prompts. Coordinates are pixels of the original image. Without --multimask the model's \
            single-mask output is used; with it, the best of its three masks (highest predicted IoU). \
            Writes an overlay of the mask and the prompts (--out), optionally the mask as an 8-bit \
            0/255 PNG at the image's size (--mask-out) and a JSON summary (--json: score, bbox, \
            area, prompts, timings). Prints the load, encode and decode times.

            --everything runs SAM's automatic mask generator instead of prompts: a grid of \
            point prompts (--points-per-side², decoded in batches, three masks each), masks kept \
            by predicted IoU and stability score, duplicates removed by box NMS, optionally on \
            crops (--crop-n-layers) and with small holes and islands removed \
            (--min-mask-region-area). --fast decodes a coarse grid (every 4th point per side) \
            first and then only the grid points no confident mask covers. --json writes every \
            mask as SAM's record (segmentation as uncompressed column-major RLE, area, bbox XYWH, \
            predicted_iou, stability_score, point_coords, crop_box); the overlay colours every \
            mask. --select-box / --select-point pick among the masks FastSAM-style: the mask with \
            the highest IoU with the box, or the union of the masks hit by foreground points \
            minus those hit by background points (--mask-out writes the selection).
            """)

    @Option(help: "The SAM weights (.pt, .pth or .safetensors).")
    var checkpoint: String

    @Option(help: "Prompt encoder and mask decoder weights, for a checkpoint that holds an image encoder alone (an exported student).")
    var decoderCheckpoint: String?

    @Option(help: "The image (JPEG or PNG).")
    var image: String

    @Option(name: .customLong("point"), parsing: .singleValue,
            help: ArgumentHelp("A point prompt X,Y[,LABEL] (label 1 foreground, the default, or 0 background). Repeatable.",
                               valueName: "x,y[,label]"))
    var points: [PointArgument] = []

    @Option(help: ArgumentHelp("A box prompt X0,Y0,X1,Y1.", valueName: "x0,y0,x1,y1"))
    var box: BoxArgument?

    @Flag(help: "Predict three masks and keep the one with the highest predicted IoU.")
    var multimask = false

    @Option(help: "The overlay PNG to write (mask and prompts drawn on the image).")
    var out: String

    @Option(help: "Also write the mask as an 8-bit PNG (0/255) at the image's size.")
    var maskOut: String?

    @Option(help: "Also write a JSON summary (score, bbox, area, prompts, timings).")
    var json: String?

    @OptionGroup var runtime: RuntimeOptions

    @Flag(help: "Segment everything: SAM's automatic mask generator over a grid of point prompts.")
    var everything = false

    @Option(help: "--everything: points per side of the grid (default 32).")
    var pointsPerSide: Int?

    @Option(help: "--everything: prompts decoded per batch (default 64).")
    var pointsPerBatch: Int?

    @Option(help: "--everything: keep masks with a predicted IoU above this (default 0.88).")
    var predIouThresh: Double?

    @Option(help: "--everything: keep masks with a stability score of at least this (default 0.95).")
    var stabilityScoreThresh: Double?

    @Option(help: "--everything: box IoU above which NMS removes a duplicate mask (default 0.7).")
    var boxNmsThresh: Double?

    @Option(help: "--everything: crop layers after the whole image, layer i with (2^i)² crops (default 0).")
    var cropNLayers: Int?

    @Option(help: "--everything: fill holes and remove islands smaller than this many pixels (default 0: off).")
    var minMaskRegionArea: Int?

    @Flag(help: "--everything: hierarchical mode, a coarse grid first, then only the grid points no confident mask covers.")
    var fast = false

    @Option(help: "--fast: the coarse grid takes every Nth grid point per side (default 4).")
    var fastStride: Int?

    @Option(help: "--fast: a grid point is covered where a confident coarse mask's logit exceeds this (default 8.5; 0: anywhere inside the mask).")
    var fastCoverLogit: Float?

    @Option(help: "--fast: coarse masks with a predicted IoU of at least this are confident (default 0.88).")
    var fastConfidentIou: Double?

    @Flag(help: "--everything --fast: also run the full grid and print the speedup and the mask agreement.")
    var compareFull = false

    @Option(help: ArgumentHelp("--everything: select the mask with the highest IoU with this box.", valueName: "x0,y0,x1,y1"))
    var selectBox: BoxArgument?

    @Option(name: .customLong("select-point"), parsing: .singleValue,
            help: ArgumentHelp("--everything: select the masks hit by this point (label 1 adds, 0 removes). Repeatable.",
                               valueName: "x,y[,label]"))
    var selectPoints: [PointArgument] = []

    /// The automatic mask generator's options from the flags (SAM's defaults where not given).
    var generatorOptions: AutomaticMaskGeneratorOptions {
        var o = AutomaticMaskGeneratorOptions()
        if let v = pointsPerSide { o.pointsPerSide = v }
        if let v = pointsPerBatch { o.pointsPerBatch = v }
        if let v = predIouThresh { o.predIoUThresh = v }
        if let v = stabilityScoreThresh { o.stabilityScoreThresh = v }
        if let v = boxNmsThresh { o.boxNMSThresh = v }
        if let v = cropNLayers { o.cropNLayers = v }
        if let v = minMaskRegionArea { o.minMaskRegionArea = v }
        if fast {
            var h = HierarchicalOptions()
            if let v = fastStride { h.stride = v }
            if let v = fastCoverLogit { h.coverLogit = v }
            if let v = fastConfidentIou { h.confidentIoU = v }
            o.hierarchical = h
        }
        return o
    }

    func validate() throws {
        let everythingOnly: [(String, Bool)] = [
            ("--points-per-side", pointsPerSide != nil), ("--points-per-batch", pointsPerBatch != nil),
            ("--pred-iou-thresh", predIouThresh != nil), ("--stability-score-thresh", stabilityScoreThresh != nil),
            ("--box-nms-thresh", boxNmsThresh != nil), ("--crop-n-layers", cropNLayers != nil),
            ("--min-mask-region-area", minMaskRegionArea != nil), ("--fast", fast), ("--compare-full", compareFull),
            ("--fast-stride", fastStride != nil), ("--fast-cover-logit", fastCoverLogit != nil), ("--fast-confident-iou", fastConfidentIou != nil),
            ("--select-box", selectBox != nil), ("--select-point", !selectPoints.isEmpty),
        ]
        if everything {
            if !points.isEmpty || box != nil {
                throw ValidationError("--everything segments the whole image and takes no --point/--box prompts; "
                                      + "pick among its masks with --select-point X,Y[,LABEL] or --select-box X0,Y0,X1,Y1")
            }
            if multimask { throw ValidationError("--multimask is for prompts; --everything always decodes three masks per grid point") }
            if selectBox != nil && !selectPoints.isEmpty { throw ValidationError("give --select-box or --select-point, not both") }
            if compareFull && !fast { throw ValidationError("--compare-full compares --fast with the full grid: add --fast") }
            if let (flag, _) = [("--fast-stride", fastStride != nil), ("--fast-cover-logit", fastCoverLogit != nil),
                                ("--fast-confident-iou", fastConfidentIou != nil)].first(where: \.1), !fast {
                throw ValidationError("\(flag) tunes --fast: add --fast")
            }
            if maskOut != nil && selectBox == nil && selectPoints.isEmpty {
                throw ValidationError("--mask-out with --everything writes the selected mask: add --select-box or --select-point")
            }
            do { try generatorOptions.validate() } catch let e as AutomaticMaskGeneratorError {
                if case .invalidOptions(let why) = e { throw ValidationError(why) }
            }
        } else {
            if let (flag, _) = everythingOnly.first(where: \.1) {
                throw ValidationError("\(flag) needs --everything")
            }
            if points.isEmpty && box == nil {
                throw ValidationError("give at least one prompt: --point X,Y[,LABEL] or --box X0,Y0,X1,Y1, or --everything")
            }
        }
        for (flag, path) in [("--checkpoint", checkpoint), ("--image", image)] + (decoderCheckpoint.map { [("--decoder-checkpoint", $0)] } ?? []) {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue else {
                throw ValidationError("\(flag): no such file: \(path)")
            }
        }
        for (flag, path) in [("--out", out), ("--mask-out", maskOut)] {
            if let path, URL(fileURLWithPath: path).pathExtension.lowercased() != "png" {
                throw ValidationError("\(flag): \(path) must be a .png file")
            }
        }
    }

    func run() throws {
        if everything { return try runEverything() }
        let clock = { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
        let picture = try ImageIO.read(URL(fileURLWithPath: image))
        for p in points where p.point.x < 0 || p.point.y < 0 || p.point.x >= Double(picture.width) || p.point.y >= Double(picture.height) {
            throw SegmentError(description: "\(image): --point \(p.point.x),\(p.point.y) is outside the \(picture.width)×\(picture.height) image")
        }
        var t = clock()
        let model = try SAMModel.load(contentsOf: URL(fileURLWithPath: checkpoint),
                                      decoderWeights: decoderCheckpoint.map { URL(fileURLWithPath: $0) })
        let loadSeconds = clock() - t
        print(String(format: "load    %7.3f s  %@ (%@)", loadSeconds, checkpoint, model.encoderConfig.description))

        t = clock()
        let predictor = SAMPredictor(model: model)
        predictor.setImage(picture)
        let encodeSeconds = clock() - t
        print(String(format: "encode  %7.3f s  %@ %d×%d", encodeSeconds, image, picture.width, picture.height))

        t = clock()
        let prediction = try predictor.predict(points: points.map(\.point), box: box?.box, multimaskOutput: multimask)
        let decodeSeconds = clock() - t
        let chosen = prediction.bestIndex(prompt: 0)
        let mask = prediction.mask(prompt: 0, index: chosen)
        let score = prediction.iou(prompt: 0, index: chosen)
        print(String(format: "decode  %7.3f s  (prompt encoder, mask decoder, postprocess)", decodeSeconds))

        try ImageIO.writePNG(Self.overlay(picture, mask: mask, points: points.map(\.point), box: box?.box),
                             to: URL(fileURLWithPath: out))
        if let maskOut { try ImageIO.writePNG(mask.greyImage, to: URL(fileURLWithPath: maskOut)) }

        let bbox = mask.boundingBox.map { [$0.x0, $0.y0, $0.x1, $0.y1] }
        let bboxText = bbox.map { "[\($0.map(String.init).joined(separator: ", "))]" } ?? "none"
        print(String(format: "mask    score %.4f, area %d px (%.1f%%), bbox %@", score, mask.area,
                     100 * Double(mask.area) / Double(picture.width * picture.height), bboxText)
              + (multimask ? " (best of \(prediction.masksPerPrompt))" : ""))
        print("wrote   \(out)" + (maskOut.map { ", \($0)" } ?? "") + (json.map { ", \($0)" } ?? ""))

        if let json {
            var candidates: [[String: Any]] = []
            for k in 0..<prediction.masksPerPrompt {
                let m = prediction.mask(prompt: 0, index: k)
                candidates.append(["score": Double(prediction.iou(prompt: 0, index: k)), "area": m.area,
                                   "bbox": m.boundingBox.map { [$0.x0, $0.y0, $0.x1, $0.y1] } as Any? ?? NSNull()])
            }
            var prompts: [String: Any] = ["points": points.map { [$0.point.x, $0.point.y, Double($0.point.label)] }]
            prompts["box"] = box.map { [$0.box.x0, $0.box.y0, $0.box.x1, $0.box.y1] } as Any? ?? NSNull()
            let object: [String: Any] = [
                "image": image, "checkpoint": checkpoint, "encoder": model.encoderConfig.description,
                "width": picture.width, "height": picture.height, "multimask": multimask,
                "prompts": prompts, "chosen": chosen, "score": Double(score), "area": mask.area,
                "bbox": bbox as Any? ?? NSNull(), "candidates": candidates,
                "seconds": ["load": loadSeconds, "encode": encodeSeconds, "decode": decodeSeconds],
            ]
            let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
            try AtomicFile.write(data + Data("\n".utf8), to: URL(fileURLWithPath: json))
        }
    }

    /// The image with the mask tinted magenta (50%), its outline, the box (yellow) and the points
    /// (green foreground, red background, white rims) drawn on it.
    static func overlay(_ image: RGBImage, mask: BinaryMask, points: [PromptPoint], box: PromptBox?) -> RGBImage {
        var out = image
        let W = image.width, H = image.height
        func set(_ x: Int, _ y: Int, _ c: (UInt8, UInt8, UInt8)) {
            guard x >= 0, y >= 0, x < W, y < H else { return }
            let i = 3 * (y * W + x)
            out.pixels[i] = c.0; out.pixels[i + 1] = c.1; out.pixels[i + 2] = c.2
        }
        let tint: (Float, Float, Float) = (255, 0, 200)
        for y in 0..<H {
            for x in 0..<W where mask.pixels[y * W + x] {
                let i = 3 * (y * W + x)
                let edge = x == 0 || y == 0 || x == W - 1 || y == H - 1 || !mask.pixels[y * W + x - 1]
                    || !mask.pixels[y * W + x + 1] || !mask.pixels[(y - 1) * W + x] || !mask.pixels[(y + 1) * W + x]
                if edge {
                    set(x, y, (255, 255, 255))
                } else {
                    out.pixels[i] = UInt8(0.5 * Float(image.pixels[i]) + 0.5 * tint.0)
                    out.pixels[i + 1] = UInt8(0.5 * Float(image.pixels[i + 1]) + 0.5 * tint.1)
                    out.pixels[i + 2] = UInt8(0.5 * Float(image.pixels[i + 2]) + 0.5 * tint.2)
                }
            }
        }
        let thickness = max(2, min(W, H) / 250)
        if let b = box {
            let x0 = Int(b.x0.rounded()), y0 = Int(b.y0.rounded()), x1 = Int(b.x1.rounded()), y1 = Int(b.y1.rounded())
            for t in 0..<thickness {
                for x in x0...max(x0, x1) { set(x, y0 + t, (255, 215, 0)); set(x, y1 - t, (255, 215, 0)) }
                for y in y0...max(y0, y1) { set(x0 + t, y, (255, 215, 0)); set(x1 - t, y, (255, 215, 0)) }
            }
        }
        let radius = max(5, min(W, H) / 60)
        for p in points {
            let cx = Int(p.x.rounded()), cy = Int(p.y.rounded())
            let color: (UInt8, UInt8, UInt8) = p.label == 1 ? (0, 200, 0) : (220, 0, 0)
            for dy in -radius...radius {
                for dx in -radius...radius {
                    let d2 = dx * dx + dy * dy
                    if d2 <= (radius - 1) * (radius - 1) { set(cx + dx, cy + dy, color) } else if d2 <= radius * radius { set(cx + dx, cy + dy, (255, 255, 255)) }
                }
            }
        }
        return out
    }
}

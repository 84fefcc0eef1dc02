import ArgumentParser
import Foundation
import ImageCodecs
import SegmentAnything
import Tensor

/// `samdistill segment everything`: SAM's automatic mask generator, a fast mode that decodes a
/// budget of the grid, FastSAM-style selection among the generated masks.
struct SegmentEverything: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "everything",
        abstract: "Segment everything in an image: SAM's automatic mask generator.",
        discussion: """
            A grid of point prompts (--points-per-side², decoded in batches, three masks each), \
            masks kept by predicted IoU and stability score, duplicates removed by box NMS, \
            optionally on crops (--crop-n-layers) and with small holes and islands removed \
            (--min-mask-region-area). Defaults are SAM's: 32 points per side, the full grid. \
            --fast decodes 28% of the grid (--fast-budget) in under a third of the time: a coarse \
            grid (every 8th point per side) first, then, 64 at a time, the grid points whose \
            image embedding differs most from every decoded point's (points inside a confident \
            mask count as nearer); its overlay marks each decoded prompt with a dot and --json \
            lists them (decoded_points). --json writes every mask as SAM's record \
            (segmentation as uncompressed column-major RLE, area, bbox XYWH, predicted_iou, \
            stability_score, point_coords, crop_box); the overlay colours every mask. \
            --select-box / --select-point pick among the masks FastSAM-style: the mask with the \
            highest IoU with the box, or the union of the masks hit by foreground points minus \
            those hit by background points (--mask-out writes the selection).

            Example: samdistill segment everything --checkpoint weights/mobile_sam.pt \
            --image photo.jpg --fast --out everything.png --json masks.json
            """)

    @OptionGroup var io: SegmentArguments

    @OptionGroup(title: "Mask generator") var generator: MaskGeneratorArguments

    @Option(help: "Prompts decoded per batch (default 64).")
    var pointsPerBatch: Int?

    @Option(help: "Crop layers after the whole image, layer i with (2^i)² crops (default 0).")
    var cropNLayers: Int?

    @Option(help: "Fill holes and remove islands smaller than this many pixels (default 0: off).")
    var minMaskRegionArea: Int?

    @Option(help: "--fast: the fraction of the grid's points decoded (default 0.28; the time is about this fraction of the full grid's plus the encoder's).")
    var fastBudget: Double?

    @Option(help: "--fast: the coarse grid decoded first takes every Nth grid point per side (default 8).")
    var fastStride: Int?

    @Option(help: "--fast: a grid point counts as covered (decoded later) where a confident mask's logit exceeds this (default 8.5; 0: anywhere inside the mask).")
    var fastCoverLogit: Float?

    @Option(help: "--fast: masks with a predicted IoU of at least this are confident (default 0.88).")
    var fastConfidentIou: Double?

    @Flag(help: "--fast: also run the full grid and print the speedup and the mask agreement.")
    var compareFull = false

    @Option(help: ArgumentHelp("Select the mask with the highest IoU with this box.", valueName: "x0,y0,x1,y1"))
    var selectBox: BoxArgument?

    @Option(name: .customLong("select-point"), parsing: .singleValue,
            help: ArgumentHelp("Select the masks hit by this point (label 1 adds, 0 removes). Repeatable.",
                               valueName: "x,y[,label]"))
    var selectPoints: [PointArgument] = []

    @OptionGroup var runtime: RuntimeOptions

    /// True when the fast mode runs.
    var fast: Bool { generator.grid == .fast }

    /// The automatic mask generator's options from the flags (SAM's defaults where not given).
    var generatorOptions: AutomaticMaskGeneratorOptions {
        var o = AutomaticMaskGeneratorOptions()
        generator.apply(to: &o, fastByDefault: false)
        if let v = pointsPerBatch { o.pointsPerBatch = v }
        if let v = cropNLayers { o.cropNLayers = v }
        if let v = minMaskRegionArea { o.minMaskRegionArea = v }
        if o.fastMode != nil {
            if let v = fastBudget { o.fastMode!.budget = v }
            if let v = fastStride { o.fastMode!.stride = v }
            if let v = fastCoverLogit { o.fastMode!.coverLogit = v }
            if let v = fastConfidentIou { o.fastMode!.confidentIoU = v }
        }
        return o
    }

    func validate() throws {
        if selectBox != nil && !selectPoints.isEmpty { throw ValidationError("give --select-box or --select-point, not both") }
        if compareFull && !fast { throw ValidationError("--compare-full compares --fast with the full grid: add --fast") }
        if let (flag, _) = [("--fast-budget", fastBudget != nil), ("--fast-stride", fastStride != nil), ("--fast-cover-logit", fastCoverLogit != nil),
                            ("--fast-confident-iou", fastConfidentIou != nil)].first(where: \.1), !fast {
            throw ValidationError("\(flag) tunes --fast: add --fast")
        }
        if io.maskOut != nil && selectBox == nil && selectPoints.isEmpty {
            throw ValidationError("--mask-out writes the selected mask: add --select-box or --select-point")
        }
        do { try generatorOptions.validate() } catch let e as AutomaticMaskGeneratorError {
            if case .invalidOptions(let why) = e { throw ValidationError(why) }
        }
    }

    func run() throws {
        let clock = { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
        let picture = try io.readImage()
        let selectionPoints = selectPoints.map(\.point)
        for p in selectionPoints where p.x < 0 || p.y < 0 || p.x >= Double(picture.width) || p.y >= Double(picture.height) {
            throw SegmentError(description: "\(io.image): --select-point \(p.x),\(p.y) is outside the \(picture.width)×\(picture.height) image")
        }
        let (model, loadSeconds) = try io.loadModel()
        var t = clock()

        let options = generatorOptions
        let predictor = SAMPredictor(model: model)
        t = clock()
        let result = try AutomaticMaskGenerator(predictor: predictor, options: options).generate(picture)
        let generateSeconds = clock() - t
        print(String(format: "encode  %7.3f s  %@ %d×%d, %d crop(s)", result.encodeSeconds, io.image, picture.width, picture.height, result.encoderRuns))
        print(String(format: "decode  %7.3f s  %d of %d grid prompts%@", result.decodeSeconds, result.decodedPrompts, result.gridPoints,
                     fast ? " (fast mode)" : ""))
        print(String(format: "masks   %d in %.3f s", result.masks.count, generateSeconds))

        var comparison: [String: Any]?
        if compareFull {
            var fullOptions = options
            fullOptions.fastMode = nil
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
                throw SegmentError(description: "\(io.image): no masks were generated, so there is nothing to select")
            }
            print("select  masks \(selection.indices)" + (selection.removed.isEmpty ? "" : " minus \(selection.removed)")
                  + ", area \(selection.mask.area) px" + (selection.iou.map { String(format: ", box IoU %.4f", $0) } ?? ""))
        }

        let overlayImage: RGBImage
        if let selection {
            overlayImage = SegmentPrompt.overlay(picture, mask: selection.mask, points: selectionPoints, box: selectBox?.box)
        } else {
            var tinted = MaskOverlay.tint(picture, masks: result.masks.map(\.mask))
            if fast {
                // Where the fast mode spent its budget: a dot per decoded prompt.
                MaskOverlay.draw(points: result.decodedPoints.map { PromptPoint(x: $0.x, y: $0.y, label: 1) }, box: nil, on: &tinted,
                                 radius: max(2, Double(min(picture.width, picture.height)) / 200), thickness: 1, boxColour: (0, 0, 0))
            }
            overlayImage = tinted
        }
        try ImageIO.writePNG(overlayImage, to: URL(fileURLWithPath: io.out))
        if let maskOut = io.maskOut, let selection { try ImageIO.writePNG(selection.mask.greyImage, to: URL(fileURLWithPath: maskOut)) }
        print("wrote   \(io.out)" + (io.maskOut.map { ", \($0)" } ?? "") + (io.json.map { ", \($0)" } ?? ""))

        if let json = io.json {
            var object: [String: Any] = [
                "image": io.image, "checkpoint": io.checkpoint, "encoder": model.encoderConfig.description,
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
            if let h = options.fastMode {
                object["fast"] = ["budget": h.budget, "stride": h.stride, "cover_logit": Double(h.coverLogit), "confident_iou": h.confidentIoU]
                object["decoded_points"] = result.decodedPoints.map { [$0.x, $0.y] }
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
}

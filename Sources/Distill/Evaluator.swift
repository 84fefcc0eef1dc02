import Foundation
import ImageCodecs
import Layers
import SegmentAnything
import Tensor

// Evaluation: mIoU between the masks that ONE prompt encoder + mask decoder (the teacher
// checkpoint's) produces from the student's embedding and from the teacher's, for the same
// prompts. The teacher's masks are the reference; no ground truth is involved.
//
// Prompt protocols (every random draw from SeededRandom, seeded by (seed, image name, protocol),
// so a run is reproducible and adding a protocol or an image changes no other prompt):
// - seed masks: N points uniform over the image frame; for each, the teacher's mask for that
//   point (multimask output, the mask with the highest predicted IoU: SAM's ambiguity-aware
//   choice). Empty masks are redrawn (up to 4 rounds); what stays empty is dropped.
// - `point`: one point drawn uniformly among the pixels of a seed mask: a foreground point of
//   an object the teacher segments.
// - `two-point`: that point plus a second foreground point of the same seed mask at
//   `pointDistance` pixels from it (MobileSAM's protocol; default 200 px, within their 100–500
//   px range): 36 directions from a random start angle, the first that lands inside the mask;
//   if none does, the mask pixel whose distance to the first point is closest to the distance.
// - `box`: the bounding box of a seed mask (the teacher's mask for a random point).
// - `grid`: single points at the centres of an n×n grid over the image frame, n = round(√N).
// N = `pointsPerImage`, per protocol and image. The image frame is the original image for
// `--images`, the cached (resized, possibly augmented) view for `--cache` (its valid region).
//
// Metrics per prompt: single-mask output (default): IoU(student mask, teacher mask). With
// multimask: `top` = IoU(student's mask with the highest predicted IoU, teacher's likewise),
// `best3` = max over the student's three masks of IoU(student mask, teacher's top mask).
// Overall mIoU = mean over all prompts; its 95% interval is a percentile bootstrap over IMAGES
// (prompts of one image are correlated), seeded.

/// Evaluation cannot run on its inputs: the file (or role) at fault and why.
public struct EvaluationError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let reason: String
    public init(file: String, reason: String) { self.file = file; self.reason = reason }
    public var description: String { "\(file): \(reason)" }
}

/// A prompt protocol of the evaluation.
public enum PromptProtocol: String, CaseIterable, Codable, Sendable {
    case point
    case twoPoint = "two-point"
    case box
    case grid
}

/// Evaluation settings.
public struct EvaluationOptions: Codable, Sendable, Equatable {
    public var prompts: [PromptProtocol] = [.point, .box]
    /// N: prompts per protocol per image (grid: round(√N)² points).
    public var pointsPerImage = 8
    public var seed: UInt64 = 0
    /// Three masks per prompt: report `top` and `best3` instead of `single`.
    public var multimask = false
    /// Distance in pixels of the image frame between the two points of `two-point`.
    public var pointDistance: Double = 200
    /// Bootstrap resamples for the 95% intervals.
    public var bootstrapSamples = 1000
    /// Prompts per decoder call.
    public var decoderBatch = 8
    public init() {}
}

/// One image to evaluate: both embeddings and the frame the masks are compared in.
public struct EvaluationImage: Sendable {
    public var name: String
    /// teacherEmbedding, studentEmbedding: (1, 256, g, g) or (256, g, g)
    public var teacherEmbedding: Tensor
    public var studentEmbedding: Tensor
    /// The frame (mask size) and the resized image's size inside the S×S input.
    public var originalSize: ImageSize
    public var inputSize: ImageSize
    /// The photo in the frame (originalSize), for the visual report; nil when none is kept.
    public var photo: RGBImage?

    public init(name: String, teacherEmbedding: Tensor, studentEmbedding: Tensor, originalSize: ImageSize, inputSize: ImageSize,
                photo: RGBImage? = nil) {
        self.name = name; self.teacherEmbedding = teacherEmbedding; self.studentEmbedding = studentEmbedding
        self.originalSize = originalSize; self.inputSize = inputSize; self.photo = photo
    }
}

/// The IoUs of one image: `ious[protocol][metric]` = one IoU per prompt.
public struct ImageEvaluation: Codable, Sendable {
    public var name: String
    public var ious: [String: [String: [Double]]]
    public init(name: String, ious: [String: [String: [Double]]]) { self.name = name; self.ious = ious }
}

/// What `samdistill eval` reports.
public struct EvaluationReport: Codable, Sendable {
    /// One image × protocol × metric.
    public struct Row: Codable, Sendable, Equatable {
        public var image: String
        public var prompt: String
        public var metric: String
        public var prompts: Int
        public var miou: Double
        /// Each prompt's IoU, in prompt order (absent in reports written before it existed): what
        /// the mean hides, e.g. whether errors are near-misses or a different part chosen.
        public var ious: [Double]? = nil
    }

    /// One protocol × metric over every image.
    public struct Summary: Codable, Sendable, Equatable {
        public var prompt: String
        public var metric: String
        public var images: Int
        public var prompts: Int
        public var miou: Double
        public var ciLow: Double
        public var ciHigh: Double
    }

    public var student: String
    public var teacher: String
    public var data: String
    public var options: EvaluationOptions
    public var rows: [Row]
    public var summary: [Summary]
    /// Seconds of student encoder forwards (all images), of teacher forwards (0 with a cache).
    public var studentSeconds: Double
    public var teacherSeconds: Double
    /// Box-prompt mIoU against COCO ground truth (`--annotations`), if evaluated.
    public var groundTruth: GroundTruthReport? = nil

    /// The metric names of a mode: ["single"], or ["top", "best3"] with multimask.
    public static func metrics(multimask: Bool) -> [String] { multimask ? ["top", "best3"] : ["single"] }

    /// Rows and summaries from per-image IoUs; bootstrap over images, seeded with `options.seed`.
    public init(student: String, teacher: String, data: String, options: EvaluationOptions,
                images: [ImageEvaluation], studentSeconds: Double = 0, teacherSeconds: Double = 0) {
        self.student = student; self.teacher = teacher; self.data = data; self.options = options
        self.studentSeconds = studentSeconds; self.teacherSeconds = teacherSeconds
        var rows: [Row] = [], summary: [Summary] = []
        for p in options.prompts {
            for m in Self.metrics(multimask: options.multimask) {
                var perImage: [(sum: Double, count: Int)] = []
                for img in images {
                    let v = img.ious[p.rawValue]?[m] ?? []
                    perImage.append((v.reduce(0, +), v.count))
                    if !v.isEmpty {
                        rows.append(Row(image: img.name, prompt: p.rawValue, metric: m, prompts: v.count, miou: v.reduce(0, +) / Double(v.count),
                                        ious: v))
                    }
                }
                let used = perImage.filter { $0.count > 0 }
                let total = used.reduce(0) { $0 + $1.count }
                guard total > 0 else { continue }
                let mean = used.reduce(0) { $0 + $1.sum } / Double(total)
                let (lo, hi) = Self.bootstrapInterval(used, samples: options.bootstrapSamples,
                                                      seed: options.seed ^ FNV1a.hash(p.rawValue + "/" + m))
                summary.append(Summary(prompt: p.rawValue, metric: m, images: used.count, prompts: total, miou: mean, ciLow: lo, ciHigh: hi))
            }
        }
        self.rows = rows
        self.summary = summary
    }

    /// 95% percentile bootstrap of Σsum/Σcount over clusters (images) drawn with replacement.
    public static func bootstrapInterval(_ clusters: [(sum: Double, count: Int)], samples: Int, seed: UInt64) -> (Double, Double) {
        let n = clusters.count
        guard n > 0, samples > 0 else { return (.nan, .nan) }
        var rng = SeededRandom(seed: seed)
        var means: [Double] = []
        means.reserveCapacity(samples)
        for _ in 0..<samples {
            var s = 0.0, c = 0
            for _ in 0..<n {
                let k = clusters[Int(rng.next() % UInt64(n))]
                s += k.sum; c += k.count
            }
            means.append(s / Double(c))
        }
        means.sort()
        func quantile(_ q: Double) -> Double {
            let pos = q * Double(samples - 1), i = Int(pos), f = pos - Double(i)
            return i + 1 < samples ? means[i] * (1 - f) + means[i + 1] * f : means[i]
        }
        return (quantile(0.025), quantile(0.975))
    }

    /// The terminal table: per-image rows, then the overall means with their intervals.
    public func table() -> String {
        var s = "student \(student)\nteacher \(teacher)\ndata    \(data)\n\n"
        if let groundTruth { s += groundTruth.table() + (summary.isEmpty ? "" : "\n") }
        let w = max(12, rows.map(\.image.count).max() ?? 0)
        func pad(_ t: String, _ n: Int) -> String { t.count >= n ? t : t + String(repeating: " ", count: n - t.count) }
        if !summary.isEmpty {
            s += pad("image", w) + "  " + pad("prompt", 9) + "  " + pad("metric", 6) + "  prompts    mIoU\n"
            for r in rows {
                s += pad(r.image, w) + "  " + pad(r.prompt, 9) + "  " + pad(r.metric, 6) + String(format: "  %7d  %6.4f\n", r.prompts, r.miou)
            }
            s += "\n" + pad("overall", 9) + "  " + pad("metric", 6) + "  images  prompts    mIoU  95% CI (bootstrap over images)\n"
            for m in summary {
                s += pad(m.prompt, 9) + "  " + pad(m.metric, 6) + String(format: "  %6d  %7d  %6.4f  [%.4f, %.4f]\n", m.images, m.prompts, m.miou, m.ciLow, m.ciHigh)
            }
        }
        s += String(format: "\nstudent forward %.2f s, teacher forward %.2f s\n", studentSeconds, teacherSeconds)
        return s
    }

    /// The same as Markdown tables.
    public func markdown() -> String {
        var s = "# mIoU, student vs teacher masks\n\n"
        s += "- student: `\(student)`\n- teacher (prompt encoder + mask decoder, reference masks): `\(teacher)`\n- data: `\(data)`\n"
        s += "- prompts: \(options.prompts.map(\.rawValue).joined(separator: ", ")); \(options.pointsPerImage) per protocol per image; "
        s += "seed \(options.seed); \(options.multimask ? "multimask (top = highest predicted IoU, best3 = best of 3)" : "single-mask output"); "
        s += "two-point distance \(options.pointDistance) px; 95% intervals: percentile bootstrap over images, \(options.bootstrapSamples) resamples\n\n"
        if let groundTruth { s += groundTruth.markdown() + "\n" }
        // Ground truth only (`--prompts none`): no protocol sections.
        if summary.isEmpty && rows.isEmpty && groundTruth != nil { return s }
        s += "## Overall\n\n| prompt | metric | images | prompts | mIoU | 95% CI |\n|---|---|---:|---:|---:|---|\n"
        for m in summary {
            s += "| \(m.prompt) | \(m.metric) | \(m.images) | \(m.prompts) | \(String(format: "%.4f", m.miou)) | [\(String(format: "%.4f", m.ciLow)), \(String(format: "%.4f", m.ciHigh))] |\n"
        }
        s += "\n## Per image\n\n| image | prompt | metric | prompts | mIoU |\n|---|---|---|---:|---:|\n"
        for r in rows {
            s += "| \(r.image) | \(r.prompt) | \(r.metric) | \(r.prompts) | \(String(format: "%.4f", r.miou)) |\n"
        }
        return s
    }

    /// Pretty-printed JSON (snake_case keys).
    public func json() throws -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        e.keyEncodingStrategy = .convertToSnakeCase
        return try e.encode(self)
    }

    /// Reads what `json()` wrote.
    public static func read(json data: Data) throws -> EvaluationReport {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        return try d.decode(EvaluationReport.self, from: data)
    }
}

/// Compares student and teacher masks through the teacher's prompt encoder and mask decoder.
public final class Evaluator {
    /// The model whose prompt encoder and mask decoder decode both embeddings (its image encoder
    /// is used only by `teacherEmbedding(_:)`).
    public let model: SAMModel
    public let options: EvaluationOptions
    private let teacher: SAMPredictor
    private let student: SAMPredictor
    /// Keep the teacher's side of each (image, protocol) evaluated — its prompts and reference
    /// masks, keyed by image name, protocol and a digest of the teacher embedding — so that a
    /// second student evaluated on the same images (before/after training) decodes only the
    /// student. Off by default: it holds every reference mask (~1 MB per prompt at 1024²).
    public var remembersTeacherMasks = false
    private var teacherMemo: [String: (prompts: [SAMPrompt], targets: [BinaryMask])] = [:]
    /// Keep what the visual report shows (`VisualReport`): per evaluated prompt a `PromptSample`
    /// (masks at thumbnail size, run-length encoded) and per image its photo thumbnail. Off by
    /// default for memory, like `remembersTeacherMasks`; the caller empties them between students.
    public var keepsReportSamples = false
    public var reportSamples: [PromptSample] = []
    public var reportPhotos: [String: RGBImage] = [:]

    public init(model: SAMModel, options: EvaluationOptions) {
        precondition(options.pointsPerImage > 0, "Evaluator: pointsPerImage must be positive, got \(options.pointsPerImage)")
        precondition(options.pointDistance > 0, "Evaluator: pointDistance must be positive, got \(options.pointDistance)")
        self.model = model
        self.options = options
        teacher = SAMPredictor(model: model)
        student = SAMPredictor(model: model)
    }

    /// The prompts of one protocol for the image currently set on the teacher predictor.
    func prompts(_ p: PromptProtocol, name: String, frame: ImageSize) throws -> [SAMPrompt] {
        var rng = SeededRandom(seed: options.seed ^ FNV1a.hash(name + "|" + p.rawValue))
        let N = options.pointsPerImage, W = frame.width, H = frame.height
        if p == .grid {
            let n = max(1, Int(Double(N).squareRoot().rounded()))
            var out: [SAMPrompt] = []
            for j in 0..<n {
                for i in 0..<n {
                    let x = Double(Int((Double(i) + 0.5) * Double(W) / Double(n))), y = Double(Int((Double(j) + 0.5) * Double(H) / Double(n)))
                    out.append(SAMPrompt(points: [PromptPoint(x: x, y: y)]))
                }
            }
            return out
        }
        let masks = try seedMasks(N, frame: frame, rng: &rng)
        var out: [SAMPrompt] = []
        for m in masks {
            switch p {
            case .point:
                out.append(SAMPrompt(points: [Self.randomPixel(in: m, rng: &rng)]))
            case .twoPoint:
                let a = Self.randomPixel(in: m, rng: &rng)
                out.append(SAMPrompt(points: [a, Self.pointAtDistance(options.pointDistance, from: a, in: m, rng: &rng)]))
            case .box:
                let b = m.boundingBox!
                out.append(SAMPrompt(box: PromptBox(x0: Double(b.x0), y0: Double(b.y0), x1: Double(b.x1), y1: Double(b.y1))))
            case .grid:
                break
            }
        }
        return out
    }

    /// Up to `n` non-empty teacher masks for uniform random points (see the file's header).
    func seedMasks(_ n: Int, frame: ImageSize, rng: inout SeededRandom) throws -> [BinaryMask] {
        var masks: [BinaryMask] = []
        for _ in 0..<4 where masks.count < n {
            let want = n - masks.count
            let points = (0..<want).map { _ in
                SAMPrompt(points: [PromptPoint(x: Double(Int(rng.next() % UInt64(frame.width))),
                                               y: Double(Int(rng.next() % UInt64(frame.height))))])
            }
            for start in stride(from: 0, to: points.count, by: options.decoderBatch) {
                let chunk = Array(points[start..<min(points.count, start + options.decoderBatch)])
                let r = try teacher.predict(chunk, multimaskOutput: true)
                for b in 0..<chunk.count {
                    let m = r.mask(prompt: b, index: r.bestIndex(prompt: b))
                    if m.area > 0 { masks.append(m) }
                }
            }
        }
        return masks
    }

    /// FNV-1a over a tensor's shape and bits: tells embeddings apart for `teacherMemo`.
    static func digest(_ t: Tensor) -> UInt64 {
        var h = FNV1a()
        for d in t.shape { h.combine(UInt64(d)) }
        for v in t.data { h.combine(UInt64(v.bitPattern)) }
        return h.value
    }

    /// A pixel drawn uniformly among the mask's pixels (mask non-empty).
    static func randomPixel(in m: BinaryMask, rng: inout SeededRandom) -> PromptPoint {
        var k = Int(rng.next() % UInt64(m.area))
        for (i, on) in m.pixels.enumerated() where on {
            if k == 0 { return PromptPoint(x: Double(i % m.width), y: Double(i / m.width)) }
            k -= 1
        }
        fatalError("Evaluator.randomPixel: empty mask")
    }

    /// A mask pixel at `distance` from `a` (see the file's header).
    static func pointAtDistance(_ distance: Double, from a: PromptPoint, in m: BinaryMask, rng: inout SeededRandom) -> PromptPoint {
        let start = Double(rng.uniform()) * 2 * Double.pi
        for i in 0..<36 {
            let t = start + Double(i) * 2 * Double.pi / 36
            let x = (a.x + distance * cos(t)).rounded(), y = (a.y + distance * sin(t)).rounded()
            if x >= 0, y >= 0, Int(x) < m.width, Int(y) < m.height, m.pixels[Int(y) * m.width + Int(x)] {
                return PromptPoint(x: x, y: y)
            }
        }
        var best = a, gap = Double.infinity
        for (i, on) in m.pixels.enumerated() where on {
            let x = Double(i % m.width), y = Double(i / m.width)
            let g = abs(((x - a.x) * (x - a.x) + (y - a.y) * (y - a.y)).squareRoot() - distance)
            if g < gap { gap = g; best = PromptPoint(x: x, y: y) }
        }
        return best
    }

    /// Every protocol's IoUs for one image.
    public func evaluate(_ image: EvaluationImage) throws -> ImageEvaluation {
        try teacher.setEmbedding(image.teacherEmbedding, originalSize: image.originalSize, inputSize: image.inputSize)
        try student.setEmbedding(image.studentEmbedding, originalSize: image.originalSize, inputSize: image.inputSize)
        defer { teacher.resetImage(); student.resetImage() }
        var ious: [String: [String: [Double]]] = [:]
        let embeddingDigest = remembersTeacherMasks ? Self.digest(image.teacherEmbedding) : 0
        let thumbnail = VisualReport.thumbnailSize(for: image.originalSize)
        if keepsReportSamples, let photo = image.photo {
            precondition(photo.size == image.originalSize, "Evaluator: the photo of \(image.name) is \(photo.size), its frame \(image.originalSize)")
            reportPhotos[image.name] = VisualReport.downscale(photo, to: thumbnail)
        }
        for p in options.prompts {
            let key = "\(image.name)|\(p.rawValue)|\(image.originalSize.width)x\(image.originalSize.height)|\(embeddingDigest)"
            let memo = teacherMemo[key]
            let prompts = try memo?.prompts ?? self.prompts(p, name: image.name, frame: image.originalSize)
            var targets: [BinaryMask] = memo?.targets ?? []
            var single: [Double] = [], top: [Double] = [], best3: [Double] = []
            for start in stride(from: 0, to: prompts.count, by: options.decoderBatch) {
                let chunk = Array(prompts[start..<min(prompts.count, start + options.decoderBatch)])
                if memo == nil {
                    // The teacher's reference: its single mask, or with multimask its highest-predicted-IoU mask.
                    let t = try teacher.predict(chunk, multimaskOutput: options.multimask)
                    for b in 0..<chunk.count { targets.append(t.mask(prompt: b, index: options.multimask ? t.bestIndex(prompt: b) : 0)) }
                }
                let s = try student.predict(chunk, multimaskOutput: options.multimask)
                for b in 0..<chunk.count {
                    let target = targets[start + b]
                    // The student's mask compared: its single one, or with multimask its top one.
                    let shown = s.mask(prompt: b, index: options.multimask ? s.bestIndex(prompt: b) : 0)
                    let iou = shown.iou(target)
                    if options.multimask {
                        top.append(iou)
                        best3.append((0..<s.masksPerPrompt).map { s.mask(prompt: b, index: $0).iou(target) }.max()!)
                    } else {
                        single.append(iou)
                    }
                    if keepsReportSamples {
                        reportSamples.append(PromptSample(image: image.name, frame: image.originalSize, promptType: p, prompt: chunk[b],
                                                          iou: iou, teacherMask: RunLengthMask(target, size: thumbnail),
                                                          studentMask: RunLengthMask(shown, size: thumbnail)))
                    }
                }
            }
            if memo == nil && remembersTeacherMasks { teacherMemo[key] = (prompts, targets) }
            ious[p.rawValue] = options.multimask ? ["top": top, "best3": best3] : ["single": single]
        }
        return ImageEvaluation(name: image.name, ious: ious)
    }

    // MARK: Data sources

    /// Evaluates the student on the complete rows of a feature cache (optionally one split, at
    /// most `maxImages`): teacher embeddings from the cache (no teacher forward), student
    /// embeddings from the cached images. Frame: each row's valid (resized) region.
    /// `rowFilter`: keeps part of the selected rows (a rank's share, `DataParallel.shard`).
    public func evaluateCache(_ cache: CacheReader, split: CacheSplit?, maxImages: Int? = nil,
                              student encode: (Tensor) -> Tensor, studentImageSize: Int,
                              rowFilter: ([Int]) -> [Int] = { $0 }) throws
        -> (images: [ImageEvaluation], studentSeconds: Double) {
        guard studentImageSize == cache.imageSize else {
            throw EvaluationError(file: cache.url.path, reason: "the cache holds \(cache.imageSize)×\(cache.imageSize) images, the student takes \(studentImageSize)")
        }
        guard cache.imageSize == model.imageSize else {
            throw EvaluationError(file: cache.url.path, reason: "the cache holds \(cache.imageSize)×\(cache.imageSize) images, the teacher's decoder expects \(model.imageSize)")
        }
        var rows = cache.rows(split: split)
        if let maxImages { rows = Array(rows.prefix(maxImages)) }
        rows = rowFilter(rows)
        var out: [ImageEvaluation] = [], seconds = 0.0
        for r in rows {
            let b = try cache.batch(rows: [r])
            let t0 = Date()
            let e = encode(b.images)
            seconds += Date().timeIntervalSince(t0)
            let name = try cache.source(of: r) + "#\(try cache.row(r).view)"
            let photo = keepsReportSamples ? Self.photo(b.images, valid: b.validSizes[0], mean: cache.pixelMean, std: cache.pixelStd) : nil
            out.append(try evaluate(EvaluationImage(name: name, teacherEmbedding: b.embeddings, studentEmbedding: e,
                                                    originalSize: b.validSizes[0], inputSize: b.validSizes[0], photo: photo)))
        }
        return (out, seconds)
    }

    /// Evaluates the student on image files: both encoders run on SAM's preprocessing of each
    /// image (the teacher through `model`'s encoder). Frame: the original image.
    public func evaluateImages(_ urls: [URL], names: [String]? = nil, student encode: (Tensor) -> Tensor,
                               studentImageSize: Int) throws -> (images: [ImageEvaluation], studentSeconds: Double, teacherSeconds: Double) {
        guard studentImageSize == model.imageSize else {
            throw EvaluationError(file: "student", reason: "the student takes \(studentImageSize)-pixel inputs, the teacher \(model.imageSize)")
        }
        var out: [ImageEvaluation] = [], ss = 0.0, ts = 0.0
        for (i, u) in urls.enumerated() {
            let photo = try ImageIO.read(u)
            let pre = SAMPreprocessing.preprocess(photo, size: model.imageSize)
            var t0 = Date()
            let te = model.encode(pre.input)
            ts += Date().timeIntervalSince(t0)
            t0 = Date()
            let se = encode(pre.input)
            ss += Date().timeIntervalSince(t0)
            out.append(try evaluate(EvaluationImage(name: names?[i] ?? u.lastPathComponent, teacherEmbedding: te, studentEmbedding: se,
                                                    originalSize: pre.originalSize, inputSize: pre.inputSize,
                                                    photo: keepsReportSamples ? photo : nil)))
        }
        return (out, ss, ts)
    }

    /// The 8-bit photo of a cached view: its normalised input (1, 3, S, S) mapped back
    /// (v · std + mean, rounded: exact for the cache's bytes) over the valid region.
    static func photo(_ input: Tensor, valid: ImageSize, mean: [Float], std: [Float]) -> RGBImage {
        let S = input.shape[3], W = valid.width, H = valid.height
        var pixels = [UInt8](repeating: 0, count: W * H * 3)
        for c in 0..<3 {
            for y in 0..<H {
                for x in 0..<W {
                    let v = input.data[(c * S + y) * S + x] * std[c] + mean[c]
                    pixels[(y * W + x) * 3 + c] = UInt8(clamping: Int(v.rounded()))
                }
            }
        }
        return RGBImage(width: W, height: H, pixels: pixels)
    }
}

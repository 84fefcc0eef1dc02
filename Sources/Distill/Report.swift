import Foundation
import ImageCodecs
import SegmentAnything
import Tensor

// The visual report (`samdistill eval --report DIR`; `samdistill run` writes one into its run
// directory): one self-contained HTML page, DIR/index.html, that opens offline — images are
// JPEG data URIs, curves inline SVG, no JavaScript. It shows
// - the mIoU table per prompt type and metric with the evaluator's 95% bootstrap intervals (and
//   the initial student's beside it when a baseline is given);
// - the training curves when a metrics.jsonl is given: loss (the trainer's `LossPlot`) and mIoU
//   (eval records' keys containing "miou", and the initial → final mIoU of a run);
// - per evaluated prompt a panel: the teacher's and the student's mask on the photo (thumbnails
//   `thumbnailWidth` px wide), the prompt drawn and the IoU; the `worst` lowest IoUs first (lowest
//   first), then the `best` highest (highest first); the page says how many of how many.
// Colours: teacher mask blue; on the student's side blue where it agrees with the teacher, red
// where it adds pixels, yellow where it misses them; foreground points green, background points
// red, boxes green outlines.

/// A binary mask as run lengths, row-major, alternating off/on and starting with off (a first
/// run of 0 when pixel 0 is on): the evaluator keeps report masks in this form.
public struct RunLengthMask: Sendable, Equatable {
    public let width: Int
    public let height: Int
    public var runs: [Int32]

    /// `mask` resampled to `size` (nearest pixel centre), run-length encoded.
    public init(_ mask: BinaryMask, size: ImageSize) {
        width = size.width; height = size.height
        var runs: [Int32] = [], current = false, length: Int32 = 0
        for y in 0..<size.height {
            let sy = min(mask.height - 1, (2 * y + 1) * mask.height / (2 * size.height))
            for x in 0..<size.width {
                let sx = min(mask.width - 1, (2 * x + 1) * mask.width / (2 * size.width))
                if mask.pixels[sy * mask.width + sx] != current {
                    runs.append(length); current.toggle(); length = 0
                }
                length += 1
            }
        }
        runs.append(length)
        self.runs = runs
    }

    public var mask: BinaryMask {
        var pixels: [Bool] = []
        pixels.reserveCapacity(width * height)
        for (i, r) in runs.enumerated() { pixels.append(contentsOf: repeatElement(i % 2 == 1, count: Int(r))) }
        return BinaryMask(width: width, height: height, pixels: pixels)
    }
}

/// One evaluated prompt as the visual report shows it.
public struct PromptSample: Sendable {
    public var image: String
    /// The frame the prompt's coordinates are in (the masks are at thumbnail size).
    public var frame: ImageSize
    public var promptType: PromptProtocol
    public var prompt: SAMPrompt
    /// IoU(student mask, teacher mask): the `single` metric, or `top` with multimask.
    public var iou: Double
    public var teacherMask: RunLengthMask
    public var studentMask: RunLengthMask

    public init(image: String, frame: ImageSize, promptType: PromptProtocol, prompt: SAMPrompt, iou: Double,
                teacherMask: RunLengthMask, studentMask: RunLengthMask) {
        self.image = image; self.frame = frame; self.promptType = promptType; self.prompt = prompt; self.iou = iou
        self.teacherMask = teacherMask; self.studentMask = studentMask
    }
}

/// The HTML page described at the top of Report.swift.
public struct VisualReport {
    public static let thumbnailWidth = 320
    public var evaluation: EvaluationReport
    /// The initial student's evaluation (`run`), shown beside the final one.
    public var baseline: EvaluationReport?
    public var samples: [PromptSample]
    /// Photo thumbnails by image name (an image without one gets a grey background).
    public var photos: [String: RGBImage]
    /// The training run's metrics.jsonl, for the curves (nil: no curves).
    public var metrics: URL?
    /// The step of the evaluated student, for the initial → final mIoU points.
    public var finalStep: Int?
    public var worst = 24
    public var best = 4

    public init(evaluation: EvaluationReport, baseline: EvaluationReport? = nil, samples: [PromptSample],
                photos: [String: RGBImage], metrics: URL? = nil, finalStep: Int? = nil) {
        self.evaluation = evaluation; self.baseline = baseline; self.samples = samples; self.photos = photos
        self.metrics = metrics; self.finalStep = finalStep
    }

    /// The thumbnail size of a frame: `thumbnailWidth` wide (or the frame's width if narrower).
    public static func thumbnailSize(for frame: ImageSize) -> ImageSize {
        let w = min(thumbnailWidth, frame.width)
        return ImageSize(height: max(1, Int((Double(frame.height) * Double(w) / Double(frame.width)).rounded())), width: w)
    }

    /// `image` reduced to `size` by averaging the source pixels under each target pixel.
    public static func downscale(_ image: RGBImage, to size: ImageSize) -> RGBImage {
        let W = image.width, H = image.height, w = size.width, h = size.height
        var out = [UInt8](repeating: 0, count: w * h * 3)
        for y in 0..<h {
            let y0 = y * H / h, y1 = max(y0 + 1, (y + 1) * H / h)
            for x in 0..<w {
                let x0 = x * W / w, x1 = max(x0 + 1, (x + 1) * W / w)
                var sum = (0, 0, 0)
                for sy in y0..<y1 {
                    for sx in x0..<x1 {
                        let i = (sy * W + sx) * 3
                        sum.0 += Int(image.pixels[i]); sum.1 += Int(image.pixels[i + 1]); sum.2 += Int(image.pixels[i + 2])
                    }
                }
                let n = (y1 - y0) * (x1 - x0), o = (y * w + x) * 3
                out[o] = UInt8((sum.0 + n / 2) / n); out[o + 1] = UInt8((sum.1 + n / 2) / n); out[o + 2] = UInt8((sum.2 + n / 2) / n)
            }
        }
        return RGBImage(width: w, height: h, pixels: out)
    }

    /// The panels shown: the `worst` lowest IoUs (lowest first), then the `best` highest of the
    /// rest (highest first). Ties keep the evaluation order.
    public func panels() -> (worst: [PromptSample], best: [PromptSample]) {
        let order = samples.indices.sorted { (samples[$0].iou, $0) < (samples[$1].iou, $1) }
        let w = Array(order.prefix(worst))
        let b = Array(order.dropFirst(w.count).suffix(best).reversed())
        return (w.map { samples[$0] }, b.map { samples[$0] })
    }

    /// Writes DIR/index.html atomically (DIR is created); returns its URL.
    @discardableResult
    public func write(to directory: URL) throws -> URL {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let url = directory.appendingPathComponent("index.html")
        try AtomicFile.write(Data(try html().utf8), to: url)
        return url
    }

    public func html() throws -> String {
        let e = evaluation
        var s = """
        <!DOCTYPE html>
        <html lang="en"><head><meta charset="utf-8">
        <title>SAMDistill report: student vs teacher masks</title>
        <style>
        body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
        h1{font-size:22px} h2{font-size:18px;margin-top:28px} .meta{font-size:13px;color:#555}
        table{border-collapse:collapse;margin:8px 0 16px;font-size:14px}
        th,td{border:1px solid #ccc;padding:4px 10px;text-align:right} th{background:#f2f2f2} .l{text-align:left}
        .panels{display:flex;flex-wrap:wrap;gap:14px}
        figure.panel{margin:0;border:1px solid #ddd;padding:6px;background:#fafafa}
        .pair{display:flex;gap:4px} .side{font-size:12px;color:#555} img{display:block}
        figcaption{font-size:13px;margin-top:4px;max-width:650px;overflow-wrap:anywhere}
        .bad{color:#c00;font-weight:bold} .mid{color:#b60;font-weight:bold} .good{color:#080;font-weight:bold}
        .key{display:inline-block;width:12px;height:12px;vertical-align:middle;margin:0 4px 0 12px;border:1px solid #888}
        </style></head><body>
        <h1>Student vs teacher masks</h1>
        <p class="meta">student <code>\(Self.escape(e.student))</code><br>teacher (prompt encoder + mask decoder; its masks are the reference) <code>\(Self.escape(e.teacher))</code><br>
        data <code>\(Self.escape(e.data))</code><br>\(Self.escape(e.options.prompts.map(\.rawValue).joined(separator: ", "))) prompts, \(e.options.pointsPerImage) per type per image, seed \(e.options.seed), \(e.options.multimask ? "multimask (the student's and the teacher's highest-predicted-IoU masks)" : "single-mask output")</p>

        """
        s += summaryTable()
        s += try curves()
        s += try panelSections()
        s += "<h2>Per image</h2>\n<details><summary>\(e.rows.count) rows (image × prompt type × metric)</summary>\n"
        s += "<table class=\"rows\"><tr><th class=\"l\">image</th><th class=\"l\">prompt</th><th class=\"l\">metric</th><th>prompts</th><th>mIoU</th></tr>\n"
        for r in e.rows {
            s += "<tr><td class=\"l\">\(Self.escape(r.image))</td><td class=\"l\">\(r.prompt)</td><td class=\"l\">\(r.metric)</td><td>\(r.prompts)</td><td>\(Self.number(r.miou))</td></tr>\n"
        }
        s += "</table></details>\n</body></html>\n"
        return s
    }

    func summaryTable() -> String {
        let e = evaluation
        var s = "<h2>mIoU</h2>\n<table class=\"miou\"><tr><th class=\"l\">prompt</th><th class=\"l\">metric</th><th>images</th><th>prompts</th>"
        if baseline != nil { s += "<th>initial student</th>" }
        s += "<th>mIoU</th><th>95% interval</th>\(baseline != nil ? "<th>gain</th>" : "")</tr>\n"
        for m in e.summary {
            s += "<tr class=\"summary\"><td class=\"l\">\(m.prompt)</td><td class=\"l\">\(m.metric)</td><td>\(m.images)</td><td>\(m.prompts)</td>"
            let b = baseline?.summary.first { $0.prompt == m.prompt && $0.metric == m.metric }
            if baseline != nil { s += "<td>\(b.map { "\(Self.number($0.miou)) [\(Self.number($0.ciLow)), \(Self.number($0.ciHigh))]" } ?? "—")</td>" }
            s += "<td><b>\(Self.number(m.miou))</b></td><td>[\(Self.number(m.ciLow)), \(Self.number(m.ciHigh))]</td>"
            if baseline != nil { s += "<td>\(b.map { String(format: "%+.4f", m.miou - $0.miou) } ?? "")</td>" }
            s += "</tr>\n"
        }
        s += "</table>\n<p class=\"meta\">mIoU = mean over prompts of IoU(student mask, teacher mask); 95% interval: percentile bootstrap over images, \(e.options.bootstrapSamples) resamples.</p>\n"
        return s
    }

    // MARK: Curves

    func curves() throws -> String {
        var s = "<h2>Training curves</h2>\n"
        guard let metrics else {
            return s + "<p class=\"meta\">No training metrics given (a run's metrics.jsonl): no curves.</p>\n"
        }
        guard let text = try? String(contentsOf: metrics, encoding: .utf8) else {
            throw EvaluationError(file: metrics.path, reason: "cannot read the training metrics (metrics.jsonl)")
        }
        var loss: [(Int, Double)] = [], validation: [(Int, Double)] = [], miou: [String: [(Int, Double)]] = [:], unreadable = 0
        for line in text.split(separator: "\n") {
            guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], let step = o["step"] as? Int else {
                unreadable += 1
                continue
            }
            if let ev = o["eval"] as? [String: Any] {
                if let v = ev["val_mse"] as? Double { validation.append((step, v)) }
                for (k, v) in ev where k.lowercased().contains("miou") { if let v = v as? Double { miou[k, default: []].append((step, v)) } }
            } else if let v = o["loss"] as? Double {
                loss.append((step, v))
            }
        }
        let lastStep = max(finalStep ?? 0, loss.last?.0 ?? 0)
        if let baseline, let finalStep {
            for m in evaluation.summary {
                if let b = baseline.summary.first(where: { $0.prompt == m.prompt && $0.metric == m.metric }) {
                    miou["\(m.prompt) \(m.metric) (initial, final)"] = [(0, b.miou), (finalStep, m.miou)]
                }
            }
        }
        if loss.isEmpty && validation.isEmpty {
            s += "<p class=\"meta\">\(Self.escape(metrics.lastPathComponent)) holds no loss records.</p>\n"
        } else {
            s += "<div class=\"curve\">\(LossPlot.svg(train: loss, eval: validation, totalSteps: lastStep))</div>\n"
        }
        if miou.isEmpty {
            s += "<p class=\"meta\">No held-out mIoU against the step (\(Self.escape(metrics.lastPathComponent)) logs none).</p>\n"
        } else {
            s += "<div class=\"curve\">\(Self.miouPlot(miou, lastStep: lastStep))</div>\n"
        }
        if unreadable > 0 { s += "<p class=\"meta\">\(unreadable) unreadable line(s) of \(Self.escape(metrics.path)) skipped.</p>\n" }
        return s
    }

    /// mIoU series against the step, y from 0 to 1, one colour per series with a legend.
    static func miouPlot(_ series: [String: [(Int, Double)]], lastStep: Int) -> String {
        let width = 720.0, height = 360.0, left = 50.0, right = 230.0, top = 30.0, bottom = 40.0
        let maxStep = Double(max(lastStep, series.values.flatMap { $0.map(\.0) }.max() ?? 1, 1))
        func fx(_ s: Int) -> Double { left + Double(s) / maxStep * (width - left - right) }
        func fy(_ v: Double) -> Double { top + (1 - min(max(v, 0), 1)) * (height - top - bottom) }
        func f(_ v: Double) -> String { String(format: "%.1f", v) }
        let colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
        var out = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" font-family=\"sans-serif\" font-size=\"11\">\n"
        out += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"\(left)\" y=\"18\" font-size=\"13\">held-out mIoU (student vs teacher masks)</text>\n"
        for i in 0...4 {
            let v = Double(i) / 4
            out += "<line x1=\"\(left)\" y1=\"\(f(fy(v)))\" x2=\"\(f(width - right))\" y2=\"\(f(fy(v)))\" stroke=\"#ddd\"/>"
            out += "<text x=\"\(left - 6)\" y=\"\(f(fy(v) + 4))\" text-anchor=\"end\">\(String(format: "%.2f", v))</text>\n"
            let step = Int(Double(i) / 4 * maxStep)
            out += "<text x=\"\(f(fx(step)))\" y=\"\(f(height - bottom + 16))\" text-anchor=\"middle\">\(step)</text>\n"
        }
        out += "<line x1=\"\(left)\" y1=\"\(f(height - bottom))\" x2=\"\(f(width - right))\" y2=\"\(f(height - bottom))\" stroke=\"black\"/>\n"
        for (k, name) in series.keys.sorted().enumerated() {
            let c = colours[k % colours.count], points = series[name]!.sorted { $0.0 < $1.0 }
            out += "<polyline fill=\"none\" stroke=\"\(c)\" stroke-width=\"1.5\" points=\"\(points.map { "\(f(fx($0.0))),\(f(fy($0.1)))" }.joined(separator: " "))\"/>\n"
            for (st, v) in points { out += "<circle cx=\"\(f(fx(st)))\" cy=\"\(f(fy(v)))\" r=\"3\" fill=\"\(c)\"/>" }
            let ly = top + 14 * Double(k) + 10
            out += "\n<rect x=\"\(f(width - right + 12))\" y=\"\(f(ly - 8))\" width=\"10\" height=\"10\" fill=\"\(c)\"/>"
            out += "<text x=\"\(f(width - right + 26))\" y=\"\(f(ly + 1))\">\(escape(name))</text>\n"
        }
        out += "<text x=\"\(f((left + width - right) / 2))\" y=\"\(f(height - 6))\" text-anchor=\"middle\">step</text>\n</svg>"
        return out
    }

    // MARK: Panels

    func panelSections() throws -> String {
        let (w, b) = panels()
        let n = samples.count, images = Set(samples.map(\.image)).count
        var s = "<h2>Worst cases first</h2>\n<p>\(n) prompts evaluated on \(images) image\(images == 1 ? "" : "s"). "
        s += n <= w.count + b.count ? "All \(n) are shown, lowest IoU first.</p>\n"
            : "Shown: the \(w.count) with the lowest IoU (lowest first), then the \(b.count) with the highest (highest first); the other \(n - w.count - b.count) are left out.</p>\n"
        func key(_ c: RGB, _ text: String) -> String {
            "<span class=\"key\" style=\"background:\(String(format: "#%02x%02x%02x", c.0, c.1, c.2))\"></span>\(text)"
        }
        s += "<p class=\"meta\">Left, the teacher's mask: \(key(Self.blue, "its pixels")). Right, the student's against it: \(key(Self.blue, "agreeing"))"
        s += "\(key(Self.red, "extra pixels"))\(key(Self.yellow, "missed pixels")). Prompt: \(key(Self.green, "foreground point or box"))"
        s += "\(key(Self.red, "background point")). Photos \(Self.thumbnailWidth) px wide; IoUs are computed at full resolution.</p>\n"
        s += "<div class=\"panels\" id=\"worst\">\n"
        for p in w { s += try panel(p) }
        s += "</div>\n"
        if !b.isEmpty {
            s += "<h2>Best cases</h2>\n<div class=\"panels\" id=\"best\">\n"
            for p in b { s += try panel(p) }
            s += "</div>\n"
        }
        return s
    }

    func panel(_ p: PromptSample) throws -> String {
        let teacher = p.teacherMask.mask.pixels, student = p.studentMask.mask.pixels
        let size = ImageSize(height: p.teacherMask.height, width: p.teacherMask.width)
        let photo = photos[p.image].flatMap { $0.size == size ? $0 : nil }
            ?? RGBImage(width: size.width, height: size.height, pixels: [UInt8](repeating: 128, count: size.width * size.height * 3))
        var left = MaskOverlay.blend(photo, outline: teacher, alpha: 0.5, edge: .solid) { teacher[$0] ? Self.blue : nil }
        var right = MaskOverlay.blend(photo, outline: student, alpha: 0.5, edge: .solid) { i in
            teacher[i] && student[i] ? Self.blue : student[i] ? Self.red : teacher[i] ? Self.yellow : nil
        }
        let scale = Double(size.width) / Double(p.frame.width)
        MaskOverlay.draw(points: p.prompt.points, box: p.prompt.box, on: &left, scale: scale, radius: 6, thickness: 2, boxColour: Self.green)
        MaskOverlay.draw(points: p.prompt.points, box: p.prompt.box, on: &right, scale: scale, radius: 6, thickness: 2, boxColour: Self.green)
        let grade = p.iou < 0.5 ? "bad" : p.iou < 0.8 ? "mid" : "good"
        func img(_ image: RGBImage, _ alt: String) throws -> String {
            "<div><div class=\"side\">\(alt)</div><img alt=\"\(alt)\" width=\"\(image.width)\" height=\"\(image.height)\" src=\"data:image/jpeg;base64,\(try ImageIO.encodeJPEG(image, quality: 85).base64EncodedString())\"></div>"
        }
        return "<figure class=\"panel\" data-iou=\"\(Self.number(p.iou))\"><div class=\"pair\">\(try img(left, "teacher"))\(try img(right, "student"))</div>"
            + "<figcaption><span class=\"\(grade)\">IoU \(Self.number(p.iou))</span> · \(p.promptType.rawValue) · \(Self.escape(p.image)) · \(Self.describe(p.prompt))</figcaption></figure>\n"
    }

    typealias RGB = MaskOverlay.RGB
    static let blue: RGB = (30, 100, 255), red: RGB = (255, 32, 32), yellow: RGB = (255, 210, 0), green: RGB = (0, 220, 0)

    static func describe(_ p: SAMPrompt) -> String {
        var parts = p.points.map { "(\(Int($0.x)), \(Int($0.y)))\($0.label == 1 ? "" : " background")" }
        if let b = p.box { parts.append("box (\(Int(b.x0)), \(Int(b.y0)))–(\(Int(b.x1)), \(Int(b.y1)))") }
        return parts.joined(separator: ", ")
    }

    static func number(_ v: Double) -> String { String(format: "%.4f", v) }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }
}

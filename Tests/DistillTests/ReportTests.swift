import CheckpointFormats
import Distill
import Foundation
import ImageCodecs
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// The visual report (`VisualReport`, `samdistill eval --report`): what the evaluator keeps for
/// it, the page's structure (embedded images that decode, the table's numbers, worst first), and
/// the JPEG encoder it uses.
final class ReportTests: XCTestCase {
    /// Every `attribute="…"` value in the page, in order.
    static func values(of attribute: String, in html: String) -> [String] {
        html.components(separatedBy: "\(attribute)=\"").dropFirst().map { String($0.prefix { $0 != "\"" }) }
    }

    /// The page's images, decoded (fails on any image that is not an embedded JPEG data URI).
    static func decodedImages(_ html: String) throws -> [RGBImage] {
        try values(of: "src", in: html).map { src in
            let prefix = "data:image/jpeg;base64,"
            XCTAssertTrue(src.hasPrefix(prefix), "not an embedded JPEG: \(src.prefix(40))")
            let data = try XCTUnwrap(Data(base64Encoded: String(src.dropFirst(prefix.count))), "base64 does not decode")
            return try ImageIO.decode(data, file: "panel image")
        }
    }

    func testJPEGEncoderRoundTrip() throws {
        var px = [UInt8](repeating: 0, count: 96 * 64 * 3)
        for y in 0..<64 {
            for x in 0..<96 { px[(y * 96 + x) * 3] = UInt8(x * 2); px[(y * 96 + x) * 3 + 1] = UInt8(y * 3); px[(y * 96 + x) * 3 + 2] = 100 }
        }
        let image = RGBImage(width: 96, height: 64, pixels: px)
        let data = try ImageIO.encodeJPEG(image, quality: 95)
        XCTAssertEqual(ImageIO.sniff(data), .jpeg)
        let back = try ImageIO.decode(data, file: "round trip")
        XCTAssertEqual(back.size, image.size)
        let worst = zip(back.pixels, px).map { abs(Int($0) - Int($1)) }.max()!
        XCTAssertLessThanOrEqual(worst, 6, "a smooth gradient survives quality-95 JPEG within 6 levels")
        XCTAssertThrowsError(try ImageIO.encodeJPEG(image, quality: 0)) { e in
            XCTAssertEqual((e as? ImageIOError)?.kind, .writeFailed, "\(e)")
            XCTAssertTrue("\(e)".contains("JPEG"), "\(e)")
        }
    }

    func testRunLengthMask() throws {
        var rng = SeededRandom(seed: 2)
        let m = BinaryMask(width: 13, height: 7, pixels: (0..<91).map { _ in rng.next() % 3 == 0 })
        XCTAssertEqual(RunLengthMask(m, size: ImageSize(height: 7, width: 13)).mask, m, "same size: lossless")
        var first = m
        first.pixels[0] = true
        let r = RunLengthMask(first, size: ImageSize(height: 7, width: 13))
        XCTAssertEqual(r.runs.first, 0, "a mask starting on starts with an empty off run")
        XCTAssertEqual(r.runs.reduce(0, +), 91)
        // 2× down: nearest pixel centre = the odd rows and columns of the source.
        let big = BinaryMask(width: 8, height: 4, pixels: (0..<32).map { ($0 % 8) % 2 == 1 && ($0 / 8) == 3 })
        let small = RunLengthMask(big, size: ImageSize(height: 2, width: 4)).mask
        XCTAssertEqual(small.pixels, [false, false, false, false, true, true, true, true])
    }

    /// A synthetic evaluation of known IoUs: the table shows its numbers, the panels are the
    /// worst (ascending) then the best (descending), each with two decodable images whose
    /// pixels show the masks.
    func testReportPageOnSyntheticEvaluation() throws {
        let frame = ImageSize(height: 48, width: 64)
        let left = BinaryMask(width: 64, height: 48, pixels: (0..<(64 * 48)).map { $0 % 64 < 32 })
        let empty = BinaryMask(width: 64, height: 48, pixels: [Bool](repeating: false, count: 64 * 48))
        let ious: [[Double]] = [[0.9, 0.1, 0.5], [0.3, 1.0, 0.7, 0.2]]
        var samples: [PromptSample] = [], images: [ImageEvaluation] = []
        for (i, list) in ious.enumerated() {
            for v in list {
                samples.append(PromptSample(image: "photo<\(i)>.jpg", frame: frame, promptType: .point,
                                            prompt: SAMPrompt(points: [PromptPoint(x: 60, y: 4, label: i)]), iou: v,
                                            teacherMask: RunLengthMask(left, size: frame), studentMask: RunLengthMask(empty, size: frame)))
            }
            images.append(ImageEvaluation(name: "photo<\(i)>.jpg", ious: ["point": ["single": list]]))
        }
        var options = EvaluationOptions()
        options.prompts = [.point]
        options.bootstrapSamples = 200
        let evaluation = EvaluationReport(student: "s.safetensors", teacher: "t.pt", data: "synthetic", options: options, images: images)
        let grey = RGBImage(width: 64, height: 48, pixels: [UInt8](repeating: 128, count: 64 * 48 * 3))
        var report = VisualReport(evaluation: evaluation, samples: samples, photos: ["photo<0>.jpg": grey, "photo<1>.jpg": grey])
        report.worst = 3
        report.best = 2
        let html = try report.html()

        XCTAssertEqual(Self.values(of: "data-iou", in: html), ["0.1000", "0.2000", "0.3000", "1.0000", "0.9000"],
                       "the 3 worst ascending, then the 2 best descending")
        XCTAssertTrue(html.contains("the other 2 are left out"), "the page says what it leaves out")
        XCTAssertTrue(html.contains("photo&lt;0&gt;.jpg") && !html.contains("photo<0>"), "names are escaped")
        let table = try XCTUnwrap(html.components(separatedBy: "<table class=\"miou\">").dropFirst().first?.components(separatedBy: "</table>").first)
        let s = try XCTUnwrap(evaluation.summary.first)
        XCTAssertEqual(s.miou, 3.7 / 7, accuracy: 1e-12)
        for v in [s.miou, s.ciLow, s.ciHigh] { XCTAssertTrue(table.contains(String(format: "%.4f", v)), "\(v) in \(table)") }
        XCTAssertTrue(html.contains(String(format: "%.4f", 1.5 / 3)), "per-image row of image 0")

        let decoded = try Self.decodedImages(html)
        XCTAssertEqual(decoded.count, 2 * 5, "two images per panel")
        for (k, image) in decoded.enumerated() {
            XCTAssertEqual(image.size, frame, "thumbnail of a 64-px frame: the frame itself")
            // Inside the teacher's mask (x < 32), away from its edge: blue over grey on both sides
            // (the student misses it: yellow on the right); outside: the grey photo.
            let inside = image[12, 30], outside = image[48, 30]
            if k % 2 == 0 {
                XCTAssertGreaterThan(Int(inside.b) - Int(inside.r), 80, "teacher mask blue: \(inside)")
            } else {
                XCTAssertGreaterThan(Int(inside.r) - Int(inside.b), 80, "missed pixels yellow: \(inside)")
            }
            for c in [outside.r, outside.g, outside.b] { XCTAssertEqual(Double(c), 128, accuracy: 6, "photo outside the masks: \(outside)") }
            // The point at (60, 4): green for image 1's (label 1, foreground), red for image 0's
            // (label 0, background); panels in order 0.1 (image 0), 0.2, 0.3, 1.0 (image 1), 0.9 (image 0).
            let dot = image[60, 4]
            if [false, true, true, true, false][k / 2] { XCTAssertGreaterThan(Int(dot.g) - Int(dot.r), 100, "\(dot)") } else { XCTAssertGreaterThan(Int(dot.r) - Int(dot.g), 100, "\(dot)") }
        }
        XCTAssertTrue(html.contains("No training metrics given"), "without metrics.jsonl the page says there are no curves")
    }

    /// The evaluator keeps one sample per evaluated prompt only when asked, with the IoUs it
    /// reports; identical embeddings give identical stored masks.
    func testEvaluatorKeepsSamplesOnlyWhenAsked() throws {
        let model = try EvalExportTests.tinyDecoderModel()
        var o = EvaluationOptions()
        o.prompts = [.point, .box]
        o.pointsPerImage = 3
        let photo = RGBImage(width: 64, height: 48, pixels: [UInt8](repeating: 90, count: 64 * 48 * 3))
        let images = EvalExportTests.images(count: 3, noise: 1.0).map { var i = $0; i.photo = i.originalSize == photo.size ? photo : nil; return i }
        let plain = Evaluator(model: model, options: o)
        _ = try images.map { try plain.evaluate($0) }
        XCTAssertTrue(plain.reportSamples.isEmpty && plain.reportPhotos.isEmpty, "nothing kept by default")

        let keeping = Evaluator(model: model, options: o)
        keeping.keepsReportSamples = true
        let evaluated = try images.map { try keeping.evaluate($0) }
        let expected = evaluated.flatMap { e in o.prompts.flatMap { p in e.ious[p.rawValue]!["single"]!.map { (e.name, p, $0) } } }
        XCTAssertEqual(keeping.reportSamples.count, expected.count)
        for (s, (name, p, iou)) in zip(keeping.reportSamples, expected) {
            XCTAssertEqual(s.image, name); XCTAssertEqual(s.promptType, p); XCTAssertEqual(s.iou, iou)
            let size = VisualReport.thumbnailSize(for: s.frame)
            XCTAssertEqual([s.teacherMask.width, s.teacherMask.height], [size.width, size.height])
        }
        XCTAssertEqual(Set(keeping.reportPhotos.keys), ["img0"], "only the image given a photo has a thumbnail")
        XCTAssertEqual(VisualReport.thumbnailSize(for: ImageSize(height: 480, width: 640)), ImageSize(height: 240, width: 320))

        let same = Evaluator(model: model, options: o)
        same.keepsReportSamples = true
        _ = try EvalExportTests.images(count: 2, noise: 0).map { try same.evaluate($0) }
        XCTAssertFalse(same.reportSamples.isEmpty)
        for s in same.reportSamples { XCTAssertEqual(s.teacherMask, s.studentMask); XCTAssertEqual(s.iou, 1) }
    }

    /// `samdistill eval --images DIR --report OUT --metrics FILE` on synthetic photos with a tiny
    /// teacher (MobileSAM's decoder) and another tiny encoder as the student.
    func testEvalCommandWritesReport() throws {
        let dir = try CacheTestSupport.temporaryDirectory("eval-report")
        defer { try? FileManager.default.removeItem(at: dir) }
        let teacher = try RunPipelineTests.writeTinySAM(in: dir)
        let studentModel = try EvalExportTests.tinyDecoderModel()
        var rng = SeededRandom(seed: 11)
        CacheTestSupport.randomiseSignalPreserving(studentModel.imageEncoder, rng: &rng)
        let student = dir.appendingPathComponent("student.safetensors")
        try SafeTensors.write(studentModel.stateDict(), metadata: studentModel.encoderConfig.metadata, to: student)
        let images = dir.appendingPathComponent("images")
        _ = try CacheTestSupport.writeSyntheticImages(in: images, count: 3)
        let metrics = dir.appendingPathComponent("metrics.jsonl")
        try """
        {"step": 1, "loss": 0.5, "lr": 0.001}
        {"step": 2, "loss": 0.25, "lr": 0.001}
        {"step": 2, "eval": {"val_mse": 0.3, "miou_point": 0.42}}
        {"step": 3, "loss": 0.2
        """.write(to: metrics, atomically: true, encoding: .utf8)

        let exe = try CacheTestSupport.executable()
        let out = dir.appendingPathComponent("report"), json = dir.appendingPathComponent("r.json")
        let r = try CacheTestSupport.run(exe, ["eval", "--student", student.path, "--teacher", teacher.path, "--images", images.path,
                                               "--prompts", "point,box", "--points-per-image", "6", "--json", json.path,
                                               "--report", out.path, "--metrics", metrics.path])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("report: \(out.path)/index.html"), r.out)
        let html = try String(contentsOf: out.appendingPathComponent("index.html"), encoding: .utf8)
        let report = try EvaluationReport.read(json: Data(contentsOf: json))
        for s in report.summary {
            for v in [s.miou, s.ciLow, s.ciHigh] { XCTAssertTrue(html.contains(String(format: "%.4f", v)), "\(s.prompt) \(v)") }
        }
        let total = report.summary.reduce(0) { $0 + $1.prompts }
        let shown = Self.values(of: "data-iou", in: html).map { Double($0)! }
        XCTAssertEqual(shown.count, min(total, 28), "\(total) prompts: 24 worst + 4 best at most")
        let worst = Array(shown.prefix(min(total, 24)))
        XCTAssertEqual(worst, worst.sorted(), "worst first, ascending")
        XCTAssertEqual(try Self.decodedImages(html).count, 2 * shown.count)
        XCTAssertTrue(html.contains("<polyline"), "loss curve drawn from metrics.jsonl")
        XCTAssertTrue(html.contains("miou_point"), "the logged mIoU is a series")
        XCTAssertTrue(html.contains("1 unreadable line(s)"), "the cut-off last line is reported, not fatal")
        XCTAssertFalse(html.contains("<script"), "no JavaScript")

        // Refusals: one clear message, nothing written.
        let bad = try CacheTestSupport.run(exe, ["eval", "--student", student.path, "--teacher", teacher.path, "--images", images.path,
                                                 "--metrics", metrics.path])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.err.contains("--metrics is only used by --report"), bad.err)
        let file = try CacheTestSupport.run(exe, ["eval", "--student", student.path, "--teacher", teacher.path, "--images", images.path,
                                                  "--report", metrics.path])
        XCTAssertNotEqual(file.status, 0)
        XCTAssertTrue(file.err.contains("is a file, not a folder"), file.err)
    }
}

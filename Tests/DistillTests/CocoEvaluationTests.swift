import Distill
import Foundation
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// COCO ground truth: decoding as pycocotools does, strict errors, size classes, and box-prompt
/// mIoU against ground truth (API and `samdistill eval --annotations`).
final class CocoEvaluationTests: XCTestCase {
    static var cocoDirectory: URL { Fixture.directory.appendingPathComponent("coco") }

    /// Every annotation of Tests/Fixtures/coco/instances.json decodes to exactly the mask that
    /// pycocotools' `COCO.annToMask` returns (Scripts/refdump/coco.py): polygons (concave, several
    /// parts, self-intersecting, across the border, sub-pixel, slivers, random), compressed and
    /// uncompressed RLE. Exact equality, pixel for pixel.
    func testMasksMatchPycocotools() throws {
        let dataset = try CocoDataset.read(Self.cocoDirectory.appendingPathComponent("instances.json"))
        let fixture = try Fixture("coco_masks")
        XCTAssertEqual(dataset.annotations.count, fixture.int("annotations"))
        var kinds = (polygons: 0, compressed: 0, uncompressed: 0), empty = 0, multiPart = 0
        for a in dataset.annotations {
            let image = try XCTUnwrap(dataset.image(id: a.imageId))
            let expected = fixture["mask.\(a.id)"]
            XCTAssertEqual(expected.shape, [image.height, image.width], "annotation \(a.id)")
            let m = dataset.mask(a)
            XCTAssertEqual(m.width, image.width); XCTAssertEqual(m.height, image.height)
            var wrong = 0
            for i in 0..<m.pixels.count where m.pixels[i] != (expected.data[i] != 0) { wrong += 1 }
            XCTAssertEqual(wrong, 0, "annotation \(a.id) (\(a.segmentation)): \(wrong) pixels differ from pycocotools")
            XCTAssertEqual(Double(m.area), Double(fixture["area.\(a.id)"].data[0]), "annotation \(a.id)")
            XCTAssertEqual(a.area, Double(m.area), "the generator wrote pycocotools' area into the file")
            if m.area == 0 { empty += 1 }
            switch a.segmentation {
            case .polygons(let p): kinds.polygons += 1; if p.count > 1 { multiPart += 1 }
            case .rle(_, let compressed): if compressed { kinds.compressed += 1 } else { kinds.uncompressed += 1 }
            }
        }
        XCTAssertGreaterThanOrEqual(kinds.polygons, 15)
        XCTAssertGreaterThanOrEqual(kinds.compressed, 4)
        XCTAssertGreaterThanOrEqual(kinds.uncompressed, 2)
        XCTAssertGreaterThanOrEqual(multiPart, 1)
        XCTAssertGreaterThanOrEqual(empty, 2, "a sub-pixel polygon and an empty RLE decode to empty masks")
        XCTAssertEqual(dataset.annotations.filter(\.isCrowd).count, 1)
        XCTAssertEqual(dataset.image(id: 3)?.fileName, "sub/b.png")
        XCTAssertEqual(dataset.annotations(ofImage: 3).map(\.imageId), Array(repeating: 3, count: dataset.annotations(ofImage: 3).count))
    }

    /// Compressed counts: the `counts[i - 2]` delta from the fourth count on, signed values, and
    /// malformed strings.
    func testCompressedCounts() throws {
        // pycocotools: encode of a 4×3 mask with column-major pixels 0 0 1 1 1 0 0 0 0 1 1 0.
        // runs [2, 3, 4, 2, 1]: "2" "3" "4", then 2 − 3 = −1 → 'O' (0x1f, sign bit 0x10, + 48),
        // 1 − 4 = −3 → 'M' (pycocotools.mask.encode gives b'234OM').
        XCTAssertEqual(try CocoMask.counts(compressed: "234OM"), [2, 3, 4, 2, 1])
        let m = CocoMask.decode([2, 3, 4, 2, 1], height: 4, width: 3)
        XCTAssertEqual(m.pixels, [false, true, false,
                                  false, false, true,
                                  true, false, true,
                                  true, false, false])
        // Multi-character numbers: 100 = 0b11_00100 → 4 | 0x20, 3 → "T3"; 99 → "S3" (pycocotools).
        XCTAssertEqual(try CocoMask.counts(compressed: "T3"), [100])
        XCTAssertEqual(try CocoMask.counts(compressed: "S31"), [99, 1])
        XCTAssertEqual(try CocoMask.counts(compressed: "d0"), [20])
        XCTAssertEqual(try CocoMask.counts(compressed: ""), [])
        XCTAssertThrowsError(try CocoMask.counts(compressed: "2 3")) { XCTAssertTrue("\($0)".contains("alphabet"), "\($0)") }
        XCTAssertThrowsError(try CocoMask.counts(compressed: "T")) { XCTAssertTrue("\($0)".contains("end inside a number"), "\($0)") }
        XCTAssertThrowsError(try CocoMask.counts(compressed: "o")) { XCTAssertTrue("\($0)".contains("end inside a number"), "\($0)") }
        XCTAssertThrowsError(try CocoMask.counts(compressed: "O")) { XCTAssertTrue("\($0)".contains("length -1"), "\($0)") }
    }

    func testSizeClassesByAreaField() throws {
        XCTAssertEqual(CocoSizeClass(area: 0), .small)
        XCTAssertEqual(CocoSizeClass(area: 1023.9), .small)
        XCTAssertEqual(CocoSizeClass(area: 1024), .medium)
        XCTAssertEqual(CocoSizeClass(area: 9215.5), .medium)
        XCTAssertEqual(CocoSizeClass(area: 9216), .large)
        XCTAssertEqual(CocoSizeClass(area: 1e7), .large)
        // The class follows the `area` field, not the mask.
        let d = try CocoDataset(json: Data(Self.json(annotation: #""area": 5000, "segmentation": [[0, 0, 3, 0, 3, 3, 0, 3]]"#).utf8), file: "t.json")
        XCTAssertEqual(d.annotations[0].sizeClass, .medium)
        XCTAssertEqual(d.mask(d.annotations[0]).area, 9, "pycocotools: the 3×3 square [0, 3]² covers pixels 0…2 in x and y")
        XCTAssertEqual(d.annotations[0].promptBox, PromptBox(x0: 1, y0: 2, x1: 4, y1: 6))
    }

    /// A small valid file with one annotation whose fields after `bbox` are `annotation`.
    static func json(images: String = #"{"id": 1, "file_name": "a.jpg", "width": 5, "height": 4}"#,
                     annotation: String = #""area": 3, "segmentation": [[0, 0, 2, 0, 2, 2]]"#,
                     extra: String = "") -> String {
        """
        {"info": {}, "images": [\(images)],
         "annotations": [\(extra){"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [1, 2, 3, 4], \(annotation)}]}
        """
    }

    /// Strict reading: every error names the file and the JSON path.
    func testStrictErrorsNameFileAndPath() throws {
        func check(_ text: String, path: String, _ reason: String, line: UInt = #line) {
            XCTAssertThrowsError(try CocoDataset(json: Data(text.utf8), file: "instances.json"), line: line) { e in
                guard let c = e as? CocoError else { return XCTFail("not a CocoError: \(e)", line: line) }
                XCTAssertEqual(c.file, "instances.json", line: line)
                XCTAssertEqual(c.path, path, "\(c)", line: line)
                XCTAssertTrue(c.reason.contains(reason), "\(c)", line: line)
                XCTAssertTrue("\(c)".hasPrefix(path.isEmpty ? "instances.json: " : "instances.json: \(path): "), "\(c)", line: line)
            }
        }
        XCTAssertNoThrow(try CocoDataset(json: Data(Self.json().utf8), file: "instances.json"))
        let ok = #"{"id": 1, "image_id": 1, "iscrowd": 0, "bbox": [0, 0, 1, 1], "area": 1, "segmentation": [[0, 0, 1, 0, 1, 1]]}, "#
        // Missing keys.
        check(Self.json(annotation: #""segmentation": [[0, 0, 2, 0, 2, 2]]"#, extra: ok), path: "annotations[1]", "missing key 'area'")
        check(#"{"images": []}"#, path: "", "missing key 'annotations'")
        check(Self.json(images: #"{"id": 1, "width": 5, "height": 4}"#), path: "images[0]", "missing key 'file_name'")
        check(Self.json(annotation: #""area": 3, "segmentation": {"size": [4, 5]}"#), path: "annotations[0].segmentation", "missing key 'counts'")
        // Wrong types.
        check(Self.json(images: #"{"id": 1, "file_name": "a.jpg", "width": "5", "height": 4}"#), path: "images[0].width", "wrong type")
        check(Self.json(annotation: #""area": 3, "segmentation": [[0, 0, 2, "0", 2, 2]]"#), path: "annotations[0].segmentation[0][3]", "wrong type")
        check(Self.json(annotation: #""area": 3, "segmentation": 7"#), path: "annotations[0].segmentation", "polygons")
        check(Self.json(annotation: #""area": 3, "segmentation": {"size": [4, 5], "counts": true}"#), path: "annotations[0].segmentation.counts", "compressed RLE")
        check(Self.json(annotation: #""area": "big", "segmentation": [[0, 0, 2, 0, 2, 2]]"#), path: "annotations[0].area", "wrong type")
        check(Self.json().replacingOccurrences(of: #""iscrowd": 0"#, with: #""iscrowd": false"#), path: "annotations[0].iscrowd", "wrong type")
        check(Self.json().replacingOccurrences(of: #""id": 10"#, with: #""id": 10.5"#), path: "annotations[0].id", "10.5")
        check("[1, 2]", path: "", "wrong type")
        check("{\"images\": [", path: "", "not valid JSON")
        // Consistency.
        check(Self.json().replacingOccurrences(of: #""image_id": 1"#, with: #""image_id": 9"#), path: "annotations[0].image_id", "no image has id 9")
        check(Self.json(extra: #"{"id": 10, "image_id": 1, "iscrowd": 0, "bbox": [0, 0, 1, 1], "area": 1, "segmentation": [[0, 0, 1, 0, 1, 1]]}, "#),
              path: "annotations[1].id", "duplicate annotation id 10")
        check(Self.json(images: #"{"id": 1, "file_name": "a.jpg", "width": 5, "height": 4}, {"id": 1, "file_name": "b.jpg", "width": 5, "height": 4}"#),
              path: "images[1].id", "duplicate image id 1")
        check(Self.json(images: #"{"id": 1, "file_name": "a.jpg", "width": 0, "height": 4}"#), path: "images[0]", "empty")
        check(Self.json(annotation: #""area": 3, "segmentation": [[0, 0, 2, 0, 2, 2], [0, 0, 1, 0, 1, 1, 3]]"#),
              path: "annotations[0].segmentation[1]", "odd number of coordinates (7)")
        check(Self.json(annotation: #""area": 3, "segmentation": [[0, 0, 2, 0]]"#), path: "annotations[0].segmentation[0]", "at least 3")
        check(Self.json(annotation: #""area": 3, "segmentation": []"#), path: "annotations[0].segmentation", "no polygons")
        check(Self.json(annotation: #""area": 3, "segmentation": [[0, 0, 2, 0, 2, 2e9]]"#), path: "annotations[0].segmentation[0][5]", "±100000")
        check(Self.json().replacingOccurrences(of: "[1, 2, 3, 4]", with: "[1, 2, 3]"), path: "annotations[0].bbox", "got 3 numbers")
        check(Self.json().replacingOccurrences(of: "[1, 2, 3, 4]", with: "[1, 2, -3, 4]"), path: "annotations[0].bbox", "w, h ≥ 0")
        check(Self.json().replacingOccurrences(of: #""iscrowd": 0"#, with: #""iscrowd": 2"#), path: "annotations[0].iscrowd", "0 or 1")
        check(Self.json(annotation: #""area": -1, "segmentation": [[0, 0, 2, 0, 2, 2]]"#), path: "annotations[0].area", "non-negative")
        check(Self.json(annotation: #""area": 3, "segmentation": {"size": [5, 4], "counts": [20]}"#), path: "annotations[0].segmentation.size", "differs")
        check(Self.json(annotation: #""area": 3, "segmentation": {"size": [4, 5], "counts": [3, 4, 5]}"#), path: "annotations[0].segmentation.counts", "add up to 12")
        check(Self.json(annotation: #""area": 3, "segmentation": {"size": [4, 5], "counts": [3, -4, 21]}"#), path: "annotations[0].segmentation.counts[1]", "-4")
        check(Self.json(annotation: #""area": 3, "segmentation": {"size": [4, 5], "counts": "2 3"}"#), path: "annotations[0].segmentation.counts", "alphabet")
        check(Self.json(annotation: #""area": 3, "segmentation": {"size": [4, 5], "counts": "T0"}"#), path: "annotations[0].segmentation.counts", "add up to 4")
        // A valid compressed RLE over 4×5 pixels: one run of 20 zeros = "d0".
        let empty = try CocoDataset(json: Data(Self.json(annotation: #""area": 0, "segmentation": {"size": [4, 5], "counts": "d0"}"#).utf8), file: "x")
        XCTAssertEqual(empty.annotations[0].segmentation, .rle(counts: [20], compressed: true))
        // From a file: the error names the file's last path component.
        let dir = try CacheTestSupport.temporaryDirectory("coco-errors")
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("val.json")
        try Data(Self.json().replacingOccurrences(of: #""image_id": 1"#, with: #""image_id": 4"#).utf8).write(to: url)
        XCTAssertThrowsError(try CocoDataset.read(url)) { XCTAssertEqual("\($0)", "val.json: annotations[0].image_id: no image has id 4") }
        XCTAssertThrowsError(try CocoDataset.read(dir.appendingPathComponent("none.json"))) { XCTAssertTrue("\($0)".hasPrefix("none.json: cannot read"), "\($0)") }
    }

    /// The report: means per model × size class over annotations, bootstrap over images (the
    /// evaluator's), classes without annotations left out.
    func testGroundTruthReportSummaries() throws {
        func r(_ id: Int, _ area: Double, _ s: Double, _ t: Double) -> GroundTruthAnnotationResult {
            GroundTruthAnnotationResult(id: id, imageId: id / 10, area: area, size: CocoSizeClass(area: area),
                                        studentIou: s, teacherIou: t, agreementIou: min(s, t))
        }
        let images = [
            GroundTruthImageResult(image: "a.jpg", imageId: 1, annotations: [r(10, 100, 0.5, 0.7), r(11, 20000, 0.9, 0.95)]),
            GroundTruthImageResult(image: "b.jpg", imageId: 2, annotations: [r(20, 500, 0.3, 0.6)]),
            GroundTruthImageResult(image: "c.jpg", imageId: 3, annotations: [r(30, 30000, 0.8, 0.9), r(31, 40000, 0.6, 0.9), r(32, 900, 0.1, 0.2)]),
        ]
        let rep = GroundTruthReport(annotationsFile: "x.json", imagesDirectory: "d", images: images, crowdSkipped: 2, bootstrapSamples: 500, seed: 1)
        XCTAssertEqual(rep.summary.count, 3 * 3, "no medium annotations: all, small, large for each of 3 models")
        XCTAssertNil(rep.summary(model: "student", size: "medium"))
        let all = try XCTUnwrap(rep.summary(model: "student", size: "all"))
        XCTAssertEqual(all.annotations, 6); XCTAssertEqual(all.images, 3)
        XCTAssertEqual(all.miou, (0.5 + 0.9 + 0.3 + 0.8 + 0.6 + 0.1) / 6, accuracy: 1e-12)
        let small = try XCTUnwrap(rep.summary(model: "teacher", size: "small"))
        XCTAssertEqual(small.annotations, 3); XCTAssertEqual(small.images, 3)
        XCTAssertEqual(small.miou, (0.7 + 0.6 + 0.2) / 3, accuracy: 1e-12)
        let large = try XCTUnwrap(rep.summary(model: "agreement", size: "large"))
        XCTAssertEqual(large.annotations, 3); XCTAssertEqual(large.images, 2)
        XCTAssertEqual(large.miou, (0.9 + 0.8 + 0.6) / 3, accuracy: 1e-12)
        for m in rep.summary {
            XCTAssertLessThanOrEqual(m.ciLow, m.miou + 1e-12, "\(m)"); XCTAssertGreaterThanOrEqual(m.ciHigh, m.miou - 1e-12, "\(m)")
        }
        // Seeded: the same inputs give the same intervals.
        let again = GroundTruthReport(annotationsFile: "x.json", imagesDirectory: "d", images: images, crowdSkipped: 2, bootstrapSamples: 500, seed: 1)
        XCTAssertEqual(again.summary, rep.summary)
        let table = rep.table(), md = rep.markdown()
        for m in rep.summary { XCTAssertTrue(table.contains(String(format: "%.4f", m.miou))); XCTAssertTrue(md.contains(String(format: "%.4f", m.miou))) }
        XCTAssertTrue(table.contains("crowd skipped 2"), table)
    }

    /// GroundTruthEvaluator on MobileSAM's real decoder with random 64-pixel embeddings: the same
    /// embedding for student and teacher gives identical IoUs (agreement 1); each IoU is the one
    /// of SAMPredictor's single mask for the bbox (x, y, x + w, y + h) against the decoded ground
    /// truth; crowd annotations are skipped.
    func testGroundTruthEvaluatorAgainstPredictor() throws {
        let model = try EvalExportTests.tinyDecoderModel()
        let text = """
            {"images": [{"id": 5, "file_name": "a.png", "width": 64, "height": 48}, {"id": 6, "file_name": "b.png", "width": 40, "height": 64},
                        {"id": 7, "file_name": "c.png", "width": 64, "height": 64}],
             "annotations": [
              {"id": 1, "image_id": 5, "iscrowd": 0, "bbox": [8, 6, 30, 20], "area": 500, "segmentation": [[8, 6, 38, 6, 38, 26, 8, 26]]},
              {"id": 2, "image_id": 5, "iscrowd": 0, "bbox": [30, 20, 30, 25], "area": 2000, "segmentation": [[30, 20, 60, 20, 45, 45]]},
              {"id": 3, "image_id": 5, "iscrowd": 1, "bbox": [0, 0, 64, 48], "area": 3072, "segmentation": {"size": [48, 64], "counts": [0, 3072]}},
              {"id": 4, "image_id": 6, "iscrowd": 0, "bbox": [2, 2, 30, 50], "area": 1200, "segmentation": [[2, 2, 32, 2, 32, 52, 2, 52], [5, 5, 9, 5, 9, 9]]},
              {"id": 5, "image_id": 7, "iscrowd": 1, "bbox": [0, 0, 4, 4], "area": 16, "segmentation": {"size": [64, 64], "counts": [0, 16, 4080]}}
             ]}
            """
        let dataset = try CocoDataset(json: Data(text.utf8), file: "t.json")
        let e = GroundTruthEvaluator(model: model, dataset: dataset, decoderBatch: 1)
        XCTAssertEqual(e.evaluatedImages().map(\.id), [5, 6], "image 7 has only a crowd annotation")
        XCTAssertEqual(e.evaluatedImages(maxImages: 1).map(\.id), [5])
        var rng = SeededRandom(seed: 11)
        let transform = ResizeLongestSide(targetLength: 64)
        let predictor = SAMPredictor(model: model)
        var results: [GroundTruthImageResult] = []
        for image in e.evaluatedImages() {
            let t = Tensor.randomNormal([1, 256, 4, 4], std: 0.5, rng: &rng)
            let input = transform.targetSize(for: image.size)
            let same = try e.evaluate(image, teacherEmbedding: t, studentEmbedding: t, inputSize: input)
            XCTAssertEqual(same.annotations.map(\.id), dataset.annotations(ofImage: image.id).filter { !$0.isCrowd }.map(\.id))
            try predictor.setEmbedding(t, originalSize: image.size, inputSize: input)
            for r in same.annotations {
                XCTAssertEqual(r.studentIou, r.teacherIou); XCTAssertEqual(r.agreementIou, 1)
                let a = dataset.annotations.first { $0.id == r.id }!
                let b = a.bbox
                let m = try predictor.predict(box: PromptBox(x0: b[0], y0: b[1], x1: b[0] + b[2], y1: b[1] + b[3]), multimaskOutput: false)
                XCTAssertEqual(r.teacherIou, m.mask(prompt: 0, index: 0).iou(dataset.mask(a)), "annotation \(r.id)")
                XCTAssertEqual(r.size, a.sizeClass); XCTAssertEqual(r.area, a.area)
            }
            var s = t
            let n = Tensor.randomNormal([1, 256, 4, 4], std: 1.0, rng: &rng)
            for j in 0..<s.count { s.data[j] += n.data[j] }
            let perturbed = try e.evaluate(image, teacherEmbedding: t, studentEmbedding: s, inputSize: input)
            XCTAssertEqual(perturbed.annotations.map(\.teacherIou), same.annotations.map(\.teacherIou), "the teacher's side is the same")
            results.append(perturbed)
        }
        let agreement = results.flatMap(\.annotations).map(\.agreementIou)
        XCTAssertLessThan(agreement.reduce(0, +) / Double(agreement.count), 0.99, "a perturbed student embedding changes masks: \(agreement)")
    }

    /// `samdistill eval --annotations` on two real photos (Tests/Fixtures/coco/photos.json:
    /// hand-drawn polygons of small, medium and large objects, reference MobileSAM masks as
    /// compressed and uncompressed RLE, one crowd region) with mobile_sam.pt as student and
    /// teacher. Student and teacher IoUs are identical; every teacher IoU matches the PyTorch
    /// reference (SamPredictor + pycocotools' annToMask, Scripts/refdump/coco.py) within 3
    /// pixels of its union: the Swift pipeline's masks agree with PyTorch's to 0.99999 IoU
    /// (PipelineTests), so only a few boundary pixels may flip.
    func testEvalCommandWithCocoAnnotationsOnPhotos() throws {
        let dir = try CacheTestSupport.temporaryDirectory("eval-coco")
        defer { try? FileManager.default.removeItem(at: dir) }
        let pt = try Fixture.mobileSAMCheckpoint()
        let photos = try CacheTestSupport.realPhotos(["fruits.jpg", "messi5.jpg"])[0].deletingLastPathComponent()
        let annotations = Self.cocoDirectory.appendingPathComponent("photos.json")
        let exe = try CacheTestSupport.executable()

        // validate() first: --annotations needs --images; a broken file fails before any weights load.
        let v = try CacheTestSupport.run(exe, ["eval", "--student", pt.path, "--teacher", pt.path, "--cache", annotations.path,
                                               "--annotations", annotations.path])
        XCTAssertNotEqual(v.status, 0)
        XCTAssertTrue(v.err.contains("--annotations needs --images"), v.err)
        let broken = dir.appendingPathComponent("broken.json")
        try Data(Self.json(annotation: #""area": 3, "segmentation": [[0, 0, 2, 0, 2, 2, 1]]"#).utf8).write(to: broken)
        let b = try CacheTestSupport.run(exe, ["eval", "--student", dir.appendingPathComponent("missing.pt").path, "--teacher", pt.path,
                                               "--images", photos.path, "--annotations", broken.path])
        XCTAssertNotEqual(b.status, 0)
        XCTAssertTrue(b.err.contains("--student: no such file"), b.err)
        let b2 = try CacheTestSupport.run(exe, ["eval", "--student", pt.path, "--teacher", pt.path, "--images", photos.path, "--annotations", broken.path])
        XCTAssertNotEqual(b2.status, 0)
        XCTAssertTrue(b2.err.contains("broken.json: annotations[0].segmentation[0]: polygon with an odd number of coordinates (7)"), b2.err)

        let json = dir.appendingPathComponent("r.json"), md = dir.appendingPathComponent("r.md")
        let r = try CacheTestSupport.run(exe, ["eval", "--student", pt.path, "--teacher", pt.path, "--images", photos.path,
                                               "--annotations", annotations.path, "--prompts", "none", "--json", json.path, "--markdown", md.path])
        XCTAssertEqual(r.status, 0, r.err)
        let report = try JSONDecoder().decode(EvaluationReport.self, from: Data(contentsOf: json), snakeCase: true)
        XCTAssertTrue(report.summary.isEmpty, "--prompts none: ground truth only")
        let mdText = try String(contentsOf: md, encoding: .utf8)
        XCTAssertFalse(mdText.contains("## Overall"), "no empty protocol table with --prompts none: \(mdText)")
        let gt = try XCTUnwrap(report.groundTruth)
        XCTAssertEqual(gt.images.map(\.image), ["fruits.jpg", "messi5.jpg"])
        XCTAssertEqual(gt.crowdSkipped, 1)
        let reference = try Fixture("coco_photos")
        let results = gt.images.flatMap(\.annotations)
        XCTAssertEqual(results.map(\.id), [1000, 1001, 1004, 1002, 1003, 1005])
        var referenceIoUs: [Double] = []
        for a in results {
            XCTAssertEqual(a.studentIou, a.teacherIou, "the same weights as student and teacher: annotation \(a.id)")
            XCTAssertEqual(a.agreementIou, 1)
            let inter = Double(reference["inter.\(a.id)"].data[0]), union = Double(reference["union.\(a.id)"].data[0])
            referenceIoUs.append(inter / union)
            XCTAssertEqual(a.teacherIou, inter / union, accuracy: 3 / union, "annotation \(a.id) vs PyTorch")
        }
        XCTAssertEqual(results.map(\.size), [.large, .large, .large, .small, .medium, .large])
        for model in ["student", "teacher"] {
            let all = try XCTUnwrap(gt.summary(model: model, size: "all"))
            XCTAssertEqual(all.annotations, 6); XCTAssertEqual(all.images, 2)
            XCTAssertEqual(all.miou, referenceIoUs.reduce(0, +) / 6, accuracy: 2e-3)
            XCTAssertEqual(gt.summary(model: model, size: "small")?.annotations, 1)
            XCTAssertEqual(gt.summary(model: model, size: "medium")?.annotations, 1)
            XCTAssertEqual(gt.summary(model: model, size: "large")?.annotations, 4)
        }
        for size in GroundTruthReport.sizes {
            XCTAssertEqual(gt.summary(model: "student", size: size)?.miou, gt.summary(model: "teacher", size: size)?.miou, size)
        }
        XCTAssertTrue(r.out.contains("ground truth"), r.out)
        XCTAssertTrue(r.out.contains(String(format: "%.4f", gt.summary(model: "teacher", size: "all")!.miou)), r.out)
        XCTAssertTrue(try String(contentsOf: md, encoding: .utf8).contains("## Ground truth (COCO, box prompts)"))
    }
}

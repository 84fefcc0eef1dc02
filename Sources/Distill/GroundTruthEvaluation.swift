import Foundation
import ImageCodecs
import SegmentAnything
import Tensor

// Box-prompt mIoU against COCO ground truth, as NanoSAM reports it: for every non-crowd
// annotation of the evaluated images, the annotation's bbox (COCO x, y, w, h → SAM box x, y,
// x + w, y + h) prompts the teacher's prompt encoder + mask decoder (single-mask output) twice:
// once with the student's embedding, once with the teacher's. Each mask is compared with the
// ground-truth mask (CocoDataset.mask, pycocotools' decoding) at the original image size.
// mIoU = mean IoU over annotations, overall and per size class (CocoSizeClass, by the
// annotation's `area`), for student and teacher; the 95% intervals are the evaluator's percentile
// bootstrap over images (EvaluationReport.bootstrapInterval), seeded. IoU follows
// BinaryMask.iou (1 when both the prediction and the ground truth are empty). Also reported:
// the student-vs-teacher mask IoU for the same box prompts ("agreement").
//
// Images evaluated: the file's images that have at least one non-crowd annotation, in file
// order (at most `maxImages`), read from `images directory / file_name`; an image whose decoded
// size differs from its entry's width/height is an error.

/// One annotation's IoUs.
public struct GroundTruthAnnotationResult: Codable, Sendable, Equatable {
    public var id: Int
    public var imageId: Int
    public var area: Double
    public var size: CocoSizeClass
    /// IoU(student mask, ground truth), IoU(teacher mask, ground truth), IoU(student, teacher).
    public var studentIou: Double
    public var teacherIou: Double
    public var agreementIou: Double

    public init(id: Int, imageId: Int, area: Double, size: CocoSizeClass, studentIou: Double, teacherIou: Double, agreementIou: Double) {
        self.id = id; self.imageId = imageId; self.area = area; self.size = size
        self.studentIou = studentIou; self.teacherIou = teacherIou; self.agreementIou = agreementIou
    }
}

/// The annotations of one image.
public struct GroundTruthImageResult: Codable, Sendable, Equatable {
    public var image: String
    public var imageId: Int
    public var annotations: [GroundTruthAnnotationResult]

    public init(image: String, imageId: Int, annotations: [GroundTruthAnnotationResult]) {
        self.image = image; self.imageId = imageId; self.annotations = annotations
    }
}

/// The ground-truth part of `samdistill eval` (`--annotations`).
public struct GroundTruthReport: Codable, Sendable {
    /// One model × size class over every image.
    public struct Summary: Codable, Sendable, Equatable {
        /// "student", "teacher" (IoU with the ground truth) or "agreement" (student vs teacher).
        public var model: String
        /// "all", "small", "medium" or "large".
        public var size: String
        public var images: Int
        public var annotations: Int
        public var miou: Double
        public var ciLow: Double
        public var ciHigh: Double
    }

    public var annotationsFile: String
    public var imagesDirectory: String
    public var bootstrapSamples: Int
    public var seed: UInt64
    /// Crowd annotations of the evaluated images (not evaluated).
    public var crowdSkipped: Int
    public var summary: [Summary]
    public var images: [GroundTruthImageResult]

    public static let models = ["student", "teacher", "agreement"]
    public static let sizes = ["all"] + CocoSizeClass.allCases.map(\.rawValue)

    /// Summaries from per-image results; bootstrap over images, seeded with `seed`.
    public init(annotationsFile: String, imagesDirectory: String, images: [GroundTruthImageResult],
                crowdSkipped: Int = 0, bootstrapSamples: Int = 1000, seed: UInt64 = 0) {
        self.annotationsFile = annotationsFile; self.imagesDirectory = imagesDirectory
        self.images = images; self.crowdSkipped = crowdSkipped
        self.bootstrapSamples = bootstrapSamples; self.seed = seed
        var summary: [Summary] = []
        for model in Self.models {
            for size in Self.sizes {
                let clusters: [(sum: Double, count: Int)] = images.compactMap { img in
                    let anns = img.annotations.filter { size == "all" || $0.size.rawValue == size }
                    guard !anns.isEmpty else { return nil }
                    let ious = anns.map { model == "student" ? $0.studentIou : model == "teacher" ? $0.teacherIou : $0.agreementIou }
                    return (ious.reduce(0, +), ious.count)
                }
                let total = clusters.reduce(0) { $0 + $1.count }
                guard total > 0 else { continue }
                let mean = clusters.reduce(0) { $0 + $1.sum } / Double(total)
                let (lo, hi) = EvaluationReport.bootstrapInterval(clusters, samples: bootstrapSamples,
                                                                  seed: seed ^ FNV1a.hash("coco/" + model + "/" + size))
                summary.append(Summary(model: model, size: size, images: clusters.count, annotations: total, miou: mean, ciLow: lo, ciHigh: hi))
            }
        }
        self.summary = summary
    }

    /// The summary row of `model` × `size`, if that class has annotations.
    public func summary(model: String, size: String) -> Summary? {
        summary.first { $0.model == model && $0.size == size }
    }

    /// The terminal table.
    public func table() -> String {
        func pad(_ t: String, _ n: Int) -> String { t.count >= n ? t : t + String(repeating: " ", count: n - t.count) }
        var s = "ground truth \(annotationsFile) (box prompts from the annotations' bboxes, single mask)\n"
        s += "images \(images.count), annotations \(images.reduce(0) { $0 + $1.annotations.count }), crowd skipped \(crowdSkipped)\n\n"
        s += pad("model", 9) + "  " + pad("size", 6) + "  images  annotations    mIoU  95% CI (bootstrap over images)\n"
        for m in summary {
            s += pad(m.model, 9) + "  " + pad(m.size, 6)
            s += String(format: "  %6d  %11d  %6.4f  [%.4f, %.4f]\n", m.images, m.annotations, m.miou, m.ciLow, m.ciHigh)
        }
        return s
    }

    /// The same as a Markdown section.
    public func markdown() -> String {
        var s = "## Ground truth (COCO, box prompts)\n\n"
        s += "- annotations: `\(annotationsFile)`; images: `\(imagesDirectory)`\n"
        s += "- every non-crowd annotation's bbox prompts the teacher's prompt encoder + mask decoder (single mask) with the student's and the teacher's embedding; "
        s += "IoU with the ground-truth mask at the original size; sizes by the annotation's area (small < 32², medium < 96², large); "
        s += "agreement = IoU(student mask, teacher mask); 95% intervals: percentile bootstrap over images, \(bootstrapSamples) resamples\n"
        s += "- images \(images.count), annotations \(images.reduce(0) { $0 + $1.annotations.count }), crowd annotations skipped \(crowdSkipped)\n\n"
        s += "| model | size | images | annotations | mIoU | 95% CI |\n|---|---|---:|---:|---:|---|\n"
        for m in summary {
            s += "| \(m.model) | \(m.size) | \(m.images) | \(m.annotations) | \(String(format: "%.4f", m.miou)) | [\(String(format: "%.4f", m.ciLow)), \(String(format: "%.4f", m.ciHigh))] |\n"
        }
        return s
    }
}

/// Decodes the ground-truth boxes of a COCO file with the student's and the teacher's embeddings.
public final class GroundTruthEvaluator {
    /// The model whose prompt encoder and mask decoder decode both embeddings (its image encoder
    /// runs in `evaluateImages`).
    public let model: SAMModel
    public let dataset: CocoDataset
    /// Prompts per decoder call.
    public let decoderBatch: Int
    private let teacher: SAMPredictor
    private let student: SAMPredictor

    public init(model: SAMModel, dataset: CocoDataset, decoderBatch: Int = 8) {
        precondition(decoderBatch > 0, "GroundTruthEvaluator: decoderBatch must be positive, got \(decoderBatch)")
        self.model = model; self.dataset = dataset; self.decoderBatch = decoderBatch
        teacher = SAMPredictor(model: model)
        student = SAMPredictor(model: model)
    }

    /// The images `evaluateImages` visits: those with a non-crowd annotation, in file order.
    public func evaluatedImages(maxImages: Int? = nil) -> [CocoImage] {
        let all = dataset.images.filter { img in dataset.annotations(ofImage: img.id).contains { !$0.isCrowd } }
        return maxImages.map { Array(all.prefix($0)) } ?? all
    }

    /// Every non-crowd annotation of one image. embeddings: (1, 256, g, g) or (256, g, g);
    /// `inputSize`: the resized image's size inside the model's S×S input.
    public func evaluate(_ image: CocoImage, teacherEmbedding: Tensor, studentEmbedding: Tensor,
                         inputSize: ImageSize) throws -> GroundTruthImageResult {
        try teacher.setEmbedding(teacherEmbedding, originalSize: image.size, inputSize: inputSize)
        try student.setEmbedding(studentEmbedding, originalSize: image.size, inputSize: inputSize)
        defer { teacher.resetImage(); student.resetImage() }
        let anns = dataset.annotations(ofImage: image.id).filter { !$0.isCrowd }
        var out: [GroundTruthAnnotationResult] = []
        for start in stride(from: 0, to: anns.count, by: decoderBatch) {
            let chunk = Array(anns[start..<min(anns.count, start + decoderBatch)])
            let prompts = chunk.map { SAMPrompt(box: $0.promptBox) }
            let t = try teacher.predict(prompts, multimaskOutput: false)
            let s = try student.predict(prompts, multimaskOutput: false)
            for (b, a) in chunk.enumerated() {
                let gt = dataset.mask(a), tm = t.mask(prompt: b, index: 0), sm = s.mask(prompt: b, index: 0)
                out.append(GroundTruthAnnotationResult(id: a.id, imageId: a.imageId, area: a.area, size: a.sizeClass,
                                                       studentIou: sm.iou(gt), teacherIou: tm.iou(gt), agreementIou: sm.iou(tm)))
            }
        }
        return GroundTruthImageResult(image: image.fileName, imageId: image.id, annotations: out)
    }

    /// Reads each evaluated image from `directory/file_name`, runs both encoders on SAM's
    /// preprocessing, and evaluates its annotations; with `protocols`, the same embeddings also
    /// go through the student-vs-teacher prompt protocols (`Evaluator.evaluate`).
    public func evaluateImages(directory: URL, maxImages: Int? = nil, student encode: (Tensor) -> Tensor, studentImageSize: Int,
                               protocols: Evaluator? = nil) throws
        -> (groundTruth: [GroundTruthImageResult], protocols: [ImageEvaluation], crowdSkipped: Int, studentSeconds: Double, teacherSeconds: Double) {
        guard studentImageSize == model.imageSize else {
            throw EvaluationError(file: "student", reason: "the student takes \(studentImageSize)-pixel inputs, the teacher \(model.imageSize)")
        }
        var gt: [GroundTruthImageResult] = [], pe: [ImageEvaluation] = [], crowd = 0, ss = 0.0, ts = 0.0
        for image in evaluatedImages(maxImages: maxImages) {
            let url = directory.appendingPathComponent(image.fileName)
            let rgb: RGBImage
            do { rgb = try ImageIO.read(url) } catch {
                throw CocoError(file: dataset.file, path: "images[\(image.index)].file_name", reason: "cannot read \(url.path): \(error)")
            }
            guard rgb.width == image.width, rgb.height == image.height else {
                throw CocoError(file: dataset.file, path: "images[\(image.index)]",
                                reason: "\(image.fileName) is \(rgb.width)×\(rgb.height), the entry says \(image.width)×\(image.height)")
            }
            let pre = SAMPreprocessing.preprocess(rgb, size: model.imageSize)
            var t0 = Date()
            let te = model.encode(pre.input)
            ts += Date().timeIntervalSince(t0)
            t0 = Date()
            let se = encode(pre.input)
            ss += Date().timeIntervalSince(t0)
            gt.append(try evaluate(image, teacherEmbedding: te, studentEmbedding: se, inputSize: pre.inputSize))
            crowd += dataset.annotations(ofImage: image.id).filter(\.isCrowd).count
            if let protocols {
                pe.append(try protocols.evaluate(EvaluationImage(name: image.fileName, teacherEmbedding: te, studentEmbedding: se,
                                                                 originalSize: pre.originalSize, inputSize: pre.inputSize)))
            }
        }
        return (gt, pe, crowd, ss, ts)
    }
}

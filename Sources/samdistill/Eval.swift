import ArgumentParser
import Distill
import Distributed
import Foundation
import SegmentAnything
import Tensor

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "mIoU of a student's masks against the teacher's, through the teacher's prompt encoder and mask decoder.",
        discussion: """
            Both embeddings (student's, teacher's) are decoded by the teacher checkpoint's prompt \
            encoder and mask decoder for the same prompts; the teacher's masks are the reference. \
            With --cache the teacher embeddings come from the feature cache (no teacher forward) \
            and masks are compared in each cached view's frame; with --images the teacher runs \
            and masks are compared at the original image size. Prompts (per protocol, \
            --points-per-image N per image, seeded): point = a random pixel of the teacher's mask \
            for a random point; two-point = that point plus one of the same mask at \
            --point-distance px; box = the bounding box of such a mask; grid = round(√N)² points \
            on a regular grid. --multimask reports 'top' (highest predicted IoU) and 'best3'. \
            Prints per-image rows and overall means with 95% bootstrap intervals (over images); \
            --json / --markdown write the same report. \
            With --annotations (a COCO instances JSON, polygons or RLE; requires --images, the \
            folder that file_name is relative to): every non-crowd annotation's bbox prompts the \
            decoder with the student's and with the teacher's embedding; mIoU against the \
            ground-truth masks, overall and by object size (small < 32², medium < 96², large, by \
            the annotation's area), with 95% bootstrap intervals over images. Only the annotated \
            images are evaluated; --prompts runs on them too (--prompts none: ground truth only). \
            --report DIR writes DIR/index.html, one self-contained page (opens offline): the mIoU \
            table, the teacher's and the student's masks on each photo with the prompt and the IoU \
            (the 24 worst and 4 best prompts), and with --metrics a training run's loss and mIoU curves.
            """)

    @Option(help: "The student: a training checkpoint, an exported student or a SAM/MobileSAM checkpoint (.safetensors/.pt).")
    var student: String

    @Option(help: "The teacher SAM checkpoint (its prompt encoder and mask decoder decode both embeddings).")
    var teacher: String

    @Option(help: "A feature cache (HDF5) whose embeddings come from this teacher.")
    var cache: String?

    @Option(help: "The cache split to evaluate.")
    var split: CacheSelection = .val

    @Option(help: "A folder of images (JPEG/PNG, recursive) instead of a cache.")
    var images: String?

    @Option(help: "COCO instances JSON: box-prompt mIoU against its ground truth (requires --images).")
    var annotations: String?

    @Option(help: ArgumentHelp("Prompt protocols, comma-separated: point, two-point, box, grid (none: only --annotations).",
                               valueName: "protocol,…"))
    var prompts = PromptList(protocols: [.point, .box])

    @Option(help: "Prompts per protocol per image (grid: round(√N)² points).")
    var pointsPerImage: Int = 8

    @Option(help: "Seed of the prompt draws and the bootstrap.")
    var seed: UInt64 = 0

    @Option(help: "Distance in pixels between the two points of the two-point protocol.")
    var pointDistance: Double = 200

    @Option(help: "Evaluate at most this many images (cache rows).")
    var maxImages: Int?

    @Flag(help: "Three masks per prompt: report the highest-predicted-IoU mask and the best of three.")
    var multimask = false

    @Option(help: "Write the report as JSON.")
    var json: String?

    @Option(help: "Write the report as Markdown.")
    var markdown: String?

    @Option(help: "Write a visual report (HTML, images embedded) to DIR/index.html.")
    var report: String?

    @Option(help: "A training run's metrics.jsonl: its loss and mIoU curves go into the --report page.")
    var metrics: String?

    @OptionGroup var runtime: RuntimeOptions

    func validate() throws {
        if (cache == nil) == (images == nil) { throw ValidationError("give exactly one of --cache FILE or --images DIR") }
        if annotations != nil && images == nil { throw ValidationError("--annotations needs --images DIR (the folder its file_name entries are relative to)") }
        if prompts.protocols.isEmpty && annotations == nil { throw ValidationError("--prompts: give at least one protocol") }
        if pointsPerImage < 1 { throw ValidationError("--points-per-image must be at least 1") }
        if !(pointDistance > 0) { throw ValidationError("--point-distance must be positive") }
        for (flag, path) in [("--student", student), ("--teacher", teacher)] + (cache.map { [("--cache", $0)] } ?? [])
            + (annotations.map { [("--annotations", $0)] } ?? []) {
            guard FileManager.default.fileExists(atPath: path) else { throw ValidationError("\(flag): no such file: \(path)") }
        }
        if let images {
            var d: ObjCBool = false
            guard FileManager.default.fileExists(atPath: images, isDirectory: &d), d.boolValue else {
                throw ValidationError("--images: no such folder: \(images)")
            }
        }
        if let report {
            if annotations != nil { throw ValidationError("--report is not implemented with --annotations (its ground-truth panels are not kept): evaluate the same --images without --annotations") }
            var d: ObjCBool = false
            if FileManager.default.fileExists(atPath: report, isDirectory: &d), !d.boolValue { throw ValidationError("--report: \(report) is a file, not a folder") }
        }
        if let metrics {
            guard report != nil else { throw ValidationError("--metrics is only used by --report DIR") }
            guard FileManager.default.fileExists(atPath: metrics) else { throw ValidationError("--metrics: no such file: \(metrics)") }
        }

    }

    func run() throws {
        if Communicator.world.isDistributed, annotations != nil || report != nil {
            throw ValidationError("eval under mpirun splits --cache rows or --images files over the ranks; --annotations and --report are not implemented with ranks: run them without mpirun")
        }
        var options = EvaluationOptions()
        options.prompts = prompts.protocols
        options.pointsPerImage = pointsPerImage
        options.seed = seed
        options.multimask = multimask
        options.pointDistance = pointDistance
        // The ground truth is read (and checked) before any weights load.
        let dataset = try annotations.map { try CocoDataset.read(URL(fileURLWithPath: $0)) }
        let studentEncoder = try SAMWeights.readStudent(URL(fileURLWithPath: student)).weights.encoder
        let encode = { studentEncoder.forward($0, mode: .inference) }
        let model = try SAMModel.load(contentsOf: URL(fileURLWithPath: teacher))
        let evaluator = Evaluator(model: model, options: options)
        evaluator.keepsReportSamples = self.report != nil
        // Under mpirun: rank r evaluates images r, r + N, …; the per-image results are gathered
        // in order (the report equals the one-process report) and rank 0 prints and writes.
        let parallel = DataParallel(.world)
        let seconds = { (s: [Double]) -> [Double] in var v = s; parallel.communicator.allreduceSum(&v); return v }  // Σ over ranks
        let report: EvaluationReport
        if let cache {
            let reader = try CacheReader(URL(fileURLWithPath: cache))
            let r = try evaluator.evaluateCache(reader, split: split.split, maxImages: maxImages, student: encode, studentImageSize: studentEncoder.imageSize,
                                                rowFilter: parallel.shard)
            let images = try parallel.gatherInterleaved(r.images)
            guard !images.isEmpty else { throw EvaluationError(file: cache, reason: "no complete rows in split '\(split.rawValue)'") }
            report = EvaluationReport(student: student, teacher: teacher, data: "\(cache) (split \(split.rawValue))", options: options,
                                      images: images, studentSeconds: seconds([r.studentSeconds])[0])
        } else if let annotations, let dataset {
            let gte = GroundTruthEvaluator(model: model, dataset: dataset, decoderBatch: options.decoderBatch)
            guard !gte.evaluatedImages(maxImages: maxImages).isEmpty else {
                throw EvaluationError(file: annotations, reason: "no image with a non-crowd annotation")
            }
            let r = try gte.evaluateImages(directory: URL(fileURLWithPath: images!), maxImages: maxImages, student: encode,
                                           studentImageSize: studentEncoder.imageSize, protocols: options.prompts.isEmpty ? nil : evaluator)
            var rep = EvaluationReport(student: student, teacher: teacher, data: "\(images!) with \(annotations)", options: options,
                                       images: r.protocols, studentSeconds: r.studentSeconds, teacherSeconds: r.teacherSeconds)
            rep.groundTruth = GroundTruthReport(annotationsFile: annotations, imagesDirectory: images!, images: r.groundTruth,
                                                crowdSkipped: r.crowdSkipped, bootstrapSamples: options.bootstrapSamples, seed: seed)
            report = rep
        } else {
            // The cache builder's listing: the same images in the same order as `cache` sees them.
            let folder = URL(fileURLWithPath: images!).standardizedFileURL
            var names = try FeatureCacheBuilder.listImages(folder)
            if let maxImages { names = Array(names.prefix(maxImages)) }
            let urls = names.map { folder.appendingPathComponent($0) }
            guard !urls.isEmpty else { throw EvaluationError(file: images!, reason: "no JPEG/PNG images") }
            let r = try evaluator.evaluateImages(parallel.shard(urls), names: parallel.shard(names), student: encode,
                                                 studentImageSize: studentEncoder.imageSize)
            let t = seconds([r.studentSeconds, r.teacherSeconds])
            report = EvaluationReport(student: student, teacher: teacher, data: images!, options: options,
                                      images: try parallel.gatherInterleaved(r.images), studentSeconds: t[0], teacherSeconds: t[1])
        }
        guard parallel.communicator.isRoot else { return }  // rank 0 reports
        print(report.table(), terminator: "")
        if let json { try AtomicFile.write(try report.json(), to: URL(fileURLWithPath: json)) }
        if let markdown { try AtomicFile.write(Data(report.markdown().utf8), to: URL(fileURLWithPath: markdown)) }
        if let directory = self.report {
            let page = try VisualReport(evaluation: report, samples: evaluator.reportSamples, photos: evaluator.reportPhotos,
                                        metrics: metrics.map { URL(fileURLWithPath: $0) }).write(to: URL(fileURLWithPath: directory))
            print("report: \(page.path)")
        }
    }
}

extension CacheSelection: ExpressibleByArgument {}

/// `--prompts point,two-point,box,grid` (or `none`): the evaluation's prompt protocols.
struct PromptList: ExpressibleByArgument {
    let protocols: [PromptProtocol]

    init(protocols: [PromptProtocol]) { self.protocols = protocols }

    init?(argument: String) {
        if argument.trimmingCharacters(in: .whitespaces) == "none" { self.init(protocols: []); return }
        let parsed = argument.split(separator: ",").map { PromptProtocol(rawValue: $0.trimmingCharacters(in: .whitespaces)) }
        guard !parsed.isEmpty, parsed.allSatisfy({ $0 != nil }) else { return nil }
        self.init(protocols: parsed.map { $0! })
    }

    var defaultValueDescription: String { protocols.map(\.rawValue).joined(separator: ",") }

    static var allValueStrings: [String] { PromptProtocol.allCases.map(\.rawValue) + ["none"] }
}

import Distributed
import Foundation
import SegmentAnything
import Tensor

// `samdistill run CONFIG`: cache → train → eval → export, as one config describes.
//
// Each step is skipped when its output exists and matches the config, and each is resumable:
// - cache (when data.images is set): the cache builder resumes (complete rows kept) and refuses
//   a cache built with other settings, naming the attribute;
// - train: runs, resumes from the last checkpoint when config.yaml in output_dir records the same
//   training settings, is skipped when the final checkpoint is there, and is refused when
//   output_dir holds a run of other settings;
// - eval: the initial student (eval.before) and the final one, on the cache's eval.split →
//   eval-init.{json,md}, eval-final.{json,md}, and after the final one the visual report
//   report/index.html (`VisualReport`: masks, mIoU table beside the initial one, curves);
// - export: the final checkpoint → export.path (with the teacher's prompt encoder and mask decoder
//   when export.full).
// Eval and export outputs are written atomically; `pipeline.json` in output_dir records, per
// step, the digest of the settings it was computed from and its time, and is rewritten after
// each step. A step whose record or output is missing or whose digest differs runs again.
//
// Under mpirun (`Communicator.world` with N > 1 ranks): training is data-parallel on every rank
// (Trainer); the cache rows are split over the ranks (one shard each, FeatureCacheBuilder); the
// initial evaluation and the held-out curve during training split the images over the ranks
// (gathered in order, rank 0 writes); the final evaluation with its visual report and the
// export run on rank 0 while the others wait at a barrier; rank 0 alone writes pipeline.json
// and logs.

extension CacheOptions {
    /// The cache a run config describes: images from data.images (only those of data.image_list
    /// when set), written to data.train[0], with data.views, data.cache_dtype, the run seed and
    /// the split of data.val_list / data.val_fraction. Errors name the key.
    public init(config cfg: RunConfig, configName: String) throws {
        guard let images = cfg.data.images else { throw CacheError("\(configName): data.images is not set (needed to build the cache)") }
        guard cfg.data.train.count == 1 else {
            throw CacheError("\(configName): data.train must name exactly one cache file to write (it names \(cfg.data.train.count))")
        }
        self.init(images: URL(fileURLWithPath: images), output: URL(fileURLWithPath: cfg.data.train[0]))
        views = cfg.data.views
        seed = Int(truncatingIfNeeded: cfg.seed)
        embeddingDType = cfg.data.cacheDType == "f32" ? "float32" : "float16"
        everythingMasks = cfg.data.everythingMasks
        if let l = cfg.data.imageList { imageList = (l, try SplitRule.listFileEntries(URL(fileURLWithPath: l))) }
        if let l = cfg.data.valList { split = try SplitRule.list(file: URL(fileURLWithPath: l)) } else if cfg.data.valFraction > 0 {
            split = .fraction(cfg.data.valFraction)
        }
    }
}

/// Runs a config end to end; see the comment at the top of Pipeline.swift.
public final class RunPipeline {
    public let config: RunConfig
    /// The config's file name, for messages.
    public let configName: String
    /// Progress lines and the trainer's progress line (stderr).
    public var showsProgress = true
    /// Where step messages go (default: stderr).
    public var log: (String) -> Void = { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }

    public var runDirectory: URL { URL(fileURLWithPath: config.outputDir) }
    public var manifestURL: URL { runDirectory.appendingPathComponent("pipeline.json") }
    public var exportURL: URL {
        config.export.path.hasPrefix("/") ? URL(fileURLWithPath: config.export.path) : runDirectory.appendingPathComponent(config.export.path)
    }
    public func evalURL(_ name: String, _ ext: String) -> URL { runDirectory.appendingPathComponent("eval-\(name).\(ext)") }
    public var reportURL: URL { runDirectory.appendingPathComponent("report/index.html") }

    /// What a run produced.
    public struct Outcome {
        public var cache: CacheSummary?
        public var trainedSteps: Int
        public var totalSteps: Int
        public var before: EvaluationReport?
        public var after: EvaluationReport?
        public var exported: URL?
        /// Seconds per step name (only the steps that ran in this call).
        public var seconds: [String: Double]
        /// Steps skipped because their output was up to date.
        public var skipped: [String]
    }

    /// `pipeline.json`: per step, the digest of its settings and its duration.
    struct Manifest: Codable {
        struct Entry: Codable { var digest: String; var seconds: Double; var finished: String }
        var steps: [String: Entry] = [:]
    }

    /// The ranks of the job (rank 0 of 1 without mpirun).
    public let communicator: Communicator

    public init(config: RunConfig, configName: String, communicator: Communicator = .world) {
        self.config = config
        self.configName = configName
        self.communicator = communicator
    }

    @discardableResult
    public func run() throws -> Outcome {
        let root = communicator.isRoot
        if !root { log = { _ in } }  // rank 0 logs
        if !config.stages.isEmpty { return try runStages() }  // PipelineStages.swift
        var outcome = Outcome(cache: nil, trainedSteps: 0, totalSteps: 0, before: nil, after: nil, exported: nil, seconds: [:], skipped: [])
        try FileManager.default.createDirectory(at: runDirectory, withIntermediateDirectories: true)
        var manifest = (try? JSONDecoder().decode(Manifest.self, from: Data(contentsOf: manifestURL))) ?? Manifest()
        func record(_ step: String, digest: String, seconds: Double) throws {
            manifest.steps[step] = .init(digest: digest, seconds: seconds, finished: ISO8601DateFormatter().string(from: Date()))
            outcome.seconds[step] = seconds
            guard root else { return }
            let e = JSONEncoder()
            e.outputFormatting = [.prettyPrinted, .sortedKeys]
            try AtomicFile.write(try e.encode(manifest), to: manifestURL)
        }
        func upToDate(_ step: String, _ digest: String, outputs: [URL]) -> Bool {
            manifest.steps[step]?.digest == digest && outputs.allSatisfy { FileManager.default.fileExists(atPath: $0.path) }
        }

        // 1. cache (the ranks split the rows: FeatureCacheBuilder)
        if config.data.images != nil {
            let t0 = Date()
            log("[1/5] cache: teacher embeddings → \(config.data.train[0])")
            var o = try CacheOptions(config: config, configName: configName)
            o.progress = showsProgress
            o.command = "samdistill run \(configName)"
            guard let teacherPath = config.teacher.checkpoint else { throw CacheError("\(configName): teacher.checkpoint is not set (needed to build the cache)") }
            let teacher = try TeacherEncoder.load(weights: URL(fileURLWithPath: teacherPath), config: nil)
            let builder = FeatureCacheBuilder(options: o, teacher: teacher,
                                              everything: try EverythingMasker.load(o.everythingMasks, checkpoint: teacherPath))
            builder.communicator = communicator
            if !root { builder.log = { _ in } }
            let summary = try builder.run()
            outcome.cache = summary
            if summary.rowsWritten == 0 {
                outcome.skipped.append("cache")
                log("      cache complete (\(summary.rowsAlreadyComplete) rows): nothing to do")
            } else {
                log(summary.report)
                try record("cache", digest: "", seconds: Date().timeIntervalSince(t0))
            }
        } else {
            log("[1/5] cache: data.images not set; training reads \(config.data.train.joined(separator: ", "))")
        }
        communicator.barrier()

        // The trainer (opened before the baseline evaluation: the settings digest needs its step count).
        let (train, validation) = try CacheTrainingData.open(config.data)
        let trainer = try Trainer(config: config, student: try Student.make(config), train: train, validation: validation,
                                  communicator: communicator)
        trainer.showsProgress = showsProgress
        outcome.totalSteps = trainer.totalSteps
        let trainDigest = try Self.digest(Self.trainingSettings(trainer.resolvedConfig).yaml())
        let finalCheckpoint = trainer.checkpointDirectory.appendingPathComponent(Trainer.checkpointName(trainer.totalSteps))
        let existing = Trainer.checkpoints(in: trainer.checkpointDirectory)
        if !existing.isEmpty {
            let stored = runDirectory.appendingPathComponent("config.yaml")
            let storedConfig = try? RunConfig.load(stored)
            guard let storedConfig, Self.trainingSettings(storedConfig) == Self.trainingSettings(trainer.resolvedConfig) else {
                throw TrainerError.runDirectoryInUse("\(runDirectory.path) holds checkpoints of a run with other training settings (see its config.yaml): choose another output_dir or remove it")
            }
        }

        // 2. eval of the initial student (before training), so a user sees the baseline early.
        let reader = try CacheReader(URL(fileURLWithPath: config.data.train[0]))
        let split = config.eval.split.split
        var evaluator: Evaluator?
        func makeEvaluator() throws -> Evaluator {
            if let evaluator { return evaluator }
            guard let t = config.teacher.checkpoint else { throw ConfigError(["teacher.checkpoint: required to evaluate (its prompt encoder and mask decoder decode both embeddings)"]) }
            let e = Evaluator(model: try SAMModel.load(contentsOf: URL(fileURLWithPath: t)), options: config.eval.evaluationOptions)
            e.remembersTeacherMasks = true  // the final evaluation reuses the initial one's teacher masks
            evaluator = e
            return e
        }
        let evalDigestBase = Self.digest(trainDigest + (try Self.evaluationSettings(config).yaml()))
        // withReport: also write report/index.html (part of the step's outputs); rank 0 alone runs
        // those. Without: every rank evaluates its share of the images (`DataParallel.shard`), the
        // results are gathered in order, rank 0 writes.
        let parallel = DataParallel(communicator)
        func evaluate(_ name: String, label: String, withReport: Bool = false, student encode: (Tensor) -> Tensor, imageSize: Int) throws -> EvaluationReport {
            let digest = Self.digest(evalDigestBase + name)
            let json = evalURL(name, "json"), md = evalURL(name, "md")
            if upToDate("eval-\(name)", digest, outputs: [json, md] + (withReport ? [reportURL] : [])),
               let r = try? EvaluationReport.read(json: Data(contentsOf: json)) {
                outcome.skipped.append("eval-\(name)")
                log("      eval (\(label)): \(json.lastPathComponent) is up to date")
                return r
            }
            let t0 = Date()
            let evaluator = try makeEvaluator()
            evaluator.keepsReportSamples = withReport
            defer { evaluator.reportSamples = []; evaluator.reportPhotos = [:] }
            let r = try evaluator.evaluateCache(reader, split: split, maxImages: config.eval.maxImages, student: encode, studentImageSize: imageSize,
                                                rowFilter: withReport ? { $0 } : parallel.shard)
            let images = withReport ? r.images : try parallel.gatherInterleaved(r.images)
            var seconds = [r.studentSeconds]
            if !withReport { communicator.allreduceSum(&seconds) }
            guard !images.isEmpty else {
                throw EvaluationError(file: config.data.train[0], reason: "no complete rows in split '\(config.eval.split.rawValue)' to evaluate (set data.val_list or data.val_fraction, or eval.split)")
            }
            let report = EvaluationReport(student: label, teacher: config.teacher.checkpoint ?? "", data: "\(config.data.train[0]) (split \(config.eval.split.rawValue))",
                                          options: config.eval.evaluationOptions, images: images, studentSeconds: seconds[0])
            if root {
                try AtomicFile.write(try report.json(), to: json)
                try AtomicFile.write(Data(report.markdown().utf8), to: md)
            }
            if withReport {
                let metrics = FileManager.default.fileExists(atPath: trainer.metricsURL.path) ? trainer.metricsURL : nil
                try VisualReport(evaluation: report, baseline: outcome.before, samples: evaluator.reportSamples, photos: evaluator.reportPhotos,
                                 metrics: metrics, finalStep: trainer.totalSteps).write(to: reportURL.deletingLastPathComponent())
                log("      report: \(reportURL.path)")
            }
            try record("eval-\(name)", digest: digest, seconds: Date().timeIntervalSince(t0))
            return report
        }
        if config.eval.before {
            log("[2/5] eval: the initial student (\(config.initialisation.typeName)) on split \(config.eval.split.rawValue)")
            // The trainer's student before `run` restores or trains anything: the initial weights.
            let initial = trainer.student
            outcome.before = try evaluate("init", label: "initial student (\(config.initialisation.typeName))",
                                          student: { initial.forward($0, mode: .inference) }, imageSize: initial.imageSize)
        }

        // The held-out mIoU curve: the evaluator on the student being trained, at each eval_every step.
        if config.eval.duringTraining {
            trainer.evaluatesHeldOutMasks(config.eval, cache: reader, evaluator: makeEvaluator)
        }

        // 3. train (after the baseline evaluation)
        if FileManager.default.fileExists(atPath: finalCheckpoint.path) {
            outcome.skipped.append("train")
            log("[3/5] train: \(finalCheckpoint.lastPathComponent) exists (step \(trainer.totalSteps)/\(trainer.totalSteps)): nothing to do")
        } else {
            let t0 = Date()
            let resume = !existing.isEmpty
            log("[3/5] train: \(trainer.totalSteps) steps of \(config.imagesPerStep) images → \(runDirectory.path)" + (resume ? " (resuming from \(existing.last!.lastPathComponent))" : ""))
            // Whatever was computed from an earlier final checkpoint is out of date now.
            manifest.steps["eval-final"] = nil
            manifest.steps["export"] = nil
            let ran = try trainer.run(resume: resume)
            outcome.trainedSteps = ran.count
            try record("train", digest: trainDigest, seconds: Date().timeIntervalSince(t0))
        }

        outcome.exported = exportURL
        // Rank 0 evaluates and exports; every rank leaves together (a staged run's next stage
        // starts from this one's outputs).
        guard root else { communicator.barrier(); return outcome }

        // 4. eval of the final student
        log("[4/5] eval: the trained student (\(finalCheckpoint.lastPathComponent)) on split \(config.eval.split.rawValue)")
        let finalEncoder = try SAMWeights.readStudent(finalCheckpoint).weights.encoder
        outcome.after = try evaluate("final", label: "trained student (\(finalCheckpoint.lastPathComponent))", withReport: true,
                                     student: { finalEncoder.forward($0, mode: .inference) }, imageSize: finalEncoder.imageSize)

        // 5. export
        let exportDigest = Self.digest(trainDigest + "export \(config.export.path) half \(config.export.half) full \(config.export.full)")
        if upToDate("export", exportDigest, outputs: [exportURL]) {
            outcome.skipped.append("export")
            log("[5/5] export: \(exportURL.path) is up to date")
        } else {
            let t0 = Date()
            let s = try Exporter.export(checkpoint: finalCheckpoint, to: exportURL, half: config.export.half, full: config.export.full,
                                        promptDecoderFrom: config.export.full ? config.teacher.checkpoint.map { URL(fileURLWithPath: $0) } : nil)
            log("[5/5] export: \(s.architecture), \(s.half ? "float16" : "float32"), \(s.bytes) bytes → \(s.output.path)")
            try record("export", digest: exportDigest, seconds: Date().timeIntervalSince(t0))
        }
        outcome.exported = exportURL
        communicator.barrier()
        return outcome
    }

    /// The settings that decide the trained weights: everything but the evaluation and export
    /// sections (changing the prompts evaluated must not retrain).
    static func trainingSettings(_ c: RunConfig) -> RunConfig {
        var t = c
        t.eval = EvalConfig()
        t.export = ExportConfig()
        return t
    }

    /// The settings that decide an evaluation report.
    static func evaluationSettings(_ c: RunConfig) -> RunConfig {
        var e = RunConfig()
        e.eval = c.eval
        e.teacher = c.teacher
        e.data = c.data
        return e
    }

    static func digest(_ text: String) -> String { Checksum.sha256(Data(text.utf8)) }

    /// The before/after table: per protocol and metric, mIoU [95% CI] of the initial and the
    /// trained student.
    public static func comparisonTable(before: EvaluationReport?, after: EvaluationReport) -> String {
        func ci(_ s: EvaluationReport.Summary) -> String { String(format: "%.3f [%.3f, %.3f]", s.miou, s.ciLow, s.ciHigh) }
        var out = "prompt     metric  images  prompts  before                 after                  gain\n"
        for a in after.summary {
            let b = before?.summary.first { $0.prompt == a.prompt && $0.metric == a.metric }
            let p = a.prompt.padding(toLength: 9, withPad: " ", startingAt: 0), m = a.metric.padding(toLength: 6, withPad: " ", startingAt: 0)
            let bText = (b.map(ci) ?? "—").padding(toLength: 21, withPad: " ", startingAt: 0)
            let gain = b.map { String(format: "%+.3f", a.miou - $0.miou) } ?? ""
            out += "\(p)  \(m)  \(String(format: "%6d  %7d", a.images, a.prompts))  \(bText)  \(ci(a).padding(toLength: 21, withPad: " ", startingAt: 0))  \(gain)\n"
        }
        return out
    }
}

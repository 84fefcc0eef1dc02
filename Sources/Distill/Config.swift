import Foundation
import Layers
import Optim
import Tensor
import SegmentAnything
import Yams

// The run configuration of `samdistill train` and `run`: one YAML file, decoded strictly. Every
// key has a fixed type; unknown keys, wrong types and impossible shapes are errors naming the full
// key path (`optimizer.weight_decayy: unknown key`). `--set a.b=v` overrides any key before
// decoding (v is read as a YAML scalar or flow value).
//
// Each section's keys are spelled once, in its `fields` list (a `ConfigField` per key: reading and
// the resolved YAML both walk it, ConfigFields.swift); the properties they fill carry the docs.
// `samdistill run CONFIG --print-config` prints every key resolved, defaults included.
// Sections: data (caches, splits, cache building, everything_masks), teacher, student (type
// tinyvit with a preset, conv, or repvit with a preset: EdgeSAM's encoder, trained multi-branch,
// exported fused), init (random | teacher_blocks | checkpoint), loss (mse |
// masked_mse | huber | l1 | prompt_in_the_loop, PromptInTheLoop.swift), optimizer (adamw),
// schedule (LearningRateSchedule; total_steps defaults to the run's steps), the run's scalars
// (batch_size (per rank in a data-parallel run), steps | epochs, sync_batchnorm, …), eval, export,
// output_dir, freeze, stage_loss, and stages
// (`samdistill run` trains them in order, each in output_dir/NAME from the previous one's final
// checkpoint, replacing steps, loss, optimizer, schedule, batch_size, grad_accumulation;
// PipelineStages.swift).

/// One or more problems with a configuration, each naming its key path.
public struct ConfigError: Error, CustomStringConvertible, Equatable {
    public var problems: [String]
    public init(_ problems: [String]) { self.problems = problems }
    public var description: String {
        problems.count == 1 ? "config: \(problems[0])" : "config has \(problems.count) problems:\n  " + problems.joined(separator: "\n  ")
    }
}

// MARK: - Sections

/// `data`: where the cached teacher embeddings come from and how the held-out split is chosen.
public struct DataConfig: Equatable, Sendable {
    /// Feature cache files (HDF5), read together.
    public var train: [String] = []
    /// Splits inside the caches.
    public var trainSplit = CacheSplit.train
    public var valSplit: CacheSplit? = .val
    /// Fraction of the training rows held out when the cache has no validation split (0: none).
    public var valFraction: Double = 0
    /// A text file of image ids (one per line) forming the validation set.
    public var valList: String? = nil
    /// Where `samdistill cache --config` reads images from (searched recursively); the cache it
    /// writes is `train[0]`.
    public var images: String? = nil
    /// A text file naming the images of `images` to cache (paths relative to it, one a line,
    /// `#` comments); absent: every JPEG/PNG under `images`.
    public var imageList: String? = nil
    /// Views per training image when caching (1 = plain SAM preprocessing).
    public var views: Int = 1
    /// Embedding storage in the cache: `f16` or `f32`.
    public var cacheDType: String = "f16"
    /// The teacher's everything-masks stored with each cache row (nil: none).
    public var everythingMasks: EverythingMaskSettings? = nil
    public init() {}
}

/// `teacher`: the checkpoint of the model whose embeddings are distilled (and the source of
/// `init: teacher_blocks`).
public struct TeacherConfig: Equatable, Sendable {
    public var checkpoint: String? = nil
    public init() {}
}

/// `student`: which architecture is trained.
public enum StudentConfig: Equatable, Sendable {
    case tinyViT(TinyViTConfig, preset: String?)
    case conv(ConvStudentConfig)
    case repViT(RepViTConfig, preset: String?)

    public var typeName: String {
        switch self { case .tinyViT: "tinyvit"; case .conv: "conv"; case .repViT: "repvit" }
    }
    public var imageSize: Int {
        switch self { case .tinyViT(let c, _): c.imageSize; case .conv(let c): c.imageSize; case .repViT(let c, _): c.imageSize }
    }
    public var inputChannels: Int {
        switch self { case .tinyViT(let c, _): c.inputChannels; case .conv(let c): c.inputChannels; case .repViT(let c, _): c.inputChannels }
    }
    /// (channels, grid side) of the student's output embedding.
    public var outputShape: (channels: Int, side: Int) {
        switch self {
        case .tinyViT(let c, _): (c.neckChannels, c.outputResolution)
        case .conv(let c): (c.outChannels, c.outputResolution)
        case .repViT(let c, _): (c.neckChannels, c.outputResolution)
        }
    }

    /// The network a run trains (the one place a student family is registered besides its
    /// config keys and `SAMEncoderConfig`).
    public func makeNetwork() -> any TrainableImageEncoder {
        switch self { case .tinyViT(let c, _): TinyViT(c); case .conv(let c): ConvStudent(c); case .repViT(let c, _): RepViT(c) }
    }

    /// The architecture as weights files name it (`SAMEncoderConfig.metadata`).
    public var encoderConfig: SAMEncoderConfig {
        switch self { case .tinyViT(let c, _): .tinyViT(c); case .conv(let c): .conv(c); case .repViT(let c, _): .repViT(c) }
    }

    /// Named TinyViT presets.
    public static let tinyViTPresets: [String: TinyViTConfig] = ["tinyvit_5m": .mobileSAM]
    /// Named RepViT presets.
    public static let repViTPresets: [String: RepViTConfig] = ["repvit_m1": .m1]
}

/// `init`: where the student's first weights come from.
public enum InitConfig: Equatable, Sendable {
    /// PyTorch's initialisation of the same modules, from the run seed.
    case random
    /// Depth pruning from the teacher: `blockMap[stage][i]` = the teacher block that student
    /// block i copies (nil: evenly spaced, see `DepthPruning.evenlySpaced`).
    case teacherBlocks(blockMap: [[Int]]?)
    /// A checkpoint of the same student (a run checkpoint or an exported .safetensors/.pt).
    case checkpoint(path: String)

    public var typeName: String {
        switch self { case .random: "random"; case .teacherBlocks: "teacher_blocks"; case .checkpoint: "checkpoint" }
    }
}

/// `loss`: what the student's embedding is compared with the teacher's by.
public enum LossConfig: Equatable, Sendable {
    case mse
    /// MSE with each channel weighed by the inverse of the teacher's variance in it over the batch
    /// (`channelNormalizedMSELoss`).
    case normalizedMSE
    case maskedMSE(MaskedMSENormalization)
    case huber(delta: Double)
    case l1
    /// Through the teacher's frozen decoder (`PromptInTheLoop`), not a function of the embeddings alone.
    case promptInTheLoop(PromptInTheLoopConfig)

    public var typeName: String {
        switch self {
        case .mse: "mse"; case .normalizedMSE: "normalized_mse"; case .maskedMSE: "masked_mse"; case .huber: "huber"; case .l1: "l1"
        case .promptInTheLoop: "prompt_in_the_loop"
        }
    }

    /// The loss of `prediction` against `target` (`regions`: each sample's unpadded region, used
    /// by masked_mse). Embedding losses only: prompt_in_the_loop needs the teacher's decoder and
    /// is evaluated by `PromptInTheLoop` (the trainer builds one).
    public func evaluate(_ prediction: Tensor, _ target: Tensor, regions: [ValidRegion]) -> LossResult {
        switch self {
        case .mse: mseLoss(prediction, target)
        case .normalizedMSE: channelNormalizedMSELoss(prediction, target)
        case .l1: l1Loss(prediction, target)
        case .huber(let delta): huberLoss(prediction, target, delta: delta)
        case .maskedMSE(let n): maskedMSELoss(prediction, target, regions: regions, normalization: n)
        case .promptInTheLoop:
            preconditionFailure("loss prompt_in_the_loop is not a function of the embeddings alone: evaluate it with PromptInTheLoop")
        }
    }
}

/// `optimizer`: AdamW's hyperparameters and gradient clipping (`max_grad_norm`, absent: none).
/// The learning rate comes from `schedule`.
public struct OptimizerConfig: Equatable, Sendable {
    public var adamW = AdamW.Configuration()
    public var maxGradNorm: Double? = nil
    public init() {}
}

/// `eval`: what `samdistill run` reports (mIoU of the student's masks against the teacher's, see
/// Evaluator.swift) and the trainer's periodic evaluation (embedding MSE and cosine on at most
/// `max_images` validation rows).
public struct EvalConfig: Equatable, Sendable {
    public struct Prompts: Equatable, Sendable {
        /// Prompt protocols: point, two-point, box, grid (`PromptProtocol`).
        public var types: [String] = ["point", "box"]
        /// Prompts per protocol per image.
        public var count: Int = 8
        public static var knownTypes: [String] { PromptProtocol.allCases.map(\.rawValue) }
    }
    public var prompts = Prompts()
    /// At most this many validation images per evaluation (nil: all).
    public var maxImages: Int? = nil
    /// Cache split the mIoU evaluation reads: train, val or all.
    public var split = CacheSelection.val
    /// Three masks per prompt (report top and best-of-3) instead of one.
    public var multimask = false
    /// Also evaluate the initial student (before training), for a before/after table.
    public var before = true
    /// Prompt-draw and bootstrap seed.
    public var seed: UInt64 = 0
    /// `samdistill run` also measures this mIoU at every `eval_every` step (logged as
    /// `miou_<prompt>` beside the embedding MSE: the held-out mIoU curve; costs one evaluation each).
    public var duringTraining = false
    public init() {}

    /// The evaluator's options for these settings.
    public var evaluationOptions: EvaluationOptions {
        var o = EvaluationOptions()
        o.prompts = prompts.types.compactMap(PromptProtocol.init(rawValue:))
        o.pointsPerImage = prompts.count
        o.multimask = multimask
        o.seed = seed
        return o
    }
}

/// `export`: the file `samdistill run` writes from the final checkpoint (relative paths are
/// inside output_dir).
public struct ExportConfig: Equatable, Sendable {
    public var path = "student.safetensors"
    /// Store float16.
    public var half = false
    /// Add the teacher's prompt encoder and mask decoder, so `samdistill segment` runs from the file.
    public var full = true
    public init() {}
}

/// One stage of a staged run: its name and its complete configuration (output_dir/NAME, init from
/// the previous stage's final checkpoint after the first).
public struct RunStage: Equatable, Sendable {
    public var name: String
    public var config: RunConfig

    /// The checkpoint the stage's training ends with (output_dir/checkpoints/step-N.safetensors).
    public var finalCheckpoint: String {
        URL(fileURLWithPath: config.outputDir).appendingPathComponent("checkpoints")
            .appendingPathComponent(Trainer.checkpointName(config.steps ?? 0)).path
    }
}

/// The whole run configuration.
public struct RunConfig: Equatable, Sendable {
    public var data = DataConfig()
    public var teacher = TeacherConfig()
    public var student: StudentConfig = .tinyViT(.mobileSAM, preset: "tinyvit_5m")
    public var initialisation: InitConfig = .random
    public var loss: LossConfig = .mse
    public var optimizer = OptimizerConfig()
    public var schedule: LearningRateSchedule = .constant(ConstantSchedule(lr: 1e-3))
    public var batchSize = 8
    public var gradAccumulation = 1
    /// Exactly one of `steps` and `epochs` is set.
    public var steps: Int? = 1000
    public var epochs: Double? = nil
    public var seed: UInt64 = 0
    public var checkpointEvery = 500
    public var keepLast = 3
    /// 0: no periodic evaluation.
    public var evalEvery = 0
    /// Progress line / plain log cadence (steps).
    public var logEvery = 10
    public var eval = EvalConfig()
    public var outputDir = "runs/run"
    /// Leading student units kept frozen (`patch_embed`, `layers.0`, … for TinyViT, in order from
    /// the input): they run as in inference, get no backward pass and are not optimised.
    public var freeze: [String] = []
    /// `stage_loss: {weight: W}`: also pull every trainable TinyViT stage output towards the
    /// teacher's (relative MSE, teacher run alongside); 0: off.
    public var stageLossWeight = 0.0
    /// Data-parallel runs (`mpirun -np N samdistill train`): BatchNorm's batch statistics over
    /// every rank's batch together (all-reduced per layer, forward and backward) instead of each
    /// rank's own batch. No effect in a one-process run.
    public var syncBatchNorm = false
    public var export = ExportConfig()
    /// The stages `samdistill run` chains (empty: one run of this config); each a complete config.
    public var stages: [RunStage] = []

    public init() {}

    /// Images per optimiser step (of one rank: `batch_size` is per rank).
    public var imagesPerStep: Int { batchSize * gradAccumulation }

    /// Optimiser steps of the run for a training set of `trainCount` images, with `ranks`
    /// data-parallel ranks (each step consumes ranks × imagesPerStep samples).
    public func totalSteps(trainCount: Int, ranks: Int = 1) -> Int {
        if let steps { return steps }
        return Int((epochs! * Double(trainCount) / Double(imagesPerStep * ranks)).rounded(.up))
    }
}

// MARK: - Loading

extension RunConfig {
    /// Reads `url`, applies the `--set` overrides (`key.path=value`) and decodes strictly.
    public static func load(_ url: URL, overrides: [String] = []) throws -> RunConfig {
        let text: String
        do { text = try String(contentsOf: url, encoding: .utf8) } catch {
            throw ConfigError(["\(url.path): cannot read (\(error.localizedDescription))"])
        }
        return try parse(text, overrides: overrides)
    }

    /// Parses YAML text, applies overrides, decodes strictly and validates.
    public static func parse(_ yaml: String, overrides: [String] = []) throws -> RunConfig {
        var root: Node
        do {
            root = try Yams.compose(yaml: yaml) ?? Node.mapping(Node.Mapping([]))
        } catch {
            throw ConfigError(["not valid YAML: \(error)"])
        }
        for o in overrides { root = try applyOverride(o, to: root) }
        // `stages` is read last, each stage as the rest of the config with its keys replaced.
        var stagesNode: Node?
        if let m = root.mapping, let node = m["stages"] {
            stagesNode = node
            root = Node.mapping(Node.Mapping(m.filter { $0.key.string != "stages" }.map { ($0.key, $0.value) }))
        }
        let r = NodeReader(root, path: "")
        var config = RunConfig(reading: r)
        if let stagesNode, let base = root.mapping {
            config.stages = readStages(stagesNode, base: base, config: config, sink: r.sink)
        }
        if !r.sink.problems.isEmpty { throw ConfigError(r.sink.problems) }
        return config
    }

    /// The keys a stage may set (replacing the top-level ones), besides its `name`.
    static let stageKeys: Set<String> = ["steps", "loss", "optimizer", "schedule", "batch_size", "grad_accumulation", "seed"]

    static func readStages(_ node: Node, base: Node.Mapping, config: RunConfig, sink: ProblemSink) -> [RunStage] {
        guard let list = node.sequence, !list.isEmpty else {
            sink.add("stages", "expected a non-empty list of stages ({name: …, steps: …, …})")
            return []
        }
        let baseProblems = Set(sink.problems)
        var stages: [RunStage] = []
        for (i, item) in list.enumerated() {
            let path = "stages[\(i)]"
            guard let m = item.mapping else { sink.add(path, "expected a mapping"); continue }
            var pairs = base.filter { pair in !m.contains { $0.key.string == pair.key.string } }.map { ($0.key, $0.value) }
            if m["steps"] != nil { pairs = pairs.filter { $0.0.string != "epochs" } }
            var name: String?
            for (k, v) in m {
                let key = k.string ?? "?"
                if key == "name" { name = v.string; continue }
                guard stageKeys.contains(key) else {
                    sink.add("\(path).\(key)", "unknown key (a stage sets name, \(stageKeys.sorted().joined(separator: ", ")))")
                    continue
                }
                pairs.append((k, v))
            }
            guard let name, !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" }) else {
                sink.add("\(path).name", "required: a directory name of letters, digits, _ and -")
                continue
            }
            if stages.contains(where: { $0.name == name }) { sink.add("\(path).name", "'\(name)' names two stages") }
            let r = NodeReader(Node.mapping(Node.Mapping(pairs)), path: "")
            var c = RunConfig(reading: r)
            for p in r.sink.problems where !baseProblems.contains(p) { sink.problems.append("\(path).\(p)") }
            guard c.steps != nil else { sink.add("\(path).steps", "required (a stage's length is given in steps)"); continue }
            c.outputDir = URL(fileURLWithPath: config.outputDir).appendingPathComponent(name).path
            if let previous = stages.last {
                c.initialisation = .checkpoint(path: previous.finalCheckpoint)
                c.eval.before = false
                c.data.images = nil  // the first stage built the cache
            }
            stages.append(RunStage(name: name, config: c))
        }
        return stages
    }

    /// `key.path=value`: sets (or adds) the key, creating intermediate mappings.
    static func applyOverride(_ override: String, to root: Node) throws -> Node {
        guard let eq = override.firstIndex(of: "=") else {
            throw ConfigError(["--set \(override): expected key.path=value"])
        }
        let keyPath = override[..<eq].split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard !keyPath.isEmpty, !keyPath.contains(where: \.isEmpty) else {
            throw ConfigError(["--set \(override): empty key in '\(override[..<eq])'"])
        }
        let valueText = String(override[override.index(after: eq)...])
        let value: Node
        do { value = try Yams.compose(yaml: valueText) ?? Node("", Tag(.null)) } catch {
            throw ConfigError(["--set \(keyPath.joined(separator: ".")): value '\(valueText)' is not valid YAML"])
        }
        func set(_ node: Node, _ keys: ArraySlice<String>, _ done: [String]) throws -> Node {
            guard let key = keys.first else { return value }
            var mapping: Node.Mapping
            if let m = node.mapping { mapping = m } else if node.scalar?.string.isEmpty ?? false || node.null != nil {
                mapping = Node.Mapping([])
            } else {
                throw ConfigError(["--set \((done + [key]).joined(separator: ".")): \(done.isEmpty ? "the config" : done.joined(separator: ".")) is not a mapping"])
            }
            let child = mapping[key] ?? Node.mapping(Node.Mapping([]))
            mapping[key] = try set(child, keys.dropFirst(), done + [key])
            return Node.mapping(mapping)
        }
        return try set(root, keyPath[...], [])
    }

    init(reading r: NodeReader) {
        self.init()
        r.read(Self.fields, into: &self)
        let gaveSteps = steps != nil && r.has("steps"), gaveEpochs = epochs != nil
        if gaveSteps && gaveEpochs { r.problem("steps", "give either steps or epochs, not both") }
        if gaveEpochs && !gaveSteps { steps = nil }
        if steps == nil && epochs == nil { steps = RunConfig().steps }
        if case .promptInTheLoop = loss, teacher.checkpoint == nil {
            r.problem("teacher", "checkpoint is required by loss type prompt_in_the_loop (its prompt encoder and mask decoder)")
        }
        if r.has("freeze") {
            switch student {
            case .tinyViT(let c, _):
                let units = ["patch_embed"] + (0..<c.depths.count).map { "layers.\($0)" }
                if freeze != Array(units.prefix(freeze.count)) {
                    r.problem("freeze", "must be the first units from the input, in order: a prefix of [\(units.joined(separator: ", "))], got [\(freeze.joined(separator: ", "))]")
                }
            case .conv, .repViT:
                if !freeze.isEmpty { r.problem("freeze", "freezing is implemented for tinyvit students only") }
            }
        }
        r.finish()
    }

    /// Every top-level key, in the order they are read and the resolved YAML lists them
    /// (`student` before `init`, `steps` before `schedule`, whose total_steps defaults to it).
    static let fields: [ConfigField<RunConfig>] = [
        .section("data", \.data, DataConfig.fields),
        .section("teacher", \.teacher, TeacherConfig.fields),
        ConfigField(key: "student", read: { c, r in
            if let s = r.object("student") { c.student = StudentConfig.read(s); s.finish() }
        }, write: { $0.student.configNode }),
        ConfigField(key: "init", read: { c, r in
            if let s = r.object("init") { c.initialisation = InitConfig.read(s, student: c.student); s.finish() }
        }, write: { $0.initialisation.configNode }),
        ConfigField(key: "loss", read: { c, r in
            if let s = r.object("loss") { c.loss = LossConfig.read(s); s.finish() }
        }, write: { $0.loss.configNode }),
        .section("optimizer", \.optimizer, OptimizerConfig.fields),
        .int("batch_size", \.batchSize, min: 1),
        .int("grad_accumulation", \.gradAccumulation, min: 1),
        .optional("steps", \.steps, check: { $0 < 1 ? "must be ≥ 1, got \($0)" : nil }),
        .optional("epochs", \.epochs, check: { $0 > 0 ? nil : "must be positive, got \($0)" }),
        ConfigField(key: "schedule", read: { c, r in
            guard let node = r.take("schedule") else { return }
            c.schedule = readSchedule(node, path: r.keyPath("schedule"), steps: c.steps, sink: r.sink) ?? c.schedule
        }, write: { c in (try? YAMLEncoder().encode(c.schedule)).flatMap { try? Yams.compose(yaml: $0) } }),
        .value("seed", \.seed),
        .int("checkpoint_every", \.checkpointEvery, min: 1),
        .int("keep_last", \.keepLast, min: 1),
        .int("eval_every", \.evalEvery, min: 0),
        .int("log_every", \.logEvery, min: 1),
        .section("eval", \.eval, EvalConfig.fields),
        .section("export", \.export, ExportConfig.fields),
        .value("output_dir", \.outputDir),
        .value("freeze", \.freeze),
        .value("sync_batchnorm", \.syncBatchNorm),
        ConfigField(key: "stage_loss", read: { c, r in
            guard let s = r.object("stage_loss") else { return }
            s.read(stageLossFields, into: &c)
            if c.student.typeName != "tinyvit", c.stageLossWeight > 0 { s.problem("weight", "stage_loss needs a tinyvit student") }
            if c.teacher.checkpoint == nil, c.stageLossWeight > 0 { r.problem("teacher", "checkpoint is required by stage_loss") }
            s.finish()
        }, write: { $0.stageLossWeight > 0 ? configMapping($0, stageLossFields) : nil }),
    ]

    static let stageLossFields: [ConfigField<RunConfig>] = [
        .value("weight", \.stageLossWeight, check: { $0 >= 0 ? nil : "must be non-negative, got \($0)" }),
    ]

    static func readSchedule(_ node: Node, path: String, steps: Int?, sink: ProblemSink) -> LearningRateSchedule? {
        guard var mapping = node.mapping else { sink.add(path, "expected a mapping"); return nil }
        if let type = mapping["type"]?.string, type != "constant", mapping["total_steps"] == nil {
            guard let steps else {
                sink.add(path + ".total_steps", "required when the run length is given in epochs")
                return nil
            }
            mapping["total_steps"] = Node(String(steps))
        }
        do {
            return try YAMLDecoder().decode(LearningRateSchedule.self, from: Node.mapping(mapping))
        } catch let e as DecodingError {
            sink.add(decodingError: e, under: path)
            return nil
        } catch {
            sink.add(path, "\(error)")
            return nil
        }
    }
}

extension DataConfig {
    static let fields: [ConfigField<DataConfig>] = [
        .value("train", \.train),
        .value("train_split", \.trainSplit),
        .optional("val_split", \.valSplit, writeNull: true),
        .value("val_fraction", \.valFraction, check: { (0..<1).contains($0) ? nil : "must be in [0, 1), got \($0)" }),
        .optional("val_list", \.valList),
        .optional("images", \.images),
        .optional("image_list", \.imageList),
        .int("views", \.views, min: 1),
        .value("cache_dtype", \.cacheDType, check: { ["f16", "f32"].contains($0) ? nil : "must be f16 or f32, got '\($0)'" }),
        .optionalSection("everything_masks", \.everythingMasks, EverythingMaskSettings.fields, empty: EverythingMaskSettings(),
                         problems: { $0.problems() }),
    ]
}

extension EverythingMaskSettings {
    static let fields: [ConfigField<EverythingMaskSettings>] = [
        .value("points_per_side", \.pointsPerSide), .value("fast", \.fast),
        .value("pred_iou_thresh", \.predIoUThresh), .value("stability_score_thresh", \.stabilityScoreThresh),
        .value("box_nms_thresh", \.boxNMSThresh), .value("max_masks", \.maxMasks), .value("max_counts", \.maxCounts),
    ]
}

extension TeacherConfig {
    static let fields: [ConfigField<TeacherConfig>] = [.optional("checkpoint", \.checkpoint)]
}

extension CacheSplit: ConfigChoice { var choiceName: String { name } }
extension CacheSelection: ConfigChoice { var choiceName: String { rawValue } }
extension PromptInTheLoopConfig.PointOutput: ConfigChoice { var choiceName: String { rawValue } }

extension TinyViTConfig {
    /// The `student: {type: tinyvit}` keys besides `type` and `preset`.
    static let fields: [ConfigField<TinyViTConfig>] = [
        .int("image_size", \.imageSize, min: 1), .int("input_channels", \.inputChannels, min: 1),
        .value("embed_dims", \.embedDims), .value("depths", \.depths), .value("num_heads", \.numHeads),
        .value("window_sizes", \.windowSizes),
        // Written resolved, so the resolved config says what ran.
        ConfigField(key: "merge_strides", read: ConfigField.optional("merge_strides", \.mergeStrides).read,
                    write: { $0.resolvedMergeStrides.configNode }),
        .value("mlp_ratio", \.mlpRatio), .optional("mlp_ratios", \.mlpRatios),
        .value("mbconv_expand_ratio", \.mbconvExpandRatio),
        .int("local_conv_size", \.localConvSize, min: 1), .int("neck_channels", \.neckChannels, min: 1),
        .optional("input_resize", \.inputResize),
    ]
}

extension ConvStudentConfig {
    /// The `student: {type: conv}` keys besides `type`.
    static let fields: [ConfigField<ConvStudentConfig>] = [
        .int("image_size", \.imageSize, min: 1), .int("input_channels", \.inputChannels, min: 1),
        .int("stem_channels", \.stemChannels, min: 1), .int("stem_stride", \.stemStride, min: 1),
        .value("channels", \.channels), .value("blocks", \.blocks), .value("strides", \.strides),
        .int("upsample_channels", \.upsampleChannels, min: 1), .int("out_channels", \.outChannels, min: 1),
    ]
}

extension RepViTConfig {
    /// The `student: {type: repvit}` keys besides `type` and `preset` (`fused` is what export
    /// writes, not a training key).
    static let fields: [ConfigField<RepViTConfig>] = [
        .int("image_size", \.imageSize, min: 1), .int("input_channels", \.inputChannels, min: 1),
        .value("embed_dims", \.embedDims), .value("depths", \.depths), .value("se_blocks", \.seBlocks),
        .int("fusion_channels", \.fusionChannels, min: 1), .int("neck_channels", \.neckChannels, min: 1),
    ]
}

extension StudentConfig {
    static func read(_ r: NodeReader) -> StudentConfig {
        let type = r.string("type") ?? "tinyvit"
        switch type {
        case "tinyvit":
            var (c, preset) = readPreset(r, tinyViTPresets, default: TinyViTConfig.mobileSAM)
            r.read(TinyViTConfig.fields, into: &c)
            let problems = c.problems()
            for p in problems { r.problemText(p) }
            if problems.isEmpty { c.mergeStrides = c.resolvedMergeStrides }  // explicit in the resolved config
            if problems.isEmpty { checkOutput(channels: c.neckChannels, side: c.outputResolution, imageSize: c.imageSize,
                                                    channelKey: "neck_channels", gridKey: "merge_strides", r) }
            return .tinyViT(c, preset: preset)
        case "conv":
            var c = ConvStudentConfig()
            r.read(ConvStudentConfig.fields, into: &c)
            let problems = c.problems()
            for p in problems { r.problemText(p) }
            if problems.isEmpty { checkOutput(channels: c.outChannels, side: c.outputResolution, imageSize: c.imageSize,
                                                    channelKey: "out_channels", gridKey: "strides", r) }
            return .conv(c)
        case "repvit":
            var (c, preset) = readPreset(r, repViTPresets, default: RepViTConfig.m1)
            r.read(RepViTConfig.fields, into: &c)
            if r.bool("fused") == true {
                r.problem("fused", "a student trains in the multi-branch form; `samdistill export` writes the fused one")
            }
            let problems = c.problems()
            for p in problems { r.problemText(p) }
            if problems.isEmpty { checkOutput(channels: c.neckChannels, side: c.outputResolution, imageSize: c.imageSize,
                                              channelKey: "neck_channels", gridKey: "image_size", r) }
            return .repViT(c, preset: preset)
        default:
            r.problem("type", "unknown student type '\(type)' (expected tinyvit, conv or repvit)")
            r.ignoreRest()
            return .tinyViT(.mobileSAM, preset: nil)
        }
    }

    /// The resolved `student` mapping.
    var configNode: Node {
        switch self {
        case .tinyViT(let c, let preset):
            configMapping(c, TinyViTConfig.fields, leading: [("type", Node("tinyvit")), ("preset", preset.map { Node($0) })])
        case .conv(let c):
            configMapping(c, ConvStudentConfig.fields, leading: [("type", Node("conv"))])
        case .repViT(let c, let preset):
            configMapping(c, RepViTConfig.fields, leading: [("type", Node("repvit")), ("preset", preset.map { Node($0) })])
        }
    }

    /// `preset:` of a student section: the named architecture (unknown names list the known
    /// ones) or `fallback` when absent; the name as given.
    static func readPreset<C>(_ r: NodeReader, _ presets: [String: C], default fallback: C) -> (C, String?) {
        guard let name = r.string("preset") else { return (fallback, nil) }
        if let p = presets[name] { return (p, name) }
        r.problem("preset", "unknown preset '\(name)' (known: \(presets.keys.sorted().joined(separator: ", ")))")
        return (fallback, name)
    }

    /// The student must produce SAM's embedding: 256 channels on an (image_size / 16)² grid
    /// (256×64×64 for a 1024 input), whatever the image size.
    static func checkOutput(channels: Int, side: Int, imageSize: Int, channelKey: String, gridKey: String,
                            _ r: NodeReader) {
        if channels != 256 {
            r.problem(channelKey, "the student's embedding has \(channels) channels; SAM's mask decoder needs 256")
        }
        if side * 16 != imageSize {
            r.problem(gridKey, "the student's output grid is \(side)×\(side) for a \(imageSize) input; it must be \(imageSize / 16)×\(imageSize / 16) (image_size / 16; 64×64 for 1024)")
        }
    }
}

extension InitConfig {
    static func read(_ r: NodeReader, student: StudentConfig) -> InitConfig {
        let type = r.string("type") ?? "random"
        switch type {
        case "random": return .random
        case "teacher_blocks":
            var map: [[Int]]? = nil
            if let node = r.take("block_map") {
                if let seq = node.sequence {
                    var m: [[Int]] = []
                    for (i, n) in seq.enumerated() {
                        if let l = r.intList(n, key: "block_map[\(i)]") { m.append(l) }
                    }
                    map = m
                } else { r.problem("block_map", "expected a list of lists of teacher block indices") }
            }
            if student.typeName != "tinyvit" { r.problem("type", "teacher_blocks needs a tinyvit student (the teacher is a TinyViT)") }
            if case .tinyViT(let c, _) = student, let map {
                if map.count != c.depths.count {
                    r.problem("block_map", "\(map.count) stages for a student with \(c.depths.count)")
                } else {
                    for (s, l) in map.enumerated() where l.count != c.depths[s] {
                        r.problem("block_map", "stage \(s) lists \(l.count) teacher blocks for \(c.depths[s]) student blocks")
                    }
                }
            }
            return .teacherBlocks(blockMap: map)
        case "checkpoint":
            guard let p = r.string("path") else { r.problem("path", "required for init type checkpoint"); return .random }
            return .checkpoint(path: p)
        default:
            r.problem("type", "unknown init type '\(type)' (expected random, teacher_blocks or checkpoint)")
            r.ignoreRest()
            return .random
        }
    }
}

extension LossConfig {
    static func read(_ r: NodeReader) -> LossConfig {
        let type = r.string("type") ?? "mse"
        switch type {
        case "mse": return .mse
        case "normalized_mse": return .normalizedMSE
        case "l1": return .l1
        case "huber":
            let delta = r.double("delta") ?? 1
            if !(delta > 0) { r.problem("delta", "must be positive, got \(delta)") }
            return .huber(delta: delta)
        case "masked_mse":
            let n = r.string("normalization") ?? "valid_elements"
            switch n {
            case "valid_elements": return .maskedMSE(.validElements)
            case "per_sample": return .maskedMSE(.perSample)
            default:
                r.problem("normalization", "unknown normalization '\(n)' (expected valid_elements or per_sample)")
                return .maskedMSE(.validElements)
            }
        case "prompt_in_the_loop":
            var c = PromptInTheLoopConfig()
            r.read(PromptInTheLoopConfig.fields, into: &c)
            return .promptInTheLoop(c)
        default:
            r.problem("type", "unknown loss '\(type)' (expected mse, normalized_mse, masked_mse, huber, l1 or prompt_in_the_loop)")
            r.ignoreRest()
            return .mse
        }
    }
}

extension PromptInTheLoopConfig {
    /// The `loss: {type: prompt_in_the_loop}` keys besides `type`.
    static let fields: [ConfigField<PromptInTheLoopConfig>] = [
        .int("prompts_per_image", \.promptsPerImage, min: 1),
        .value("box_fraction", \.boxFraction, check: { (0...1).contains($0) ? nil : "must be in [0, 1], got \($0)" }),
        .value("correction_rounds", \.correctionRounds, check: {
            $0 < 0 ? "must be ≥ 0, got \($0)"
                : $0 > 1 ? "must be 0 or 1 (a second round adds nothing in EdgeSAM's ablation), got \($0)" : nil
        }),
        .value("bce_weight", \.bceWeight, check: nonNegative),
        .value("dice_weight", \.diceWeight, check: nonNegative),
        .value("embedding_weight", \.embeddingWeight, check: nonNegative),
        .value("point_output", \.pointOutput),
        .value("correction_mask_input", \.correctionMaskInput),
        .value("two_point_fraction", \.twoPointFraction, check: { (0...1).contains($0) ? nil : "must be in [0, 1], got \($0)" }),
        .value("two_point_distance", \.twoPointDistance, check: { $0 > 0 ? nil : "must be positive, got \($0)" }),
        .value("all_outputs_weight", \.allOutputsWeight, check: nonNegative),
        .value("soft_targets", \.softTargets),
    ]
}

private func nonNegative(_ v: Double) -> String? { v >= 0 ? nil : "must be ≥ 0, got \(v)" }

extension OptimizerConfig {
    static let fields: [ConfigField<OptimizerConfig>] = [
        ConfigField(key: "type", read: { _, r in
            if let t = r.string("type"), t != "adamw" { r.problem("type", "unknown optimizer '\(t)' (expected adamw)") }
        }, write: { _ in Node("adamw") }),
        .value("beta1", \.adamW.beta1, check: { (0..<1).contains($0) ? nil : "must be in [0, 1)" }),
        .value("beta2", \.adamW.beta2, check: { (0..<1).contains($0) ? nil : "must be in [0, 1)" }),
        .value("eps", \.adamW.eps, check: { $0 >= 0 ? nil : "must be ≥ 0" }),
        .value("weight_decay", \.adamW.weightDecay, check: { $0 >= 0 ? nil : "must be ≥ 0" }),
        .optional("max_grad_norm", \.maxGradNorm, check: { $0 > 0 ? nil : "must be positive, got \($0)" }),
    ]
}

extension EvalConfig {
    static let fields: [ConfigField<EvalConfig>] = [
        .section("prompts", \.prompts, Prompts.fields),
        .optional("max_images", \.maxImages, check: { $0 < 1 ? "must be ≥ 1, got \($0)" : nil }),
        .value("split", \.split),
        .value("multimask", \.multimask),
        .value("before", \.before),
        .value("seed", \.seed),
        .value("during_training", \.duringTraining),
    ]
}

extension EvalConfig.Prompts {
    static let fields: [ConfigField<EvalConfig.Prompts>] = [
        .value("types", \.types, check: { t in
            if t.isEmpty { return "needs at least one prompt type" }
            guard let x = t.first(where: { !knownTypes.contains($0) }) else { return nil }
            return "unknown prompt type '\(x)' (known: \(knownTypes.joined(separator: ", ")))"
        }),
        .int("count", \.count, min: 1),
    ]
}

extension ExportConfig {
    static let fields: [ConfigField<ExportConfig>] = [
        .value("path", \.path, check: { $0.lowercased().hasSuffix(".safetensors") ? nil : "must be a .safetensors file, got '\($0)'" }),
        .value("half", \.half),
        .value("full", \.full),
    ]
}

// MARK: - Writing the resolved config

extension RunConfig {
    /// The resolved configuration as YAML (every key explicit; `steps` resolved by the caller
    /// when the run was given in epochs).
    public func yaml() throws -> String {
        try Yams.serialize(node: configMapping(self, Self.fields), sortKeys: false)
    }
}

extension InitConfig {
    /// The resolved `init` mapping.
    var configNode: Node {
        switch self {
        case .random: configMapping((), [], leading: [("type", Node("random"))])
        case .teacherBlocks(let m):
            configMapping((), [], leading: [("type", Node("teacher_blocks")),
                                            ("block_map", m.map { Node.sequence(Node.Sequence($0.map(\.configNode))) })])
        case .checkpoint(let p): configMapping((), [], leading: [("type", Node("checkpoint")), ("path", Node(p))])
        }
    }
}

extension LossConfig {
    /// The resolved `loss` mapping.
    var configNode: Node {
        let type = ("type", Node(typeName) as Node?)
        return switch self {
        case .mse, .normalizedMSE, .l1: configMapping((), [], leading: [type])
        case .huber(let d): configMapping((), [], leading: [type, ("delta", d.configNode)])
        case .maskedMSE(let norm):
            configMapping((), [], leading: [type, ("normalization", Node(norm == .perSample ? "per_sample" : "valid_elements"))])
        case .promptInTheLoop(let c): configMapping(c, PromptInTheLoopConfig.fields, leading: [type])
        }
    }
}

// MARK: - Strict reader over YAML nodes

/// Collects problems, each "key.path: message".
final class ProblemSink {
    var problems: [String] = []
    func add(_ path: String, _ message: String) { problems.append("\(path): \(message)") }

    /// A DecodingError from a nested Codable type, re-rooted under `path`.
    func add(decodingError e: DecodingError, under path: String) {
        func join(_ keys: [CodingKey]) -> String {
            ([path] + keys.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue })
                .joined(separator: ".").replacingOccurrences(of: ".[", with: "[")
        }
        switch e {
        case .keyNotFound(let key, let ctx): add(join(ctx.codingPath + [key]), "required key is missing")
        case .typeMismatch(let type, let ctx): add(join(ctx.codingPath), "expected \(Self.describe(type))")
        case .valueNotFound(let type, let ctx): add(join(ctx.codingPath), "expected \(Self.describe(type)), found null")
        case .dataCorrupted(let ctx):
            var msg = ctx.debugDescription
            if msg.hasPrefix("unknown key") { msg = "unknown key" + (msg.range(of: " (allowed").map { String(msg[$0.lowerBound...]) } ?? "") }
            add(join(ctx.codingPath), msg)
        @unknown default: add(path, "\(e)")
        }
    }

    static func describe(_ t: Any.Type) -> String {
        switch t {
        case is Int.Type: "an integer"
        case is Double.Type, is Float.Type: "a number"
        case is String.Type: "a string"
        case is Bool.Type: "a boolean"
        default: "\(t)"
        }
    }
}

/// A mapping node being read: typed getters record wrong types, `finish()` reports every key
/// that was not read as unknown.
final class NodeReader {
    let path: String
    let mapping: Node.Mapping?
    let sink: ProblemSink
    private var used = Set<String>()

    init(_ node: Node, path: String, sink: ProblemSink = ProblemSink()) {
        self.path = path
        self.sink = sink
        if let m = node.mapping { mapping = m } else {
            mapping = nil
            if node.null == nil { sink.add(path.isEmpty ? "(top level)" : path, "expected a mapping") }
        }
    }

    func keyPath(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }
    func problem(_ key: String, _ message: String) { sink.add(keyPath(key), message) }
    /// A problem text that starts with its relative key ("num_heads[1]: …").
    func problemText(_ text: String) { sink.problems.append(path.isEmpty ? text : "\(path).\(text)") }

    func has(_ key: String) -> Bool { mapping?[key] != nil }

    /// The node under `key` (marked as read); nil when absent.
    func take(_ key: String) -> Node? {
        used.insert(key)
        return mapping?[key]
    }

    func ignoreRest() {
        for (k, _) in mapping ?? Node.Mapping([]) { if let s = k.string { used.insert(s) } }
    }

    func finish() {
        for (k, _) in mapping ?? Node.Mapping([]) {
            let name = k.string ?? "\(k)"
            if !used.contains(name) { sink.add(keyPath(name), "unknown key") }
        }
    }

    func object(_ key: String) -> NodeReader? {
        guard let n = take(key) else { return nil }
        if n.null != nil { return nil }
        return NodeReader(n, path: keyPath(key), sink: sink)
    }

    private func scalarText(_ n: Node) -> String {
        if let s = n.scalar { return "'\(s.string)'" }
        return n.mapping != nil ? "a mapping" : "a list"
    }

    func int(_ n: Node, key: String, min: Int? = nil) -> Int? {
        guard n.scalar != nil, let v = n.int, n.scalar?.style == .plain || n.scalar?.style == .any else {
            sink.add(keyPath(key), "expected an integer, found \(scalarText(n))"); return nil
        }
        if let min, v < min { sink.add(keyPath(key), "must be ≥ \(min), got \(v)") }
        return v
    }

    func int(_ key: String, min: Int? = nil) -> Int? { take(key).flatMap { int($0, key: key, min: min) } }

    func double(_ n: Node, key: String) -> Double? {
        guard n.scalar != nil, let v = n.float, n.scalar?.style == .plain || n.scalar?.style == .any else {
            sink.add(keyPath(key), "expected a number, found \(scalarText(n))"); return nil
        }
        return v
    }

    func double(_ key: String) -> Double? { take(key).flatMap { double($0, key: key) } }

    func bool(_ key: String) -> Bool? { take(key).flatMap { bool($0, key: key) } }

    func bool(_ n: Node, key: String) -> Bool? {
        guard n.scalar != nil, let v = n.bool, n.scalar?.style == .plain || n.scalar?.style == .any else {
            sink.add(keyPath(key), "expected true or false, found \(scalarText(n))"); return nil
        }
        return v
    }

    func string(_ key: String) -> String? { take(key).flatMap { string($0, key: key) } }

    func string(_ n: Node, key: String) -> String? {
        guard let s = n.scalar, n.null == nil || s.style != .plain else {
            sink.add(keyPath(key), "expected a string, found \(n.null != nil ? "null" : scalarText(n))"); return nil
        }
        return s.string
    }

    func intList(_ n: Node, key: String) -> [Int]? {
        guard let seq = n.sequence else { sink.add(keyPath(key), "expected a list of integers, found \(scalarText(n))"); return nil }
        var out: [Int] = []
        for (i, e) in seq.enumerated() {
            guard let v = int(e, key: "\(key)[\(i)]") else { return nil }
            out.append(v)
        }
        return out
    }

    func intList(_ key: String) -> [Int]? { take(key).flatMap { intList($0, key: key) } }

    func stringList(_ key: String) -> [String]? { take(key).flatMap { stringList($0, key: key) } }

    func stringList(_ n: Node, key: String) -> [String]? {
        if let s = n.scalar, n.null == nil { return [s.string] }  // a single path is a one-element list
        guard let seq = n.sequence else { sink.add(keyPath(key), "expected a list of strings, found \(scalarText(n))"); return nil }
        var out: [String] = []
        for (i, e) in seq.enumerated() {
            guard let s = e.scalar else { sink.add(keyPath("\(key)[\(i)]"), "expected a string, found \(scalarText(e))"); return nil }
            out.append(s.string)
        }
        return out
    }
}

import Foundation
import Layers
import Optim
import Tensor
import SegmentAnything
import Yams

// The run configuration of `samdistill train`: one YAML file, decoded
// strictly. Every key has a fixed type; unknown keys, wrong types and impossible shapes are
// errors naming the full key path (`optimizer.weight_decayy: unknown key`). `--set a.b=v`
// overrides any key before decoding (v is read as a YAML scalar or flow value).
//
//     data:        {train: [cache.h5, …], train_split: train, val_split: val, val_fraction: 0.0, val_list: FILE}
//                  cache building (`samdistill cache --config`, `run`): images: DIR, image_list: FILE, views: 1, cache_dtype: f16,
//                  everything_masks: {points_per_side: 16, fast: true, pred_iou_thresh: 0.88, stability_score_thresh: 0.95,
//                   box_nms_thresh: 0.7, max_masks: 64, max_counts: 32768}
//                  (absent: none; `{}`: these defaults. Each row also stores the teacher's everything-masks,
//                  SAM's automatic mask generator on the row's image decoding its teacher embedding, on the
//                  256² low-res grid as RLE, at most max_masks masks / max_counts RLE counts a row;
//                  prompt_in_the_loop then samples its prompts from them. EverythingMasks.swift)
//     teacher:     {checkpoint: weights/mobile_sam.pt}
//     student:     {type: tinyvit, preset: tinyvit_5m, depths: [1, 1, 2, 1], …}   (TinyViTConfig keys)
//                  {type: conv, image_size: 1024, stem_channels: 32, channels: [...], blocks: [...], strides: [...], …}
//                  {type: repvit, preset: repvit_m1, embed_dims: [48, 96, 192, 384], depths: [3, 4, 16, 3],
//                   se_blocks: [0, 4, 8, …], fusion_channels: 256, neck_channels: 256}   (RepViTConfig keys; EdgeSAM's
//                  encoder, trained multi-branch, exported fused)
//     init:        {type: random} | {type: teacher_blocks, block_map: [[0], [1], [0, 5], [1]]} | {type: checkpoint, path: FILE}
//     loss:        {type: mse} | {type: masked_mse, normalization: valid_elements|per_sample} | {type: huber, delta: 1.0} | {type: l1}
//                  {type: prompt_in_the_loop, prompts_per_image: 16, box_fraction: 0.5, correction_rounds: 1,
//                   bce_weight: 1.0, dice_weight: 1.0, embedding_weight: 0.0}
//                  (EdgeSAM: the student's masks through the teacher's frozen prompt encoder and mask
//                  decoder, from teacher.checkpoint, learn the teacher's masks for K sampled point / box
//                  prompts per image (box with probability box_fraction; from the cache's everything-masks
//                  when it has them, data.everything_masks, else from random points), plus correction_rounds (0 or 1)
//                  rounds with a point where they disagree; BCE + Dice on the 256² low-res logits with
//                  these weights, plus embedding_weight · MSE of the embeddings. PromptInTheLoop.swift)
//     optimizer:   {type: adamw, lr: …, beta1, beta2, eps, weight_decay, max_grad_norm}
//     schedule:    LearningRateSchedule ({type: warmup_cosine, peak_lr, …}; total_steps defaults to the run's steps)
//     batch_size, grad_accumulation, steps | epochs, seed, checkpoint_every, keep_last, eval_every, log_every
//     eval:        {prompts: {types: [point, two-point, box], count: 8}, max_images: N, split, before, during_training}
//     output_dir:  runs/NAME
//     freeze:      [patch_embed, layers.0]   (leading TinyViT units kept as initialised)
//     stages:      [{name: mse, steps: 150}, {name: pitl, steps: 50, loss: {type: prompt_in_the_loop}}]
//                  (`samdistill run` trains the stages in order, each a run of its own in output_dir/NAME,
//                  each after the first starting from the previous one's final checkpoint; a stage
//                  replaces the top-level steps, loss, optimizer, schedule, batch_size, grad_accumulation
//                  with its own; eval.before only for the first; PipelineStages.swift)

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
public struct DataConfig: Codable, Equatable, Sendable {
    /// Feature cache files (HDF5), read together.
    public var train: [String] = []
    /// Split names inside the caches.
    public var trainSplit: String = "train"
    public var valSplit: String? = "val"
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

    enum CodingKeys: String, CodingKey {
        case train, trainSplit = "train_split", valSplit = "val_split", valFraction = "val_fraction", valList = "val_list"
        case images, imageList = "image_list", views, cacheDType = "cache_dtype", everythingMasks = "everything_masks"
    }
    public init() {}
}

/// `teacher`: the checkpoint of the model whose embeddings are distilled (and the source of
/// `init: teacher_blocks`).
public struct TeacherConfig: Codable, Equatable, Sendable {
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
        case .tinyViT(let c, _): (c.neckChannels, c.stageResolutions.last!)
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
    case maskedMSE(MaskedMSENormalization)
    case huber(delta: Double)
    case l1
    /// Through the teacher's frozen decoder (`PromptInTheLoop`), not a function of the embeddings alone.
    case promptInTheLoop(PromptInTheLoopConfig)

    public var typeName: String {
        switch self {
        case .mse: "mse"; case .maskedMSE: "masked_mse"; case .huber: "huber"; case .l1: "l1"
        case .promptInTheLoop: "prompt_in_the_loop"
        }
    }

    /// The loss of `prediction` against `target` (`regions`: each sample's unpadded region, used
    /// by masked_mse). Embedding losses only: prompt_in_the_loop needs the teacher's decoder and
    /// is evaluated by `PromptInTheLoop` (the trainer builds one).
    public func evaluate(_ prediction: Tensor, _ target: Tensor, regions: [ValidRegion]) -> LossResult {
        switch self {
        case .mse: mseLoss(prediction, target)
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
public struct EvalConfig: Codable, Equatable, Sendable {
    public struct Prompts: Codable, Equatable, Sendable {
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

    enum CodingKeys: String, CodingKey { case prompts, maxImages = "max_images", split, multimask, before, seed, duringTraining = "during_training" }
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
public struct ExportConfig: Codable, Equatable, Sendable {
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
    public var export = ExportConfig()
    /// The stages `samdistill run` chains (empty: one run of this config); each a complete config.
    public var stages: [RunStage] = []

    public init() {}

    /// Images per optimiser step.
    public var imagesPerStep: Int { batchSize * gradAccumulation }

    /// Optimiser steps of the run for a training set of `trainCount` images.
    public func totalSteps(trainCount: Int) -> Int {
        if let steps { return steps }
        return Int((epochs! * Double(trainCount) / Double(imagesPerStep)).rounded(.up))
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
    static let stageKeys: Set<String> = ["steps", "loss", "optimizer", "schedule", "batch_size", "grad_accumulation"]

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
        let d = RunConfig()
        self.init()
        if let s = r.object("data") { data = DataConfig(reading: s); s.finish() }
        if let s = r.object("teacher") {
            teacher.checkpoint = s.string("checkpoint")
            s.finish()
        }
        if let s = r.object("student") { student = StudentConfig.read(s); s.finish() }
        if let s = r.object("init") { initialisation = InitConfig.read(s, student: student); s.finish() }
        if let s = r.object("loss") { loss = LossConfig.read(s); s.finish() }
        if case .promptInTheLoop = loss, teacher.checkpoint == nil {
            r.problem("teacher", "checkpoint is required by loss type prompt_in_the_loop (its prompt encoder and mask decoder)")
        }
        if let s = r.object("optimizer") { optimizer = OptimizerConfig(reading: s); s.finish() }
        batchSize = r.int("batch_size", min: 1) ?? d.batchSize
        gradAccumulation = r.int("grad_accumulation", min: 1) ?? d.gradAccumulation
        let steps = r.int("steps", min: 1), epochs = r.double("epochs")
        switch (steps, epochs) {
        case (nil, nil): self.steps = d.steps; self.epochs = nil
        case (let s?, nil): self.steps = s; self.epochs = nil
        case (nil, let e?):
            self.steps = nil; self.epochs = e
            if !(e > 0) { r.problem("epochs", "must be positive, got \(e)") }
        case (_?, _?): r.problem("steps", "give either steps or epochs, not both")
        }
        if let s = r.int("seed", min: 0) { seed = UInt64(s) }
        checkpointEvery = r.int("checkpoint_every", min: 1) ?? d.checkpointEvery
        keepLast = r.int("keep_last", min: 1) ?? d.keepLast
        evalEvery = r.int("eval_every", min: 0) ?? d.evalEvery
        logEvery = r.int("log_every", min: 1) ?? d.logEvery
        if let s = r.object("eval") { eval = EvalConfig(reading: s); s.finish() }
        if let s = r.object("export") {
            export.path = s.string("path") ?? export.path
            export.half = s.bool("half") ?? export.half
            export.full = s.bool("full") ?? export.full
            if !export.path.lowercased().hasSuffix(".safetensors") { s.problem("path", "must be a .safetensors file, got '\(export.path)'") }
            s.finish()
        }
        if let f = r.stringList("freeze") {
            freeze = f
            switch student {
            case .tinyViT(let c, _):
                let units = ["patch_embed"] + (0..<c.depths.count).map { "layers.\($0)" }
                if f != Array(units.prefix(f.count)) {
                    r.problem("freeze", "must be the first units from the input, in order: a prefix of [\(units.joined(separator: ", "))], got [\(f.joined(separator: ", "))]")
                }
            case .conv, .repViT:
                if !f.isEmpty { r.problem("freeze", "freezing is implemented for tinyvit students only") }
            }
        }
        if let s = r.object("stage_loss") {
            stageLossWeight = s.double("weight") ?? 1
            if !(stageLossWeight >= 0) { s.problem("weight", "must be non-negative, got \(stageLossWeight)") }
            if student.typeName != "tinyvit", stageLossWeight > 0 { s.problem("weight", "stage_loss needs a tinyvit student") }
            if teacher.checkpoint == nil, stageLossWeight > 0 { r.problem("teacher", "checkpoint is required by stage_loss") }
            s.finish()
        }
        outputDir = r.string("output_dir") ?? d.outputDir
        // The schedule last: its total_steps defaults to the run's steps.
        if let node = r.take("schedule") {
            schedule = Self.readSchedule(node, path: r.keyPath("schedule"), steps: self.steps, sink: r.sink) ?? schedule
        }
        r.finish()
    }

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
    init(reading r: NodeReader) {
        self.init()
        if let v = r.stringList("train") { train = v }
        trainSplit = r.string("train_split") ?? trainSplit
        if let v = r.take("val_split") {
            if v.null != nil { valSplit = nil } else if let s = v.string, v.scalar != nil { valSplit = s } else {
                r.problem("val_split", "expected a string")
            }
        }
        if let f = r.double("val_fraction") {
            valFraction = f
            if !(0..<1).contains(f) { r.problem("val_fraction", "must be in [0, 1), got \(f)") }
        }
        valList = r.string("val_list")
        images = r.string("images")
        imageList = r.string("image_list")
        if let v = r.int("views") {
            views = v
            if v < 1 { r.problem("views", "must be at least 1, got \(v)") }
        }
        if let d = r.string("cache_dtype") {
            cacheDType = d
            if !["f16", "f32"].contains(d) { r.problem("cache_dtype", "must be f16 or f32, got '\(d)'") }
        }
        if let e = r.object("everything_masks") {
            var m = EverythingMaskSettings()
            m.pointsPerSide = e.int("points_per_side") ?? m.pointsPerSide
            m.fast = e.bool("fast") ?? m.fast
            m.predIoUThresh = e.double("pred_iou_thresh") ?? m.predIoUThresh
            m.stabilityScoreThresh = e.double("stability_score_thresh") ?? m.stabilityScoreThresh
            m.boxNMSThresh = e.double("box_nms_thresh") ?? m.boxNMSThresh
            m.maxMasks = e.int("max_masks") ?? m.maxMasks
            m.maxCounts = e.int("max_counts") ?? m.maxCounts
            m.problems().forEach(e.problemText)
            e.finish()
            everythingMasks = m
        }
    }
}

extension StudentConfig {
    static func read(_ r: NodeReader) -> StudentConfig {
        let type = r.string("type") ?? "tinyvit"
        switch type {
        case "tinyvit":
            var c = TinyViTConfig.mobileSAM
            let preset = r.string("preset")
            if let preset {
                if let p = tinyViTPresets[preset] { c = p } else {
                    r.problem("preset", "unknown preset '\(preset)' (known: \(tinyViTPresets.keys.sorted().joined(separator: ", ")))")
                }
            }
            c.imageSize = r.int("image_size", min: 1) ?? c.imageSize
            c.inputChannels = r.int("input_channels", min: 1) ?? c.inputChannels
            c.embedDims = r.intList("embed_dims") ?? c.embedDims
            c.depths = r.intList("depths") ?? c.depths
            c.numHeads = r.intList("num_heads") ?? c.numHeads
            c.windowSizes = r.intList("window_sizes") ?? c.windowSizes
            if let m = r.take("merge_strides") {
                if m.null != nil { c.mergeStrides = nil } else { c.mergeStrides = r.intList(m, key: "merge_strides") }
            }
            if let v = r.double("mlp_ratio") { c.mlpRatio = Float(v) }
            if let v = r.double("mbconv_expand_ratio") { c.mbconvExpandRatio = Float(v) }
            c.localConvSize = r.int("local_conv_size", min: 1) ?? c.localConvSize
            c.neckChannels = r.int("neck_channels", min: 1) ?? c.neckChannels
            let problems = c.problems()
            for p in problems { r.problemText(p) }
            if problems.isEmpty { c.mergeStrides = c.resolvedMergeStrides }  // explicit in the resolved config
            if problems.isEmpty { checkOutput(channels: c.neckChannels, side: c.stageResolutions.last!, imageSize: c.imageSize,
                                                    channelKey: "neck_channels", gridKey: "merge_strides", r) }
            return .tinyViT(c, preset: preset)
        case "conv":
            var c = ConvStudentConfig()
            c.imageSize = r.int("image_size", min: 1) ?? c.imageSize
            c.inputChannels = r.int("input_channels", min: 1) ?? c.inputChannels
            c.stemChannels = r.int("stem_channels", min: 1) ?? c.stemChannels
            c.stemStride = r.int("stem_stride", min: 1) ?? c.stemStride
            c.channels = r.intList("channels") ?? c.channels
            c.blocks = r.intList("blocks") ?? c.blocks
            c.strides = r.intList("strides") ?? c.strides
            c.upsampleChannels = r.int("upsample_channels", min: 1) ?? c.upsampleChannels
            c.outChannels = r.int("out_channels", min: 1) ?? c.outChannels
            let problems = c.problems()
            for p in problems { r.problemText(p) }
            if problems.isEmpty { checkOutput(channels: c.outChannels, side: c.outputResolution, imageSize: c.imageSize,
                                                    channelKey: "out_channels", gridKey: "strides", r) }
            return .conv(c)
        case "repvit":
            var c = RepViTConfig.m1
            let preset = r.string("preset")
            if let preset {
                if let p = repViTPresets[preset] { c = p } else {
                    r.problem("preset", "unknown preset '\(preset)' (known: \(repViTPresets.keys.sorted().joined(separator: ", ")))")
                }
            }
            c.imageSize = r.int("image_size", min: 1) ?? c.imageSize
            c.inputChannels = r.int("input_channels", min: 1) ?? c.inputChannels
            c.embedDims = r.intList("embed_dims") ?? c.embedDims
            c.depths = r.intList("depths") ?? c.depths
            c.seBlocks = r.intList("se_blocks") ?? c.seBlocks
            c.fusionChannels = r.int("fusion_channels", min: 1) ?? c.fusionChannels
            c.neckChannels = r.int("neck_channels", min: 1) ?? c.neckChannels
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
            c.promptsPerImage = r.int("prompts_per_image", min: 1) ?? c.promptsPerImage
            if let v = r.double("box_fraction") {
                c.boxFraction = v
                if !(0...1).contains(v) { r.problem("box_fraction", "must be in [0, 1], got \(v)") }
            }
            if let v = r.int("correction_rounds", min: 0) {
                c.correctionRounds = v
                if v > 1 { r.problem("correction_rounds", "must be 0 or 1 (a second round adds nothing in EdgeSAM's ablation), got \(v)") }
            }
            let weights: [(String, WritableKeyPath<PromptInTheLoopConfig, Double>)] =
                [("bce_weight", \.bceWeight), ("dice_weight", \.diceWeight), ("embedding_weight", \.embeddingWeight)]
            for (key, path) in weights {
                guard let v = r.double(key) else { continue }
                c[keyPath: path] = v
                if !(v >= 0) { r.problem(key, "must be ≥ 0, got \(v)") }
            }
            return .promptInTheLoop(c)
        default:
            r.problem("type", "unknown loss '\(type)' (expected mse, masked_mse, huber, l1 or prompt_in_the_loop)")
            r.ignoreRest()
            return .mse
        }
    }
}

extension OptimizerConfig {
    init(reading r: NodeReader) {
        self.init()
        let type = r.string("type") ?? "adamw"
        if type != "adamw" { r.problem("type", "unknown optimizer '\(type)' (expected adamw)") }
        var a = AdamW.Configuration()
        if let v = r.double("beta1") { a.beta1 = v; if !(0..<1).contains(v) { r.problem("beta1", "must be in [0, 1)") } }
        if let v = r.double("beta2") { a.beta2 = v; if !(0..<1).contains(v) { r.problem("beta2", "must be in [0, 1)") } }
        if let v = r.double("eps") { a.eps = v; if !(v >= 0) { r.problem("eps", "must be ≥ 0") } }
        if let v = r.double("weight_decay") { a.weightDecay = v; if !(v >= 0) { r.problem("weight_decay", "must be ≥ 0") } }
        adamW = a
        if let n = r.take("max_grad_norm"), n.null == nil {
            if let v = r.double(n, key: "max_grad_norm") {
                maxGradNorm = v
                if !(v > 0) { r.problem("max_grad_norm", "must be positive, got \(v)") }
            }
        }
    }
}

extension EvalConfig {
    init(reading r: NodeReader) {
        self.init()
        if let p = r.object("prompts") {
            if let t = p.stringList("types") {
                prompts.types = t
                for x in t where !Prompts.knownTypes.contains(x) {
                    p.problem("types", "unknown prompt type '\(x)' (known: \(Prompts.knownTypes.joined(separator: ", ")))")
                }
                if t.isEmpty { p.problem("types", "needs at least one prompt type") }
            }
            prompts.count = p.int("count", min: 1) ?? prompts.count
            p.finish()
        }
        maxImages = r.int("max_images", min: 1)
        if let v = r.string("split") {
            if let s = CacheSelection(rawValue: v) { split = s } else { r.problem("split", "must be train, val or all, got '\(v)'") }
        }
        multimask = r.bool("multimask") ?? multimask
        before = r.bool("before") ?? before
        if let v = r.int("seed", min: 0) { seed = UInt64(v) }
        duringTraining = r.bool("during_training") ?? duringTraining
    }
}

// MARK: - Writing the resolved config

extension RunConfig {
    /// The resolved configuration as YAML (every key explicit; `steps` resolved by the caller
    /// when the run was given in epochs).
    public func yaml() throws -> String {
        func n(_ s: String) -> Node { Node(s) }
        func n(_ i: Int) -> Node { Node(String(i), Tag(.int)) }
        func n(_ d: Double) -> Node { Node(String(d), Tag(.float)) }
        func n(_ f: Float) -> Node { Node(String(Double(f)), Tag(.float)) }
        func n(_ b: Bool) -> Node { Node(b ? "true" : "false", Tag(.bool)) }
        func list(_ a: [Int]) -> Node { Node.sequence(Node.Sequence(a.map { n($0) }, Tag(.seq), .flow)) }
        func strings(_ a: [String]) -> Node { Node.sequence(Node.Sequence(a.map { n($0) }, Tag(.seq), .flow)) }
        func map(_ pairs: [(String, Node?)]) -> Node {
            Node.mapping(Node.Mapping(pairs.compactMap { k, v in v.map { (Node(k), $0) } }))
        }
        let null = Node("null", Tag(.null))

        var student: Node
        switch self.student {
        case .tinyViT(let c, let preset):
            student = map([("type", n("tinyvit")), ("preset", preset.map { n($0) }),
                           ("image_size", n(c.imageSize)), ("input_channels", n(c.inputChannels)),
                           ("embed_dims", list(c.embedDims)), ("depths", list(c.depths)),
                           ("num_heads", list(c.numHeads)), ("window_sizes", list(c.windowSizes)),
                           ("merge_strides", list(c.resolvedMergeStrides)), ("mlp_ratio", n(c.mlpRatio)),
                           ("mbconv_expand_ratio", n(c.mbconvExpandRatio)), ("local_conv_size", n(c.localConvSize)),
                           ("neck_channels", n(c.neckChannels))])
        case .conv(let c):
            student = map([("type", n("conv")), ("image_size", n(c.imageSize)), ("input_channels", n(c.inputChannels)),
                           ("stem_channels", n(c.stemChannels)), ("stem_stride", n(c.stemStride)),
                           ("channels", list(c.channels)), ("blocks", list(c.blocks)), ("strides", list(c.strides)),
                           ("upsample_channels", n(c.upsampleChannels)), ("out_channels", n(c.outChannels))])
        case .repViT(let c, let preset):
            student = map([("type", n("repvit")), ("preset", preset.map { n($0) }),
                           ("image_size", n(c.imageSize)), ("input_channels", n(c.inputChannels)),
                           ("embed_dims", list(c.embedDims)), ("depths", list(c.depths)), ("se_blocks", list(c.seBlocks)),
                           ("fusion_channels", n(c.fusionChannels)), ("neck_channels", n(c.neckChannels))])
        }
        let initNode: Node
        switch initialisation {
        case .random: initNode = map([("type", n("random"))])
        case .teacherBlocks(let m):
            initNode = map([("type", n("teacher_blocks")),
                            ("block_map", m.map { Node.sequence(Node.Sequence($0.map(list))) })])
        case .checkpoint(let p): initNode = map([("type", n("checkpoint")), ("path", n(p))])
        }
        let lossNode: Node
        switch loss {
        case .mse: lossNode = map([("type", n("mse"))])
        case .l1: lossNode = map([("type", n("l1"))])
        case .huber(let d): lossNode = map([("type", n("huber")), ("delta", n(d))])
        case .maskedMSE(let norm):
            lossNode = map([("type", n("masked_mse")),
                            ("normalization", n(norm == .perSample ? "per_sample" : "valid_elements"))])
        case .promptInTheLoop(let c):
            lossNode = map([("type", n("prompt_in_the_loop")), ("prompts_per_image", n(c.promptsPerImage)),
                            ("box_fraction", n(c.boxFraction)), ("correction_rounds", n(c.correctionRounds)),
                            ("bce_weight", n(c.bceWeight)), ("dice_weight", n(c.diceWeight)),
                            ("embedding_weight", n(c.embeddingWeight))])
        }
        let a = optimizer.adamW
        let scheduleNode = try Yams.compose(yaml: YAMLEncoder().encode(schedule))!
        let root = map([
            ("data", map([("train", strings(data.train)), ("train_split", n(data.trainSplit)),
                          ("val_split", data.valSplit.map { n($0) } ?? null), ("val_fraction", n(data.valFraction)),
                          ("val_list", data.valList.map { n($0) }), ("images", data.images.map { n($0) }), ("image_list", data.imageList.map { n($0) }),
                          ("views", n(data.views)), ("cache_dtype", n(data.cacheDType)),
                          ("everything_masks", data.everythingMasks.map { m in
                              map([("points_per_side", n(m.pointsPerSide)), ("fast", n(m.fast)), ("pred_iou_thresh", n(m.predIoUThresh)),
                                   ("stability_score_thresh", n(m.stabilityScoreThresh)), ("box_nms_thresh", n(m.boxNMSThresh)),
                                   ("max_masks", n(m.maxMasks)), ("max_counts", n(m.maxCounts))])
                          })])),
            ("teacher", map([("checkpoint", teacher.checkpoint.map { n($0) })])),
            ("student", student),
            ("init", initNode),
            ("loss", lossNode),
            ("optimizer", map([("type", n("adamw")), ("beta1", n(a.beta1)), ("beta2", n(a.beta2)), ("eps", n(a.eps)),
                               ("weight_decay", n(a.weightDecay)), ("max_grad_norm", optimizer.maxGradNorm.map { n($0) })])),
            ("schedule", scheduleNode),
            ("batch_size", n(batchSize)), ("grad_accumulation", n(gradAccumulation)),
            ("steps", steps.map { n($0) }), ("epochs", epochs.map { n($0) }),
            ("seed", n(Int(seed))), ("checkpoint_every", n(checkpointEvery)), ("keep_last", n(keepLast)),
            ("eval_every", n(evalEvery)), ("log_every", n(logEvery)),
            ("eval", map([("prompts", map([("types", strings(eval.prompts.types)), ("count", n(eval.prompts.count))])),
                          ("max_images", eval.maxImages.map { n($0) }), ("split", n(eval.split.rawValue)),
                          ("multimask", n(eval.multimask)), ("before", n(eval.before)), ("seed", n(Int(eval.seed))),
                          ("during_training", n(eval.duringTraining))])),
            ("export", map([("path", n(export.path)), ("half", n(export.half)), ("full", n(export.full))])),
            ("output_dir", n(outputDir)),
            ("freeze", strings(freeze)),
            ("stage_loss", stageLossWeight > 0 ? map([("weight", n(stageLossWeight))]) : nil),
        ])
        return try Yams.serialize(node: root, sortKeys: false)
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

    func bool(_ key: String) -> Bool? {
        guard let n = take(key) else { return nil }
        guard n.scalar != nil, let v = n.bool, n.scalar?.style == .plain || n.scalar?.style == .any else {
            sink.add(keyPath(key), "expected true or false, found \(scalarText(n))"); return nil
        }
        return v
    }

    func string(_ key: String) -> String? {
        guard let n = take(key) else { return nil }
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

    func stringList(_ key: String) -> [String]? {
        guard let n = take(key) else { return nil }
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

import ArgumentParser
import Distill
import Foundation
import SegmentAnything

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Distil the teacher's image embeddings into a student, as a YAML config says.",
        discussion: """
            The config names the data (feature caches), the student and its initialisation, the \
            loss, AdamW and its schedule, batch size, steps or epochs, checkpoint and evaluation \
            cadence and the output directory (see Sources/Distill/Config.swift and Configs/). \
            --set key.path=value overrides one key (value read as YAML). The run directory gets \
            config.yaml (resolved), metrics.jsonl, loss.svg and checkpoints/. With \
            eval.during_training, each eval_every step also logs the held-out mask mIoU (as `run`). \
            A config with `stages:` trains one stage at a time here (--stage NAME: its directory, \
            and after the first stage the previous stage's final checkpoint as initialisation); \
            `samdistill run` chains them all.
            """)

    @OptionGroup var runtime: RuntimeOptions

    @Argument(help: "The run config (YAML).")
    var config: String

    @Option(name: .customLong("set"), help: "Override one key: key.path=value (repeatable).")
    var overrides: [String] = []

    @Option(help: "Of a config with stages: train this stage alone (as `samdistill run` would).")
    var stage: String?

    @Flag(help: "Continue from the last checkpoint in the run directory.")
    var resume = false

    @Flag(help: "No progress line.")
    var quiet = false

    func validate() throws {
        do {
            _ = try Self.selectedConfig(try RunConfig.load(URL(fileURLWithPath: config), overrides: overrides), stage: stage, file: config)
        } catch let e as ConfigError {
            throw ValidationError(e.description)
        }
    }

    /// The config to train: the file's own, or with --stage the named stage's. A later stage
    /// needs the previous stage's final checkpoint, its initialisation.
    static func selectedConfig(_ cfg: RunConfig, stage: String?, file: String) throws -> RunConfig {
        let names = cfg.stages.map(\.name)
        guard let stage else {
            guard names.isEmpty else {
                throw ConfigError(["\(file): stages \(names.joined(separator: ", ")): train one with --stage NAME, or all in order with `samdistill run`"])
            }
            return cfg
        }
        guard let i = names.firstIndex(of: stage) else {
            throw ConfigError(["--stage \(stage): \(names.isEmpty ? "\(file) has no stages" : "not a stage of \(file) (\(names.joined(separator: ", ")))")"])
        }
        if i > 0 {
            let previous = cfg.stages[i - 1]
            guard FileManager.default.fileExists(atPath: previous.finalCheckpoint) else {
                throw ConfigError(["--stage \(stage): it starts from stage '\(previous.name)''s final checkpoint \(previous.finalCheckpoint), which does not exist: train that stage first (--stage \(previous.name))"])
            }
        }
        return cfg.stages[i].config
    }

    func run() throws {
        let cfg = try Self.selectedConfig(try RunConfig.load(URL(fileURLWithPath: config), overrides: overrides), stage: stage, file: config)
        let (train, validation) = try openTrainingData(cfg.data)
        let student = try Student.make(cfg)
        let trainer = try Trainer(config: cfg, student: student, train: train, validation: validation)
        trainer.showsProgress = !quiet
        if cfg.eval.duringTraining {
            // The held-out mIoU curve, as `samdistill run` logs it (teacher decoder, first cache).
            guard let teacher = cfg.teacher.checkpoint else {
                throw ConfigError(["teacher.checkpoint: required by eval.during_training (its prompt encoder and mask decoder)"])
            }
            let reader = try CacheReader(URL(fileURLWithPath: cfg.data.train[0]))
            var evaluator: Evaluator?
            trainer.evaluatesHeldOutMasks(cfg.eval, cache: reader) {
                if let evaluator { return evaluator }
                let e = Evaluator(model: try SAMModel.load(contentsOf: URL(fileURLWithPath: teacher)), options: cfg.eval.evaluationOptions)
                e.remembersTeacherMasks = true  // the teacher's masks are the same at every evaluation
                evaluator = e
                return e
            }
        }
        try trainer.run(resume: resume)
        if trainer.parallel.communicator.isRoot {
            let ranks = trainer.parallel.size > 1 ? " on \(trainer.parallel.size) ranks" : ""
            print("done: \(trainer.step) steps\(ranks); run directory \(trainer.runDirectory.path)")
        }
    }
}

/// Opens the feature caches named by `data` (train rows, and validation rows when the caches or
/// `data.val_list` / `data.val_fraction` provide them).
func openTrainingData(_ data: DataConfig) throws -> (TrainingData, TrainingData?) {
    let (train, validation) = try CacheTrainingData.open(data)
    return (train, validation)
}

import Foundation

// `samdistill run` on a config with `stages:` (RunConfig.stages): the stages run in order, each
// as a run of its own (RunPipeline on the stage's config, in output_dir/NAME, with the usual
// skip and resume rules), each after the first starting from the previous stage's final
// checkpoint. The first stage builds the cache and evaluates the initial student; every stage
// evaluates and exports its final student, so the staged result can be compared with its first
// stage alone (e.g. MSE, then prompt-in-the-loop).
//
// A later stage is refused when the previous stage's final checkpoint is newer than the later
// stage's own run (its config.yaml): it was trained from an earlier result, and retraining it
// is the user's call (remove its directory).

extension RunPipeline {
    func runStages() throws -> Outcome {
        let stages = config.stages
        var total = Outcome(cache: nil, trainedSteps: 0, totalSteps: 0, before: nil, after: nil, exported: nil, seconds: [:], skipped: [])
        for (i, stage) in stages.enumerated() {
            if i > 0 { try refuseStale(stage, after: stages[i - 1]) }
            log("stage \(i + 1)/\(stages.count) '\(stage.name)': \(stage.config.loss.typeName), \(stage.config.steps ?? 0) steps → \(stage.config.outputDir)")
            let p = RunPipeline(config: stage.config, configName: "\(configName) [\(stage.name)]", communicator: communicator)
            p.showsProgress = showsProgress
            p.log = log
            let o = try p.run()
            if i == 0 { total.cache = o.cache; total.before = o.before }
            total.after = o.after
            total.exported = o.exported
            total.trainedSteps += o.trainedSteps
            total.totalSteps += o.totalSteps
            for (k, v) in o.seconds { total.seconds["\(stage.name)/\(k)"] = v }
            total.skipped += o.skipped.map { "\(stage.name)/\($0)" }
        }
        return total
    }

    /// Throws when `stage` holds a run begun before `previous`'s final checkpoint was written.
    func refuseStale(_ stage: RunStage, after previous: RunStage) throws {
        let fm = FileManager.default
        let dir = URL(fileURLWithPath: stage.config.outputDir)
        guard !Trainer.checkpoints(in: dir.appendingPathComponent("checkpoints")).isEmpty,
              let started = (try? fm.attributesOfItem(atPath: dir.appendingPathComponent("config.yaml").path))?[.modificationDate] as? Date,
              let previousEnd = (try? fm.attributesOfItem(atPath: previous.finalCheckpoint))?[.modificationDate] as? Date,
              previousEnd > started else { return }
        throw TrainerError.runDirectoryInUse("\(dir.path) was trained from an earlier result of stage '\(previous.name)' (\(previous.finalCheckpoint) is newer): remove \(dir.path) to train stage '\(stage.name)' again")
    }
}

import ArgumentParser
import Distill
import Foundation
import Tensor

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a config end to end: cache → evaluate the initial student → train → evaluate → export.",
        discussion: """
            1. cache: when data.images is set, teacher embeddings of those images (data.image_list, \
            data.views, data.val_list / val_fraction) into data.train[0]; complete rows are kept. \
            2. eval: the initial student's mIoU against the teacher on the cache's eval.split \
            (eval.before). 3. train: as `samdistill train`, into output_dir. 4. eval: the trained \
            student. 5. export: the final checkpoint to export.path (with the teacher's prompt \
            encoder and mask decoder when export.full, so `samdistill segment --checkpoint` runs \
            from it). Ends with the mIoU table before vs after and the exported path.

            Every step is skipped when its output exists and matches the config, and the command \
            can be interrupted at any point and run again: the cache and the training resume, \
            evaluation and export are written atomically (output_dir/pipeline.json records what \
            each output was computed from). output_dir holding checkpoints of other training \
            settings is refused.
            """)

    @Argument(help: "The run config (YAML), e.g. Configs/quickstart.yaml.")
    var config: String

    @Option(name: .customLong("set"), help: "Override one key: key.path=value (repeatable).")
    var overrides: [String] = []

    @OptionGroup var runtime: RuntimeOptions

    @Flag(help: "No progress lines.")
    var quiet = false

    @Flag(help: "Print the resolved config (every key, defaults filled in, overrides applied) and exit; a staged config prints each stage's resolved config after it, as further YAML documents.")
    var printConfig = false

    func validate() throws {
        do {
            _ = try RunConfig.load(URL(fileURLWithPath: config), overrides: overrides)
        } catch let e as ConfigError {
            throw ValidationError(e.description)
        }
    }

    func run() throws {
        let cfg = try RunConfig.load(URL(fileURLWithPath: config), overrides: overrides)
        if printConfig {
            print(try cfg.yaml(), terminator: "")
            for stage in cfg.stages { print("--- # stage \(stage.name)\n" + (try stage.config.yaml()), terminator: "") }
            return
        }
        let pipeline = RunPipeline(config: cfg, configName: config)
        pipeline.showsProgress = !quiet
        let t0 = Date()
        let o: RunPipeline.Outcome
        do {
            o = try pipeline.run()
        } catch let e as CustomStringConvertible where !(e is ValidationError) {
            FileHandle.standardError.write(Data("error: \(e.description)\n".utf8))
            throw ExitCode.failure
        }
        guard pipeline.communicator.isRoot else { return }  // rank 0 reports
        print("")
        print("mIoU against the teacher's masks (\(cfg.eval.split.rawValue) split of \(cfg.data.train[0]), 95% bootstrap intervals over images):")
        if let after = o.after { print(RunPipeline.comparisonTable(before: o.before, after: after), terminator: "") }
        let phases = o.seconds.sorted { $0.key < $1.key }.map { String(format: "%@ %.0f s", $0.key, $0.value) }
        print(String(format: "time: %.0f s in this call", Date().timeIntervalSince(t0)) + (phases.isEmpty ? "" : " (" + phases.joined(separator: ", ") + ")")
              + (o.skipped.isEmpty ? "" : "; up to date: " + o.skipped.joined(separator: ", ")))
        print("run directory: \(pipeline.runDirectory.path) (metrics.jsonl, loss.svg, eval-*.md, checkpoints/)")
        if let e = o.exported { print("exported student: \(e.path)") }
    }
}

import ArgumentParser
import Distill
import Foundation
import Layers
import Optim
import SegmentAnything
import Tensor

struct BenchTrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "One distillation training step of the MobileSAM encoder (TinyViT-5M): forward, MSE, backward, AdamW.",
        discussion: """
            Each step: zero gradients, training-mode forward of a random (B, 3, S, S) batch, MSE \
            against a random (B, 256, S/16, S/16) target, backward, AdamW step (lr 1e-4, weight \
            decay 0.01). Reports the median seconds per step and the process's peak resident set \
            (run one benchmark per process). Scripts/bench_pytorch.py --what train is the PyTorch peer.

            With --config, the step is the run config's: its student with its initial weights \
            (init), its batch_size, loss, AdamW settings and gradient clipping; the batch is still \
            random (no cache is read). With loss prompt_in_the_loop the teacher's prompt encoder \
            and mask decoder come from teacher.checkpoint, the random targets stand for the teacher \
            embeddings, and the prompts are random points (no cached everything-masks), so the \
            teacher decodes each point multimask before its box; the step's median phase times \
            (wall clock, as the trainer's phase_s) are printed: encoder forward, teacher decode, \
            student decode forward, decoder backward, encoder backward.
            """)

    @OptionGroup var options: BenchOptions

    @Option(help: "Images per batch.")
    var batch = 2

    @Option(help: "Input side in pixels (MobileSAM: 1024).")
    var imageSize = 1024

    @Option(help: "Real weights to start from (as `bench encoder --checkpoint`); random when absent.")
    var checkpoint: String?

    @Option(help: "A run config (YAML): benchmark its student, batch size, loss and optimiser instead of TinyViT-5M.")
    var config: String?

    @Option(name: .customLong("set"), help: "Override one key of --config: key.path=value (repeatable).")
    var overrides: [String] = []

    func validate() throws {
        if let config {
            do { _ = try RunConfig.load(URL(fileURLWithPath: config), overrides: overrides) } catch let e as ConfigError {
                throw ValidationError(e.description)
            }
        }
        if batch < 1 { throw ValidationError("--batch must be at least 1") }
        if imageSize < 64 || imageSize % 64 != 0 { throw ValidationError("--image-size must be a positive multiple of 64") }
    }

    func run() throws {
        options.apply()
        if let config { return try runConfig(try RunConfig.load(URL(fileURLWithPath: config), overrides: overrides)) }
        var rng = SeededRandom(seed: 1)
        let model = try benchEncoder(imageSize: imageSize, checkpoint: checkpoint, rng: &rng)
        let e = model.encoderConfig, R = e.outputResolution
        let x = Tensor.randomNormal([batch, 3, imageSize, imageSize], rng: &rng)
        let target = Tensor.randomNormal([batch, e.outputChannels, R, R], rng: &rng)
        let optimiser = AdamW(parameters: model.trainableParameters(), weightDecay: 0.01)
        let baseline = peakResidentMiB()
        var lastLoss = 0.0
        let seconds = medianSeconds(repeats: options.repeats) {
            model.zeroGradients()
            let y = model.forward(x, mode: .training)
            let loss = mseLoss(y, target)
            lastLoss = loss.value
            model.backward(loss.gradient, imageGradient: false)
            optimiser.step(learningRate: 1e-4)
        }
        let peak = peakResidentMiB()
        let gflop = encoderGFLOP(model, batch: batch, backward: true)
        print(String(format: "train step  batch %d  %d×%d  threads %d: median %.3f s per step  (%.1f GFLOP/s)  peak RSS %.0f MiB (weights+inputs %.0f MiB)  loss %.5f",
                     batch, imageSize, imageSize, Threads.count, seconds, gflop / seconds, peak, baseline, lastLoss))
        if options.json {
            printJSON(["bench": "train", "batch": batch, "image_size": imageSize, "threads": Threads.count,
                       "seconds": seconds, "median_ms": seconds * 1e3, "peak_rss_mib": peak,
                       "baseline_rss_mib": baseline, "loss": lastLoss, "weights": checkpoint ?? "random",
                       "gflop_per_step": gflop, "gflops": gflop / seconds])
        }
    }

    /// The step of a run config: `Student.make` (init included), the config's loss, AdamW and clipping.
    func runConfig(_ cfg: RunConfig) throws {
        var rng = SeededRandom(seed: 1)
        let student = try Student.make(cfg)
        let S = student.imageSize, (C, g) = student.outputShape, B = cfg.batchSize
        let x = Tensor.randomNormal([B, 3, S, S], rng: &rng)
        let target = Tensor.randomNormal([B, C, g, g], rng: &rng)
        let regions = Array(repeating: ValidRegion(height: g, width: g), count: B)
        let params = student.namedParameters().filter { $0.1.isTrainable && !student.isFrozen($0.0) }.map(\.1)
        let optimiser = AdamW(parameters: params, configuration: cfg.optimizer.adamW)
        var promptLoop: PromptInTheLoop?
        if case .promptInTheLoop(let c) = cfg.loss {
            // RunConfig refuses prompt_in_the_loop without teacher.checkpoint.
            promptLoop = try PromptInTheLoop(config: c, teacherCheckpoint: URL(fileURLWithPath: cfg.teacher.checkpoint!),
                                             imageSize: S, embeddingSize: g)
        }
        let baseline = peakResidentMiB()
        var lastLoss = 0.0
        var phases: [[String: Double]] = []  // per run, the first the warm-up
        let seconds = medianSeconds(repeats: options.repeats) {
            student.zeroGradients()
            var t = BenchClock.now()
            let y = student.forward(x, mode: .training)
            var phase = ["encoder_forward": BenchClock.now() - t]
            let loss: LossResult
            if let promptLoop {
                let r = promptLoop.evaluate(student: y, teacher: target, regions: regions, seed: UInt64(phases.count))
                phase.merge(r.timing.phases) { $1 }
                loss = r.loss
            } else {
                loss = cfg.loss.evaluate(y, target, regions: regions)
            }
            lastLoss = loss.value
            t = BenchClock.now()
            student.backward(loss.gradient, imageGradient: false)
            phase["encoder_backward"] = BenchClock.now() - t
            if let m = cfg.optimizer.maxGradNorm { _ = clipGradientNorm(params, maxNorm: m) }
            optimiser.step(learningRate: cfg.schedule.lr(at: 0))
            phases.append(phase)
        }
        let peak = peakResidentMiB()
        let name = config.map { URL(fileURLWithPath: $0).lastPathComponent } ?? ""
        print(String(format: "train step  %@ (%@ student, %@ loss, %.1f GFLOP forward/image)  batch %d  %d×%d  threads %d: median %.3f s per step  peak RSS %.0f MiB (weights+inputs %.0f MiB)  loss %.5f",
                     name, cfg.student.typeName, cfg.loss.typeName, Double(student.forwardFLOPs) / 1e9, B, S, S, Threads.count,
                     seconds, peak, baseline, lastLoss))
        // Each phase's median over the timed runs.
        let order = ["encoder_forward", "teacher_decode", "student_decode_forward", "decoder_backward", "encoder_backward"]
        var medians: [String: Double] = [:]
        for k in order where phases[0][k] != nil {
            let v = phases.dropFirst().map { $0[k]! }.sorted()
            medians[k] = v[v.count / 2]
        }
        print("phases (median s): " + order.compactMap { k in medians[k].map { String(format: "%@ %.3f", k, $0) } }.joined(separator: ", "))
        if options.json {
            printJSON(["bench": "train", "config": name, "student": cfg.student.typeName, "loss_type": cfg.loss.typeName, "batch": B,
                       "image_size": S, "threads": Threads.count, "seconds": seconds, "median_ms": seconds * 1e3, "peak_rss_mib": peak,
                       "baseline_rss_mib": baseline, "loss": lastLoss, "forward_gflop_per_image": Double(student.forwardFLOPs) / 1e9,
                       "phase_s": medians])
        }
    }
}

import CheckpointFormats
import Distributed
import Foundation
import Layers
import Optim
import SegmentAnything
import Tensor

/// Errors that stop a run.
public enum TrainerError: Error, CustomStringConvertible, Equatable {
    /// The loss (or the gradient norm) of optimiser step `step` (1-based) is NaN or ±Inf. The
    /// step was not applied; the last checkpoint on disk is the last good state.
    case nonFinite(step: Int, what: String, value: Double)
    case badCheckpoint(String)
    case runDirectoryInUse(String)
    case dataMismatch(String)

    public var description: String {
        switch self {
        case .nonFinite(let step, let what, let value):
            "step \(step): the \(what) is \(value); stopping (the last checkpoint is the last good state)"
        case .badCheckpoint(let s): "checkpoint: \(s)"
        case .runDirectoryInUse(let s): s
        case .dataMismatch(let s): "data: \(s)"
        }
    }
}

/// One optimiser step as logged to `metrics.jsonl`.
public struct StepRecord: Equatable, Sendable {
    public var step: Int
    public var loss: Double
    public var lr: Float
    public var gradNorm: Double
    public var imagesPerSecond: Double
    /// Seconds of the step by phase: encoder_forward, encoder_backward and, with
    /// prompt_in_the_loop, teacher_decode, student_decode_forward, decoder_backward.
    public var phaseSeconds: [String: Double] = [:]
}

/// The distillation loop (MobileSAM's decoupled distillation: the student's embedding learns the
/// teacher's; prompt encoder and mask decoder are not involved), or, with `loss: prompt_in_the_loop`,
/// EdgeSAM's: the student's masks through the teacher's frozen decoder learn the teacher's masks
/// (`PromptInTheLoop`, built once from `teacher.checkpoint`).
///
/// Each optimiser step: zero the gradients; for each of `grad_accumulation` micro-batches of
/// `batch_size` rows (from `BatchOrder`), forward in training mode (BatchNorm batch statistics),
/// loss against the teacher embedding, backward of the loss gradient divided by the number of
/// micro-batches; then gradient norm (clipped to `max_grad_norm` when set), AdamW at the
/// schedule's rate. The logged loss is the mean of the micro-batch losses. A non-finite loss or
/// gradient norm stops the run before the update (`TrainerError.nonFinite`).
///
/// Run directory (`output_dir`): `config.yaml` (resolved), `metrics.jsonl`, `loss.svg`,
/// `checkpoints/step-NNNNNNNN.safetensors` (last `keep_last` kept) and `checkpoints/best.safetensors`.
/// Checkpoints are written atomically (temp file + rename) and hold the weights and buffers
/// (`model.KEY`), AdamW's moments (`optimizer.KEY.exp_avg[_sq]`) and in their metadata the step,
/// the data cursor, the seed, AdamW's step count, the best metric and the resolved config.
/// Randomness is counter-based: the batch order of epoch e comes from (seed, e) and each
/// micro-batch's augmentation seed from (seed, micro-batch index), so (seed, cursor) is the
/// whole RNG state and `resume` reproduces the uninterrupted run's losses exactly (same thread
/// count). Prompt-in-the-loop's prompt sampling is seeded per sample from (seed, the sample's
/// position in the stream).
///
/// Data-parallel (`mpirun -np N`, `DataParallel`): `batch_size` is per rank; each micro-batch of
/// the stream is N·batch_size samples, rank r training on its r-th share, so N ranks × batch b
/// replay 1 rank × batch N·b (the cursor counts samples of the whole job). Gradients are
/// averaged over ranks in flat buckets before the norm and AdamW, so every rank takes the same
/// step; the logged loss is the mean over ranks; BatchNorm uses per-rank statistics (running
/// statistics averaged after each step) unless `sync_batchnorm`. Validation rows are split over
/// the ranks and their sums all-reduced; the evaluation hook runs on every rank. Rank 0 alone writes
/// config.yaml, metrics, the plot, checkpoints and the progress line; every rank reads the
/// checkpoint on resume, with any rank count (the global batch is then N·batch_size of the new
/// run). The phases `allreduce` (gradients, buffers, loss) and `sync_batchnorm` time the
/// collectives of a distributed step.
public final class Trainer {
    public let config: RunConfig
    public let student: Student
    public let optimizer: AdamW
    public let train: TrainingData
    public let validation: TrainingData?
    public let runDirectory: URL
    public let totalSteps: Int
    /// The prompt-in-the-loop loss (teacher's prompt encoder and decoder), when the config asks for it.
    public let promptLoop: PromptInTheLoop?
    /// With `stage_loss`: the teacher TinyViT whose stage outputs the student's are pulled towards.
    let stageTeacher: TinyViT?
    /// The ranks of the job (one process: rank 0 of 1, no MPI).
    public let parallel: DataParallel
    /// Training-mode forward, with the cross-rank BatchNorm sums under `sync_batchnorm`.
    let trainingMode: ForwardMode

    /// Steps completed (optimiser updates applied).
    public private(set) var step = 0
    /// Samples consumed so far (position in the `BatchOrder` stream).
    public private(set) var cursor = 0
    /// Lower is better: validation MSE when evaluating, else the mean training loss between checkpoints.
    public private(set) var bestMetric: Double? = nil
    /// Every step's record of this process (and, after a resume, those read back from metrics.jsonl).
    public private(set) var history: [StepRecord] = []
    public private(set) var evalHistory: [(step: Int, metrics: [String: Double])] = []

    /// Print the progress line (stderr; rewritten in place on a terminal, plain lines otherwise).
    public var showsProgress = true
    /// Extra evaluation run at each `eval_every` step (e.g. mask mIoU from the evaluator); its
    /// metrics are logged beside the embedding MSE / cosine. Called on every rank of a
    /// data-parallel run (it may use collectives; its results must agree across ranks).
    public var evaluationHook: ((Student, Int) throws -> [String: Double])? = nil
    /// Called after every step (tests use it to stop a run part-way).
    public var afterStep: ((StepRecord) throws -> Void)? = nil

    private var order: BatchOrder
    private let parameterNames: [String]
    private var lossesSinceCheckpoint: [Double] = []
    private var smoothedLoss: Double? = nil
    private let startedAt = Date()
    private var stepsThisProcess = 0

    public var checkpointDirectory: URL { runDirectory.appendingPathComponent("checkpoints") }
    public var metricsURL: URL { runDirectory.appendingPathComponent("metrics.jsonl") }
    public var plotURL: URL { runDirectory.appendingPathComponent("loss.svg") }

    /// `promptLoop`: the prompt-in-the-loop loss to use (tests); by default, with that loss type,
    /// one is built from `teacher.checkpoint`.
    public init(config: RunConfig, student: Student, train: TrainingData, validation: TrainingData? = nil,
                runDirectory: URL? = nil, promptLoop: PromptInTheLoop? = nil, communicator: Communicator = .world) throws {
        self.config = config
        parallel = DataParallel(communicator)
        trainingMode = ForwardMode.training.synchronised(by: config.syncBatchNorm && communicator.isDistributed ? MPIStatisticsSum(communicator) : nil)
        self.student = student
        self.train = train
        self.validation = validation
        self.runDirectory = runDirectory ?? URL(fileURLWithPath: config.outputDir)
        guard config.stages.isEmpty else {
            throw ConfigError(["stages: the config lists \(config.stages.count) stages, which `samdistill run` trains in order (one trainer per stage)"])
        }
        guard train.count > 0 else { throw TrainerError.dataMismatch("the training set is empty") }
        totalSteps = config.totalSteps(trainCount: train.count, ranks: communicator.size)
        let named = student.namedParameters().filter { $0.1.isTrainable && !student.isFrozen($0.0) }
        parameterNames = named.map(\.0)
        optimizer = AdamW(parameters: named.map(\.1), configuration: config.optimizer.adamW)
        order = BatchOrder(seed: config.seed, count: train.count)
        if case .promptInTheLoop(let c) = config.loss {
            if let promptLoop {
                self.promptLoop = promptLoop
            } else {
                guard let path = config.teacher.checkpoint else {
                    throw ConfigError(["teacher: checkpoint is required by loss type prompt_in_the_loop (its prompt encoder and mask decoder)"])
                }
                self.promptLoop = try PromptInTheLoop(config: c, teacherCheckpoint: URL(fileURLWithPath: path),
                                                      imageSize: student.imageSize, embeddingSize: student.outputShape.side)
            }
        } else {
            self.promptLoop = nil
        }
        stageTeacher = config.stageLossWeight > 0 ? try Self.stageTeacher(config, student: student) : nil
    }

    /// The teacher encoder of `stage_loss`: a TinyViT with the student's stage output shapes.
    static func stageTeacher(_ config: RunConfig, student: Student) throws -> TinyViT {
        guard let path = config.teacher.checkpoint else {
            throw ConfigError(["teacher: checkpoint is required by stage_loss (the teacher's stage outputs)"])
        }
        guard let s = student.network as? TinyViT else { throw ConfigError(["stage_loss: needs a tinyvit student"]) }
        guard let t = try SAMWeights.read(URL(fileURLWithPath: path)).encoder as? TinyViT,
              t.config.embedDims == s.config.embedDims, t.config.imageSize == s.config.imageSize else {
            throw ConfigError(["stage_loss: the teacher \(path) must be a TinyViT with the student's widths \(s.config.embedDims)"])
        }
        t.recordsStageOutputs = true
        s.recordsStageOutputs = true
        return t
    }

    /// `stage_loss`: Σ over the student's trainable stage outputs k of weight · ‖s_k − t_k‖² / ‖t_k‖²
    /// (MSE relative to the teacher output's mean square, so every stage counts alike); sets the
    /// gradients the student's next backward adds at those outputs (scaled by `gradientScale`).
    func addStageLoss(to l: inout LossResult, images: Tensor, gradientScale: Float, phases: inout [String: Double]) {
        guard let teacher = stageTeacher, let s = student.network as? TinyViT else { return }
        let clock = Date()
        _ = teacher.forward(images, mode: .inference)
        var grads: [Tensor?] = []
        for (k, (so, to)) in zip(s.stageOutputs, teacher.stageOutputs).enumerated() {
            guard k + 1 >= s.frozenUnits else { grads.append(nil); continue }  // unit k+1 = layers.k
            let meanSquare = to.data.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(to.count)
            var m = mseLoss(so, to)
            let w = config.stageLossWeight / max(meanSquare, 1e-12)
            l.value += w * m.value
            m.gradient.scale(by: Float(w) * gradientScale)
            grads.append(m.gradient)
        }
        s.stageGradients = grads
        phases["stage_loss", default: 0] += Date().timeIntervalSince(clock)
    }

    /// The resolved configuration (steps resolved from epochs, schedule total_steps filled).
    public var resolvedConfig: RunConfig {
        var c = config
        c.steps = totalSteps
        c.epochs = nil
        return c
    }

    // MARK: Loss

    /// The micro-batch's loss and its gradient; prompt-in-the-loop adds its phase times to `phases`.
    /// `positions`: the samples' places in the stream (their prompt-sampling seeds).
    func loss(_ prediction: Tensor, _ batch: TrainingBatch, seed: UInt64, positions: [Int], phases: inout [String: Double]) -> LossResult {
        guard let promptLoop else { return config.loss.evaluate(prediction, batch.targets, regions: batch.validRegions) }
        let r = promptLoop.evaluate(student: prediction, teacher: batch.targets, regions: batch.validRegions, seed: seed,
                                    everythingMasks: batch.everythingMasks, sampleSeeds: positions.map(sampleSeed))
        phases.merge(r.timing.phases, uniquingKeysWith: +)
        return r.loss
    }

    /// Prompt-sampling seed of the sample at `position` of the stream (whichever rank trains it).
    func sampleSeed(_ position: Int) -> UInt64 {
        var r = SeededRandom(seed: config.seed &+ 0x5EED_1007_0000_0000 &+ UInt64(position))
        return r.next()
    }

    /// Augmentation seed of micro-batch `index` (counted over the whole run, global micro-batches).
    func microBatchSeed(_ index: Int) -> UInt64 {
        var r = SeededRandom(seed: config.seed &+ 0xA5A5_0000_0000_0000 &+ UInt64(index))
        return r.next()
    }

    // MARK: Run

    /// Trains until `totalSteps`. With `resume`, first restores the latest checkpoint of the run
    /// directory (and truncates metrics.jsonl to it); without, refuses a run directory that
    /// already holds checkpoints. Returns the records of the steps this call ran.
    @discardableResult
    public func run(resume: Bool = false) throws -> [StepRecord] {
        let fm = FileManager.default
        let root = parallel.communicator.isRoot
        try fm.createDirectory(at: checkpointDirectory, withIntermediateDirectories: true)
        if resume {
            // Every rank reads the same checkpoint (rank 0 writes the next one only after a step,
            // that is after every rank has passed its first all-reduce).
            if let last = Self.checkpoints(in: checkpointDirectory).last {
                try restore(from: last)
                if root { try truncateMetrics(after: step) }
            } else if root {
                try? fm.removeItem(at: metricsURL)
            }
        } else {
            if !Self.checkpoints(in: checkpointDirectory).isEmpty {
                throw TrainerError.runDirectoryInUse("\(runDirectory.path) already holds checkpoints: pass --resume to continue that run, or choose another output_dir")
            }
            if root { try? fm.removeItem(at: metricsURL) }
        }
        if root { try AtomicFile.write(Data(resolvedConfig.yaml().utf8), to: runDirectory.appendingPathComponent("config.yaml")) }
        // The same start on every rank: rank 0's parameters and buffers.
        parallel.broadcastValues(student.namedParameters().map(\.1))
        let buffers = student.namedParameters().map(\.1).filter { !$0.isTrainable }
        let communicator = parallel.communicator

        let prefetch = Prefetcher(train)
        defer { prefetch.drain() }
        // B: this rank's micro-batch; G: the job's (the stream advances by G per micro-batch).
        let B = config.batchSize, A = config.gradAccumulation, G = B * parallel.size
        var ran: [StepRecord] = []
        var microIndex = cursor / G
        prefetch.request(parallel.rows(&order, cursor: cursor, batchSize: B), seed: microBatchSeed(microIndex))
        while step < totalSteps {
            let t0 = Date()
            let communicated = communicator.seconds
            student.zeroGradients()
            var lossSum = 0.0
            var phases: [String: Double] = [:]
            for _ in 0..<A {
                let rows = parallel.rows(&order, cursor: cursor, batchSize: B)
                let batch = try prefetch.take(rows, seed: microBatchSeed(microIndex))
                // Start loading the next micro-batch while this one trains.
                prefetch.request(parallel.rows(&order, cursor: cursor + G, batchSize: B), seed: microBatchSeed(microIndex + 1))
                try checkBatch(batch)
                var clock = Date()
                let prediction = student.forward(batch.images, mode: trainingMode)
                phases["encoder_forward", default: 0] += Date().timeIntervalSince(clock)
                // The prompt sampling's seeds: counter-based like the augmentation's (exact resume).
                var l = loss(prediction, batch, seed: microBatchSeed(microIndex) ^ 0x5EED_1007,
                             positions: parallel.positions(cursor: cursor, batchSize: B), phases: &phases)
                guard l.value.isFinite else {
                    throw TrainerError.nonFinite(step: step + 1, what: "loss", value: l.value)
                }
                addStageLoss(to: &l, images: batch.images, gradientScale: 1 / Float(A), phases: &phases)
                lossSum += l.value
                if A > 1 { l.gradient.scale(by: 1 / Float(A)) }
                clock = Date()
                student.backward(l.gradient, imageGradient: false)
                phases["encoder_backward", default: 0] += Date().timeIntervalSince(clock)
                cursor += G
                microIndex += 1
            }
            var stepLoss = lossSum / Double(A)
            if communicator.isDistributed {
                if trainingMode.crossReplica != nil { phases["sync_batchnorm"] = communicator.seconds - communicated }
                let before = communicator.seconds
                parallel.averageGradients(optimizer.parameters)
                if trainingMode.crossReplica == nil { parallel.averageValues(buffers) }
                stepLoss = parallel.mean([stepLoss])[0]
                phases["allreduce"] = communicator.seconds - before
            }
            let params = optimizer.parameters
            let gradNorm = config.optimizer.maxGradNorm.map { clipGradientNorm(params, maxNorm: $0) } ?? gradientNorm(params)
            guard gradNorm.isFinite else {
                throw TrainerError.nonFinite(step: step + 1, what: "gradient norm", value: gradNorm)
            }
            let lr = config.schedule.lr(at: step)
            optimizer.step(learningRate: lr)
            step += 1
            let elapsed = Date().timeIntervalSince(t0)
            let record = StepRecord(step: step, loss: stepLoss, lr: lr, gradNorm: gradNorm,
                                    imagesPerSecond: Double(G * A) / max(elapsed, 1e-9), phaseSeconds: phases)
            history.append(record)
            ran.append(record)
            lossesSinceCheckpoint.append(record.loss)
            if root { try appendMetrics(stepLine(record)) }
            smoothedLoss = smoothedLoss.map { 0.9 * $0 + 0.1 * record.loss } ?? record.loss

            var evaluated: [String: Double]? = nil
            if config.evalEvery > 0 && (step % config.evalEvery == 0 || step == totalSteps) {
                evaluated = try evaluate()
            }
            if step % config.checkpointEvery == 0 || step == totalSteps {
                try saveCheckpoint(evaluated: evaluated)
            } else if let m = evaluated?["val_mse"], bestMetric.map({ m < $0 }) ?? true {
                bestMetric = m
                if root { try writeCheckpoint(to: checkpointDirectory.appendingPathComponent("best.safetensors")) }
            }
            if showsProgress && root { progress(record) }
            if root && (step % config.logEvery == 0 || step == totalSteps || evaluated != nil) { try writePlot() }
            try afterStep?(record)
        }
        if showsProgress && root && isatty(2) != 0 { FileHandle.standardError.write(Data("\n".utf8)) }
        return ran
    }

    func checkBatch(_ b: TrainingBatch) throws {
        let S = student.imageSize, (C, g) = student.outputShape
        let inputChannels = config.student.inputChannels
        guard b.images.shape == [config.batchSize, inputChannels, S, S] else {
            throw TrainerError.dataMismatch("images \(b.images.shape) for a batch of \(config.batchSize) at \(S)×\(S)")
        }
        guard b.targets.shape == [config.batchSize, C, g, g] else {
            throw TrainerError.dataMismatch("teacher embeddings \(b.targets.shape), the student produces \([config.batchSize, C, g, g])")
        }
    }

    // MARK: Evaluation

    /// Embedding MSE and cosine on the validation set (inference mode), plus the hook's metrics.
    /// Data-parallel: rank r evaluates rows r, r + N, …, the sums are all-reduced (every rank gets
    /// val_mse / val_cosine); the hook runs on every rank (a collective: RunPipeline's splits its
    /// images over the ranks and gathers) and rank 0 logs.
    public func evaluate() throws -> [String: Double] {
        var metrics: [String: Double] = [:]
        let c = parallel.communicator
        if let validation {
            let n = min(validation.count, config.eval.maxImages ?? validation.count)
            let rows = Array(stride(from: c.rank, to: n, by: c.size))
            var sums = try EmbeddingEvaluation.sums(student, on: validation, rows: rows, batchSize: config.batchSize)
            c.allreduceSum(&sums)
            let r = EmbeddingEvaluation.result(sums)
            metrics["val_mse"] = r.mse
            metrics["val_cosine"] = r.cosine
        }
        if let hook = evaluationHook {
            for (k, v) in try hook(student, step) { metrics[k] = v }
        }
        if !metrics.isEmpty {
            evalHistory.append((step, metrics))
            var line: [String: Any] = ["step": step]
            line["eval"] = metrics
            if c.isRoot { try appendMetrics(line) }
        }
        return metrics
    }

    // MARK: Checkpoints

    static func checkpointName(_ step: Int) -> String { String(format: "step-%08d.safetensors", step) }

    /// Checkpoint files `step-*.safetensors` in step order.
    public static func checkpoints(in directory: URL) -> [URL] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.filter { $0.hasPrefix("step-") && $0.hasSuffix(".safetensors") }.sorted()
            .map { directory.appendingPathComponent($0) }
    }

    func saveCheckpoint(evaluated: [String: Double]?) throws {
        // The checkpoint's quality: validation MSE if evaluated now, else the mean training loss
        // since the previous checkpoint (when no validation is configured).
        let metric: Double? = evaluated?["val_mse"]
            ?? (config.evalEvery == 0 && !lossesSinceCheckpoint.isEmpty
                ? lossesSinceCheckpoint.reduce(0, +) / Double(lossesSinceCheckpoint.count) : nil)
        let isBest = metric.map { m in bestMetric.map { m < $0 } ?? true } ?? false
        if isBest { bestMetric = metric }
        lossesSinceCheckpoint = []
        guard parallel.communicator.isRoot else { return }  // rank 0 writes; the others keep its bookkeeping
        let url = checkpointDirectory.appendingPathComponent(Self.checkpointName(step))
        try writeCheckpoint(to: url)
        if isBest { try writeCheckpoint(to: checkpointDirectory.appendingPathComponent("best.safetensors")) }
        let all = Self.checkpoints(in: checkpointDirectory)
        for old in all.dropLast(config.keepLast) { try? FileManager.default.removeItem(at: old) }
    }

    /// Writes the full training state atomically.
    public func writeCheckpoint(to url: URL) throws {
        var tensors: [String: Tensor] = [:]
        for (k, p) in student.namedParameters() { tensors["model." + k] = p.value }
        for (k, v) in optimizer.stateDict(names: parameterNames) { tensors["optimizer." + k] = v }
        var meta: [String: String] = [
            "format": "samdistill-checkpoint-1", "step": String(step), "cursor": String(cursor),
            "seed": String(config.seed), "adamw_step": String(optimizer.stepCount),
            "student_type": config.student.typeName, "config": (try? resolvedConfig.yaml()) ?? "",
        ]
        if let bestMetric { meta["best_metric"] = String(bestMetric) }
        // The architecture too, so `SAMWeights.read` (segment, eval, export) knows the encoder.
        meta.merge(resolvedConfig.student.encoderConfig.metadata) { mine, _ in mine }
        try SafeTensors.write(tensors, metadata: meta, to: url)
    }

    /// Restores weights, buffers, AdamW state, step, cursor and best metric.
    public func restore(from url: URL) throws {
        let (entries, meta) = try SafeTensors.read(url)
        guard meta["format"] == "samdistill-checkpoint-1", let s = meta["step"].flatMap(Int.init),
              let c = meta["cursor"].flatMap(Int.init), let a = meta["adamw_step"].flatMap(Int.init) else {
            throw TrainerError.badCheckpoint("\(url.path) is not a samdistill training checkpoint")
        }
        if meta["seed"] != String(config.seed) {
            throw TrainerError.badCheckpoint("\(url.path) was written with seed \(meta["seed"] ?? "?"), the config says \(config.seed)")
        }
        var model: [String: Tensor] = [:], optim: [String: Tensor] = [:]
        for (k, e) in entries {
            if k.hasPrefix("model.") { model[String(k.dropFirst(6))] = e.tensor }
            else if k.hasPrefix("optimizer.") { optim[String(k.dropFirst(10))] = e.tensor }
        }
        do {
            try student.load(model)
            try optimizer.load(optim, names: parameterNames, stepCount: a)
        } catch {
            throw TrainerError.badCheckpoint("\(url.path): \(error)")
        }
        step = s
        cursor = c
        bestMetric = meta["best_metric"].flatMap(Double.init)
        lossesSinceCheckpoint = []
    }

    // MARK: Metrics, plot, progress

    func stepLine(_ r: StepRecord) -> [String: Any] {
        var line: [String: Any] = ["step": r.step, "loss": r.loss, "lr": Double(r.lr), "grad_norm": r.gradNorm,
                                   "images_per_s": r.imagesPerSecond]
        if !r.phaseSeconds.isEmpty { line["phase_s"] = r.phaseSeconds }
        return line
    }

    func appendMetrics(_ line: [String: Any]) throws {
        var data = try JSONSerialization.data(withJSONObject: line, options: [.sortedKeys])
        data.append(0x0A)
        if let h = try? FileHandle(forWritingTo: metricsURL) {
            defer { try? h.close() }
            try h.seekToEnd()
            try h.write(contentsOf: data)
        } else {
            try data.write(to: metricsURL)
        }
    }

    /// Keeps the metrics lines of steps ≤ `step` (after a resume) and reads them back into the
    /// history for the plot.
    func truncateMetrics(after step: Int) throws {
        guard let text = try? String(contentsOf: metricsURL, encoding: .utf8) else { return }
        var kept: [String] = []
        history = []; evalHistory = []
        for line in text.split(separator: "\n") {
            guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let s = obj["step"] as? Int, s <= step else { continue }
            kept.append(String(line))
            if let e = obj["eval"] as? [String: Double] {
                evalHistory.append((s, e))
            } else if let l = obj["loss"] as? Double {
                history.append(StepRecord(step: s, loss: l, lr: Float(obj["lr"] as? Double ?? 0),
                                          gradNorm: obj["grad_norm"] as? Double ?? 0,
                                          imagesPerSecond: obj["images_per_s"] as? Double ?? 0))
            }
        }
        try AtomicFile.write(Data((kept.map { $0 + "\n" }.joined()).utf8), to: metricsURL)
    }

    func writePlot() throws {
        let svg = LossPlot.svg(train: history.map { ($0.step, $0.loss) },
                               eval: evalHistory.compactMap { e in e.metrics["val_mse"].map { (e.step, $0) } },
                               totalSteps: totalSteps)
        try AtomicFile.write(Data(svg.utf8), to: plotURL)
    }

    func progress(_ r: StepRecord) {
        let tty = isatty(2) != 0
        stepsThisProcess += 1
        guard tty || r.step % config.logEvery == 0 || r.step == totalSteps else { return }
        let rate = Double(stepsThisProcess) / max(Date().timeIntervalSince(startedAt), 1e-9)  // steps/s in this process
        let eta = rate > 0 ? Double(totalSteps - r.step) / rate : 0
        var line = String(format: "step %d/%d  loss %.5g  lr %.3g  %.1f img/s  ETA %@",
                          r.step, totalSteps, smoothedLoss ?? r.loss, Double(r.lr), r.imagesPerSecond,
                          Self.duration(eta))
        if promptLoop != nil {
            // Where a prompt-in-the-loop step goes: teacher decode, student decode forward,
            // decoder backward, encoder forward + backward (seconds).
            let p = r.phaseSeconds
            line += String(format: "  s/step: teacher %.2f, decode %.2f, decoder bwd %.2f, encoder %.2f + %.2f",
                           p["teacher_decode"] ?? 0, p["student_decode_forward"] ?? 0, p["decoder_backward"] ?? 0,
                           p["encoder_forward"] ?? 0, p["encoder_backward"] ?? 0)
        }
        FileHandle.standardError.write(Data((tty ? "\r\u{1B}[K" + line : line + "\n").utf8))
    }

    static func duration(_ s: Double) -> String {
        let t = Int(s.rounded())
        if t >= 3600 { return String(format: "%dh%02dm", t / 3600, (t % 3600) / 60) }
        if t >= 60 { return String(format: "%dm%02ds", t / 60, t % 60) }
        return "\(t)s"
    }
}

extension Trainer {
    /// `eval.during_training`: at each `eval_every` step, the mask mIoU of the student being trained
    /// on the cache's `eval.split` rows (`miou_point`, `miou_two-point`, … in metrics.jsonl: the
    /// held-out curve). Collective: each rank evaluates its share of the images, gathered in order.
    public func evaluatesHeldOutMasks(_ settings: EvalConfig, cache reader: CacheReader, evaluator: @escaping () throws -> Evaluator) {
        let parallel = self.parallel, split = settings.split.split
        evaluationHook = { student, _ in
            let r = try evaluator().evaluateCache(reader, split: split, maxImages: settings.maxImages,
                                                  student: { student.forward($0, mode: .inference) }, studentImageSize: student.imageSize,
                                                  rowFilter: parallel.shard)
            let report = EvaluationReport(student: "", teacher: "", data: "", options: settings.evaluationOptions,
                                          images: try parallel.gatherInterleaved(r.images), studentSeconds: r.studentSeconds)
            var m: [String: Double] = [:]
            for s in report.summary { m["miou_\(s.prompt)" + (s.metric == "single" ? "" : "_\(s.metric)")] = s.miou }
            return m
        }
    }
}

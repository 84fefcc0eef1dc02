import ArgumentParser
import Distill
import Foundation
import Layers
import SegmentAnything
import Tensor

/// Peak resident memory of this process so far, in MiB (Linux reports ru_maxrss in KiB).
func peakResidentMiB() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_maxrss) / 1024
}

struct BenchEncoder: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "encoder",
        abstract: "Encoder speed and peak memory (MobileSAM's TinyViT-5M, or --checkpoint's): inference, or training forward + backward.",
        discussion: """
            --mode inference runs the forward with nothing kept for backward (what `segment` does); \
            --mode train runs a training-mode forward (batch statistics, activations kept) and the \
            backward of a random upstream gradient. Peak memory is the process's maximum resident \
            set, so run one mode per process to compare them. \
            With --config the run config's student (seeded random weights as `init: random` draws \
            them; a RepViT fused, as `export` writes it, unless --unfused or --mode train) is timed \
            next to MobileSAM's encoder (or --checkpoint's), alternating run by run in this process, \
            and the ratio of the medians is printed.
            """)

    enum Mode: String, ExpressibleByArgument, CaseIterable { case inference, train }

    @OptionGroup var options: BenchOptions

    @Option(help: "inference | train")
    var mode: Mode = .inference

    @Option(help: "Images per batch.")
    var batch = 1

    @Option(help: "Input side in pixels (MobileSAM: 1024).")
    var imageSize = 1024

    @Option(help: "Real weights (a SAM/MobileSAM checkpoint, an exported student or a training checkpoint: TinyViT, conv or RepViT); random MobileSAM weights when absent.")
    var checkpoint: String?

    @Option(help: "A run config (YAML): time its student next to MobileSAM's encoder (or --checkpoint's).")
    var config: String?

    @Flag(help: "With --config: time a RepViT student in its training (multi-branch) form, not fused.")
    var unfused = false

    func validate() throws {
        if unfused && config == nil { throw ValidationError("--unfused needs --config") }
        if batch < 1 { throw ValidationError("--batch must be at least 1") }
        if imageSize < 64 || imageSize % 64 != 0 { throw ValidationError("--image-size must be a positive multiple of 64") }
    }

    func run() throws {
        options.apply()
        if let config { return try compare(config) }
        var rng = SeededRandom(seed: 1)
        let model = try benchEncoder(imageSize: imageSize, checkpoint: checkpoint, rng: &rng)
        let x = Tensor.randomNormal([batch, 3, imageSize, imageSize], rng: &rng)
        let baseline = peakResidentMiB()
        let seconds: Double
        switch mode {
        case .inference:
            seconds = medianSeconds(repeats: options.repeats) { _ = model.forward(x, mode: .inference) }
        case .train:
            let e = model.encoderConfig, R = e.outputResolution
            let dy = Tensor.randomNormal([batch, e.outputChannels, R, R], std: 1e-3, rng: &rng)
            seconds = medianSeconds(repeats: options.repeats) {
                model.zeroGradients()
                _ = model.forward(x, mode: .training)
                model.backward(dy, imageGradient: false)
            }
        }
        let peak = peakResidentMiB()
        let gflop = encoderGFLOP(model, batch: batch, backward: mode == .train)
        print(String(format: "encoder %@  batch %d  %d×%d  threads %d: median %.3f s  (%.1f GFLOP/s%@)  peak RSS %.0f MiB (weights+input %.0f MiB)",
                     mode.rawValue, batch, imageSize, imageSize, Threads.count, seconds, gflop / seconds,
                     mode == .train ? ", counting backward as 2× forward" : "", peak, baseline))
        if options.json {
            printJSON(["bench": "encoder", "mode": mode.rawValue, "batch": batch, "image_size": imageSize,
                       "threads": Threads.count, "seconds": seconds, "median_ms": seconds * 1e3,
                       "weights": checkpoint ?? "random", "gflops": gflop / seconds,
                       "peak_rss_mib": peak, "baseline_rss_mib": baseline])
        }
    }
}

extension BenchEncoder {
    /// `--config`: the config's student against the reference encoder, alternating.
    func compare(_ path: String) throws {
        let cfg: RunConfig
        do { cfg = try RunConfig.load(URL(fileURLWithPath: path)) } catch let e as ConfigError {
            throw ValidationError("\(path): \(e)")
        }
        let student = Student(cfg.student)
        var rng = SeededRandom(seed: cfg.seed)
        student.initialiseRandomly(rng: &rng)
        var net = student.network
        if let r = net as? RepViT, mode == .inference, !unfused { net = r.fused() }
        let S = net.imageSize
        let reference = try benchEncoder(imageSize: S, checkpoint: checkpoint, rng: &rng)
        let x = Tensor.randomNormal([batch, 3, S, S], rng: &rng)
        func step(_ m: any TrainableImageEncoder) -> () -> Void {
            switch mode {
            case .inference: return { _ = m.forward(x, mode: .inference) }
            case .train:
                let e = m.encoderConfig, R = e.outputResolution
                let dy = Tensor.randomNormal([batch, e.outputChannels, R, R], std: 1e-3, rng: &rng)
                return { m.zeroGradients(); _ = m.forward(x, mode: .training); m.backward(dy, imageGradient: false) }
            }
        }
        let (a, b) = (step(net), step(reference))
        a(); b()
        var ta: [Double] = [], tb: [Double] = []
        for _ in 0..<options.repeats {
            var t0 = BenchClock.now(); a(); ta.append(BenchClock.now() - t0)
            t0 = BenchClock.now(); b(); tb.append(BenchClock.now() - t0)
        }
        let sa = ta.sorted()[ta.count / 2], sb = tb.sorted()[tb.count / 2]
        let refName = checkpoint ?? "MobileSAM TinyViT-5M (random weights)"
        print(String(format: "encoder %@  batch %d  %d×%d  threads %d, %d alternating runs each:", mode.rawValue, batch, S, S,
                     Threads.count, options.repeats))
        print(String(format: "  student   %@: median %.1f ms  (%.2f GFLOP)", net.encoderConfig.description, sa * 1e3,
                     encoderGFLOP(net, batch: batch, backward: mode == .train)))
        print(String(format: "  reference %@: median %.1f ms  (%.2f GFLOP)", refName, sb * 1e3,
                     encoderGFLOP(reference, batch: batch, backward: mode == .train)))
        let (ma, mb) = (ta.min()!, tb.min()!)
        print(String(format: "  ratio student / reference: %.3f× (medians), %.3f× (fastest runs: %.1f / %.1f ms)", sa / sb, ma / mb,
                     ma * 1e3, mb * 1e3))
        if options.json {
            printJSON(["bench": "encoder", "mode": mode.rawValue, "batch": batch, "image_size": S, "threads": Threads.count,
                       "config": path, "student": net.encoderConfig.description, "student_median_ms": sa * 1e3,
                       "student_times_ms": ta.map { $0 * 1e3 }, "reference": refName, "reference_median_ms": sb * 1e3,
                       "reference_times_ms": tb.map { $0 * 1e3 }, "ratio": sa / sb, "ratio_fastest": ma / mb,
                       "student_gflop": encoderGFLOP(net, batch: batch, backward: mode == .train),
                       "reference_gflop": encoderGFLOP(reference, batch: batch, backward: mode == .train)])
        }
    }
}

/// The encoder a benchmark runs: a checkpoint's (`SAMWeights.read`: MobileSAM, an exported
/// TinyViT or conv student, a training checkpoint) when given, else MobileSAM's TinyViT at
/// `imageSize` with seeded N(0, 0.02²) weights (what every encoder benchmark runs).
func benchEncoder(imageSize: Int, checkpoint: String?, rng: inout SeededRandom) throws -> any TrainableImageEncoder {
    guard let checkpoint else {
        var config = TinyViTConfig.mobileSAM
        config.imageSize = imageSize
        let model = TinyViT(config)
        for (_, p) in model.namedParameters() where p.isTrainable {
            p.value = .randomNormal(p.value.shape, std: 0.02, rng: &rng)
        }
        return model
    }
    let weights = try SAMWeights.read(URL(fileURLWithPath: checkpoint))
    guard let model = weights.encoder as? any TrainableImageEncoder else {
        throw SAMModelError(file: checkpoint, reason: "\(weights.architecture): the benchmarks run trainable encoders (TinyViT, conv and RepViT students)")
    }
    guard model.imageSize == imageSize else {
        throw SAMModelError(file: checkpoint, reason: "the encoder takes \(model.imageSize)-pixel inputs, not --image-size \(imageSize)")
    }
    return model
}

/// GFLOP of `batch` images through `encoder`: 2 per multiply-accumulate; with `backward`,
/// 3 × forward (the backward of each product is two products of the same size).
func encoderGFLOP(_ encoder: any TrainableImageEncoder, batch: Int, backward: Bool) -> Double {
    2 * Double(encoder.multiplyAccumulates) * Double(batch) / 1e9 * (backward ? 3 : 1)
}

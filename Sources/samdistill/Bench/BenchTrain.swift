import ArgumentParser
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
            """)

    @OptionGroup var options: BenchOptions

    @Option(help: "Images per batch.")
    var batch = 2

    @Option(help: "Input side in pixels (MobileSAM: 1024).")
    var imageSize = 1024

    @Option(help: "Real weights to start from (as `bench encoder --checkpoint`); random when absent.")
    var checkpoint: String?

    func validate() throws {
        if batch < 1 { throw ValidationError("--batch must be at least 1") }
        if imageSize < 64 || imageSize % 64 != 0 { throw ValidationError("--image-size must be a positive multiple of 64") }
    }

    func run() throws {
        options.apply()
        var rng = SeededRandom(seed: 1)
        let model = try benchEncoder(imageSize: imageSize, checkpoint: checkpoint, rng: &rng)
        let config = model.config
        let R = model.outputResolution
        let x = Tensor.randomNormal([batch, 3, imageSize, imageSize], rng: &rng)
        let target = Tensor.randomNormal([batch, config.neckChannels, R, R], rng: &rng)
        let optimiser = AdamW(parameters: model.trainableParameters(), weightDecay: 0.01)
        let baseline = peakResidentMiB()
        var lastLoss = 0.0
        let seconds = medianSeconds(repeats: options.repeats) {
            model.zeroGradients()
            let y = model.forward(x, mode: .training)
            let loss = mseLoss(y, target)
            lastLoss = loss.value
            model.backward(loss.gradient)
            optimiser.step(learningRate: 1e-4)
        }
        let peak = peakResidentMiB()
        print(String(format: "train step  batch %d  %d×%d  threads %d: median %.3f s per step  peak RSS %.0f MiB (weights+inputs %.0f MiB)  loss %.5f",
                     batch, imageSize, imageSize, Threads.count, seconds, peak, baseline, lastLoss))
        if options.json {
            printJSON(["bench": "train", "batch": batch, "image_size": imageSize, "threads": Threads.count,
                       "seconds": seconds, "median_ms": seconds * 1e3, "peak_rss_mib": peak,
                       "baseline_rss_mib": baseline, "loss": lastLoss, "weights": checkpoint ?? "random"])
        }
    }
}

import ArgumentParser
import Foundation
import ImageCodecs
import SegmentAnything
import Tensor

struct BenchDecoder: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decoder",
        abstract: "Prompt encoder + mask decoder time per call: 1 prompt and a batch of prompts.",
        discussion: """
            Loads the prompt encoder and mask decoder of --checkpoint (the image encoder is not run: \
            a fixed random 256×64×64 embedding stands in for the image), then times \
            SAMPredictor.predict with one point prompt and with --batch point prompts in one call, \
            multimask output, masks post-processed to a 1500×1000 image (as `segment` does). \
            Scripts/bench_pytorch.py measures the same calls in PyTorch.
            """)

    @OptionGroup var options: BenchOptions

    @Option(help: "SAM/MobileSAM checkpoint (.pt or .safetensors) holding the prompt encoder and mask decoder.")
    var checkpoint: String = "weights/mobile_sam.pt"

    @Option(help: "Prompts decoded together in the batched measurement.")
    var batch = 64

    func validate() throws {
        if batch < 1 { throw ValidationError("--batch must be at least 1") }
        if !FileManager.default.fileExists(atPath: checkpoint) {
            throw ValidationError("--checkpoint \(checkpoint) does not exist (Scripts/fetch-weights fetches weights/mobile_sam.pt)")
        }
    }

    func run() throws {
        options.apply()
        let model = try SAMModel.load(contentsOf: URL(fileURLWithPath: checkpoint))
        let predictor = SAMPredictor(model: model)
        var rng = SeededRandom(seed: 1)
        let original = ImageSize(height: 1000, width: 1500)
        try predictor.setEmbedding(.randomNormal([1, 256, 64, 64], std: 0.5, rng: &rng), originalSize: original)
        let one = [SAMPrompt(points: [PromptPoint(x: 700, y: 400)])]
        var many: [SAMPrompt] = []
        for i in 0..<batch {
            let x = Double(50 + (i * 173) % 1400), y = Double(50 + (i * 97) % 900)
            many.append(SAMPrompt(points: [PromptPoint(x: x, y: y)]))
        }
        let single = medianSeconds(repeats: options.repeats) { _ = try? predictor.predict(one) }
        let batched = medianSeconds(repeats: options.repeats) { _ = try? predictor.predict(many) }
        print(String(format: "decoder, threads %d: 1 prompt %.1f ms; %d prompts in one call %.1f ms (%.2f ms per prompt)",
                     Threads.count, single * 1e3, batch, batched * 1e3, batched * 1e3 / Double(batch)))
        if options.json {
            printJSON(["bench": "decoder", "threads": Threads.count, "median_ms": single * 1e3,
                       "batch": batch, "batch_median_ms": batched * 1e3, "per_prompt_ms_batched": batched * 1e3 / Double(batch)])
        }
    }
}

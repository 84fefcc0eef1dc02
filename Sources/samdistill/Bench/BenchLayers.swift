import ArgumentParser
import Foundation
import Layers
import SegmentAnything
import Tensor

struct BenchLayers: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "layers",
        abstract: "Per-layer forward/backward times of MobileSAM's TinyViT at batch 1, 1024×1024.",
        discussion: """
            Each row times one module of the real architecture (random weights) at its real input \
            shape: inference forward, training forward (keeping activations), and backward. \
            Medians over --repeats runs after one warm-up.
            """)

    @OptionGroup var options: BenchOptions

    @Option(help: "Input side in pixels (MobileSAM: 1024).")
    var imageSize = 1024

    @Option(help: "Only the layers whose name contains this text (e.g. MBConv), for profiling one kernel.")
    var only: String?

    @Flag(help: "Inference forward only (skip the training forward and backward).")
    var inferenceOnly = false

    func validate() throws {
        if imageSize < 64 || imageSize % 64 != 0 { throw ValidationError("--image-size must be a positive multiple of 64") }
    }

    func run() throws {
        options.apply()
        var config = TinyViTConfig.mobileSAM
        config.imageSize = imageSize
        let model = TinyViT(config)
        var rng = SeededRandom(seed: 1)
        for (_, p) in model.namedParameters() where p.isTrainable {
            // uniform with std 0.02 (cheap to draw: profiling runs spend little outside the layers)
            p.value = .randomUniform(p.value.shape, -0.0346, 0.0346, rng: &rng)
        }
        let res = config.stageResolutions, dims = config.embedDims
        // (name, module forward, module backward, input)
        var rows: [(String, (Tensor, ForwardMode) -> Tensor, (Tensor) -> Tensor, Tensor)] = []
        func add(_ name: String, _ input: Tensor, _ f: @escaping (Tensor, ForwardMode) -> Tensor, _ b: @escaping (Tensor) -> Tensor) {
            rows.append((name, f, b, input))
        }
        let pe = model.patchEmbed
        add("patch_embed 3→\(dims[0]) @\(imageSize)", .randomUniform([1, 3, imageSize, imageSize], -1.73, 1.73, rng: &rng),
            { pe.forward($0, mode: $1) }, { pe.backward($0) })
        let mb = model.convStage.blocks[0]
        add("MBConv \(dims[0]) @\(res[0])", .randomNormal([1, dims[0], res[0], res[0]], rng: &rng),
            { mb.forward($0, mode: $1) }, { mb.backward($0) })
        if let d = model.convStage.downsample {
            add("PatchMerging \(dims[0])→\(dims[1]) @\(res[0])", .randomNormal([1, dims[0], res[0], res[0]], rng: &rng),
                { d.forward($0, mode: $1) }, { d.backward($0) })
        }
        for (i, s) in model.stages.enumerated() {
            let st = i + 1, blk = s.blocks[0]
            add("TinyViTBlock \(dims[st]) @\(res[st]) win \(config.windowSizes[st])",
                .randomNormal([1, res[st] * res[st], dims[st]], rng: &rng), { blk.forward($0, mode: $1) }, { blk.backward($0) })
            if let d = s.downsample {
                add("PatchMerging \(dims[st])→\(dims[st + 1]) @\(res[st])", .randomNormal([1, res[st] * res[st], dims[st]], rng: &rng),
                    { d.forward($0, mode: $1) }, { d.backward($0) })
            }
        }
        let neck = model.neck, R = res.last!
        add("neck \(dims.last!)→\(config.neckChannels) @\(R)", .randomUniform([1, dims.last!, R, R], -1.73, 1.73, rng: &rng),
            { neck.forward($0, mode: $1) }, { neck.backward($0) })

        print("threads: \(Threads.count)  image: \(imageSize)×\(imageSize)  batch 1  (median of \(options.repeats), \(options.cpuTime ? "CPU" : "wall") time)")
        print("layer".padding(toLength: 40, withPad: " ", startingAt: 0) + "  inference ms   train fwd ms   backward ms")
        var results: [[String: Any]] = []
        for (name, f, b, x) in rows where only.map({ name.contains($0) }) ?? true {
            let inf = medianSeconds(repeats: options.repeats) { _ = f(x, .inference) }
            if inferenceOnly {
                print(name.padding(toLength: 40, withPad: " ", startingAt: 0) + String(format: "  %12.1f", inf * 1e3))
                results.append(["layer": name, "inference_ms": inf * 1e3])
                continue
            }
            let y = f(x, .training)
            let dy = Tensor(repeating: 0.01, shape: y.shape)
            _ = b(dy)
            var fwd: [Double] = [], bwd: [Double] = []
            for _ in 0..<options.repeats {
                var t0 = BenchClock.now()
                _ = f(x, .training)
                fwd.append(BenchClock.now() - t0)
                t0 = BenchClock.now()
                _ = b(dy)
                bwd.append(BenchClock.now() - t0)
            }
            let tf = fwd.sorted()[fwd.count / 2], tb = bwd.sorted()[bwd.count / 2]
            print(name.padding(toLength: 40, withPad: " ", startingAt: 0)
                  + String(format: "  %12.1f  %13.1f  %12.1f", inf * 1e3, tf * 1e3, tb * 1e3))
            results.append(["layer": name, "inference_ms": inf * 1e3, "train_forward_ms": tf * 1e3, "backward_ms": tb * 1e3])
        }
        if options.json { printJSON(["bench": "layers", "threads": Threads.count, "image_size": imageSize, "results": results]) }
    }
}

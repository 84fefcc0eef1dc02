import ArgumentParser
import Distill
import Foundation
import Tensor

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Export a student (or a SAM checkpoint's encoder) as one safetensors file.",
        discussion: """
            CHECKPOINT is a training checkpoint or any weights file the inference core loads (a \
            MobileSAM .pt converts too). Keys are named as SAM/MobileSAM name them \
            (image_encoder.…), the architecture is stored as JSON in the metadata \
            (image_encoder, image_encoder_config). --half stores float16. --full adds the prompt \
            encoder and mask decoder (from --prompt-decoder-from, else from CHECKPOINT when it has \
            them, else from a training checkpoint's teacher.checkpoint) so that \
            `samdistill segment --checkpoint OUT` runs from the one file. The write is atomic.
            """)

    @OptionGroup var runtime: RuntimeOptions

    @Argument(help: "A training checkpoint or a weights file (.safetensors, .pt, .pth).")
    var checkpoint: String

    @Option(help: "The output .safetensors file.")
    var out: String

    @Flag(help: "Store float16.")
    var half = false

    @Flag(help: "Add the prompt encoder and mask decoder.")
    var full = false

    @Option(help: "Weights holding the prompt encoder and mask decoder to add with --full (e.g. the teacher).")
    var promptDecoderFrom: String?

    func validate() throws {
        guard FileManager.default.fileExists(atPath: checkpoint) else { throw ValidationError("no such file: \(checkpoint)") }
        if URL(fileURLWithPath: out).pathExtension.lowercased() != "safetensors" {
            throw ValidationError("--out: \(out) must be a .safetensors file")
        }
        if let p = promptDecoderFrom {
            if !full { throw ValidationError("--prompt-decoder-from needs --full") }
            guard FileManager.default.fileExists(atPath: p) else { throw ValidationError("--prompt-decoder-from: no such file: \(p)") }
        }
    }

    func run() throws {
        let s = try Exporter.export(checkpoint: URL(fileURLWithPath: checkpoint), to: URL(fileURLWithPath: out), half: half,
                                    full: full, promptDecoderFrom: promptDecoderFrom.map { URL(fileURLWithPath: $0) })
        print("exported \(s.architecture): \(s.encoderTensors) encoder tensors (\(s.parameters) values)"
              + (s.decoderTensors > 0 ? " + \(s.decoderTensors) prompt encoder / mask decoder tensors" : "")
              + ", \(s.half ? "float16" : "float32"), \(s.bytes) bytes → \(s.output.path)")
    }
}

import ArgumentParser
import Distill
import Foundation
import Tensor

/// Bad input to `export` (unknown format, missing file, conflicting flags): one line, exit status 1.
struct ExportInputError: Error, CustomStringConvertible {
    let description: String
}

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Export a student (or a SAM checkpoint's encoder) as safetensors or ONNX.",
        discussion: """
            CHECKPOINT is a training checkpoint or any weights file the inference core loads (a \
            MobileSAM .pt converts too). Keys are named as SAM/MobileSAM name them \
            (image_encoder.…), the architecture is stored as JSON in the metadata \
            (image_encoder, image_encoder_config). --half stores float16. --full adds the prompt \
            encoder and mask decoder (from --prompt-decoder-from, else from CHECKPOINT when it has \
            them, else from a training checkpoint's teacher.checkpoint) so that \
            `samdistill segment --checkpoint OUT` runs from the one file. The write is atomic.

            --format onnx writes the image encoder as an ONNX model (opset 17, IR version 8):             input `image` (1, 3, S, S) float32, normalised and padded as SAM preprocesses, output             `image_embeddings` (1, 256, S/16, S/16), BatchNorm folded. With --decoder it writes             SAM's prompt encoder + mask decoder instead, with the interface of SAM's SamOnnxModel             (image_embeddings, point_coords, point_labels, mask_input, has_mask_input,             orig_im_size → masks, iou_predictions, low_res_masks; a dynamic number of points),             from CHECKPOINT or --prompt-decoder-from. --half stores float16 weights (cast to             float32 in the graph).

            Example: samdistill export weights/mobile_sam.pt --format onnx --out encoder.onnx
            """)

    @OptionGroup var runtime: RuntimeOptions

    @Argument(help: "A training checkpoint or a weights file (.safetensors, .pt, .pth).")
    var checkpoint: String

    @Option(help: "The output file: .safetensors, or .onnx with --format onnx.")
    var out: String

    @Option(help: "safetensors (the default) or onnx.")
    var format = "safetensors"

    @Flag(help: "Store float16.")
    var half = false

    @Flag(help: "Add the prompt encoder and mask decoder (safetensors).")
    var full = false

    @Flag(help: "With --format onnx: write SAM's prompt encoder + mask decoder (SamOnnxModel's interface) instead of the encoder.")
    var decoder = false

    @Option(help: "Weights holding the prompt encoder and mask decoder, for --full or --decoder (e.g. the teacher).")
    var promptDecoderFrom: String?

    // Errors here are `ExportInputError`s, not ValidationErrors: bad input exits with status 1.
    func validate() throws {
        guard ["safetensors", "onnx"].contains(format) else {
            throw ExportInputError(description: "--format: unknown format '\(format)' (safetensors or onnx)")
        }
        guard FileManager.default.fileExists(atPath: checkpoint) else { throw ExportInputError(description: "no such file: \(checkpoint)") }
        let ext = URL(fileURLWithPath: out).pathExtension.lowercased()
        if ext != format { throw ExportInputError(description: "--out: \(out) must be a .\(format) file with --format \(format)") }
        if format == "onnx" && full { throw ExportInputError(description: "--full is for safetensors; with --format onnx use --decoder") }
        if format != "onnx" && decoder { throw ExportInputError(description: "--decoder needs --format onnx") }
        if let p = promptDecoderFrom {
            if !full && !decoder { throw ExportInputError(description: "--prompt-decoder-from needs --full or --decoder") }
            guard FileManager.default.fileExists(atPath: p) else { throw ExportInputError(description: "--prompt-decoder-from: no such file: \(p)") }
        }
    }

    func run() throws {
        if format == "onnx" {
            let s = try Exporter.exportONNX(checkpoint: URL(fileURLWithPath: checkpoint), to: URL(fileURLWithPath: out), half: half,
                                            decoder: decoder, promptDecoderFrom: promptDecoderFrom.map { URL(fileURLWithPath: $0) })
            print("exported \(s.content) as ONNX (opset 17): \(s.nodes) nodes, \(s.initializers) initializers "
                  + "(\(s.parameters) values, \(s.half ? "float16" : "float32")), \(s.bytes) bytes → \(s.output.path)")
            return
        }
        let s = try Exporter.export(checkpoint: URL(fileURLWithPath: checkpoint), to: URL(fileURLWithPath: out), half: half,
                                    full: full, promptDecoderFrom: promptDecoderFrom.map { URL(fileURLWithPath: $0) })
        print("exported \(s.architecture): \(s.encoderTensors) encoder tensors (\(s.parameters) values)"
              + (s.decoderTensors > 0 ? " + \(s.decoderTensors) prompt encoder / mask decoder tensors" : "")
              + ", \(s.half ? "float16" : "float32"), \(s.bytes) bytes → \(s.output.path)")
    }
}

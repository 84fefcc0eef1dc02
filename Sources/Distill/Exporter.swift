import CheckpointFormats
import Foundation
import Layers
import SegmentAnything
import Tensor

// Export: a trained student (or any SAM checkpoint the inference core loads) → one safetensors
// file with SAM/MobileSAM's key names (`image_encoder.…`), the encoder's architecture in the
// metadata (`SAMEncoderConfig.metadata`: `image_encoder` + `image_encoder_config`), optionally
// float16, optionally with the prompt encoder and mask decoder (`--full`) so `SAMModel.load`
// runs from the one file. Every input is read by `SAMWeights` (`readStudent`: with a training
// checkpoint's run config).

/// Why an export (or reading a student) failed, naming the file.
public struct ExportError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let reason: String
    public init(file: String, reason: String) { self.file = file; self.reason = reason }
    public var description: String { "\(file): \(reason)" }
}

extension SAMWeights {
    /// `read`, and for a training checkpoint its run config: the student's architecture comes
    /// from the config (checkpoints written before the trainer recorded it in the metadata have
    /// only the config), and export takes the teacher from it.
    public static func readStudent(_ url: URL) throws -> (weights: SAMWeights, runConfig: RunConfig?) {
        let file = try WeightsFile(contentsOf: url)
        let metadata = file.metadata
        guard metadata["format"] == trainingCheckpointFormat else { return (try SAMWeights(file: file), nil) }
        guard let yaml = metadata["config"], !yaml.isEmpty else {
            throw ExportError(file: url.path, reason: "training checkpoint without its run config in the metadata")
        }
        let config: RunConfig
        do { config = try RunConfig.parse(yaml) } catch {
            throw ExportError(file: url.path, reason: "the run config in the metadata does not parse: \(error)")
        }
        return (try SAMWeights(file: file, architecture: config.student.encoderConfig), config)
    }
}

/// `samdistill export`: writes a student (or a SAM checkpoint's encoder) as one safetensors file.
public enum Exporter {
    /// What was written.
    public struct Summary: Sendable {
        public let output: URL
        public let architecture: String
        public let encoderTensors: Int
        public let decoderTensors: Int
        public let parameters: Int
        public let half: Bool
        public let bytes: Int
    }

    /// Exports `checkpoint` to `output`.
    ///
    /// Keys: `image_encoder.<encoder key>` exactly as SAM/MobileSAM's state dict names them
    /// (classification head and `num_batches_tracked` left out). Metadata: the architecture
    /// (`image_encoder`, `image_encoder_config`), `format` = "samdistill-export-1", `source`
    /// (the input file's name), plus `training_step` for a training checkpoint. A RepViT encoder is
    /// written fused (`RepViT.fused()`: one biased conv per Conv2d_BN and per RepVGGDW; its metadata
    /// config says `fused: true`), which every command loads as it is. `half` stores
    /// float16 (computation stays Float32 on load). `full` adds `prompt_encoder.*` and
    /// `mask_decoder.*`: from `promptDecoderFrom`, else from the checkpoint itself when it holds
    /// them (a SAM checkpoint), else from a training checkpoint's `teacher.checkpoint`. With
    /// `full` the result is checked to build and load strictly as a `SAMModel` before it is
    /// written. Atomic write.
    @discardableResult
    public static func export(checkpoint: URL, to output: URL, half: Bool = false, full: Bool = false,
                              promptDecoderFrom: URL? = nil) throws -> Summary {
        let (weights, runConfig) = try SAMWeights.readStudent(checkpoint)
        // A RepViT is written structurally re-parameterised (every branch and BatchNorm folded).
        let network: any SAMImageEncoder = (weights.encoder as? RepViT)?.fused() ?? weights.encoder
        let architecture = network.encoderConfig
        let encoder = network.stateDict()
        var tensors: [String: Tensor] = [:]
        for (k, v) in encoder { tensors["image_encoder." + k] = v }
        var meta = architecture.metadata
        meta["format"] = "samdistill-export-1"
        meta["source"] = checkpoint.lastPathComponent
        if weights.isTrainingCheckpoint, let step = weights.metadata["step"] { meta["training_step"] = step }
        var decoderCount = 0
        if full {
            guard architecture.outputChannels == 256 else {
                throw ExportError(file: checkpoint.path, reason: "--full: the encoder gives \(architecture.outputChannels) channels; SAM's decoder takes 256")
            }
            let decoder: [String: Tensor]
            if let promptDecoderFrom {
                decoder = try SAMWeights.readDecoder(promptDecoderFrom)
            } else if !weights.decoder.isEmpty {
                decoder = weights.decoder
            } else if let t = runConfig?.teacher.checkpoint {
                decoder = try SAMWeights.readDecoder(URL(fileURLWithPath: t))
            } else {
                throw ExportError(file: checkpoint.path, reason: "--full needs the prompt encoder and mask decoder: give --prompt-decoder-from W (e.g. the teacher checkpoint)")
            }
            for (k, v) in decoder { tensors[k] = v }
            decoderCount = decoder.count
            try SAMModel(imageEncoder: network).load(tensors, source: output.path)
        }
        try FileManager.default.createDirectory(at: output.deletingLastPathComponent(), withIntermediateDirectories: true)
        try SafeTensors.write(tensors, metadata: meta, half: half, to: output)
        let bytes = ((try? FileManager.default.attributesOfItem(atPath: output.path))?[.size] as? NSNumber)?.intValue ?? 0
        return Summary(output: output, architecture: architecture.description, encoderTensors: encoder.count,
                       decoderTensors: decoderCount, parameters: encoder.values.reduce(0) { $0 + $1.count },
                       half: half, bytes: bytes)
    }
}

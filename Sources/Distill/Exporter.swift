import Foundation
import Layers
import SegmentAnything
import Tensor

// Export: a trained student (or any SAM checkpoint the inference core loads) → one safetensors
// file with SAM/MobileSAM's key names (`image_encoder.…`), the encoder's architecture in the
// metadata (`SAMEncoderConfig.metadata`: `image_encoder` + `image_encoder_config`), optionally
// float16, optionally with the prompt encoder and mask decoder (`--full`) so `SAMModel.load`
// runs from the one file. `EncoderWeights` reads every accepted input; the evaluator uses it too.

/// Why an export (or reading a student) failed, naming the file.
public struct ExportError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let reason: String
    public init(file: String, reason: String) { self.file = file; self.reason = reason }
    public var description: String { "\(file): \(reason)" }
}

/// An image encoder's architecture and weights, read from any file the toolkit produces or loads:
/// a training checkpoint (`format` = samdistill-checkpoint-1: `model.*` + the run config), an
/// exported student, or a SAM/MobileSAM checkpoint (.pt/.pth/.safetensors, keys
/// `image_encoder.*`, possibly under one prefix).
public struct EncoderWeights {
    /// The encoder kind. A ConvStudent has no `SAMEncoderConfig`: its metadata is
    /// `image_encoder` = "conv_student" + `image_encoder_config` = `ConvStudentConfig` as JSON,
    /// readable here but not by `SAMModel`.
    public enum Architecture: Equatable {
        case sam(SAMEncoderConfig)
        case conv(ConvStudentConfig)
    }

    /// The metadata value of `image_encoder` for a ConvStudent.
    public static let convStudentKind = "conv_student"

    public let architecture: Architecture
    /// The encoder's tensors, keys as the encoder module names them (no `image_encoder.` prefix),
    /// classification head and `num_batches_tracked` removed.
    public let encoder: [String: Tensor]
    /// `prompt_encoder.*` / `mask_decoder.*` when the file holds them (a SAM checkpoint or a
    /// `--full` export), else empty.
    public let decoder: [String: Tensor]
    /// The file read.
    public let source: URL
    /// Whether the file was a training checkpoint.
    public let isTrainingCheckpoint: Bool
    /// `teacher.checkpoint` of a training checkpoint's run config.
    public let teacherCheckpoint: String?

    /// Reads `url` (see the type's description) and checks the tensors load strictly into the
    /// architecture it names.
    public static func read(_ url: URL) throws -> EncoderWeights {
        let file = try WeightsFile(contentsOf: url)
        func fail(_ why: String) -> ExportError { ExportError(file: url.path, reason: why) }
        let result: EncoderWeights
        if file.metadata["format"] == "samdistill-checkpoint-1" {
            guard let yaml = file.metadata["config"], !yaml.isEmpty else {
                throw fail("training checkpoint without its run config in the metadata")
            }
            let config: RunConfig
            do { config = try RunConfig.parse(yaml) } catch { throw fail("the run config in the metadata does not parse: \(error)") }
            var tensors: [String: Tensor] = [:]
            for (k, v) in file.tensors where k.hasPrefix("model.") { tensors[String(k.dropFirst(6))] = v }
            let architecture: Architecture
            switch config.student {
            case .tinyViT(let c, _): architecture = .sam(.tinyViT(c))
            case .conv(let c): architecture = .conv(c)
            }
            result = EncoderWeights(architecture: architecture, encoder: tensors.filter { !TinyViT.ignoredKeys($0.key) },
                                    decoder: [:], source: url, isTrainingCheckpoint: true,
                                    teacherCheckpoint: config.teacher.checkpoint)
        } else if file.metadata["image_encoder"] == convStudentKind {
            guard let json = file.metadata["image_encoder_config"],
                  let c = try? JSONDecoder().decode(ConvStudentConfig.self, from: Data(json.utf8)) else {
                throw fail("metadata image_encoder_config is not a valid ConvStudent config")
            }
            let (enc, dec) = split(file.tensors)
            result = EncoderWeights(architecture: .conv(c), encoder: enc, decoder: dec, source: url,
                                    isTrainingCheckpoint: false, teacherCheckpoint: nil)
        } else {
            guard file.tensors.keys.contains(where: { $0.hasPrefix("image_encoder.") || $0.contains(".image_encoder.") }) else {
                throw fail("no image encoder: neither a training checkpoint nor a file with 'image_encoder.…' keys (\(file.tensors.count) tensors)")
            }
            let sam = try SAMModel.samStateDict(file.tensors, file: url.path)
            let config = try SAMModel.detectEncoder(sam, metadata: file.metadata, file: url.path)
            let (enc, dec) = split(sam)
            result = EncoderWeights(architecture: .sam(config), encoder: enc, decoder: dec, source: url,
                                    isTrainingCheckpoint: false, teacherCheckpoint: nil)
        }
        do {
            try result.makeModule().load(result.encoder)
        } catch {
            throw fail("the encoder weights do not fit the architecture: \(error)")
        }
        return result
    }

    /// (`image_encoder.*` without the prefix, head and counters removed; `prompt_encoder.*` +
    /// `mask_decoder.*` as they are).
    static func split(_ tensors: [String: Tensor]) -> (encoder: [String: Tensor], decoder: [String: Tensor]) {
        var enc: [String: Tensor] = [:], dec: [String: Tensor] = [:]
        let p = "image_encoder."
        for (k, v) in tensors {
            if k.hasPrefix(p) {
                let key = String(k.dropFirst(p.count))
                if !TinyViT.ignoredKeys(key) { enc[key] = v }
            } else if k.hasPrefix("prompt_encoder.") || k.hasPrefix("mask_decoder.") {
                if !k.hasSuffix("num_batches_tracked") { dec[k] = v }
            }
        }
        return (enc, dec)
    }

    /// The input side S of the encoder.
    public var imageSize: Int {
        switch architecture {
        case .sam(.tinyViT(let c)): c.imageSize
        case .sam(.vit(let c)): c.imageSize
        case .conv(let c): c.imageSize
        }
    }

    /// A readable name of the architecture.
    public var architectureDescription: String {
        switch architecture {
        case .sam(let c): c.description
        case .conv(let c): "ConvStudent (channels \(c.channels), blocks \(c.blocks))"
        }
    }

    /// The metadata naming the architecture (`SAMEncoderConfig.metadata`, or the ConvStudent form).
    public var architectureMetadata: [String: String] {
        switch architecture {
        case .sam(let c): return c.metadata
        case .conv(let c):
            let e = JSONEncoder()
            e.outputFormatting = [.sortedKeys]
            let json = (try? e.encode(c)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
            return ["image_encoder": Self.convStudentKind, "image_encoder_config": json]
        }
    }

    /// A fresh module of the architecture (constructor values, weights not loaded).
    func makeModule() -> Module {
        switch architecture {
        case .sam(let c): c.makeEncoder()
        case .conv(let c): ConvStudent(c)
        }
    }

    /// The encoder with these weights: (B, 3, S, S) normalised padded images → (B, 256, S/16, S/16).
    public func makeEncoder() throws -> (Tensor) -> Tensor {
        switch architecture {
        case .sam(let c):
            let m = c.makeEncoder()
            try m.load(encoder)
            return { m.forward($0, mode: .inference) }
        case .conv(let c):
            let m = ConvStudent(c)
            try m.load(encoder)
            return { m.forward($0, mode: .inference) }
        }
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
    /// (the input file's name), plus `training_step` for a training checkpoint. `half` stores
    /// float16 (computation stays Float32 on load). `full` adds `prompt_encoder.*` and
    /// `mask_decoder.*`: from `promptDecoderFrom`, else from the checkpoint itself when it holds
    /// them (a SAM checkpoint), else from a training checkpoint's `teacher.checkpoint`. With
    /// `full` the result is checked to build and load strictly as a `SAMModel` before it is
    /// written (a ConvStudent cannot: `SAMModel` has no such encoder). Atomic write.
    @discardableResult
    public static func export(checkpoint: URL, to output: URL, half: Bool = false, full: Bool = false,
                              promptDecoderFrom: URL? = nil) throws -> Summary {
        let weights = try EncoderWeights.read(checkpoint)
        var tensors: [String: Tensor] = [:]
        for (k, v) in weights.encoder { tensors["image_encoder." + k] = v }
        var meta = weights.architectureMetadata
        meta["format"] = "samdistill-export-1"
        meta["source"] = checkpoint.lastPathComponent
        if weights.isTrainingCheckpoint, let step = (try? WeightsFile(contentsOf: checkpoint))?.metadata["step"] {
            meta["training_step"] = step
        }
        var decoderCount = 0
        if full {
            guard case .sam(let config) = weights.architecture else {
                throw ExportError(file: checkpoint.path, reason: "--full: a ConvStudent cannot run in the SAM inference core; export it without --full")
            }
            var decoder: [String: Tensor]
            if let promptDecoderFrom {
                let file = try WeightsFile(contentsOf: promptDecoderFrom)
                decoder = EncoderWeights.split(try SAMModel.samStateDict(file.tensors, file: promptDecoderFrom.path, anchor: "mask_decoder.")).decoder
            } else if !weights.decoder.isEmpty {
                decoder = weights.decoder
            } else if let t = weights.teacherCheckpoint {
                let u = URL(fileURLWithPath: t)
                let file = try WeightsFile(contentsOf: u)
                decoder = EncoderWeights.split(try SAMModel.samStateDict(file.tensors, file: u.path, anchor: "mask_decoder.")).decoder
            } else {
                throw ExportError(file: checkpoint.path, reason: "--full needs the prompt encoder and mask decoder: give --prompt-decoder-from W (e.g. the teacher checkpoint)")
            }
            if decoder.isEmpty {
                throw ExportError(file: (promptDecoderFrom ?? checkpoint).path, reason: "no prompt_encoder.* / mask_decoder.* tensors")
            }
            for (k, v) in decoder { tensors[k] = v }
            decoderCount = decoder.count
            let model = SAMModel(encoder: config)
            try model.load(tensors, source: output.path)
        }
        try FileManager.default.createDirectory(at: output.deletingLastPathComponent(), withIntermediateDirectories: true)
        try SafeTensors.write(tensors, metadata: meta, half: half, to: output)
        let bytes = ((try? FileManager.default.attributesOfItem(atPath: output.path))?[.size] as? NSNumber)?.intValue ?? 0
        return Summary(output: output, architecture: weights.architectureDescription, encoderTensors: weights.encoder.count,
                       decoderTensors: decoderCount, parameters: weights.encoder.values.reduce(0) { $0 + $1.count },
                       half: half, bytes: bytes)
    }
}

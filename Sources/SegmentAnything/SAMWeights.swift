import CheckpointFormats
import Foundation
import Layers
import Tensor

// Reading a weights file into a SAM image encoder: the one loader of the toolkit (segment, eval,
// cache teachers, export, bench, a run's `init`). As in sam.cpp's single key map, this file alone
// says which tensors of a file are the encoder's, the prompt encoder's and the mask decoder's,
// which architecture they are, and which keys an architecture may leave unused. Strict: any
// other key, a missing key or a wrong shape is an error naming the keys and the file.

// MARK: - Architecture

/// Which image encoder a SAM model has, with its architecture.
public enum SAMEncoderConfig: Equatable, Sendable, CustomStringConvertible {
    case tinyViT(TinyViTConfig)
    case vit(ViTConfig)
    case conv(ConvStudentConfig)
    case repViT(RepViTConfig)

    /// The name stored in weights metadata (`image_encoder`): "tiny_vit", "vit", "conv_student" or "repvit".
    public var kind: String {
        switch self {
        case .tinyViT: "tiny_vit"
        case .vit: "vit"
        case .conv: "conv_student"
        case .repViT: "repvit"
        }
    }

    public var description: String {
        switch self {
        case .tinyViT(let c):
            let name = c == .mobileSAM ? "MobileSAM " : ""
            let input = c.inputResize.map { ", input resized to \($0)" } ?? ""
            return "\(name)TinyViT (dims \(c.embedDims), depths \(c.depths), heads \(c.numHeads), windows \(c.windowSizes)\(input))"
        case .vit(let c):
            let name = c == .vitB ? "SAM ViT-B " : c == .vitL ? "SAM ViT-L " : c == .vitH ? "SAM ViT-H " : ""
            return "\(name)ViT (width \(c.embedDim), depth \(c.depth), heads \(c.numHeads), global \(c.globalAttentionIndexes))"
        case .conv(let c):
            return "ConvStudent (channels \(c.channels), blocks \(c.blocks))"
        case .repViT(let c):
            var m1 = RepViTConfig.m1
            m1.fused = c.fused
            return "\(c == m1 ? "EdgeSAM RepViT-M1" : "RepViT") (dims \(c.embedDims), depths \(c.depths)\(c.fused ? ", fused" : ""))"
        }
    }

    /// S, the padded input side.
    public var imageSize: Int {
        switch self {
        case .tinyViT(let c): c.imageSize
        case .vit(let c): c.imageSize
        case .conv(let c): c.imageSize
        case .repViT(let c): c.imageSize
        }
    }

    /// Channels of the embedding the encoder gives (SAM's decoder takes 256).
    public var outputChannels: Int {
        switch self {
        case .tinyViT(let c): c.neckChannels
        case .vit(let c): c.outChannels
        case .conv(let c): c.outChannels
        case .repViT(let c): c.neckChannels
        }
    }

    /// Side of the embedding grid (S/16 for SAM's encoders).
    public var outputResolution: Int {
        switch self {
        case .tinyViT(let c): c.outputResolution
        case .vit(let c): c.gridSize
        case .conv(let c): c.outputResolution
        case .repViT(let c): c.outputResolution
        }
    }

    /// What makes the config unbuildable, each naming its key (empty when it builds).
    public var problems: [String] {
        switch self {
        case .tinyViT(let c): c.problems()
        case .vit(let c): c.problems()
        case .conv(let c): c.problems()
        case .repViT(let c): c.problems()
        }
    }

    /// Builds the encoder (constructor values; weights not loaded).
    public func makeEncoder() -> any SAMImageEncoder {
        switch self {
        case .tinyViT(let c): TinyViT(c)
        case .vit(let c): ImageEncoderViT(c)
        case .conv(let c): ConvStudent(c)
        case .repViT(let c): RepViT(c)
        }
    }

    /// Keys a checkpoint of this architecture may hold that the encoder does not use: TinyViT's
    /// ImageNet classification head (`head.*`, `norm_head.*`). TinyViT's only: other encoders
    /// have no such head, and the conv student's `head` is its output projection.
    public func ignoredKeys(_ key: String) -> Bool {
        if case .tinyViT = self { return TinyViT.ignoredKeys(key) }
        return false
    }

    /// The metadata that names this encoder in a weights file: `image_encoder` = kind,
    /// `image_encoder_config` = the config as JSON (snake_case keys).
    public var metadata: [String: String] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let data: Data?
        switch self {
        case .tinyViT(let c): data = try? encoder.encode(c)
        case .vit(let c): data = try? encoder.encode(c)
        case .conv(let c): data = try? encoder.encode(c)
        case .repViT(let c): data = try? encoder.encode(c)
        }
        return ["image_encoder": kind, "image_encoder_config": data.map { String(decoding: $0, as: UTF8.self) } ?? "{}"]
    }

    /// The architecture a file's metadata names (`image_encoder` + `image_encoder_config`, as
    /// `metadata` writes them); nil when it names none. Throws for an unknown kind or an invalid
    /// config, naming `file`.
    public init?(metadata: [String: String], file: String) throws {
        guard let kind = metadata["image_encoder"], let json = metadata["image_encoder_config"] else { return nil }
        func fail(_ why: String) -> SAMModelError { SAMModelError(file: file, reason: why) }
        func decode<C: Decodable>(_: C.Type) throws -> C {
            do { return try JSONDecoder().decode(C.self, from: Data(json.utf8)) } catch {
                throw fail("metadata image_encoder_config is not a valid \(kind) config: \(error)")
            }
        }
        switch kind {
        case "tiny_vit": self = .tinyViT(try decode(TinyViTConfig.self))
        case "vit": self = .vit(try decode(ViTConfig.self))
        case "conv_student": self = .conv(try decode(ConvStudentConfig.self))
        case "repvit": self = .repViT(try decode(RepViTConfig.self))
        default: throw fail("metadata image_encoder '\(kind)' is none of 'tiny_vit', 'vit', 'conv_student', 'repvit'")
        }
        let p = problems
        if !p.isEmpty { throw fail("image_encoder_config: " + p.joined(separator: "; ")) }
    }

    /// The architecture of an encoder's tensors (keys as the encoder names them) from their keys
    /// and shapes, for files whose metadata names none (SAM's and MobileSAM's own checkpoints).
    ///
    /// TinyViT (`patch_embed.seq.…`): stage widths from the patch embedding and the PatchMerging
    /// outputs, depths from the block counts, heads and windows from each stage's
    /// `attention_biases` (heads, window²), MLP and MBConv ratios, local conv size and neck width
    /// from their weights; image size 1024 and the reference's merge-stride rule (shapes cannot
    /// tell a stride).
    /// ViT (`patch_embed.proj.…`): width, patch and grid from the patch embedding and
    /// `pos_embed`, depth from the block count, head width from `rel_pos_h` (columns), window and
    /// global-attention blocks from its rows (2·window − 1 vs 2·grid − 1); without relative
    /// positions the head count of SAM B/L/H for that width.
    /// A conv student's strides cannot be told from shapes: it needs its metadata.
    public static func detect(_ encoder: [String: Tensor], file: String) throws -> SAMEncoderConfig {
        func fail(_ why: String) -> SAMModelError { SAMModelError(file: file, reason: why) }
        func shape(_ key: String) -> [Int]? { encoder[key]?.shape }
        func count(_ prefix: String) -> Int {
            var indices = Set<Int>()
            for k in encoder.keys where k.hasPrefix(prefix) {
                if let i = Int(k.dropFirst(prefix.count).prefix { $0 != "." }) { indices.insert(i) }
            }
            return indices.isEmpty ? 0 : indices.max()! + 1
        }
        if let stem = shape("patch_embed.seq.2.c.weight") {
            var c = TinyViTConfig()
            let stages = count("layers.")
            guard stages >= 2 else { throw fail("TinyViT encoder with \(stages) stage(s); expected at least 2") }
            var dims = [stem[0]]
            for i in 1..<stages {
                guard let s = shape("layers.\(i - 1).downsample.conv3.c.weight") else {
                    throw fail("TinyViT encoder: missing layers.\(i - 1).downsample.conv3.c.weight")
                }
                dims.append(s[0])
            }
            c.embedDims = dims
            c.depths = (0..<stages).map { count("layers.\($0).blocks.") }
            // Stage 0 (MBConv) has no attention: keep the reference's values there.
            c.numHeads = [TinyViTConfig.mobileSAM.numHeads[0]]
            c.windowSizes = [TinyViTConfig.mobileSAM.windowSizes[0]]
            for i in 1..<stages {
                if let b = shape("layers.\(i).blocks.0.attn.attention_biases"), b.count == 2 {
                    let w = Int(Double(b[1]).squareRoot().rounded())
                    guard w * w == b[1] else { throw fail("layers.\(i) attention_biases \(b): \(b[1]) is not a square window") }
                    c.numHeads.append(b[0])
                    c.windowSizes.append(w)
                } else {
                    c.numHeads.append(1)
                    c.windowSizes.append(7)
                }
            }
            // MLP ratio per stage from its first block's fc1; one ratio when the stages agree
            let ratios = (1..<stages).map { i in shape("layers.\(i).blocks.0.mlp.fc1.weight").map { Float($0[0]) / Float(dims[i]) } }
            if let first = ratios.compactMap({ $0 }).first {
                c.mlpRatio = first
                if ratios.contains(where: { $0 != nil && $0 != first }) {
                    c.mlpRatios = [TinyViTConfig.mobileSAM.mlpRatio] + ratios.map { $0 ?? first }  // [0]: unused, as numHeads[0]
                }
            }
            if let conv1 = shape("layers.0.blocks.0.conv1.c.weight") { c.mbconvExpandRatio = Float(conv1[0]) / Float(dims[0]) }
            if let local = (1..<stages).lazy.compactMap({ shape("layers.\($0).blocks.0.local_conv.c.weight") }).first {
                c.localConvSize = local[2]
            }
            if let neck = shape("neck.0.weight") { c.neckChannels = neck[0] }
            let p = c.problems()
            if !p.isEmpty { throw fail("detected TinyViT configuration is invalid: " + p.joined(separator: "; ")) }
            return .tinyViT(c)
        }
        if let proj = shape("patch_embed.proj.weight") {
            var c = ViTConfig()
            c.embedDim = proj[0]
            c.inputChannels = proj[1]
            c.patchSize = proj[2]
            c.depth = count("blocks.")
            if let pos = shape("pos_embed") {
                c.useAbsolutePosition = true
                c.imageSize = pos[1] * c.patchSize
            } else {
                c.useAbsolutePosition = false
            }
            let grid = c.imageSize / c.patchSize
            if let neck = shape("neck.0.weight") { c.outChannels = neck[0] }
            if let lin1 = shape("blocks.0.mlp.lin1.weight") { c.mlpRatio = Double(lin1[0]) / Double(c.embedDim) }
            if shape("blocks.0.attn.rel_pos_h") != nil {
                c.useRelativePosition = true
                var global: [Int] = []
                var window = 0
                for i in 0..<c.depth {
                    guard let r = shape("blocks.\(i).attn.rel_pos_h") else { throw fail("ViT encoder: block \(i) has no rel_pos_h") }
                    c.numHeads = c.embedDim / r[1]
                    if r[0] == 2 * grid - 1 { global.append(i) } else { window = (r[0] + 1) / 2 }
                }
                c.globalAttentionIndexes = global
                c.windowSize = window
            } else {
                c.useRelativePosition = false
                switch c.embedDim {
                case 768: c.numHeads = 12; c.globalAttentionIndexes = ViTConfig.vitB.globalAttentionIndexes
                case 1024: c.numHeads = 16; c.globalAttentionIndexes = ViTConfig.vitL.globalAttentionIndexes
                case 1280: c.numHeads = 16; c.globalAttentionIndexes = ViTConfig.vitH.globalAttentionIndexes
                default: throw fail("ViT encoder of width \(c.embedDim) without relative positions: cannot tell its heads")
                }
            }
            let p = c.problems()
            if !p.isEmpty { throw fail("detected ViT configuration is invalid: " + p.joined(separator: "; ")) }
            return .vit(c)
        }
        if encoder["fuse_stage2.weight"] != nil, encoder["features.0.0.c.weight"] ?? encoder["features.0.0.weight"] != nil {
            return .repViT(try detectRepViT(encoder, file: file))
        }
        if encoder["stem.0.weight"] != nil, encoder["head.weight"] != nil {
            throw fail("a conv student without its architecture in the metadata (image_encoder = conv_student, image_encoder_config)")
        }
        throw fail("not a SAM checkpoint: no image encoder among its \(encoder.count) tensors (neither TinyViT "
                   + "'[image_encoder.]patch_embed.seq.…' nor ViT '[image_encoder.]patch_embed.proj.…' keys)")
    }
}

extension SAMEncoderConfig {
    /// A RepViT's architecture from its keys (`features.N.…`, `fuse_stage2`): fused when the stem
    /// conv has a bias; stage widths where a block's channel mixer widens; a stage starts at each
    /// stride-2 block (`token_mixer.2`, the in → out 1×1); SE blocks by `token_mixer.1.fc1`;
    /// image size 1024. EdgeSAM's key layout (its released checkpoint itself not tried here).
    static func detectRepViT(_ encoder: [String: Tensor], file: String) throws -> RepViTConfig {
        func fail(_ why: String) -> SAMModelError { SAMModelError(file: file, reason: why) }
        var c = RepViTConfig()
        c.fused = encoder["features.0.0.bias"] != nil
        c.inputChannels = (encoder["features.0.0.c.weight"] ?? encoder["features.0.0.weight"])!.shape[1]
        let project = c.fused ? "channel_mixer.m.2.weight" : "channel_mixer.m.2.c.weight"
        var dims: [Int] = [], depths: [Int] = [], se: [Int] = []
        var i = 0
        while let w = encoder["features.\(i + 1).\(project)"] {
            if i == 0 || encoder["features.\(i + 1).token_mixer.2.\(c.fused ? "weight" : "c.weight")"] != nil {
                dims.append(w.shape[0]); depths.append(0)
            }
            depths[depths.count - 1] += 1
            if encoder["features.\(i + 1).token_mixer.1.fc1.weight"] != nil { se.append(i) }
            i += 1
        }
        c.embedDims = dims
        c.depths = depths
        c.seBlocks = se
        guard let f2 = encoder["fuse_stage2.weight"], let neck = encoder["neck.0.weight"] else {
            throw fail("RepViT encoder without fuse_stage2.weight / neck.0.weight")
        }
        c.fusionChannels = f2.shape[0]
        c.neckChannels = neck.shape[0]
        let p = c.problems()
        if !p.isEmpty { throw fail("detected RepViT configuration is invalid: " + p.joined(separator: "; ")) }
        return c
    }
}

// MARK: - Loader

/// An image encoder's architecture and weights, and the prompt encoder's and mask decoder's when
/// the file holds them, read from any weights file the toolkit meets:
/// - SAM's and MobileSAM's checkpoints (.pt/.pth/.safetensors, `image_encoder.*`,
///   `prompt_encoder.*`, `mask_decoder.*`, possibly all under one prefix such as `model.`);
/// - an exported student (`samdistill export`: `image_encoder.*`, with `--full` the rest too);
/// - a training checkpoint (`format` = samdistill-checkpoint-1: `model.*` the encoder,
///   `optimizer.*` AdamW's state);
/// - an encoder's own state dict (keys as the encoder names them, e.g. a cache teacher).
/// The architecture is the caller's `architecture` when given, else the metadata's, else
/// detected from keys and shapes (`SAMEncoderConfig.detect`).
public struct SAMWeights {
    /// `format` of the trainer's checkpoints.
    public static let trainingCheckpointFormat = "samdistill-checkpoint-1"

    public let source: URL
    public let architecture: SAMEncoderConfig
    /// The encoder with the file's weights (Float32 whatever the file stored).
    public let encoder: any SAMImageEncoder
    /// `prompt_encoder.*` / `mask_decoder.*` when the file holds them, else empty.
    public let decoder: [String: Tensor]
    public let metadata: [String: String]

    public var isTrainingCheckpoint: Bool { metadata["format"] == Self.trainingCheckpointFormat }

    /// Reads `url` and loads its encoder strictly. Throws `WeightsFile.LoadError` (unreadable
    /// file), `SAMModelError` (no encoder, or an architecture that cannot be told) or
    /// `WeightLoadingError` (keys that do not fit, named as the file names them).
    public static func read(_ url: URL, architecture: SAMEncoderConfig? = nil) throws -> SAMWeights {
        try SAMWeights(file: try WeightsFile(contentsOf: url), architecture: architecture)
    }

    /// `read` of a file already open.
    public init(file: WeightsFile, architecture: SAMEncoderConfig? = nil) throws {
        let url = file.url
        let keys = try KeyMap(file)
        let config = try architecture ?? SAMEncoderConfig(metadata: file.metadata, file: url.path)
            ?? .detect(keys.encoder, file: url.path)
        let encoder = config.makeEncoder()
        do {
            try encoder.load(keys.encoder, ignoring: config.ignoredKeys)
        } catch var e as WeightLoadingError {
            let p = keys.encoderPrefix
            e.missing = e.missing.map { p + $0 }
            e.unexpected = e.unexpected.map { p + $0 }
            e.misshaped = e.misshaped.map { (p + $0.key, $0.expected, $0.found) }
            e.source = url.path
            throw e
        }
        source = url
        self.architecture = config
        self.encoder = encoder
        decoder = keys.decoder
        metadata = file.metadata
    }

    /// The `prompt_encoder.*` / `mask_decoder.*` tensors of `url` (its encoder is not read), e.g.
    /// a teacher's decoder for an exported student. Throws when it has none.
    public static func readDecoder(_ url: URL) throws -> [String: Tensor] {
        let decoder = try KeyMap(try WeightsFile(contentsOf: url)).decoder
        guard !decoder.isEmpty else {
            throw SAMModelError(file: url.path, reason: "no prompt_encoder.* / mask_decoder.* tensors")
        }
        return decoder
    }
}

/// Why weights could not be read as a SAM model or encoder (besides an unreadable file, a
/// `WeightsFile.LoadError`, and keys that do not match, a `WeightLoadingError`). Names the file.
public struct SAMModelError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let reason: String
    public init(file: String, reason: String) { self.file = file; self.reason = reason }
    public var description: String { "\(file): \(reason)" }
}

/// The key map: a file's tensors split by the layouts `SAMWeights` lists, the encoder's keyed as
/// the encoder names them. BatchNorm's `num_batches_tracked` counters are dropped (no module
/// keeps them); any tensor outside the layout is an error.
struct KeyMap {
    /// What the file puts before an encoder key ("image_encoder.", "model.", ""), for errors.
    var encoderPrefix = ""
    var encoder: [String: Tensor] = [:]
    var decoder: [String: Tensor] = [:]

    static let modules = ["image_encoder.", "prompt_encoder.", "mask_decoder."]

    init(_ file: WeightsFile) throws {
        var unexpected: [String] = []
        let tensors = file.tensors.filter { !$0.key.hasSuffix("num_batches_tracked") }
        if file.metadata["format"] == SAMWeights.trainingCheckpointFormat {
            encoderPrefix = "model."
            for (k, v) in tensors {
                if k.hasPrefix(encoderPrefix) { encoder[String(k.dropFirst(encoderPrefix.count))] = v }
                else if !k.hasPrefix("optimizer.") { unexpected.append(k) }
            }
        } else if let root = Self.samRoot(tensors.keys) {
            // Tensors outside the root belong to other objects of the container (an optimizer).
            encoderPrefix = root + "image_encoder."
            for (k, v) in tensors where k.hasPrefix(root) {
                if k.hasPrefix(encoderPrefix) { encoder[String(k.dropFirst(encoderPrefix.count))] = v }
                else if Self.modules.contains(where: { k.dropFirst(root.count).hasPrefix($0) }) { decoder[String(k.dropFirst(root.count))] = v }
                else { unexpected.append(k) }
            }
        } else {
            encoder = tensors
        }
        if !unexpected.isEmpty {
            var e = WeightLoadingError(missing: [], unexpected: unexpected.sorted(), misshaped: [])
            e.source = file.url.path
            throw e
        }
    }

    /// Where the SAM modules' keys start: "" at the top, the one prefix they sit under
    /// ("model."), or nil when the file has none.
    static func samRoot(_ keys: some Collection<String>) -> String? {
        if keys.contains(where: { k in modules.contains { k.hasPrefix($0) } }) { return "" }
        for k in keys.sorted() {
            for m in modules { if let r = k.range(of: "." + m) { return String(k[..<r.lowerBound]) + "." } }
        }
        return nil
    }
}

import Foundation
import Layers
import Tensor

// The whole Segment Anything model, side by side with MobileSAM's modeling/sam.py (`Sam`) and
// build_sam.py: an image encoder (TinyViT for MobileSAM, a ViT for SAM B/L/H), the prompt encoder
// and the mask decoder, plus `postprocess_masks`.

/// An image encoder SAM can run: (B, 3, S, S) normalised, padded images → (B, 256, S/16, S/16).
public protocol SAMImageEncoder: Module {
    /// S, the padded input side (`img_size`, 1024).
    var imageSize: Int { get }
    func forward(_ image: Tensor, mode: ForwardMode) -> Tensor
}

extension TinyViT: SAMImageEncoder {
    public var imageSize: Int { config.imageSize }
}

extension ImageEncoderViT: SAMImageEncoder {
    public var imageSize: Int { config.imageSize }
}

/// Which image encoder a SAM model has, with its architecture.
public enum SAMEncoderConfig: Equatable, Sendable, CustomStringConvertible {
    case tinyViT(TinyViTConfig)
    case vit(ViTConfig)

    /// The name stored in weights metadata (`image_encoder`): "tiny_vit" or "vit".
    public var kind: String {
        switch self {
        case .tinyViT: "tiny_vit"
        case .vit: "vit"
        }
    }

    public var description: String {
        switch self {
        case .tinyViT(let c):
            let name = c == .mobileSAM ? "MobileSAM " : ""
            return "\(name)TinyViT (dims \(c.embedDims), depths \(c.depths), heads \(c.numHeads), windows \(c.windowSizes))"
        case .vit(let c):
            let name = c == .vitB ? "SAM ViT-B " : c == .vitL ? "SAM ViT-L " : c == .vitH ? "SAM ViT-H " : ""
            return "\(name)ViT (width \(c.embedDim), depth \(c.depth), heads \(c.numHeads), global \(c.globalAttentionIndexes))"
        }
    }

    /// Channels of the embedding the encoder gives (the neck's width).
    public var outputChannels: Int {
        switch self {
        case .tinyViT(let c): c.neckChannels
        case .vit(let c): c.outChannels
        }
    }

    /// Builds the encoder.
    public func makeEncoder() -> any SAMImageEncoder {
        switch self {
        case .tinyViT(let c): TinyViT(c)
        case .vit(let c): ImageEncoderViT(c)
        }
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
        }
        return ["image_encoder": kind, "image_encoder_config": data.map { String(decoding: $0, as: UTF8.self) } ?? "{}"]
    }
}

/// Why a SAM model could not be built from a weights file (besides an unreadable file, which is a
/// `WeightsFile.LoadError`, and keys that do not match, a `WeightLoadingError`). Names the file.
public struct SAMModelError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let reason: String
    public init(file: String, reason: String) { self.file = file; self.reason = reason }
    public var description: String { "\(file): \(reason)" }
}

/// `Sam`: image encoder, prompt encoder and mask decoder, keys `image_encoder.*`,
/// `prompt_encoder.*`, `mask_decoder.*` exactly as SAM/MobileSAM checkpoints name them.
/// Inference only (the encoder types have backward passes, used by the trainer directly).
public final class SAMModel: Module {
    /// `Sam.mask_threshold`: logits above it are mask pixels.
    public static let maskThreshold: Float = 0

    public let encoderConfig: SAMEncoderConfig
    public let imageEncoder: any SAMImageEncoder
    public let promptEncoder: PromptEncoder
    public let maskDecoder: MaskDecoder

    /// SAM's prompt encoder and mask decoder (build_sam.py: width 256, 64×64 embedding for a
    /// 1024 input, mask_in_chans 16, two-way transformer depth 2 / MLP 2048 / 8 heads, 3 multimask
    /// outputs, IoU head 3 × 256) around the given encoder.
    public init(encoder: SAMEncoderConfig) {
        encoderConfig = encoder
        imageEncoder = encoder.makeEncoder()
        let S = imageEncoder.imageSize, grid = S / 16
        promptEncoder = PromptEncoder(embedDim: 256, imageEmbeddingSize: (grid, grid), inputImageSize: (S, S), maskInChans: 16)
        maskDecoder = MaskDecoder(transformerDim: 256,
                                  transformer: TwoWayTransformer(depth: 2, embeddingDim: 256, heads: 8, mlpDim: 2048),
                                  numMultimaskOutputs: 3, iouHeadDepth: 3, iouHeadHiddenDim: 256)
    }

    public func namedParameters() -> [(String, Parameter)] {
        prefixed("image_encoder.", imageEncoder) + prefixed("prompt_encoder.", promptEncoder)
            + prefixed("mask_decoder.", maskDecoder)
    }

    /// S (1024).
    public var imageSize: Int { imageEncoder.imageSize }

    /// Keys a checkpoint may hold that the model does not use: TinyViT's classification head
    /// (`image_encoder.head.*`, `image_encoder.norm_head.*`), BatchNorm's `num_batches_tracked`.
    public static func ignoredKeys(_ key: String) -> Bool {
        if key.hasSuffix("num_batches_tracked") { return true }
        return key.hasPrefix("image_encoder.head.") || key.hasPrefix("image_encoder.norm_head.")
    }

    /// Strict loading: every key of the model present with its shape, no unexpected keys except
    /// `ignoredKeys`. Throws one `WeightLoadingError` listing every problem (with `source`).
    public func load(_ tensors: [String: Tensor], source: String) throws {
        do {
            try load(tensors, ignoring: Self.ignoredKeys)
        } catch var e as WeightLoadingError {
            e.source = source
            throw e
        }
    }

    /// Builds the model a weights file describes and loads it strictly.
    ///
    /// The file is a `.pt`/`.pth` checkpoint or `.safetensors` with SAM's keys, possibly nested
    /// under one prefix (`model.image_encoder.…`). The encoder comes from the metadata
    /// (`image_encoder` + `image_encoder_config`, as `SAMEncoderConfig.metadata` writes them) or,
    /// without it, from the key names and shapes (`detectEncoder`). `decoderWeights` supplies the
    /// prompt encoder and mask decoder when the file holds an encoder alone (an exported student):
    /// its `prompt_encoder.*` / `mask_decoder.*` keys are used, its encoder ignored.
    public static func load(contentsOf url: URL, decoderWeights: URL? = nil) throws -> SAMModel {
        let file = try WeightsFile(contentsOf: url)
        var tensors = try samStateDict(file.tensors, file: url.path)
        if let decoderWeights {
            let other = try WeightsFile(contentsOf: decoderWeights)
            let rest = try samStateDict(other.tensors, file: decoderWeights.path, anchor: "mask_decoder.")
            for (k, v) in rest where k.hasPrefix("prompt_encoder.") || k.hasPrefix("mask_decoder.") {
                if tensors[k] == nil { tensors[k] = v }
            }
        }
        let config = try detectEncoder(tensors, metadata: file.metadata, file: url.path)
        guard config.outputChannels == 256 else {
            throw SAMModelError(file: url.path, reason: "the image encoder gives \(config.outputChannels) channels; SAM's decoder takes 256")
        }
        let model = SAMModel(encoder: config)
        let sources = decoderWeights.map { "\(url.path) + \($0.path)" } ?? url.path
        try model.load(tensors, source: sources)
        return model
    }

    /// The tensors keyed from `image_encoder.` / `prompt_encoder.` / `mask_decoder.`: unchanged,
    /// or with one leading prefix removed when every SAM key sits under it (`model.`, `module.`).
    /// `anchor` is the key prefix that must be present (`image_encoder.`, or `mask_decoder.` for a
    /// decoder-only source).
    public static func samStateDict(_ tensors: [String: Tensor], file: String,
                                    anchor: String = "image_encoder.") throws -> [String: Tensor] {
        if tensors.keys.contains(where: { $0.hasPrefix(anchor) }) { return tensors }
        if let key = tensors.keys.sorted().first(where: { $0.contains("." + anchor) }) {
            let prefix = String(key[..<key.range(of: "." + anchor)!.lowerBound]) + "."
            var d: [String: Tensor] = [:]
            for (k, v) in tensors where k.hasPrefix(prefix) { d[String(k.dropFirst(prefix.count))] = v }
            return d
        }
        throw SAMModelError(file: file, reason: "not a SAM checkpoint: no '\(anchor)…' keys among its \(tensors.count) tensors")
    }

    /// The encoder architecture of a SAM state dict: from the metadata when present, else from
    /// its keys and shapes.
    ///
    /// TinyViT (`image_encoder.patch_embed.seq.…`): stage widths from the patch embedding and the
    /// PatchMerging outputs, depths from the block counts, heads and windows from each stage's
    /// `attention_biases` (heads, window²), MLP and MBConv ratios, local conv size and neck width
    /// from their weights; image size 1024 and the reference's merge-stride rule (shapes cannot
    /// tell a stride).
    /// ViT (`image_encoder.patch_embed.proj.…`): width, patch and grid from the patch embedding and
    /// `pos_embed`, depth from the block count, head width from `rel_pos_h` (columns), window and
    /// global-attention blocks from its rows (2·window − 1 vs 2·grid − 1); without relative
    /// positions the head count of SAM B/L/H for that width.
    public static func detectEncoder(_ tensors: [String: Tensor], metadata: [String: String] = [:],
                                     file: String = "weights") throws -> SAMEncoderConfig {
        func fail(_ why: String) -> SAMModelError { SAMModelError(file: file, reason: why) }
        if let kind = metadata["image_encoder"], let json = metadata["image_encoder_config"] {
            let data = Data(json.utf8)
            do {
                switch kind {
                case "tiny_vit":
                    let c = try JSONDecoder().decode(TinyViTConfig.self, from: data)
                    let p = c.problems()
                    if !p.isEmpty { throw fail("image_encoder_config: " + p.joined(separator: "; ")) }
                    return .tinyViT(c)
                case "vit":
                    let c = try JSONDecoder().decode(ViTConfig.self, from: data)
                    let p = c.problems()
                    if !p.isEmpty { throw fail("image_encoder_config: " + p.joined(separator: "; ")) }
                    return .vit(c)
                default:
                    throw fail("metadata image_encoder '\(kind)' is neither 'tiny_vit' nor 'vit'")
                }
            } catch let e as SAMModelError {
                throw e
            } catch {
                throw fail("metadata image_encoder_config is not a valid \(kind) config: \(error)")
            }
        }
        let e = "image_encoder."
        func shape(_ key: String) -> [Int]? { tensors[e + key]?.shape }
        func count(_ prefix: String) -> Int {
            var indices = Set<Int>()
            for k in tensors.keys where k.hasPrefix(e + prefix) {
                if let i = Int(k.dropFirst(e.count + prefix.count).prefix { $0 != "." }) { indices.insert(i) }
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
                    throw fail("TinyViT encoder: missing image_encoder.layers.\(i - 1).downsample.conv3.c.weight")
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
            if let fc1 = (1..<stages).lazy.compactMap({ i in shape("layers.\(i).blocks.0.mlp.fc1.weight").map { ($0, dims[i]) } }).first {
                c.mlpRatio = Float(fc1.0[0]) / Float(fc1.1)
            }
            if let conv1 = shape("layers.0.blocks.0.conv1.c.weight") { c.mbconvExpandRatio = Float(conv1[0]) / Float(dims[0]) }
            if let local = (1..<stages).lazy.compactMap({ shape("layers.\($0).blocks.0.local_conv.c.weight") }).first {
                c.localConvSize = local[2]
            }
            if let neck = shape("neck.0.weight") { c.neckChannels = neck[0] }
            if c.neckChannels != 256 { throw fail("TinyViT encoder gives \(c.neckChannels) channels; SAM's decoder takes 256") }
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
            if c.outChannels != 256 { throw fail("ViT encoder gives \(c.outChannels) channels; SAM's decoder takes 256") }
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
        throw fail("unrecognised image encoder: neither TinyViT (image_encoder.patch_embed.seq.…) "
                   + "nor ViT (image_encoder.patch_embed.proj.…) keys")
    }

    /// The image embedding of a preprocessed image: (B, 3, S, S) → (B, 256, S/16, S/16).
    public func encode(_ input: Tensor) -> Tensor {
        imageEncoder.forward(input, mode: .inference)
    }

    /// `Sam.postprocess_masks`: masks (B, K, h, w) low-res logits → bilinear (align_corners=False)
    /// to S×S, crop to `inputSize` (the resized image before padding), bilinear to `originalSize`
    /// → (B, K, H, W) logits, or 0/1 (`value > threshold`) when `threshold` is given (the
    /// predictor's binarisation, fused into the output pass). The first resize is computed only
    /// over the kept crop (the values are the same), each output pixel from its four source pixels
    /// with PyTorch's CPU kernel's arithmetic; both resizes run separably and streamed (see
    /// `BilinearStream`): bit-identical to the per-pixel form, parallel over (mask, row block).
    public static func postprocessMasks(_ masks: Tensor, inputSize: ImageSize, originalSize: ImageSize,
                                        imageSize S: Int = SAMPreprocessing.imageSize,
                                        threshold: Float? = nil) -> Tensor {
        precondition(masks.rank == 4, "SAMModel.postprocessMasks: expected masks (B, K, h, w), got \(masks.shape)")
        precondition(inputSize.height <= S && inputSize.width <= S && inputSize.height > 0 && inputSize.width > 0,
                     "SAMModel.postprocessMasks: input size \(inputSize) does not fit \(S)×\(S)")
        // Every output value is written by the second resize.
        var out = Tensor.empty([masks.shape[0], masks.shape[1], originalSize.height, originalSize.width])
        out.data.withUnsafeMutableBufferPointer { ob in
            postprocessMasks(masks, inputSize: inputSize, originalSize: originalSize, imageSize: S, threshold: threshold,
                             into: ob.baseAddress!)
        }
        return out
    }

    /// `postprocessMasks` writing its (B, K, H, W) result at `out` (e.g. a slice of a bigger batch).
    static func postprocessMasks(_ masks: Tensor, inputSize: ImageSize, originalSize: ImageSize, imageSize S: Int,
                                 threshold: Float?, into out: UnsafeMutablePointer<Float>) {
        precondition(masks.rank == 4, "SAMModel.postprocessMasks: expected masks (B, K, h, w), got \(masks.shape)")
        let n = masks.shape[0] * masks.shape[1], h = masks.shape[2], w = masks.shape[3]
        let Hi = inputSize.height, Wi = inputSize.width, Ho = originalSize.height, Wo = originalSize.width
        let rows1 = BilinearAxis(inSize: h, outSize: S, count: Hi), cols1 = BilinearAxis(inSize: w, outSize: S, count: Wi)
        // Axis tables: the first resize h → S (rows < Hi kept), w → S (columns < Wi kept).
        let rows2 = BilinearAxis(inSize: Hi, outSize: Ho, count: Ho), cols2 = BilinearAxis(inSize: Wi, outSize: Wo, count: Wo)
        // jobs: (mask, block of output rows)
        let rowsPerBlock = Swift.max(8, Swift.min(Ho, (1 << 16) / Swift.max(1, Wo)))
        let blocks = (Ho + rowsPerBlock - 1) / rowsPerBlock
        masks.data.withUnsafeBufferPointer { mb in
                let src = mb.baseAddress!, dst = out
                parallelChunks(n * blocks, costPerItem: rowsPerBlock * Wo * 4, minimumWork: 1 << 16) { jobs in
                    var stream = BilinearStream(lowWidth: w, midWidth: Wi, outWidth: Wo)
                    for job in jobs {
                        let i = job / blocks, r0 = (job % blocks) * rowsPerBlock, r1 = Swift.min(Ho, r0 + rowsPerBlock)
                        stream.resize(src + i * h * w, rows1: rows1, cols1: cols1, rows2: rows2, cols2: cols2,
                                      outputRows: r0..<r1, into: dst + i * Ho * Wo, threshold: threshold)
                    }
                    stream.deallocate()
                }
        }
    }

    /// `postprocessMasks` as the reference writes it, with plain loops: the full S×S resize, the
    /// crop, the second resize (for the tests).
    public static func postprocessMasksReference(_ masks: Tensor, inputSize: ImageSize, originalSize: ImageSize,
                                                 imageSize S: Int = SAMPreprocessing.imageSize) -> Tensor {
        let B = masks.shape[0], K = masks.shape[1], h = masks.shape[2], w = masks.shape[3]
        let Ho = originalSize.height, Wo = originalSize.width, Hi = inputSize.height, Wi = inputSize.width
        func resize(_ x: [Float], _ ih: Int, _ iw: Int, _ oh: Int, _ ow: Int) -> [Float] {
            func source(_ d: Int, _ i: Int, _ o: Int) -> (Int, Int, Float) {
                let scale = Float(i) / Float(o)
                let s = max(scale * (Float(d) + 0.5) - 0.5, 0)
                let i0 = min(Int(s), i - 1)
                let l = min(max(s - Float(i0), 0), 1)
                return (i0, i0 < i - 1 ? i0 + 1 : i0, l)
            }
            var y = [Float](repeating: 0, count: oh * ow)
            for r in 0..<oh {
                let (r0, r1, lr) = source(r, ih, oh)
                for c in 0..<ow {
                    let (c0, c1, lc) = source(c, iw, ow)
                    let top = (1 - lc) * x[r0 * iw + c0] + lc * x[r0 * iw + c1]
                    let bottom = (1 - lc) * x[r1 * iw + c0] + lc * x[r1 * iw + c1]
                    y[r * ow + c] = (1 - lr) * top + lr * bottom
                }
            }
            return y
        }
        var out: [Float] = []
        for i in 0..<(B * K) {
            let full = resize(Array(masks.data[(i * h * w)..<((i + 1) * h * w)]), h, w, S, S)
            var crop = [Float](repeating: 0, count: Hi * Wi)
            for r in 0..<Hi { for c in 0..<Wi { crop[r * Wi + c] = full[r * S + c] } }
            out += resize(crop, Hi, Wi, Ho, Wo)
        }
        return Tensor(shape: [B, K, Ho, Wo], data: out)
    }
}

/// One axis of PyTorch's bilinear resize (align_corners=False, no scale factor), in Float as its
/// CPU kernel: scale = in/out, source = max(scale·(d + 0.5) − 0.5, 0), i0 = ⌊source⌋,
/// i1 = i0 + 1 unless at the edge, λ = source − i0. Tables for output indices 0..<count.
struct BilinearAxis {
    let i0: [Int]
    let i1: [Int]
    let lambda: [Float]

    init(inSize: Int, outSize: Int, count: Int) {
        let scale = Float(inSize) / Float(outSize)
        var i0 = [Int](repeating: 0, count: count), i1 = i0, lambda = [Float](repeating: 0, count: count)
        for d in 0..<count {
            let s = max(scale * (Float(d) + 0.5) - 0.5, 0)
            let a = min(Int(s), inSize - 1)
            i0[d] = a
            i1[d] = a < inSize - 1 ? a + 1 : a
            lambda[d] = min(max(s - Float(a), 0), 1)
        }
        self.i0 = i0; self.i1 = i1; self.lambda = lambda
    }
}

/// Two chained bilinear resizes (low → mid → out) computed row by row: an output row is
/// (1−λr)·top + λr·bottom of two mid rows already interpolated across (widths `outWidth`), a mid row
/// is (1−λr)·top + λr·bottom of two low-res rows interpolated across (width `midWidth`). Each
/// level keeps its last two rows, so rows are interpolated across once per job while the output
/// rows advance (row indices only grow). Per value the arithmetic is the per-pixel
/// `(1−λr)·((1−λc)·x00 + λc·x01) + λr·((1−λc)·x10 + λc·x11)`: the same floats.
struct BilinearStream {
    // low: 2 × (midWidth) low-res rows interpolated across, for low-res rows lowIndex
    // mid: (midWidth) one mid row; midAcross: 2 × (outWidth) mid rows interpolated across
    let lowWidth: Int, midWidth: Int, outWidth: Int
    let low: UnsafeMutablePointer<Float>, mid: UnsafeMutablePointer<Float>, midAcross: UnsafeMutablePointer<Float>
    var lowIndex = (-1, -1), midIndex = (-1, -1)
    var source: UnsafePointer<Float>? = nil

    init(lowWidth: Int, midWidth: Int, outWidth: Int) {
        self.lowWidth = lowWidth; self.midWidth = midWidth; self.outWidth = outWidth
        low = .allocate(capacity: 2 * midWidth)
        mid = .allocate(capacity: midWidth)
        midAcross = .allocate(capacity: 2 * outWidth)
    }

    func deallocate() { low.deallocate(); mid.deallocate(); midAcross.deallocate() }

    /// y[c] = (1−λc)·x[i0[c]] + λc·x[i1[c]] for c < cols.count.
    @inline(__always)
    static func across(_ x: UnsafePointer<Float>, _ cols: BilinearAxis, _ y: UnsafeMutablePointer<Float>) {
        cols.i0.withUnsafeBufferPointer { c0 in cols.i1.withUnsafeBufferPointer { c1 in cols.lambda.withUnsafeBufferPointer { cl in
            for c in 0..<c0.count {
                let lc = cl[c]
                y[c] = (1 - lc) * x[c0[c]] + lc * x[c1[c]]
            }
        } } }
    }

    /// y = (1−λ)·top + λ·bottom over n values (vectorised).
    @inline(__always)
    static func blend(_ top: UnsafePointer<Float>, _ bottom: UnsafePointer<Float>, _ lambda: Float,
                      _ y: UnsafeMutablePointer<Float>, _ n: Int) {
        let k = 1 - lambda
        for c in 0..<n { y[c] = k * top[c] + lambda * bottom[c] }
    }

    /// Slot (0 or 1) holding row `r` at a level, computing it into the slot not holding the
    /// other needed row `other` when missing.
    @inline(__always)
    static func slot(_ index: inout (Int, Int), _ r: Int, other: Int, _ compute: (Int) -> Void) -> Int {
        if index.0 == r { return 0 }
        if index.1 == r { return 1 }
        let s = index.0 == other ? 1 : 0
        if s == 0 { index.0 = r } else { index.1 = r }
        compute(s)
        return s
    }

    /// Output rows `outputRows` of one mask x: (h, lowWidth) into y: (Ho, outWidth), as logits or
    /// thresholded to 0/1.
    mutating func resize(_ x: UnsafePointer<Float>, rows1: BilinearAxis, cols1: BilinearAxis,
                         rows2: BilinearAxis, cols2: BilinearAxis, outputRows: Range<Int>,
                         into y: UnsafeMutablePointer<Float>, threshold: Float?) {
        if source != x { lowIndex = (-1, -1); midIndex = (-1, -1); source = x }
        let Wl = lowWidth, Wm = midWidth, Wo = outWidth
        let low = low, mid = mid, midAcross = midAcross
        var lowIndex = lowIndex
        // The mid row m interpolated across into midAcross slot s.
        func midRow(_ m: Int, _ s: Int) {
            let a = rows1.i0[m], b = rows1.i1[m]
            let sa = Self.slot(&lowIndex, a, other: b) { Self.across(x + a * Wl, cols1, low + $0 * Wm) }
            let sb = Self.slot(&lowIndex, b, other: a) { Self.across(x + b * Wl, cols1, low + $0 * Wm) }
            Self.blend(low + sa * Wm, low + sb * Wm, rows1.lambda[m], mid, Wm)
            Self.across(mid, cols2, midAcross + s * Wo)
        }
        for r in outputRows {
            let a = rows2.i0[r], b = rows2.i1[r]
            let sa = Self.slot(&midIndex, a, other: b) { midRow(a, $0) }
            let sb = Self.slot(&midIndex, b, other: a) { midRow(b, $0) }
            let yr = y + r * Wo
            Self.blend(midAcross + sa * Wo, midAcross + sb * Wo, rows2.lambda[r], yr, Wo)
            if let t = threshold { for c in 0..<Wo { yr[c] = yr[c] > t ? 1 : 0 } }
        }
        self.lowIndex = lowIndex
    }
}

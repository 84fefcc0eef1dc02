import Foundation
import ImageCodecs
import Layers
import Tensor

// The whole Segment Anything model, side by side with MobileSAM's modeling/sam.py (`Sam`) and
// build_sam.py: an image encoder (TinyViT for MobileSAM, a ViT for SAM B/L/H, or a distilled
// conv student), the prompt encoder and the mask decoder, plus `postprocess_masks`. Reading a
// weights file into it: SAMWeights.swift; the encoder protocols: SAMImageEncoder.swift; the
// resize kernels: BilinearResize.swift.

/// `Sam`: image encoder, prompt encoder and mask decoder, keys `image_encoder.*`,
/// `prompt_encoder.*`, `mask_decoder.*` exactly as SAM/MobileSAM checkpoints name them.
/// Inference only (the encoder types have backward passes, used by the trainer directly). The
/// encoder is any `SAMEncoderConfig`: TinyViT, ViT or the conv student.
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
    public convenience init(encoder: SAMEncoderConfig) {
        self.init(imageEncoder: encoder.makeEncoder())
    }

    /// SAM around an encoder already built (e.g. loaded by `SAMWeights.read`).
    public init(imageEncoder: any SAMImageEncoder) {
        encoderConfig = imageEncoder.encoderConfig
        self.imageEncoder = imageEncoder
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

    /// Strict loading of a whole model's state dict (`image_encoder.*`, `prompt_encoder.*`,
    /// `mask_decoder.*`): every key present with its shape, nothing unexpected except what the
    /// encoder's architecture ignores (`SAMEncoderConfig.ignoredKeys`) and BatchNorm's
    /// `num_batches_tracked`. Throws one `WeightLoadingError` listing every problem (with `source`).
    public func load(_ tensors: [String: Tensor], source: String) throws {
        let config = encoderConfig, encoder = "image_encoder."
        do {
            try load(tensors) { key in
                key.hasSuffix("num_batches_tracked") || (key.hasPrefix(encoder) && config.ignoredKeys(String(key.dropFirst(encoder.count))))
            }
        } catch var e as WeightLoadingError {
            e.source = source
            throw e
        }
    }

    /// The model a weights file describes (`SAMWeights.read`: any SAM/MobileSAM checkpoint, an
    /// exported student, a training checkpoint), loaded strictly. `decoderWeights` supplies the
    /// prompt encoder and mask decoder when the file holds an encoder alone (an exported
    /// student): its `prompt_encoder.*` / `mask_decoder.*` keys are used, its encoder ignored.
    public static func load(contentsOf url: URL, decoderWeights: URL? = nil) throws -> SAMModel {
        let weights = try SAMWeights.read(url)
        var tensors = weights.decoder
        if let decoderWeights {
            for (k, v) in try SAMWeights.readDecoder(decoderWeights) where tensors[k] == nil { tensors[k] = v }
        }
        let channels = weights.architecture.outputChannels
        guard channels == 256 else {
            throw SAMModelError(file: url.path, reason: "the image encoder gives \(channels) channels; SAM's decoder takes 256")
        }
        let model = SAMModel(imageEncoder: weights.encoder)
        for (k, p) in weights.encoder.namedParameters() { tensors["image_encoder." + k] = p.value }
        try model.load(tensors, source: decoderWeights.map { "\(url.path) + \($0.path)" } ?? url.path)
        return model
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

import Foundation
import ImageCodecs
import Layers
import Tensor

// SAM's predictor, side by side with MobileSAM's predictor.py (`SamPredictor`): encode an image
// once, then predict masks for any number of prompts against the kept embedding.

/// A point prompt in original-image pixels: label 1 foreground, 0 background.
public struct PromptPoint: Sendable, Equatable {
    public var x: Double
    public var y: Double
    public var label: Int

    public init(x: Double, y: Double, label: Int = 1) {
        self.x = x; self.y = y; self.label = label
    }
}

/// A box prompt (x0, y0, x1, y1) in original-image pixels.
public struct PromptBox: Sendable, Equatable {
    public var x0: Double, y0: Double, x1: Double, y1: Double

    public init(x0: Double, y0: Double, x1: Double, y1: Double) {
        self.x0 = x0; self.y0 = y0; self.x1 = x1; self.y1 = y1
    }
}

/// One prompt: points, an optional box and an optional low-resolution mask input (logits (1, 256,
/// 256) or (256, 256), e.g. a previous prediction's `lowResLogits`).
public struct SAMPrompt: Sendable {
    public var points: [PromptPoint]
    public var box: PromptBox?
    public var maskInput: Tensor?

    public init(points: [PromptPoint] = [], box: PromptBox? = nil, maskInput: Tensor? = nil) {
        self.points = points; self.box = box; self.maskInput = maskInput
    }
}

/// A binary mask at some image size, row-major.
public struct BinaryMask: Sendable, Equatable {
    public let width: Int
    public let height: Int
    /// pixels: (height, width)
    public var pixels: [Bool]

    public init(width: Int, height: Int, pixels: [Bool]) {
        precondition(pixels.count == width * height, "BinaryMask: \(pixels.count) pixels for \(width)×\(height)")
        self.width = width; self.height = height; self.pixels = pixels
    }

    /// Pixels of a grey image at or above `threshold` (a 0/255 mask PNG reads back exactly).
    public init(_ image: GreyImage, threshold: UInt8 = 128) {
        self.init(width: image.width, height: image.height, pixels: image.pixels.map { $0 >= threshold })
    }

    /// Number of mask pixels.
    public var area: Int { pixels.reduce(0) { $0 + ($1 ? 1 : 0) } }

    /// The tightest box around the mask, inclusive pixel indices (x0, y0, x1, y1) as SAM's
    /// `batched_mask_to_box`; nil for an empty mask.
    public var boundingBox: (x0: Int, y0: Int, x1: Int, y1: Int)? {
        let W = width
        var x0 = W, y0 = -1, y1 = -1, x1 = -1
        pixels.withUnsafeBufferPointer { p in
            // memchr finds a row's first set pixel (Bool is one byte, 0 or 1); the last one is
            // looked for only right of the box found so far.
            p.withMemoryRebound(to: UInt8.self) { b in
                for y in 0..<height {
                    let row = b.baseAddress! + y * W
                    guard let hit = memchr(row, 1, W) else { continue }
                    let first = UnsafeRawPointer(hit).assumingMemoryBound(to: UInt8.self) - row
                    if y0 < 0 { y0 = y }
                    y1 = y
                    x0 = min(x0, first)
                    var x = W - 1
                    while x > max(x1, first) && row[x] == 0 { x -= 1 }
                    x1 = max(x1, x)
                }
            }
        }
        return y0 < 0 ? nil : (x0, y0, x1, y1)
    }

    /// Intersection over union with a mask of the same size (1 when both are empty).
    public func iou(_ other: BinaryMask) -> Double {
        precondition(width == other.width && height == other.height,
                     "BinaryMask.iou: sizes \(width)×\(height) and \(other.width)×\(other.height) differ")
        var inter = 0, union = 0
        for i in 0..<pixels.count {
            let a = pixels[i], b = other.pixels[i]
            if a && b { inter += 1 }
            if a || b { union += 1 }
        }
        return union == 0 ? 1 : Double(inter) / Double(union)
    }

    /// 0/255 grey image (an 8-bit mask PNG).
    public var greyImage: GreyImage {
        GreyImage(width: width, height: height, pixels: pixels.map { $0 ? 255 : 0 })
    }
}

/// What `SAMPredictor.predict` returns, for B prompts with K masks each (K = 3 with multimask
/// output, else 1).
public struct SAMPrediction: Sendable {
    /// masks: (B, K, H, W) at the original image size: logits when `areLogits`, else 0/1
    /// (logits > `SAMModel.maskThreshold`).
    public var masks: Tensor
    /// iouPredictions: (B, K), the model's estimate of each mask's IoU.
    public var iouPredictions: Tensor
    /// lowResLogits: (B, K, 256, 256), usable as a later prompt's `maskInput`.
    public var lowResLogits: Tensor
    public var areLogits: Bool

    /// B.
    public var promptCount: Int { masks.shape[0] }
    /// K.
    public var masksPerPrompt: Int { masks.shape[1] }

    /// Mask `k` of prompt `b`, thresholded at 0 when these are logits.
    public func mask(prompt b: Int, index k: Int) -> BinaryMask {
        let H = masks.shape[2], W = masks.shape[3], o = (b * masksPerPrompt + k) * H * W
        let threshold = areLogits ? SAMModel.maskThreshold : 0.5
        return BinaryMask(width: W, height: H, pixels: masks.data[o..<(o + H * W)].map { $0 > threshold })
    }

    /// Predicted IoU of mask `k` of prompt `b`.
    public func iou(prompt b: Int, index k: Int) -> Float { iouPredictions.data[b * masksPerPrompt + k] }

    /// The mask of prompt `b` with the highest predicted IoU (the first on ties).
    public func bestIndex(prompt b: Int) -> Int {
        var best = 0
        for k in 1..<max(1, masksPerPrompt) where iou(prompt: b, index: k) > iou(prompt: b, index: best) { best = k }
        return best
    }

    /// Low-res logits (1, 256, 256) of mask `k` of prompt `b` (a mask input for a next prompt).
    public func lowResLogits(prompt b: Int, index k: Int) -> Tensor {
        let h = lowResLogits.shape[2], w = lowResLogits.shape[3], o = (b * masksPerPrompt + k) * h * w
        return Tensor(shape: [1, h, w], data: Array(lowResLogits.data[o..<(o + h * w)]))
    }
}

/// Predictor errors, with what to do about them.
public enum SAMPredictorError: Error, CustomStringConvertible, Equatable {
    /// `predict` before `setImage` / `setEmbedding`.
    case imageNotSet
    /// An embedding of the wrong shape, or sizes that do not fit the model.
    case invalidEmbedding(String)
    /// A prompt that cannot be encoded (label, mask input shape).
    case invalidPrompt(String)

    public var description: String {
        switch self {
        case .imageNotSet: "an image must be set with setImage(_:) or setEmbedding(_:originalSize:) before mask prediction"
        case .invalidEmbedding(let why): "invalid image embedding: \(why)"
        case .invalidPrompt(let why): "invalid prompt: \(why)"
        }
    }
}

/// `SamPredictor`: computes the image embedding once (`setImage`), then predicts masks for
/// prompts (`predict`), as many and as often as wanted. Prompts are in original-image pixels;
/// `predictBatch` takes them already in the encoder's input frame (`predict_torch`).
public final class SAMPredictor {
    public let model: SAMModel
    /// `ResizeLongestSide(img_size)`: maps prompts to the input frame.
    public let transform: ResizeLongestSide
    /// The image embedding (1, 256, 64, 64) (`get_image_embedding`), nil before `setImage`.
    public private(set) var features: Tensor? { didSet { sharedImage = nil } }
    /// The decoder's image side for prompts without a mask input, made on the first batch of
    /// `MaskDecoder.sharedImageMinimumPrompts` or more such prompts, reused until the image changes.
    private var sharedImage: TwoWayTransformer.SharedImage?
    /// The image's size (`original_size`).
    public private(set) var originalSize: ImageSize?
    /// The resized image's size before padding (`input_size`).
    public private(set) var inputSize: ImageSize?

    public var isImageSet: Bool { features != nil }

    public init(model: SAMModel) {
        self.model = model
        transform = ResizeLongestSide(targetLength: model.imageSize)
    }

    /// `set_image`: resize (PIL BILINEAR), normalise, pad and encode `image`; keeps the embedding.
    public func setImage(_ image: RGBImage) {
        setImage(SAMPreprocessing.preprocess(image, size: model.imageSize))
    }

    /// `set_torch_image`: encode an already preprocessed image.
    public func setImage(_ preprocessed: PreprocessedImage) {
        let S = model.imageSize
        precondition(preprocessed.input.shape == [1, 3, S, S],
                     "SAMPredictor.setImage: expected a preprocessed input of shape \([1, 3, S, S]), got \(preprocessed.input.shape)")
        resetImage()
        features = model.encode(preprocessed.input)
        originalSize = preprocessed.originalSize
        inputSize = preprocessed.inputSize
    }

    /// Uses a precomputed image embedding (e.g. a cached teacher embedding) for an image of
    /// `originalSize`; `inputSize` defaults to the resize of `originalSize` to the model's side.
    /// embedding: (1, 256, g, g) or (256, g, g), g = S/16.
    public func setEmbedding(_ embedding: Tensor, originalSize: ImageSize, inputSize: ImageSize? = nil) throws {
        let g = model.promptEncoder.imageEmbeddingSize, C = model.promptEncoder.embedDim
        let e: Tensor
        if embedding.shape == [C, g.height, g.width] {
            e = embedding.reshaped([1, C, g.height, g.width])
        } else if embedding.shape == [1, C, g.height, g.width] {
            e = embedding
        } else {
            throw SAMPredictorError.invalidEmbedding("expected shape \([1, C, g.height, g.width]), got \(embedding.shape)")
        }
        guard originalSize.width > 0 && originalSize.height > 0 else {
            throw SAMPredictorError.invalidEmbedding("original size \(originalSize) is empty")
        }
        let input = inputSize ?? transform.targetSize(for: originalSize)
        guard input.width > 0, input.height > 0, input.width <= model.imageSize, input.height <= model.imageSize else {
            throw SAMPredictorError.invalidEmbedding("input size \(input) does not fit the \(model.imageSize)×\(model.imageSize) input")
        }
        resetImage()
        features = e
        self.originalSize = originalSize
        self.inputSize = input
    }

    /// `reset_image`.
    public func resetImage() {
        features = nil
        originalSize = nil
        inputSize = nil
    }

    /// `predict` for one prompt: points (with labels), an optional box, an optional mask input,
    /// in original-image pixels. Returns B = 1.
    public func predict(points: [PromptPoint] = [], box: PromptBox? = nil, maskInput: Tensor? = nil,
                        multimaskOutput: Bool = true, returnLogits: Bool = false) throws -> SAMPrediction {
        try predict([SAMPrompt(points: points, box: box, maskInput: maskInput)],
                    multimaskOutput: multimaskOutput, returnLogits: returnLogits)
    }

    /// Many prompts against the current image. Prompts with the same structure (point count,
    /// box or not, mask input or not) run as one batch through the decoder (the reference's
    /// batched `predict_torch`); results come back in the order of `prompts`.
    public func predict(_ prompts: [SAMPrompt], multimaskOutput: Bool = true,
                        returnLogits: Bool = false) throws -> SAMPrediction {
        guard let originalSize else { throw SAMPredictorError.imageNotSet }
        guard !prompts.isEmpty else { throw SAMPredictorError.invalidPrompt("no prompts") }
        let size = model.promptEncoder.maskInputSize
        for (i, p) in prompts.enumerated() {
            if let m = p.maskInput, m.shape != [1, size.height, size.width] && m.shape != [size.height, size.width] {
                throw SAMPredictorError.invalidPrompt("prompt \(i): mask input of shape \(m.shape), expected \([1, size.height, size.width])")
            }
            if let bad = p.points.first(where: { !$0.x.isFinite || !$0.y.isFinite }) {
                throw SAMPredictorError.invalidPrompt("prompt \(i): point (\(bad.x), \(bad.y)) is not finite")
            }
            if let b = p.box, ![b.x0, b.y0, b.x1, b.y1].allSatisfy(\.isFinite) {
                throw SAMPredictorError.invalidPrompt("prompt \(i): box \(b) is not finite")
            }
        }
        // Groups of prompts with one structure, in first-appearance order.
        struct Shape: Hashable { let points: Int; let box: Bool; let mask: Bool }
        var groups: [(Shape, [Int])] = []
        var groupIndex: [Shape: Int] = [:]
        for (i, p) in prompts.enumerated() {
            let s = Shape(points: p.points.count, box: p.box != nil, mask: p.maskInput != nil)
            if let g = groupIndex[s] { groups[g].1.append(i) } else { groupIndex[s] = groups.count; groups.append((s, [i])) }
        }
        let K = multimaskOutput ? model.maskDecoder.numMultimaskOutputs : 1
        if groups.count == 1 {
            // One structure (the usual case): the batch is already in the prompts' order.
            return try predictBatch(points: Self.points(prompts, transform: transform, originalSize: originalSize),
                                    boxes: Self.boxes(prompts, transform: transform, originalSize: originalSize),
                                    maskInputs: Self.maskInputs(prompts, size: size),
                                    multimaskOutput: multimaskOutput, returnLogits: returnLogits)
        }
        let H = originalSize.height, W = originalSize.width, lh = size.height, lw = size.width
        var masks = Tensor(zeros: [prompts.count, K, H, W])
        var iou = Tensor(zeros: [prompts.count, K])
        var lowRes = Tensor(zeros: [prompts.count, K, lh, lw])
        for (_, members) in groups {
            let group = members.map { prompts[$0] }
            let points = Self.points(group, transform: transform, originalSize: originalSize)
            let boxes = Self.boxes(group, transform: transform, originalSize: originalSize)
            let maskInputs = Self.maskInputs(group, size: size)
            let r = try predictBatch(points: points, boxes: boxes, maskInputs: maskInputs,
                                     multimaskOutput: multimaskOutput, returnLogits: returnLogits)
            for (j, i) in members.enumerated() {
                let m = K * H * W, l = K * lh * lw
                masks.data.replaceSubrange((i * m)..<((i + 1) * m), with: r.masks.data[(j * m)..<((j + 1) * m)])
                lowRes.data.replaceSubrange((i * l)..<((i + 1) * l), with: r.lowResLogits.data[(j * l)..<((j + 1) * l)])
                iou.data.replaceSubrange((i * K)..<((i + 1) * K), with: r.iouPredictions.data[(j * K)..<((j + 1) * K)])
            }
        }
        return SAMPrediction(masks: masks, iouPredictions: iou, lowResLogits: lowRes, areLogits: returnLogits)
    }

    /// Points (B, N, 2) in the input frame + labels of prompts sharing one structure (nil: no points).
    static func points(_ prompts: [SAMPrompt], transform: ResizeLongestSide, originalSize: ImageSize) -> PromptPoints? {
        let N = prompts[0].points.count
        guard N > 0 else { return nil }
        var coords = [Double](), labels = [Int]()
        for p in prompts { for q in p.points { coords += [q.x, q.y]; labels.append(q.label) } }
        let mapped = transform.applyCoords(coords, originalSize: originalSize)
        return PromptPoints(coords: Tensor(shape: [prompts.count, N, 2], data: mapped.map { Float($0) }), labels: labels)
    }

    /// Boxes (B, 4) in the input frame (nil: no boxes).
    static func boxes(_ prompts: [SAMPrompt], transform: ResizeLongestSide, originalSize: ImageSize) -> Tensor? {
        guard prompts[0].box != nil else { return nil }
        var flat = [Double]()
        for p in prompts { let b = p.box!; flat += [b.x0, b.y0, b.x1, b.y1] }
        return Tensor(shape: [prompts.count, 4], data: transform.applyBoxes(flat, originalSize: originalSize).map { Float($0) })
    }

    /// Mask inputs (B, 1, h, w) (nil: none).
    static func maskInputs(_ prompts: [SAMPrompt], size: (height: Int, width: Int)) -> Tensor? {
        guard prompts[0].maskInput != nil else { return nil }
        return Tensor(shape: [prompts.count, 1, size.height, size.width], data: prompts.flatMap { $0.maskInput!.data })
    }

    /// Prompts per decoder pass in `predictBatch`.
    static let promptChunk = 2

    /// `predict_torch`: B prompts already in the encoder's input frame (`transform.applyCoords` /
    /// `applyBoxes`): points (B, N, 2) + labels, boxes (B, 4), mask inputs (B, 1, 256, 256).
    public func predictBatch(points: PromptPoints?, boxes: Tensor?, maskInputs: Tensor?,
                             multimaskOutput: Bool = true, returnLogits: Bool = false) throws -> SAMPrediction {
        let r = try decodeBatch(points: points, boxes: boxes, maskInputs: maskInputs, multimaskOutput: multimaskOutput,
                                resize: returnLogits ? .logits : .binary)
        return SAMPrediction(masks: r.masks!, iouPredictions: r.iou, lowResLogits: r.lowRes, areLogits: returnLogits)
    }

    /// Single-point prompts in original-image pixels → (low-res logits (B, K, lh, lw), IoU
    /// predictions (B, K)), without the resize to the image: for callers that drop masks before
    /// paying for it (the automatic mask generator filters by predicted IoU first, then resizes
    /// the survivors with `SAMModel.postprocessMasks`).
    public func predictLowRes(points: [PromptPoint], multimaskOutput: Bool = true) throws -> (lowResLogits: Tensor, iouPredictions: Tensor) {
        guard let originalSize else { throw SAMPredictorError.imageNotSet }
        let prompts = points.map { SAMPrompt(points: [$0]) }
        let r = try decodeBatch(points: Self.points(prompts, transform: transform, originalSize: originalSize), boxes: nil,
                                maskInputs: nil, multimaskOutput: multimaskOutput, resize: nil)
        return (r.lowRes, r.iou)
    }

    enum Resize { case logits, binary }

    /// The decoder over a batch, chunk by chunk; `resize`: also the masks at the image's size
    /// (logits, or binarised in the resize's output pass), else none.
    func decodeBatch(points: PromptPoints?, boxes: Tensor?, maskInputs: Tensor?, multimaskOutput: Bool,
                     resize: Resize?) throws -> (masks: Tensor?, iou: Tensor, lowRes: Tensor) {
        guard let features, let originalSize, let inputSize else { throw SAMPredictorError.imageNotSet }
        let size = model.promptEncoder.maskInputSize
        if let boxes, boxes.rank != 2 || boxes.shape[1] != 4 {
            throw SAMPredictorError.invalidPrompt("boxes of shape \(boxes.shape), expected (B, 4)")
        }
        if let m = maskInputs, m.rank != 4 || m.shape[1] != 1 || m.shape[2] != size.height || m.shape[3] != size.width {
            throw SAMPredictorError.invalidPrompt("mask inputs of shape \(m.shape), expected (B, 1, \(size.height), \(size.width))")
        }
        let sizes = [points?.batchSize, boxes?.shape[0], maskInputs?.shape[0]].compactMap { $0 }
        if Set(sizes).count > 1 { throw SAMPredictorError.invalidPrompt("points, boxes and mask inputs disagree on the batch size: \(sizes)") }
        let B = sizes.first ?? 1
        // Prompts run through the decoder `promptChunk` at a time, each chunk's masks resized
        // straight into the output: the decoder's (B, 4096, 256) intermediates stay a few MB
        // instead of growing with B (the values are the same: prompts are independent).
        let K = multimaskOutput ? model.maskDecoder.numMultimaskOutputs : 1
        let lh = size.height, lw = size.width, H = originalSize.height, W = originalSize.width
        var masks = Tensor.empty(resize == nil ? [0] : [B, K, H, W])
        var iou = Tensor.empty([B, K])
        var lowRes = Tensor.empty([B, K, lh, lw])
        let imagePE = model.promptEncoder.densePositionalEncoding()
        if maskInputs == nil && sharedImage == nil && B >= MaskDecoder.sharedImageMinimumPrompts {
            sharedImage = model.maskDecoder.sharedImage(imageEmbedding: features, promptEncoder: model.promptEncoder)
        }
        for start in stride(from: 0, to: B, by: Self.promptChunk) {
            let end = Swift.min(B, start + Self.promptChunk), n = end - start
            let chunkPoints = points.map { p in
                PromptPoints(coords: p.coords.slicedRows(start..<end),
                             labels: Array(p.labels[(start * p.pointsPerPrompt)..<(end * p.pointsPerPrompt)]))
            }
            let (sparse, dense) = model.promptEncoder.forward(points: chunkPoints, boxes: boxes?.slicedRows(start..<end),
                                                              masks: maskInputs?.slicedRows(start..<end), mode: .inference,
                                                              sharedDense: true)
            // Without mask inputs every prompt sees the same image side: once made, it is shared.
            let (low, q) = if maskInputs == nil, let sharedImage {
                model.maskDecoder.forward(sharedImage: sharedImage, sparsePromptEmbeddings: sparse, multimaskOutput: multimaskOutput)
            } else {
                model.maskDecoder.forward(imageEmbeddings: features, imagePE: imagePE, sparsePromptEmbeddings: sparse,
                                          densePromptEmbeddings: dense, multimaskOutput: multimaskOutput, mode: .inference)
            }
            precondition(low.shape == [n, K, lh, lw] && q.shape == [n, K],
                         "SAMPredictor.predictBatch: decoder returned \(low.shape), \(q.shape) for \(n) prompts")
            lowRes.data.replaceSubrange((start * K * lh * lw)..<(end * K * lh * lw), with: low.data)
            iou.data.replaceSubrange((start * K)..<(end * K), with: q.data)
            // Binarised (logits > maskThreshold) in the resize's output pass unless logits are wanted.
            guard let resize else { continue }
            masks.data.withUnsafeMutableBufferPointer { mb in
                SAMModel.postprocessMasks(low, inputSize: inputSize, originalSize: originalSize, imageSize: model.imageSize,
                                          threshold: resize == .logits ? nil : SAMModel.maskThreshold,
                                          into: mb.baseAddress! + start * K * H * W)
            }
        }
        return (resize == nil ? nil : masks, iou, lowRes)
    }
}

extension Tensor {
    /// Rows `range` of the first dimension: (n, ...) → (range.count, ...).
    func slicedRows(_ range: Range<Int>) -> Tensor {
        precondition(rank >= 1 && range.lowerBound >= 0 && range.upperBound <= shape[0],
                     "Tensor.slicedRows: rows \(range) of a tensor of shape \(shape)")
        let per = shape[0] == 0 ? 0 : count / shape[0]
        var s = shape
        s[0] = range.count
        if range.count == shape[0] { return self }
        return Tensor(shape: s, data: Array(data[(range.lowerBound * per)..<(range.upperBound * per)]))
    }
}

import Foundation
import Layers
import Tensor

// SAM's prompt encoder, side by side with MobileSAM's modeling/prompt_encoder.py
// (`PositionEmbeddingRandom`, `PromptEncoder`). Inference only: `mode` is threaded through to
// the layers (the mask-downscaling convolutions), but these types have no backward pass.

/// `PositionEmbeddingRandom`: random Fourier features of (x, y) positions in [0, 1]².
///
///     c' = 2c − 1                    c = (x, y) normalised to [0, 1]
///     v  = 2π · (c' · G)             G: (2, F) `positional_encoding_gaussian_matrix`
///     pe = [sin v, cos v]            (2F)
///
/// Computed in Float32 in the reference's order of operations (the 2π factor rounded to Float32,
/// as PyTorch multiplies a float32 tensor by a Python scalar).
/// Checkpoint keys: `positional_encoding_gaussian_matrix` (2, F), a buffer.
public final class PositionEmbeddingRandom: Module {
    /// F: half the embedding width.
    public let numPosFeats: Int
    /// `positional_encoding_gaussian_matrix`: (2, F)
    public let gaussianMatrix: Parameter

    public init(numPosFeats: Int = 64) {
        precondition(numPosFeats > 0, "PositionEmbeddingRandom: numPosFeats must be positive, got \(numPosFeats)")
        self.numPosFeats = numPosFeats
        gaussianMatrix = Parameter(buffer: Tensor(zeros: [2, numPosFeats]))
    }

    public func namedParameters() -> [(String, Parameter)] {
        [("positional_encoding_gaussian_matrix", gaussianMatrix)]
    }

    /// `_pe_encoding` of `n` points: coords (n, 2) in [0, 1]² → out (n, 2F).
    func encode(_ coords: UnsafePointer<Float>, count n: Int, into out: UnsafeMutablePointer<Float>) {
        let F = numPosFeats
        let twoPi = Float(2 * Double.pi)
        gaussianMatrix.value.data.withUnsafeBufferPointer { gb in
            let g0 = gb.baseAddress!, g1 = gb.baseAddress! + F
            parallelFor(n, costPerItem: F * 40, minimumWork: 1 << 16) { i in
                let x = 2 * coords[2 * i] - 1, y = 2 * coords[2 * i + 1] - 1
                let o = out + i * 2 * F
                for f in 0..<F {
                    let v = twoPi * (x * g0[f] + y * g1[f])
                    o[f] = sinf(v)
                    o[F + f] = cosf(v)
                }
            }
        }
    }

    /// `forward(size)`: the encoding of every cell centre of an `height`×`width` grid,
    /// ((i + 0.5) / width, (j + 0.5) / height) → (2F, height, width).
    public func grid(height H: Int, width W: Int) -> Tensor {
        let F2 = 2 * numPosFeats
        // coords: (H·W, 2) cell centres, normalised
        var coords = [Float](repeating: 0, count: H * W * 2)
        for j in 0..<H {
            for i in 0..<W {
                coords[2 * (j * W + i)] = (Float(i) + 0.5) / Float(W)
                coords[2 * (j * W + i) + 1] = (Float(j) + 0.5) / Float(H)
            }
        }
        // pe: (H·W, 2F), then permuted to (2F, H, W)
        var pe = [Float](repeating: 0, count: H * W * F2)
        coords.withUnsafeBufferPointer { cb in
            pe.withUnsafeMutableBufferPointer { encode(cb.baseAddress!, count: H * W, into: $0.baseAddress!) }
        }
        return Tensor(shape: [H * W, F2], data: pe).permuted([1, 0]).reshaped([F2, H, W])
    }

    /// `forward_with_coords`: points (B, N, 2) as (x, y) pixels of an image of `imageSize` (H, W),
    /// x divided by W and y by H → (B, N, 2F).
    public func encode(pixelCoords points: Tensor, imageSize: (height: Int, width: Int)) -> Tensor {
        precondition(points.rank == 3 && points.shape[2] == 2,
                     "PositionEmbeddingRandom.encode: expected points of shape (B, N, 2), got \(points.shape)")
        let n = points.shape[0] * points.shape[1]
        var normalised = points.data
        for i in 0..<n {
            normalised[2 * i] /= Float(imageSize.width)
            normalised[2 * i + 1] /= Float(imageSize.height)
        }
        var out = Tensor(zeros: [points.shape[0], points.shape[1], 2 * numPosFeats])
        normalised.withUnsafeBufferPointer { cb in
            out.data.withUnsafeMutableBufferPointer { encode(cb.baseAddress!, count: n, into: $0.baseAddress!) }
        }
        return out
    }
}

/// Point prompts for a batch of B prompts with N points each.
public struct PromptPoints: Sendable {
    /// coords: (B, N, 2), (x, y) in pixels of the encoder's input frame (the resized image,
    /// `ResizeLongestSide.applyCoords`), before the +0.5 pixel-centre shift.
    public var coords: Tensor
    /// labels: B·N values (row-major (B, N)): 1 foreground, 0 background, −1 "not a point"
    /// (padding). Any other value adds no label embedding (as the reference's `torch.where`s).
    public var labels: [Int]

    public init(coords: Tensor, labels: [Int]) {
        precondition(coords.rank == 3 && coords.shape[2] == 2,
                     "PromptPoints: expected coords of shape (B, N, 2), got \(coords.shape)")
        precondition(labels.count == coords.shape[0] * coords.shape[1],
                     "PromptPoints: \(labels.count) labels for coords of shape \(coords.shape)")
        self.coords = coords
        self.labels = labels
    }

    public var batchSize: Int { coords.shape[0] }
    public var pointsPerPrompt: Int { coords.shape[1] }
}

/// `PromptEncoder`: embeds points, boxes and low-resolution masks for the mask decoder.
///
/// - sparse (B, N', C): each point → pe(point + 0.5) plus its label embedding
///   (`point_embeddings.1` foreground, `.0` background; label −1 → `not_a_point_embed` alone);
///   when there are points but no box, one padding point (label −1) is appended; each box →
///   its two corners (+0.5) encoded, plus `point_embeddings.2` / `.3`. Points first, then boxes.
/// - dense (B, C, h, w): `mask_downscaling(masks)` for masks (B, 1, 4h, 4w), else `no_mask_embed`
///   broadcast.
///
/// Checkpoint keys (relative to `prompt_encoder.`): `pe_layer.positional_encoding_gaussian_matrix`
/// (2, C/2), `point_embeddings.{0,1,2,3}.weight` (1, C), `not_a_point_embed.weight` (1, C),
/// `mask_downscaling.0.weight` (m/4, 1, 2, 2) / `.bias`, `mask_downscaling.1.weight|bias` (m/4),
/// `mask_downscaling.3.weight` (m, m/4, 2, 2) / `.bias`, `mask_downscaling.4.weight|bias` (m),
/// `mask_downscaling.6.weight` (C, m, 1, 1) / `.bias` (C), `no_mask_embed.weight` (1, C).
public final class PromptEncoder: Module {
    /// C (256 in SAM).
    public let embedDim: Int
    /// (h, w) of the image embedding (64×64).
    public let imageEmbeddingSize: (height: Int, width: Int)
    /// The padded encoder input (1024×1024): point coordinates are normalised by it.
    public let inputImageSize: (height: Int, width: Int)
    /// m: hidden channels of the mask downscaling (16 in SAM).
    public let maskInChans: Int
    /// (4h, 4w): the mask input's size (256×256).
    public var maskInputSize: (height: Int, width: Int) { (4 * imageEmbeddingSize.height, 4 * imageEmbeddingSize.width) }

    public let peLayer: PositionEmbeddingRandom
    /// `point_embeddings.i.weight`: (1, C) each: 0 background, 1 foreground, 2/3 box corners
    public let pointEmbeddings: [Parameter]
    /// `not_a_point_embed.weight`: (1, C)
    public let notAPointEmbed: Parameter
    /// `mask_downscaling`: Conv2d(1, m/4, 2, s2), LayerNorm2d, GELU, Conv2d(m/4, m, 2, s2),
    /// LayerNorm2d, GELU, Conv2d(m, C, 1) (indices 0, 1, 3, 4, 6 carry weights)
    public let maskConv1: Conv2d
    public let maskNorm1: LayerNorm2d
    public let maskConv2: Conv2d
    public let maskNorm2: LayerNorm2d
    public let maskConv3: Conv2d
    /// `no_mask_embed.weight`: (1, C)
    public let noMaskEmbed: Parameter

    // Cached dense positional encoding (1, C, h, w) and the gaussian matrix it was computed from.
    private var densePECache: (matrix: [Float], pe: Tensor)?
    private let cacheLock = NSLock()

    public init(embedDim: Int = 256, imageEmbeddingSize: (height: Int, width: Int) = (64, 64),
                inputImageSize: (height: Int, width: Int) = (1024, 1024), maskInChans: Int = 16) {
        precondition(embedDim % 2 == 0, "PromptEncoder: embedDim must be even, got \(embedDim)")
        precondition(maskInChans % 4 == 0, "PromptEncoder: maskInChans must be a multiple of 4, got \(maskInChans)")
        self.embedDim = embedDim
        self.imageEmbeddingSize = imageEmbeddingSize
        self.inputImageSize = inputImageSize
        self.maskInChans = maskInChans
        peLayer = PositionEmbeddingRandom(numPosFeats: embedDim / 2)
        pointEmbeddings = (0..<4).map { _ in Parameter(Tensor(zeros: [1, embedDim]), decays: false) }
        notAPointEmbed = Parameter(Tensor(zeros: [1, embedDim]), decays: false)
        maskConv1 = Conv2d(inputChannels: 1, outputChannels: maskInChans / 4, kernelSize: 2, stride: 2)
        maskNorm1 = LayerNorm2d(maskInChans / 4)
        maskConv2 = Conv2d(inputChannels: maskInChans / 4, outputChannels: maskInChans, kernelSize: 2, stride: 2)
        maskNorm2 = LayerNorm2d(maskInChans)
        maskConv3 = Conv2d(inputChannels: maskInChans, outputChannels: embedDim, kernelSize: 1)
        noMaskEmbed = Parameter(Tensor(zeros: [1, embedDim]), decays: false)
    }

    public func namedParameters() -> [(String, Parameter)] {
        var p = prefixed("pe_layer.", peLayer)
        for (i, e) in pointEmbeddings.enumerated() { p.append(("point_embeddings.\(i).weight", e)) }
        p.append(("not_a_point_embed.weight", notAPointEmbed))
        p += prefixed("mask_downscaling.0.", maskConv1) + prefixed("mask_downscaling.1.", maskNorm1)
            + prefixed("mask_downscaling.3.", maskConv2) + prefixed("mask_downscaling.4.", maskNorm2)
            + prefixed("mask_downscaling.6.", maskConv3)
        p.append(("no_mask_embed.weight", noMaskEmbed))
        return p
    }

    /// `get_dense_pe`: the positional encoding of the image embedding's grid, (1, C, h, w).
    /// Cached until the gaussian matrix changes (e.g. new weights are loaded).
    public func densePositionalEncoding() -> Tensor {
        cacheLock.lock()
        defer { cacheLock.unlock() }
        let matrix = peLayer.gaussianMatrix.value.data
        if let c = densePECache, c.matrix == matrix { return c.pe }
        let pe = peLayer.grid(height: imageEmbeddingSize.height, width: imageEmbeddingSize.width)
            .reshaped([1, embedDim, imageEmbeddingSize.height, imageEmbeddingSize.width])
        densePECache = (matrix, pe)
        return pe
    }

    /// `_embed_points`: (B, N, 2) points (+ one padding point when `pad`) → (B, N(+1), C).
    public func embedPoints(_ points: PromptPoints, pad: Bool) -> Tensor {
        let B = points.batchSize, N = points.pointsPerPrompt, Np = N + (pad ? 1 : 0), C = embedDim
        // shifted: (B, Np, 2) pixel centres; the padding point sits at (0, 0) (not shifted)
        var shifted = Tensor(zeros: [B, Np, 2])
        var labels = [Int](repeating: -1, count: B * Np)
        for b in 0..<B {
            for n in 0..<N {
                shifted.data[(b * Np + n) * 2] = points.coords.data[(b * N + n) * 2] + 0.5
                shifted.data[(b * Np + n) * 2 + 1] = points.coords.data[(b * N + n) * 2 + 1] + 0.5
                labels[b * Np + n] = points.labels[b * N + n]
            }
        }
        var pe = peLayer.encode(pixelCoords: shifted, imageSize: inputImageSize)  // (B, Np, C)
        let notAPoint = notAPointEmbed.value.data, bg = pointEmbeddings[0].value.data, fg = pointEmbeddings[1].value.data
        for i in 0..<(B * Np) {
            let o = i * C
            switch labels[i] {
            case -1: for c in 0..<C { pe.data[o + c] = notAPoint[c] }
            case 0: for c in 0..<C { pe.data[o + c] += bg[c] }
            case 1: for c in 0..<C { pe.data[o + c] += fg[c] }
            default: break
            }
        }
        return pe
    }

    /// `_embed_boxes`: boxes (B, 4) as (x0, y0, x1, y1) input-frame pixels → (B, 2, C).
    public func embedBoxes(_ boxes: Tensor) -> Tensor {
        precondition(boxes.rank == 2 && boxes.shape[1] == 4,
                     "PromptEncoder.embedBoxes: expected boxes of shape (B, 4), got \(boxes.shape)")
        let B = boxes.shape[0], C = embedDim
        let corners = Tensor(shape: [B, 2, 2], data: boxes.data.map { $0 + 0.5 })
        var pe = peLayer.encode(pixelCoords: corners, imageSize: inputImageSize)  // (B, 2, C)
        let c0 = pointEmbeddings[2].value.data, c1 = pointEmbeddings[3].value.data
        for b in 0..<B {
            for c in 0..<C {
                pe.data[(b * 2) * C + c] += c0[c]
                pe.data[(b * 2 + 1) * C + c] += c1[c]
            }
        }
        return pe
    }

    /// `_embed_masks`: masks (B, 1, 4h, 4w) → (B, C, h, w).
    public func embedMasks(_ masks: Tensor, mode: ForwardMode) -> Tensor {
        let (mh, mw) = maskInputSize
        precondition(masks.rank == 4 && masks.shape[1] == 1 && masks.shape[2] == mh && masks.shape[3] == mw,
                     "PromptEncoder.embedMasks: expected masks of shape (B, 1, \(mh), \(mw)), got \(masks.shape)")
        var h = maskConv1.forward(masks, mode: mode)
        h = Activation.gelu.forward(maskNorm1.forward(h, mode: mode))
        h = maskConv2.forward(h, mode: mode)
        h = Activation.gelu.forward(maskNorm2.forward(h, mode: mode))
        return maskConv3.forward(h, mode: mode)
    }

    /// The batch size the prompts imply (`_get_batch_size`), checking that they agree.
    public static func batchSize(points: PromptPoints?, boxes: Tensor?, masks: Tensor?) -> Int {
        var sizes: [(String, Int)] = []
        if let points { sizes.append(("points", points.batchSize)) }
        if let boxes { sizes.append(("boxes", boxes.shape.first ?? 0)) }
        if let masks { sizes.append(("masks", masks.shape.first ?? 0)) }
        if let first = sizes.first {
            precondition(sizes.allSatisfy { $0.1 == first.1 },
                         "PromptEncoder: prompts disagree on the batch size: "
                         + sizes.map { "\($0.0) \($0.1)" }.joined(separator: ", "))
            return first.1
        }
        return 1
    }

    /// points (B, N, 2) + labels, boxes (B, 4), masks (B, 1, 4h, 4w), any of them absent →
    /// (sparse: (B, N', C), dense: (B, C, h, w)); N' = N (+1 padding point without boxes) + 2·(box).
    /// With `sharedDense` and no masks, dense is the no-mask embedding once, (1, C, h, w), for
    /// the mask decoder to broadcast.
    public func forward(points: PromptPoints?, boxes: Tensor?, masks: Tensor?,
                        mode: ForwardMode, sharedDense: Bool = false) -> (sparse: Tensor, dense: Tensor) {
        let B = Self.batchSize(points: points, boxes: boxes, masks: masks), C = embedDim
        var parts: [Tensor] = []
        if let points { parts.append(embedPoints(points, pad: boxes == nil)) }
        if let boxes { parts.append(embedBoxes(boxes)) }
        let N = parts.reduce(0) { $0 + $1.shape[1] }
        // sparse: (B, N, C), the parts concatenated along dim 1
        var sparse = Tensor(zeros: [B, N, C])
        var offset = 0
        for part in parts {
            let n = part.shape[1]
            for b in 0..<B {
                for i in 0..<(n * C) { sparse.data[(b * N + offset) * C + i] = part.data[b * n * C + i] }
            }
            offset += n
        }
        return (sparse, masks.map { embedMasks($0, mode: mode) } ?? noMaskDenseEmbedding(batch: sharedDense ? 1 : B))
    }

    /// The dense embedding without a mask: `no_mask_embed` broadcast to (B, C, h, w).
    public func noMaskDenseEmbedding(batch B: Int) -> Tensor {
        let (h, w) = imageEmbeddingSize, C = embedDim
        var d = Tensor.empty([B, C, h, w])
        let e = noMaskEmbed.value.data
        d.data.withUnsafeMutableBufferPointer { db in
            let dp = db.baseAddress!
            parallelFor(B * C, costPerItem: h * w) { bc in (dp + bc * h * w).update(repeating: e[bc % C], count: h * w) }
        }
        return d
    }
}

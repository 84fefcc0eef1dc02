import Foundation
import Layers
import Tensor

// The mask decoder's two-way transformer, side by side with MobileSAM's modeling/transformer.py
// (`TwoWayTransformer`, `TwoWayAttentionBlock`; `Attention` is Layers' `MaskDecoderAttention`).
// Forward in training mode keeps what `backward` needs; backward gives the gradients of the
// queries and keys (prompt-in-the-loop distillation backpropagates a mask loss into the image
// embedding). The positional encodings are constants: no gradient is formed for them.

/// `x + y` where y is (1, N, C) broadcast over x's batch, or has x's shape.
func addingBroadcast(_ x: Tensor, _ y: Tensor, _ layer: @autoclosure () -> String) -> Tensor {
    if x.shape == y.shape { return x + y }
    precondition(x.rank == 3 && y.rank == 3 && y.shape[0] == 1 && y.shape[1] == x.shape[1] && y.shape[2] == x.shape[2],
                 "\(layer()): cannot add a tensor of shape \(y.shape) to one of shape \(x.shape)")
    // Written in one pass (not a copy of x, then an add): the image side is B × 4 MB here.
    var out = Tensor.empty(x.shape)
    let per = x.shape[1] * x.shape[2], B = x.shape[0]
    out.data.withUnsafeMutableBufferPointer { ob in
        x.data.withUnsafeBufferPointer { xb in
            y.data.withUnsafeBufferPointer { yb in
                let o = ob.baseAddress!, xp = xb.baseAddress!, yp = yb.baseAddress!
                parallelFor(B, costPerItem: per) { b in
                    let ob = o + b * per, xr = xp + b * per
                    for i in 0..<per { ob[i] = xr[i] + yp[i] }
                }
            }
        }
    }
    return out
}

/// x: (B, ...) → (1, ...), the sum over the batch.
func summedOverBatch(_ x: Tensor) -> Tensor {
    let B = x.shape[0], per = x.count / max(B, 1)
    var out = Tensor(zeros: [1] + x.shape.dropFirst())
    out.data.withUnsafeMutableBufferPointer { ob in
        x.data.withUnsafeBufferPointer { xb in
            let o = ob.baseAddress!, xp = xb.baseAddress!
            parallelChunks(per, costPerItem: B) { r in
                for b in 0..<B { let xr = xp + b * per; for i in r { o[i] += xr[i] } }
            }
        }
    }
    return out
}

/// `TwoWayAttentionBlock`: (1) self-attention of the sparse tokens, (2) tokens → image
/// cross-attention, (3) MLP on the tokens, (4) image → tokens cross-attention; each followed by a
/// residual add and a LayerNorm. With `skipFirstLayerPE` the first self-attention gets no
/// positional encoding and no residual (the reference's first layer).
///
/// Checkpoint keys: `self_attn.*` (MaskDecoderAttention, downsample 1), `norm1.*`,
/// `cross_attn_token_to_image.*` (MaskDecoderAttention, downsample r), `norm2.*`, `mlp.lin1.*`,
/// `mlp.lin2.*` (MLPBlock, ReLU), `norm3.*`, `norm4.*`, `cross_attn_image_to_token.*`.
public final class TwoWayAttentionBlock: Module {
    public let embeddingDim: Int
    public let skipFirstLayerPE: Bool
    public let selfAttn: MaskDecoderAttention
    public let norm1: LayerNorm
    public let crossAttnTokenToImage: MaskDecoderAttention
    public let norm2: LayerNorm
    public let mlp: MLPBlock
    public let norm3: LayerNorm
    public let norm4: LayerNorm
    public let crossAttnImageToToken: MaskDecoderAttention

    public init(embeddingDim: Int, heads: Int, mlpDim: Int = 2048, activation: Activation = .relu,
                attentionDownsampleRate: Int = 2, skipFirstLayerPE: Bool = false) {
        self.embeddingDim = embeddingDim
        self.skipFirstLayerPE = skipFirstLayerPE
        selfAttn = MaskDecoderAttention(embeddingDim: embeddingDim, heads: heads)
        norm1 = LayerNorm(embeddingDim)
        crossAttnTokenToImage = MaskDecoderAttention(embeddingDim: embeddingDim, heads: heads, downsampleRate: attentionDownsampleRate)
        norm2 = LayerNorm(embeddingDim)
        mlp = MLPBlock(embeddingDim: embeddingDim, mlpDim: mlpDim, activation: activation)
        norm3 = LayerNorm(embeddingDim)
        norm4 = LayerNorm(embeddingDim)
        crossAttnImageToToken = MaskDecoderAttention(embeddingDim: embeddingDim, heads: heads, downsampleRate: attentionDownsampleRate)
    }

    public func namedParameters() -> [(String, Parameter)] {
        prefixed("self_attn.", selfAttn) + prefixed("norm1.", norm1)
            + prefixed("cross_attn_token_to_image.", crossAttnTokenToImage) + prefixed("norm2.", norm2)
            + prefixed("mlp.", mlp) + prefixed("norm3.", norm3) + prefixed("norm4.", norm4)
            + prefixed("cross_attn_image_to_token.", crossAttnImageToToken)
    }

    /// queries: (B, Nq, C), keys: (B, Nk, C), queryPE: (B, Nq, C), keyPE: (B or 1, Nk, C)
    /// → (queries: (B, Nq, C), keys: (B, Nk, C)).
    public func forward(queries: Tensor, keys: Tensor, queryPE: Tensor, keyPE: Tensor,
                        mode: ForwardMode) -> (queries: Tensor, keys: Tensor) {
        let C = embeddingDim, name = "TwoWayAttentionBlock(\(C))"
        precondition(queries.rank == 3 && queries.shape[2] == C,
                     "\(name): expected queries of shape (B, Nq, \(C)), got \(queries.shape)")
        precondition(keys.rank == 3 && keys.shape[0] == queries.shape[0] && keys.shape[2] == C,
                     "\(name): expected keys of shape (\(queries.shape[0]), Nk, \(C)), got \(keys.shape)")
        precondition(queryPE.shape == queries.shape, "\(name): queryPE \(queryPE.shape) must match queries \(queries.shape)")
        var q = firstStage(queries, queryPE: queryPE, mode: mode)
        // (2) tokens attend to the image
        let kWithPE = addingBroadcast(keys, keyPE, name)  // (B, Nk, C)
        q = q + crossAttnTokenToImage.forward(q: q + queryPE, k: kWithPE, v: keys, mode: mode)
        q = mlpStage(norm2.forward(q, mode: mode), mode: mode)  // norm2, then (3) the MLP
        // (4) the image attends to the tokens
        var k = keys + crossAttnImageToToken.forward(q: kWithPE, k: q + queryPE, v: q, mode: mode)
        k = norm4.forward(k, mode: mode)
        return (q, k)
    }

    /// The image side of this block for prompts that all see one image: the keys (1, Nk, C) and
    /// their projections by the two cross-attentions, made once per image in inference
    /// (`forward(queries:sharedImage:queryPE:mode:)` reuses them for every batch), once per
    /// forward in training.
    public struct SharedImage {
        /// keys: (1, Nk, C)
        public let keys: Tensor
        /// tokens → image k_proj(keys + keyPE), v_proj(keys): (1, Nk, I)
        public let tokenToImageKeys: Tensor, tokenToImageValues: Tensor
        /// image → tokens q_proj(keys + keyPE): (1, Nk, I)
        public let imageToTokenQueries: Tensor
    }

    /// keys, keyPE: (1, Nk, C) → the block's shared image side. In training the projections
    /// keep their inputs for `backwardShared` (a frozen block).
    public func sharedImage(keys: Tensor, keyPE: Tensor, mode: ForwardMode = .inference) -> SharedImage {
        let C = embeddingDim
        precondition(keys.rank == 3 && keys.shape[0] == 1 && keys.shape[2] == C && keyPE.shape == keys.shape,
                     "TwoWayAttentionBlock(\(C)).sharedImage: expected keys and keyPE of shape (1, Nk, \(C)), got \(keys.shape), \(keyPE.shape)")
        let kWithPE = keys + keyPE
        return SharedImage(keys: keys,
                           tokenToImageKeys: crossAttnTokenToImage.kProj.forward(kWithPE, mode: mode),
                           tokenToImageValues: crossAttnTokenToImage.vProj.forward(keys, mode: mode),
                           imageToTokenQueries: crossAttnImageToToken.qProj.forward(kWithPE, mode: mode))
    }

    /// B prompts that all see the image side `image`: queries, queryPE: (B, Nq, C) →
    /// (queries: (B, Nq, C), keys: (B, Nk, C)), as `forward` with the keys repeated B times.
    /// Only (4) makes the image side per prompt (MaskDecoderAttentionShared.swift). Training
    /// mode needs a frozen block and an image side made in training mode.
    public func forward(queries: Tensor, sharedImage image: SharedImage, queryPE: Tensor,
                        mode: ForwardMode = .inference) -> (queries: Tensor, keys: Tensor) {
        let C = embeddingDim, name = "TwoWayAttentionBlock(\(C))"
        precondition(queries.rank == 3 && queries.shape[2] == C,
                     "\(name): expected queries of shape (B, Nq, \(C)), got \(queries.shape)")
        precondition(queryPE.shape == queries.shape, "\(name): queryPE \(queryPE.shape) must match queries \(queries.shape)")
        precondition(!mode.keepsActivations || (crossAttnTokenToImage.isFrozen && crossAttnImageToToken.isFrozen),
                     "\(name): training on a shared image side forms no gradients of the cross-attentions' weights: freeze them")
        var q = firstStage(queries, queryPE: queryPE, mode: mode)
        // (2) tokens attend to the image (projected once)
        q = q + crossAttnTokenToImage.forwardSharedKeys(q: q + queryPE, projectedKeys: image.tokenToImageKeys,
                                                        projectedValues: image.tokenToImageValues, mode: mode)
        q = mlpStage(norm2.forward(q, mode: mode), mode: mode)  // norm2, then (3) the MLP
        // (4) the image attends to the tokens: per prompt from here on, (B, Nk, C)
        let y = crossAttnImageToToken.forwardSharedQueries(projectedQueries: image.imageToTokenQueries, k: q + queryPE, v: q,
                                                           mode: mode)
        return (q, norm4.forward(addingBroadcast(y, image.keys, name), mode: mode))
    }

    /// After a training-mode shared forward (and `sharedImage` in training mode): dQueries:
    /// (B, Nq, C), dKeys: (B, Nk, C) of its outputs → (dQueries of its queries, or empty as in
    /// `backward`; dKeys: (1, Nk, C) of the shared keys, summed over the prompts).
    public func backwardShared(dQueries: Tensor, dKeys: Tensor, queriesGradient: Bool = true) -> (dQueries: Tensor, dKeys: Tensor) {
        // (4) k = norm4(keys + attn(q: keys + keyPE [projected once], k: q3 + queryPE, v: q3))
        let dk4 = norm4.backward(dKeys)  // (B, Nk, C)
        let a4 = crossAttnImageToToken.backwardSharedQueries(dk4)
        var dShared = summedOverBatch(dk4)  // (1, Nk, C): the residual's keys
        // (3), then (2) q2 = norm2(q1 + attn(q: q1 + queryPE, k: keys + keyPE, v: keys)), k and v projected once
        var dq = norm2.backward(mlpStageBackward(dQueries, keys: a4.dk, values: a4.dv))
        let a2 = crossAttnTokenToImage.backwardSharedKeys(dq)
        dq.add(a2.dq)
        // the shared projections, once: keys + keyPE fed k_proj of (2) and q_proj of (4), keys v_proj of (2)
        dShared.add(crossAttnTokenToImage.kProj.backward(a2.dProjectedKeys))
        dShared.add(crossAttnImageToToken.qProj.backward(a4.dProjectedQueries))
        dShared.add(crossAttnTokenToImage.vProj.backward(a2.dProjectedValues))
        return (firstStageBackward(dq, queriesGradient: queriesGradient), dShared)
    }

    /// After a training-mode forward: dQueries: (B, Nq, C), dKeys: (B, Nk, C) of its outputs →
    /// (dQueries: (B, Nq, C), dKeys: (B, Nk, C)) of its `queries` and `keys` inputs. Without
    /// `queriesGradient` (the transformer's first block, whose queries are the constant tokens)
    /// and with self_attn and norm1 frozen, their backward is skipped and dQueries comes back
    /// empty (shape [0]).
    public func backward(dQueries: Tensor, dKeys: Tensor, queriesGradient: Bool = true) -> (dQueries: Tensor, dKeys: Tensor) {
        // (4) k = norm4(keys + attn(q: keys + keyPE, k: q3 + queryPE, v: q3))
        let dk4 = norm4.backward(dKeys)  // (B, Nk, C)
        let a4 = crossAttnImageToToken.backward(dk4)
        var dk = dk4 + a4.dq  // keys, directly and through keys + keyPE
        // (3), then (2) q2 = norm2(q1 + attn(q: q1 + queryPE, k: keys + keyPE, v: keys))
        var dq = norm2.backward(mlpStageBackward(dQueries, keys: a4.dk, values: a4.dv))
        let a2 = crossAttnTokenToImage.backward(dq)
        dq.add(a2.dq)
        dk.add(a2.dk)
        dk.add(a2.dv)
        return (firstStageBackward(dq, queriesGradient: queriesGradient), dk)
    }

    /// (3) MLP: q3 = norm3(q2 + mlp(q2)).
    private func mlpStage(_ q2: Tensor, mode: ForwardMode) -> Tensor {
        norm3.forward(q2 + mlp.forward(q2, mode: mode), mode: mode)
    }

    /// (3) backward: q3 feeds the block's output (dQueries) and the keys and values of (4) →
    /// dq2 (B, Nq, C).
    private func mlpStageBackward(_ dQueries: Tensor, keys dk: Tensor, values dv: Tensor) -> Tensor {
        var dq = dQueries + dk
        dq.add(dv)
        dq = norm3.backward(dq)
        dq.add(mlp.backward(dq))
        return dq
    }

    /// (1) self-attention: norm1(attn(q, q, q)) with skipFirstLayerPE, else norm1(q + attn(q + PE, q + PE, q)).
    private func firstStage(_ queries: Tensor, queryPE: Tensor, mode: ForwardMode) -> Tensor {
        if skipFirstLayerPE { return norm1.forward(selfAttn.forward(q: queries, k: queries, v: queries, mode: mode), mode: mode) }
        let qp = queries + queryPE
        return norm1.forward(queries + selfAttn.forward(q: qp, k: qp, v: queries, mode: mode), mode: mode)
    }

    /// (1) q1 = norm1(attn(q, q, q)) with skipFirstLayerPE, else norm1(q + attn(q + PE, q + PE, q)):
    /// dq1 → dq, or empty (shape [0]) when neither the queries' gradient nor the stage's own is wanted.
    private func firstStageBackward(_ dq1: Tensor, queriesGradient: Bool) -> Tensor {
        let firstStageTrains = (selfAttn.namedParameters() + norm1.namedParameters()).contains { $0.1.requiresGradient }
        guard queriesGradient || firstStageTrains else { return Tensor(zeros: [0]) }
        let dq = norm1.backward(dq1)
        let a1 = selfAttn.backward(dq)
        var dIn = skipFirstLayerPE ? a1.dq : dq + a1.dq
        dIn.add(a1.dk)
        dIn.add(a1.dv)
        return dIn
    }
}

/// `TwoWayTransformer`: `depth` TwoWayAttentionBlocks (the first with `skipFirstLayerPE`), then a
/// final tokens → image attention with a residual and `norm_final_attn`.
///
/// Checkpoint keys: `layers.{i}.*` (TwoWayAttentionBlock), `final_attn_token_to_image.*`
/// (MaskDecoderAttention, downsample r), `norm_final_attn.*` (LayerNorm).
public final class TwoWayTransformer: Module {
    public let depth: Int
    public let embeddingDim: Int
    public let heads: Int
    public let mlpDim: Int
    public let layers: [TwoWayAttentionBlock]
    public let finalAttnTokenToImage: MaskDecoderAttention
    public let normFinalAttn: LayerNorm
    /// The last training-mode forward ran on a shared image side (backward then sums into it).
    private var sharedForward = false

    public init(depth: Int = 2, embeddingDim: Int = 256, heads: Int = 8, mlpDim: Int = 2048,
                activation: Activation = .relu, attentionDownsampleRate: Int = 2) {
        self.depth = depth
        self.embeddingDim = embeddingDim
        self.heads = heads
        self.mlpDim = mlpDim
        layers = (0..<depth).map {
            TwoWayAttentionBlock(embeddingDim: embeddingDim, heads: heads, mlpDim: mlpDim, activation: activation,
                                 attentionDownsampleRate: attentionDownsampleRate, skipFirstLayerPE: $0 == 0)
        }
        finalAttnTokenToImage = MaskDecoderAttention(embeddingDim: embeddingDim, heads: heads, downsampleRate: attentionDownsampleRate)
        normFinalAttn = LayerNorm(embeddingDim)
    }

    public func namedParameters() -> [(String, Parameter)] {
        layers.enumerated().flatMap { prefixed("layers.\($0.offset).", $0.element) }
            + prefixed("final_attn_token_to_image.", finalAttnTokenToImage) + prefixed("norm_final_attn.", normFinalAttn)
    }

    /// imageEmbedding: (B, C, H, W), imagePE: (B or 1, C, H, W), pointEmbedding: (B, N, C)
    /// → (queries: (B, N, C), keys: (B, H·W, C)).
    public func forward(imageEmbedding: Tensor, imagePE: Tensor, pointEmbedding: Tensor,
                        mode: ForwardMode) -> (queries: Tensor, keys: Tensor) {
        let C = embeddingDim, name = "TwoWayTransformer(\(C))"
        precondition(imageEmbedding.rank == 4 && imageEmbedding.shape[1] == C,
                     "\(name): expected an image embedding of shape (B, \(C), H, W), got \(imageEmbedding.shape)")
        precondition(imagePE.rank == 4 && Array(imagePE.shape[1...]) == Array(imageEmbedding.shape[1...])
                     && (imagePE.shape[0] == 1 || imagePE.shape[0] == imageEmbedding.shape[0]),
                     "\(name): imagePE \(imagePE.shape) does not fit the image embedding \(imageEmbedding.shape)")
        precondition(pointEmbedding.rank == 3 && pointEmbedding.shape[0] == imageEmbedding.shape[0] && pointEmbedding.shape[2] == C,
                     "\(name): expected a point embedding of shape (\(imageEmbedding.shape[0]), N, \(C)), got \(pointEmbedding.shape)")
        // (B, C, H, W) → (B, H·W, C): `flatten(2).permute(0, 2, 1)` (ConvLayout's tiled transpose)
        sharedForward = false
        let keyPE = ConvLayout.mapToTokens(imagePE)  // (B or 1, HW, C)
        var queries = pointEmbedding
        var keys = ConvLayout.mapToTokens(imageEmbedding)  // (B, HW, C)
        for layer in layers {
            (queries, keys) = layer.forward(queries: queries, keys: keys, queryPE: pointEmbedding, keyPE: keyPE, mode: mode)
        }
        return finalAttention(queries: queries, keys: keys, pointEmbedding: pointEmbedding, keyPE: keyPE, mode: mode)
    }

    /// The image side of the transformer for prompts that all see one image embedding (no mask
    /// input): its PE and the first block's shared projections.
    public struct SharedImage {
        /// keyPE: (1, H·W, C)
        public let keyPE: Tensor
        public let firstBlock: TwoWayAttentionBlock.SharedImage
        public let height: Int, width: Int
    }

    /// imageEmbedding: (1, C, H, W), imagePE: (1, C, H, W) → the shared image side, made once
    /// per image (three projections of its H·W tokens) and reused by every batch of prompts.
    /// In training mode (a frozen transformer) for one `forward(sharedImage:...)` and its backward.
    public func sharedImage(imageEmbedding: Tensor, imagePE: Tensor, mode: ForwardMode = .inference) -> SharedImage {
        let C = embeddingDim, name = "TwoWayTransformer(\(C)).sharedImage"
        precondition(imageEmbedding.rank == 4 && imageEmbedding.shape[0] == 1 && imageEmbedding.shape[1] == C,
                     "\(name): expected an image embedding of shape (1, \(C), H, W), got \(imageEmbedding.shape)")
        precondition(imagePE.shape == imageEmbedding.shape, "\(name): imagePE \(imagePE.shape) must match \(imageEmbedding.shape)")
        guard let first = layers.first else { preconditionFailure("\(name): a transformer without blocks has nothing to share") }
        let keyPE = ConvLayout.mapToTokens(imagePE)  // (1, HW, C)
        return SharedImage(keyPE: keyPE, firstBlock: first.sharedImage(keys: ConvLayout.mapToTokens(imageEmbedding), keyPE: keyPE, mode: mode),
                           height: imageEmbedding.shape[2], width: imageEmbedding.shape[3])
    }

    /// B prompts on one shared image side: pointEmbedding: (B, N, C) → (queries: (B, N, C),
    /// keys: (B, H·W, C)), as `forward` with the image embedding repeated. In training (a frozen
    /// transformer, the side made in training mode) `backward` then gives the shared embedding's
    /// gradient, (1, C, H, W), summed over the prompts.
    public func forward(sharedImage image: SharedImage, pointEmbedding: Tensor,
                        mode: ForwardMode = .inference) -> (queries: Tensor, keys: Tensor) {
        let C = embeddingDim
        precondition(pointEmbedding.rank == 3 && pointEmbedding.shape[2] == C,
                     "TwoWayTransformer(\(C)): expected a point embedding of shape (B, N, \(C)), got \(pointEmbedding.shape)")
        sharedForward = mode.keepsActivations
        var (queries, keys) = layers[0].forward(queries: pointEmbedding, sharedImage: image.firstBlock, queryPE: pointEmbedding,
                                                mode: mode)
        for layer in layers.dropFirst() {
            (queries, keys) = layer.forward(queries: queries, keys: keys, queryPE: pointEmbedding, keyPE: image.keyPE, mode: mode)
        }
        return finalAttention(queries: queries, keys: keys, pointEmbedding: pointEmbedding, keyPE: image.keyPE, mode: mode)
    }

    /// The final tokens → image attention with its residual and norm.
    private func finalAttention(queries: Tensor, keys: Tensor, pointEmbedding: Tensor, keyPE: Tensor,
                                mode: ForwardMode) -> (queries: Tensor, keys: Tensor) {
        let attnOut = finalAttnTokenToImage.forward(q: queries + pointEmbedding,
                                                    k: addingBroadcast(keys, keyPE, "TwoWayTransformer(\(embeddingDim))"),
                                                    v: keys, mode: mode)
        return (normFinalAttn.forward(queries + attnOut, mode: mode), keys)
    }

    /// After a training-mode forward: dQueries: (B, N, C), dKeys: (B, H·W, C) of its outputs →
    /// dImageEmbedding: (B, C, H, W), or (1, C, H, W) after a shared forward. The point embedding
    /// and imagePE get no gradient (constants in the decoder's use).
    public func backward(dQueries: Tensor, dKeys: Tensor, height H: Int, width W: Int) -> Tensor {
        let C = embeddingDim
        precondition(dKeys.rank == 3 && dKeys.shape[1] == H * W && dKeys.shape[2] == C,
                     "TwoWayTransformer(\(C)).backward: expected dKeys of shape (B, \(H * W), \(C)), got \(dKeys.shape)")
        // queries = norm(q + attn(q: q + PE, k: keys + keyPE, v: keys))
        var dq = normFinalAttn.backward(dQueries)  // (B, N, C)
        let a = finalAttnTokenToImage.backward(dq)
        dq.add(a.dq)
        var dk = dKeys + a.dk  // (B, HW, C)
        dk.add(a.dv)
        for (i, layer) in layers.enumerated().reversed() {
            (dq, dk) = sharedForward && i == 0 ? layer.backwardShared(dQueries: dq, dKeys: dk, queriesGradient: false)
                : layer.backward(dQueries: dq, dKeys: dk, queriesGradient: i > 0)
        }
        sharedForward = false
        return ConvLayout.tokensToMap(dk, height: H, width: W)
    }
}

import Foundation
import Layers
import Tensor

/// SAM's `MaskDecoder` (MobileSAM's modeling/mask_decoder.py): output tokens (an IoU token and
/// `numMultimaskOutputs + 1` mask tokens) are concatenated with the sparse prompt embeddings and
/// run through the two-way transformer against the image embedding (plus the dense prompt
/// embedding); the image side is upscaled 4× by two transposed convolutions, each mask token
/// becomes, through its own hypernetwork MLP, the weights of a linear map from the upscaled
/// channels to one mask's logits; the IoU token predicts each mask's quality.
///
///     tokens   = [iou_token, mask_tokens, sparse]                  (B, 1 + M + N, C)
///     src      = image_embedding (repeated per prompt) + dense      (B, C, h, w)
///     hs, src  = transformer(src, image_pe, tokens)
///     up       = GELU(ConvT(GELU(LN2d(ConvT(src)))))                (B, C/8, 4h, 4w)
///     hyper_i  = output_hypernetworks_mlps[i](hs[:, 1 + i])         (B, C/8)
///     masks    = hyper @ up                                         (B, M, 4h, 4w)
///     iou_pred = iou_prediction_head(hs[:, 0])                      (B, M)
/// With `multimaskOutput` the outputs are masks 1..<M, else mask 0 alone.
///
/// Checkpoint keys (relative to `mask_decoder.`): `transformer.*` (TwoWayTransformer),
/// `iou_token.weight` (1, C), `mask_tokens.weight` (M, C), `output_upscaling.0.weight`
/// (C, C/4, 2, 2) / `.bias`, `output_upscaling.1.weight|bias` (C/4, LayerNorm2d),
/// `output_upscaling.3.weight` (C/4, C/8, 2, 2) / `.bias`, `output_hypernetworks_mlps.{i}.layers.{0,1,2}.*`
/// (MLP C → C → C → C/8), `iou_prediction_head.layers.{0..depth−1}.*` (MLP C → hidden → M).
///
/// One type for inference and training: with `mode.keepsActivations` the forward keeps what
/// `backward` needs (the attentions over the image tokens keep their folded forms of inference,
/// MaskDecoderAttentionFolded.swift, since the decoder is frozen), and `backward` gives the gradient of a loss on the mask logits (and
/// the IoU predictions) with respect to the image embedding. Prompt embeddings are constants: the
/// sparse tokens and the dense (no-mask or mask-input) embedding get no gradient. The decoder
/// must be frozen (`freezeParameters()`: no parameter gradients are formed or stored), as in
/// prompt-in-the-loop distillation; training the decoder itself is not implemented (its token
/// parameters would need the gradient of the tokens, which backward does not form).
public final class MaskDecoder: Module {
    /// C (256).
    public let transformerDim: Int
    public let numMultimaskOutputs: Int
    /// M = numMultimaskOutputs + 1.
    public var numMaskTokens: Int { numMultimaskOutputs + 1 }

    public let transformer: TwoWayTransformer
    /// `iou_token.weight`: (1, C)
    public let iouToken: Parameter
    /// `mask_tokens.weight`: (M, C)
    public let maskTokens: Parameter
    /// `output_upscaling`: ConvTranspose2d(C, C/4, 2, 2), LayerNorm2d(C/4), GELU,
    /// ConvTranspose2d(C/4, C/8, 2, 2), GELU (indices 0, 1, 3 carry weights)
    public let upscaleConv1: ConvTranspose2d
    public let upscaleNorm: LayerNorm2d
    public let upscaleConv2: ConvTranspose2d
    /// `output_hypernetworks_mlps.i`: MLP(C, C, C/8, 3), one per mask token
    public let outputHypernetworksMLPs: [MLP]
    /// `iou_prediction_head`: MLP(C, hidden, M, depth)
    public let iouPredictionHead: MLP

    /// What `backward` needs from a training-mode forward.
    private struct Saved {
        /// 1 when the one image embedding was shared by every prompt, else B.
        var embeddingBatch: Int
        /// The transformer ran on a shared image side: its gradient is the embedding's already.
        var sharedImage: Bool
        var height: Int, width: Int
        /// Tokens per prompt, 1 + M + N.
        var tokens: Int
        var outputs: Range<Int>
        /// hyper: (B, K, D) hypernetwork outputs; up: (B, D, 4h, 4w) upscaled image side.
        var hyper: Tensor, up: Tensor
        /// LN2d output and its GELU (B, C/4, 2h, 2w); second ConvT output (B, D, 4h, 4w).
        var norm: Tensor, normGELU: Tensor, conv2: Tensor
    }
    private var saved: Saved?

    public init(transformerDim: Int = 256, transformer: TwoWayTransformer = TwoWayTransformer(),
                numMultimaskOutputs: Int = 3, iouHeadDepth: Int = 3, iouHeadHiddenDim: Int = 256) {
        precondition(transformerDim % 8 == 0, "MaskDecoder: transformerDim must be a multiple of 8, got \(transformerDim)")
        precondition(transformer.embeddingDim == transformerDim,
                     "MaskDecoder: transformer width \(transformer.embeddingDim) differs from transformerDim \(transformerDim)")
        self.transformerDim = transformerDim
        self.numMultimaskOutputs = numMultimaskOutputs
        self.transformer = transformer
        let C = transformerDim, M = numMultimaskOutputs + 1
        iouToken = Parameter(Tensor(zeros: [1, C]), decays: false)
        maskTokens = Parameter(Tensor(zeros: [M, C]), decays: false)
        upscaleConv1 = ConvTranspose2d(inputChannels: C, outputChannels: C / 4, kernelSize: 2, stride: 2)
        upscaleNorm = LayerNorm2d(C / 4)
        upscaleConv2 = ConvTranspose2d(inputChannels: C / 4, outputChannels: C / 8, kernelSize: 2, stride: 2)
        outputHypernetworksMLPs = (0..<M).map { _ in MLP(inputDim: C, hiddenDim: C, outputDim: C / 8, layers: 3) }
        iouPredictionHead = MLP(inputDim: C, hiddenDim: iouHeadHiddenDim, outputDim: M, layers: iouHeadDepth)
    }

    public func namedParameters() -> [(String, Parameter)] {
        var p = prefixed("transformer.", transformer)
        p.append(("iou_token.weight", iouToken))
        p.append(("mask_tokens.weight", maskTokens))
        p += prefixed("output_upscaling.0.", upscaleConv1) + prefixed("output_upscaling.1.", upscaleNorm)
            + prefixed("output_upscaling.3.", upscaleConv2)
        for (i, m) in outputHypernetworksMLPs.enumerated() { p += prefixed("output_hypernetworks_mlps.\(i).", m) }
        return p + prefixed("iou_prediction_head.", iouPredictionHead)
    }

    /// A decoder of the same architecture holding the same weights (the tensors are shared
    /// copy-on-write): e.g. a training-mode copy beside an inference one, each keeping its own
    /// activations.
    public func copy() -> MaskDecoder {
        let t = transformer
        let d = MaskDecoder(
            transformerDim: transformerDim,
            transformer: TwoWayTransformer(depth: t.depth, embeddingDim: t.embeddingDim, heads: t.heads, mlpDim: t.mlpDim,
                                           activation: t.layers.first?.mlp.activation ?? .relu,
                                           attentionDownsampleRate: t.finalAttnTokenToImage.downsampleRate),
            numMultimaskOutputs: numMultimaskOutputs, iouHeadDepth: iouPredictionHead.layers.count,
            iouHeadHiddenDim: iouPredictionHead.hiddenDim)
        do { try d.load(stateDict()) } catch { preconditionFailure("MaskDecoder.copy: \(error)") }
        return d
    }

    /// The fewest prompts for which sharing one image side between them pays (making it costs
    /// about one prompt's first block; `sharedImage`).
    public static let sharedImageMinimumPrompts = 4

    /// The mask outputs `forward` returns: 1..<M with `multimaskOutput`, else 0..<1.
    public func outputRange(multimask: Bool) -> Range<Int> { multimask ? 1..<numMaskTokens : 0..<1 }

    /// imageEmbeddings: (1, C, h, w) shared by every prompt (the reference's repeat_interleave) or
    /// (B, C, h, w) one per prompt; imagePE: (1, C, h, w); sparsePromptEmbeddings: (B, N, C);
    /// densePromptEmbeddings: (B, C, h, w), or (1, C, h, w) for all prompts (the no-mask
    /// embedding: with one image embedding too and `sharedImageMinimumPrompts` or more prompts,
    /// the first block projects the image side once for all of them (`sharedImage`), in
    /// inference and in training through a frozen first block)
    /// → (masks: (B, K, 4h, 4w) logits, iouPredictions: (B, K)), K = 3 with `multimaskOutput`, else 1.
    public func forward(imageEmbeddings: Tensor, imagePE: Tensor, sparsePromptEmbeddings: Tensor,
                        densePromptEmbeddings: Tensor, multimaskOutput: Bool,
                        mode: ForwardMode) -> (masks: Tensor, iouPredictions: Tensor) {
        let range = outputRange(multimask: multimaskOutput)
        let (masks, iou) = predictMasks(imageEmbeddings: imageEmbeddings, imagePE: imagePE,
                                        sparsePromptEmbeddings: sparsePromptEmbeddings,
                                        densePromptEmbeddings: densePromptEmbeddings, outputs: range, mode: mode)
        return (masks, slicedIoU(iou, range))
    }

    /// `predict_masks`, computing only the masks of `outputs` (every mask token still takes part
    /// in the transformer, so the values equal the reference's):
    /// → (masks: (B, outputs.count, 4h, 4w), iouPredictions: (B, M) for all M mask tokens).
    public func predictMasks(imageEmbeddings: Tensor, imagePE: Tensor, sparsePromptEmbeddings: Tensor,
                             densePromptEmbeddings: Tensor, outputs: Range<Int>? = nil,
                             mode: ForwardMode) -> (masks: Tensor, iouPredictions: Tensor) {
        let C = transformerDim, M = numMaskTokens, name = "MaskDecoder(\(C))"
        let outputs = outputs ?? 0..<M
        precondition(outputs.lowerBound >= 0 && outputs.upperBound <= M, "\(name): mask outputs \(outputs) outside 0..<\(M)")
        precondition(sparsePromptEmbeddings.rank == 3 && sparsePromptEmbeddings.shape[2] == C,
                     "\(name): expected sparse prompt embeddings of shape (B, N, \(C)), got \(sparsePromptEmbeddings.shape)")
        let B = sparsePromptEmbeddings.shape[0]
        precondition(densePromptEmbeddings.rank == 4 && (densePromptEmbeddings.shape[0] == B || densePromptEmbeddings.shape[0] == 1)
                     && densePromptEmbeddings.shape[1] == C,
                     "\(name): expected dense prompt embeddings of shape (\(B) or 1, \(C), h, w), got \(densePromptEmbeddings.shape)")
        let h = densePromptEmbeddings.shape[2], w = densePromptEmbeddings.shape[3], hw = h * w
        precondition(imageEmbeddings.rank == 4 && (imageEmbeddings.shape[0] == 1 || imageEmbeddings.shape[0] == B)
                     && Array(imageEmbeddings.shape[1...]) == [C, h, w],
                     "\(name): expected image embeddings of shape (1 or \(B), \(C), \(h), \(w)), got \(imageEmbeddings.shape)")
        precondition(imagePE.shape == [1, C, h, w], "\(name): expected imagePE of shape \([1, C, h, w]), got \(imagePE.shape)")

        let tokens = outputTokens(sparsePromptEmbeddings)  // (B, 1 + M + N, C)
        let first = transformer.layers.first
        if imageEmbeddings.shape[0] == 1 && densePromptEmbeddings.shape[0] == 1 && B >= Self.sharedImageMinimumPrompts,
           let first, !mode.keepsActivations || (first.crossAttnTokenToImage.isFrozen && first.crossAttnImageToToken.isFrozen) {
            // Every prompt sees one image side: the first block projects it once for all.
            let side = sharedImage(imageEmbedding: imageEmbeddings, imagePE: imagePE, densePromptEmbedding: densePromptEmbeddings,
                                   mode: mode)
            let (hs, keys) = transformer.forward(sharedImage: side, pointEmbedding: tokens, mode: mode)
            return heads(hs: hs, keys: keys, height: h, width: w, outputs: outputs, embeddingBatch: 1, sharedImage: true, mode: mode)
        }
        // src: (B, C, h, w) = image embedding (per prompt) + dense (per prompt)
        let perImage = C * hw, shared = imageEmbeddings.shape[0] == 1, denseShared = densePromptEmbeddings.shape[0] == 1
        var src = Tensor.empty([B, C, h, w])
        src.data.withUnsafeMutableBufferPointer { sb in
            imageEmbeddings.data.withUnsafeBufferPointer { eb in
                densePromptEmbeddings.data.withUnsafeBufferPointer { db in
                    let s = sb.baseAddress!, e = eb.baseAddress!, dn = db.baseAddress!
                    parallelFor(B * C, costPerItem: hw) { bc in
                        let b = bc / C, c = bc % C
                        let dst = s + bc * hw, from = e + (shared ? 0 : b * perImage) + c * hw
                        let dense = dn + (denseShared ? 0 : b * perImage) + c * hw
                        for i in 0..<hw { dst[i] = dense[i] + from[i] }
                    }
                }
            }
        }
        let (hs, keys) = transformer.forward(imageEmbedding: src, imagePE: imagePE, pointEmbedding: tokens, mode: mode)
        return heads(hs: hs, keys: keys, height: h, width: w, outputs: outputs, embeddingBatch: imageEmbeddings.shape[0],
                     sharedImage: false, mode: mode)
    }

    /// One image's side of the decoder for prompts without a mask input, made once per image
    /// and reused by every batch (`predictMasks(sharedImage:...)`): imageEmbedding (1, C, h, w)
    /// plus the dense embedding (1, C, h, w) (`PromptEncoder.noMaskDenseEmbedding(batch: 1)`),
    /// and the first transformer block's projections of its tokens. In training mode (a frozen
    /// decoder) for one forward on it and its `backward`.
    public func sharedImage(imageEmbedding: Tensor, imagePE: Tensor, densePromptEmbedding: Tensor,
                            mode: ForwardMode = .inference) -> TwoWayTransformer.SharedImage {
        let C = transformerDim
        precondition(imageEmbedding.rank == 4 && imageEmbedding.shape[0] == 1 && imageEmbedding.shape[1] == C
                     && densePromptEmbedding.shape == imageEmbedding.shape && imagePE.shape == imageEmbedding.shape,
                     "MaskDecoder(\(C)).sharedImage: expected image embedding, dense embedding and PE of shape (1, \(C), h, w), got \(imageEmbedding.shape), \(densePromptEmbedding.shape), \(imagePE.shape)")
        return transformer.sharedImage(imageEmbedding: densePromptEmbedding + imageEmbedding, imagePE: imagePE, mode: mode)
    }

    /// The image side for prompts without a mask input: imageEmbedding (1, C, h, w) with the
    /// prompt encoder's no-mask embedding and dense positional encoding.
    public func sharedImage(imageEmbedding: Tensor, promptEncoder: PromptEncoder) -> TwoWayTransformer.SharedImage {
        sharedImage(imageEmbedding: imageEmbedding, imagePE: promptEncoder.densePositionalEncoding(),
                    densePromptEmbedding: promptEncoder.noMaskDenseEmbedding(batch: 1))
    }

    /// Inference `predictMasks` for prompts that all see `sharedImage`: sparsePromptEmbeddings:
    /// (B, N, C) → the same values as with the image embedding and dense embedding it was made
    /// from (up to rounding), without repeating the image side's first block per prompt.
    public func predictMasks(sharedImage image: TwoWayTransformer.SharedImage, sparsePromptEmbeddings: Tensor,
                             outputs: Range<Int>? = nil) -> (masks: Tensor, iouPredictions: Tensor) {
        let C = transformerDim, M = numMaskTokens, outputs = outputs ?? 0..<M
        precondition(outputs.lowerBound >= 0 && outputs.upperBound <= M, "MaskDecoder(\(C)): mask outputs \(outputs) outside 0..<\(M)")
        precondition(sparsePromptEmbeddings.rank == 3 && sparsePromptEmbeddings.shape[2] == C,
                     "MaskDecoder(\(C)): expected sparse prompt embeddings of shape (B, N, \(C)), got \(sparsePromptEmbeddings.shape)")
        let (hs, keys) = transformer.forward(sharedImage: image, pointEmbedding: outputTokens(sparsePromptEmbeddings))
        return heads(hs: hs, keys: keys, height: image.height, width: image.width, outputs: outputs, embeddingBatch: 1,
                     sharedImage: true, mode: .inference)
    }

    /// `forward` for prompts that all see `sharedImage` (inference).
    public func forward(sharedImage image: TwoWayTransformer.SharedImage, sparsePromptEmbeddings: Tensor,
                        multimaskOutput: Bool) -> (masks: Tensor, iouPredictions: Tensor) {
        let range = outputRange(multimask: multimaskOutput)
        let (masks, iou) = predictMasks(sharedImage: image, sparsePromptEmbeddings: sparsePromptEmbeddings, outputs: range)
        return (masks, slicedIoU(iou, range))
    }

    /// tokens: (B, 1 + M + N, C) = [iou_token, mask_tokens, sparse] per prompt.
    private func outputTokens(_ sparsePromptEmbeddings: Tensor) -> Tensor {
        let C = transformerDim, M = numMaskTokens, B = sparsePromptEmbeddings.shape[0], N = sparsePromptEmbeddings.shape[1]
        let T = 1 + M + N
        var tokens = Tensor(zeros: [B, T, C])
        for b in 0..<B {
            let o = b * T * C
            for c in 0..<C { tokens.data[o + c] = iouToken.value.data[c] }
            for i in 0..<(M * C) { tokens.data[o + C + i] = maskTokens.value.data[i] }
            for i in 0..<(N * C) { tokens.data[o + (1 + M) * C + i] = sparsePromptEmbeddings.data[b * N * C + i] }
        }
        return tokens
    }

    /// The IoU predictions of `outputs` out of all M: (B, M) → (B, outputs.count).
    private func slicedIoU(_ iou: Tensor, _ range: Range<Int>) -> Tensor {
        let B = iou.shape[0], M = numMaskTokens
        var sliced = Tensor(zeros: [B, range.count])
        for b in 0..<B { for (j, i) in range.enumerated() { sliced.data[b * range.count + j] = iou.data[b * M + i] } }
        return sliced
    }

    /// After the transformer: hs (B, T, C), keys (B, h·w, C) → masks of `outputs` and all M IoU
    /// predictions; in training keeps what `backward` needs.
    private func heads(hs: Tensor, keys: Tensor, height h: Int, width w: Int, outputs: Range<Int>, embeddingBatch: Int,
                       sharedImage: Bool, mode: ForwardMode) -> (masks: Tensor, iouPredictions: Tensor) {
        let C = transformerDim, B = hs.shape[0], T = hs.shape[1]
        // Upscale the image side: (B, C, h, w) → (B, C/8, 4h, 4w)
        let norm = upscaleNorm.forward(upscaleConv1.forward(ConvLayout.tokensToMap(keys, height: h, width: w), mode: mode),
                                       mode: mode)  // (B, C/4, 2h, 2w)
        let normGELU = Activation.gelu.forward(norm)
        let conv2 = upscaleConv2.forward(normGELU, mode: mode)  // (B, D, 4h, 4w)
        let up = Activation.gelu.forward(conv2)
        let D = C / 8, P = up.shape[2] * up.shape[3], K = outputs.count

        // hyper: (B, K, D), token i's MLP applied to hs[:, 1 + i]
        var hyper = Tensor(zeros: [B, K, D])
        for (j, i) in outputs.enumerated() {
            var rows = Tensor(zeros: [B, C])  // hs[:, 1 + i, :]
            for b in 0..<B { for c in 0..<C { rows.data[b * C + c] = hs.data[(b * T + 1 + i) * C + c] } }
            let out = outputHypernetworksMLPs[i].forward(rows, mode: mode)  // (B, D)
            for b in 0..<B { for d in 0..<D { hyper.data[(b * K + j) * D + d] = out.data[b * D + d] } }
        }
        // masks: (B, K, 4h, 4w), per prompt (K, D) · (D, P)
        var masks = Tensor(zeros: [B, K, up.shape[2], up.shape[3]])
        hyper.data.withUnsafeBufferPointer { hb in
            up.data.withUnsafeBufferPointer { ub in
                masks.data.withUnsafeMutableBufferPointer { mb in
                    for b in 0..<B {
                        gemm(m: K, n: P, k: D, a: hb.baseAddress! + b * K * D, lda: D,
                             b: ub.baseAddress! + b * D * P, ldb: P, c: mb.baseAddress! + b * K * P, ldc: P)
                    }
                }
            }
        }
        // iou: (B, M) from hs[:, 0]
        var iouIn = Tensor(zeros: [B, C])
        for b in 0..<B { for c in 0..<C { iouIn.data[b * C + c] = hs.data[b * T * C + c] } }
        let iou = iouPredictionHead.forward(iouIn, mode: mode)
        saved = mode.keepsActivations
            ? Saved(embeddingBatch: embeddingBatch, sharedImage: sharedImage, height: h, width: w, tokens: T, outputs: outputs,
                    hyper: hyper, up: up, norm: norm, normGELU: normGELU, conv2: conv2)
            : nil
        return (masks, iou)
    }

    /// After a training-mode `forward`/`predictMasks`: dMasks: (B, K, 4h, 4w), the gradient of the
    /// loss with respect to the masks it returned, and optionally dIoU: (B, K) (`forward`) or
    /// (B, M) (`predictMasks`) for its IoU predictions → dImageEmbeddings: the shape of the image
    /// embeddings given to the forward, (1, C, h, w) summed over the prompts that shared it, or
    /// (B, C, h, w). The decoder must be frozen.
    public func backward(masks dMasks: Tensor, iouPredictions dIoU: Tensor? = nil) -> Tensor {
        guard let s = saved else { preconditionFailure("MaskDecoder.backward without a training-mode forward") }
        precondition(!namedParameters().contains { $0.1.requiresGradient },
                     "MaskDecoder.backward: only a frozen decoder (freezeParameters()) is backpropagated through; training the decoder's own weights is not implemented")
        saved = nil
        let C = transformerDim, M = numMaskTokens, name = "MaskDecoder(\(C)).backward"
        let B = s.hyper.shape[0], K = s.outputs.count, D = C / 8, T = s.tokens, h = s.height, w = s.width
        let Ho = s.up.shape[2], Wo = s.up.shape[3], P = Ho * Wo
        precondition(dMasks.shape == [B, K, Ho, Wo], "\(name): expected dMasks of shape \([B, K, Ho, Wo]), got \(dMasks.shape)")
        // masks_b = hyper_b (K, D) · up_b (D, P): dHyper_b = dMasks_b · up_bᵀ, dUp_b = hyper_bᵀ · dMasks_b
        var dHyper = Tensor.empty([B, K, D])
        var dUp = Tensor.empty([B, D, Ho, Wo])
        dMasks.data.withUnsafeBufferPointer { gb in
        s.hyper.data.withUnsafeBufferPointer { hb in
        s.up.data.withUnsafeBufferPointer { ub in
        dHyper.data.withUnsafeMutableBufferPointer { dhb in
        dUp.data.withUnsafeMutableBufferPointer { dub in
            for b in 0..<B {
                let g = gb.baseAddress! + b * K * P
                gemm(transB: true, m: K, n: D, k: P, a: g, lda: P, b: ub.baseAddress! + b * D * P, ldb: P,
                     c: dhb.baseAddress! + b * K * D, ldc: D)
                gemm(transA: true, m: D, n: P, k: K, a: hb.baseAddress! + b * K * D, lda: D, b: g, ldb: P,
                     c: dub.baseAddress! + b * D * P, ldc: P)
            }
        } } } } }
        // dHs: (B, T, C), rows 1 + i from the hypernetworks, row 0 from the IoU head
        var dHs = Tensor(zeros: [B, T, C])
        for (j, i) in s.outputs.enumerated() {
            var rows = Tensor.empty([B, D])  // dHyper[:, j, :]
            for b in 0..<B { for d in 0..<D { rows.data[b * D + d] = dHyper.data[(b * K + j) * D + d] } }
            let dIn = outputHypernetworksMLPs[i].backward(rows)  // (B, C)
            for b in 0..<B { for c in 0..<C { dHs.data[(b * T + 1 + i) * C + c] = dIn.data[b * C + c] } }
        }
        if let dIoU {
            // dIoU of forward's sliced outputs (B, K) or of all M predictions (B, M)
            precondition(dIoU.shape == [B, K] || dIoU.shape == [B, M],
                         "\(name): expected dIoU of shape \([B, K]) or \([B, M]), got \(dIoU.shape)")
            var full = Tensor(zeros: [B, M])
            if dIoU.shape == [B, M] { full = dIoU } else {
                for b in 0..<B { for (j, i) in s.outputs.enumerated() { full.data[b * M + i] = dIoU.data[b * K + j] } }
            }
            let dIn = iouPredictionHead.backward(full)  // (B, C)
            for b in 0..<B { for c in 0..<C { dHs.data[b * T * C + c] = dIn.data[b * C + c] } }
        }
        // up = GELU(ConvT2(GELU(LN2d(ConvT1(keys map)))))
        var g = Activation.gelu.backward(dUp, input: s.conv2, output: s.up)
        g = upscaleConv2.backward(g)
        g = Activation.gelu.backward(g, input: s.norm, output: s.normGELU)
        g = upscaleConv1.backward(upscaleNorm.backward(g))  // (B, C, h, w)
        let dKeys = ConvLayout.mapToTokens(g)  // (B, hw, C)
        let dSrc = transformer.backward(dQueries: dHs, dKeys: dKeys, height: h, width: w)  // (B, C, h, w)
        guard s.embeddingBatch == 1 && B > 1 && !s.sharedImage else { return dSrc }
        // The shared embedding was added to every prompt's src: its gradient is the sum over prompts.
        return summedOverBatch(dSrc)
    }
}

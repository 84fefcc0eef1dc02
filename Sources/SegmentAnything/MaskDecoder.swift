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
/// Inference only: `mode` is threaded through to the layers, but there is no backward pass.
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

    /// The mask outputs `forward` returns: 1..<M with `multimaskOutput`, else 0..<1.
    public func outputRange(multimask: Bool) -> Range<Int> { multimask ? 1..<numMaskTokens : 0..<1 }

    /// imageEmbeddings: (1, C, h, w) shared by every prompt (the reference's repeat_interleave) or
    /// (B, C, h, w) one per prompt; imagePE: (1, C, h, w); sparsePromptEmbeddings: (B, N, C);
    /// densePromptEmbeddings: (B, C, h, w)
    /// → (masks: (B, K, 4h, 4w) logits, iouPredictions: (B, K)), K = 3 with `multimaskOutput`, else 1.
    public func forward(imageEmbeddings: Tensor, imagePE: Tensor, sparsePromptEmbeddings: Tensor,
                        densePromptEmbeddings: Tensor, multimaskOutput: Bool,
                        mode: ForwardMode) -> (masks: Tensor, iouPredictions: Tensor) {
        let range = outputRange(multimask: multimaskOutput)
        let (masks, iou) = predictMasks(imageEmbeddings: imageEmbeddings, imagePE: imagePE,
                                        sparsePromptEmbeddings: sparsePromptEmbeddings,
                                        densePromptEmbeddings: densePromptEmbeddings, outputs: range, mode: mode)
        let B = iou.shape[0], M = numMaskTokens
        var sliced = Tensor(zeros: [B, range.count])
        for b in 0..<B { for (j, i) in range.enumerated() { sliced.data[b * range.count + j] = iou.data[b * M + i] } }
        return (masks, sliced)
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
        let B = sparsePromptEmbeddings.shape[0], N = sparsePromptEmbeddings.shape[1]
        precondition(densePromptEmbeddings.rank == 4 && densePromptEmbeddings.shape[0] == B && densePromptEmbeddings.shape[1] == C,
                     "\(name): expected dense prompt embeddings of shape (\(B), \(C), h, w), got \(densePromptEmbeddings.shape)")
        let h = densePromptEmbeddings.shape[2], w = densePromptEmbeddings.shape[3], hw = h * w
        precondition(imageEmbeddings.rank == 4 && (imageEmbeddings.shape[0] == 1 || imageEmbeddings.shape[0] == B)
                     && Array(imageEmbeddings.shape[1...]) == [C, h, w],
                     "\(name): expected image embeddings of shape (1 or \(B), \(C), \(h), \(w)), got \(imageEmbeddings.shape)")
        precondition(imagePE.shape == [1, C, h, w], "\(name): expected imagePE of shape \([1, C, h, w]), got \(imagePE.shape)")

        // tokens: (B, 1 + M + N, C)
        let T = 1 + M + N
        var tokens = Tensor(zeros: [B, T, C])
        for b in 0..<B {
            let o = b * T * C
            for c in 0..<C { tokens.data[o + c] = iouToken.value.data[c] }
            for i in 0..<(M * C) { tokens.data[o + C + i] = maskTokens.value.data[i] }
            for i in 0..<(N * C) { tokens.data[o + (1 + M) * C + i] = sparsePromptEmbeddings.data[b * N * C + i] }
        }
        // src: (B, C, h, w) = image embedding (per prompt) + dense
        var src = densePromptEmbeddings
        let perImage = C * hw, shared = imageEmbeddings.shape[0] == 1
        src.data.withUnsafeMutableBufferPointer { sb in
            imageEmbeddings.data.withUnsafeBufferPointer { eb in
                let s = sb.baseAddress!, e = eb.baseAddress!
                parallelFor(B * C, costPerItem: hw) { bc in
                    let b = bc / C, c = bc % C
                    let dst = s + bc * hw, from = e + (shared ? 0 : b * perImage) + c * hw
                    for i in 0..<hw { dst[i] += from[i] }
                }
            }
        }
        let (hs, keys) = transformer.forward(imageEmbedding: src, imagePE: imagePE, pointEmbedding: tokens, mode: mode)

        // Upscale the image side: (B, C, h, w) → (B, C/8, 4h, 4w)
        var up = upscaleConv1.forward(ConvLayout.tokensToMap(keys, height: h, width: w), mode: mode)
        up = Activation.gelu.forward(upscaleNorm.forward(up, mode: mode))
        up = Activation.gelu.forward(upscaleConv2.forward(up, mode: mode))
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
        return (masks, iou)
    }
}

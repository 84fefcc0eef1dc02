import Foundation
import Layers
import ONNX
import SegmentAnything
import Tensor

// SAM's prompt encoder + mask decoder + mask post-processing as one ONNX graph with the interface
// of the reference's `SamOnnxModel` (segment_anything/utils/onnx.py, return_single_mask=False),
// so tools written for SAM's official ONNX decoder take it:
//
//   inputs   image_embeddings (1, 256, 64, 64)   the encoder's output
//            point_coords     (1, N, 2) float    (x, y) in the 1024-frame (ResizeLongestSide.apply_coords)
//            point_labels     (1, N) float       1 fg, 0 bg, 2/3 box corners, −1 padding ("not a point")
//            mask_input       (1, 1, 256, 256)   a previous low_res_masks output (zeros when unused)
//            has_mask_input   (1) float          1 to use mask_input, 0 for no_mask_embed
//            orig_im_size     (2) float          (H, W) of the original image
//   outputs  masks            (1, 4, H, W)       logits at the image's size (> 0: mask)
//            iou_predictions  (1, 4)
//            low_res_masks    (1, 4, 256, 256)
//
// N is dynamic. As in the reference, the graph does not add SAM's padding point: a prompt without
// a box passes one extra point (0, 0) with label −1, as SamPredictor does. Output 0 is the
// single-mask output, 1…3 the multimask outputs. The steps follow PromptEncoder.swift,
// MaskDecoder.swift and TwoWayTransformer.swift; the dense positional encoding and the output
// tokens are constants of the graph.

enum ONNXDecoder {
    static func build(_ model: SAMModel, _ g: GraphBuilder) {
        let pe = model.promptEncoder, md = model.maskDecoder
        let C = pe.embedDim, h = pe.imageEmbeddingSize.height, w = pe.imageEmbeddingSize.width
        let M = md.numMaskTokens, S = model.imageSize
        let embeddings = g.input("image_embeddings", [1, .fixed(C), .fixed(h), .fixed(w)])
        let coords = g.input("point_coords", [1, "num_points", 2])
        let labels = g.input("point_labels", [1, "num_points"])
        let maskInput = g.input("mask_input", [1, 1, .fixed(4 * h), .fixed(4 * w)])
        let hasMask = g.input("has_mask_input", [1])
        let originalSize = g.input("orig_im_size", [2])

        let sparse = embedPoints(g, pe, coords: coords, labels: labels, imageSize: S)
        let dense = embedMasks(g, pe, maskInput: maskInput, hasMask: hasMask)
        let (lowRes, iou) = predictMasks(g, md, pe, embeddings: embeddings, sparse: sparse, dense: dense)
        let masks = postprocess(g, lowRes, originalSize: originalSize, imageSize: S, maskCount: M)

        g.output(masks, as: "masks", [1, .fixed(M), "height", "width"])
        g.output(iou, as: "iou_predictions", [1, .fixed(M)])
        g.output(lowRes, as: "low_res_masks", [1, .fixed(M), .fixed(4 * h), .fixed(4 * w)])
    }

    /// `_embed_points`: pe((coords + 0.5) / S) zeroed where the label is −1, plus
    /// not_a_point_embed there and point_embeddings[i] where the label is i. (1, N, C)
    static func embedPoints(_ g: GraphBuilder, _ pe: PromptEncoder, coords: String, labels: String, imageSize S: Int) -> String {
        let p = "prompt_encoder."
        var c = g.op("Div", [g.op("Add", [coords, g.scalar(0.5)], name: p + "points.centre"), g.scalar(Float(S), name: "image_size")],
                     name: p + "points.normalised")
        c = g.op("Sub", [g.op("Mul", [c, g.scalar(2, name: "two")], name: p + "points.scaled"), g.scalar(1, name: "one")],
                 name: p + "points.signed")
        let proj = g.op("MatMul", [c, g.weight(p + "pe_layer.positional_encoding_gaussian_matrix", pe.peLayer.gaussianMatrix.value)],
                        name: p + "points.projected")
        let v = g.op("Mul", [proj, g.scalar(Float(2 * Double.pi), name: "two_pi")], name: p + "points.angles")
        var e = g.op("Concat", [g.op("Sin", [v], name: p + "points.sin"), g.op("Cos", [v], name: p + "points.cos")],
                     [.int("axis", -1)], name: p + "points.pe")                                    // (1, N, C)
        let l = g.op("Unsqueeze", [labels, g.int64s([2], name: "axes")], name: p + "labels")         // (1, N, 1)
        func isLabel(_ v: Float) -> String {
            let tag = v < 0 ? "padding" : "\(Int(v))"
            return g.op("Cast", [g.op("Equal", [l, g.scalar(v, name: "label")], name: p + "labels.is_\(tag)")],
                        [.int("to", Onnx_TensorProto.DataType.float.rawValue)], name: p + "labels.is_\(tag).float")
        }
        let padding = isLabel(-1)
        e = g.op("Mul", [e, g.op("Sub", [g.scalar(1, name: "one"), padding], name: p + "labels.is_point")], name: p + "points.pe_kept")
        e = g.op("Add", [e, g.op("Mul", [g.weight(p + "not_a_point_embed.weight", pe.notAPointEmbed.value), padding],
                                 name: p + "not_a_point")], name: p + "points.with_padding")
        for (i, emb) in pe.pointEmbeddings.enumerated() {
            let add = g.op("Mul", [g.weight(p + "point_embeddings.\(i).weight", emb.value), isLabel(Float(i))], name: p + "point_embedding.\(i)")
            e = g.op("Add", [e, add], name: p + "points.with_label_\(i)")
        }
        return e
    }

    /// `_embed_masks`: has · mask_downscaling(mask_input) + (1 − has) · no_mask_embed. (1, C, h, w)
    static func embedMasks(_ g: GraphBuilder, _ pe: PromptEncoder, maskInput: String, hasMask: String) -> String {
        let p = "prompt_encoder.mask_downscaling."
        var x = ONNXEncoders.conv(g, maskInput, pe.maskConv1, p + "0")
        x = g.gelu(ONNXEncoders.layerNorm2d(g, x, pe.maskNorm1, p + "1"), name: p + "2")
        x = ONNXEncoders.conv(g, x, pe.maskConv2, p + "3")
        x = g.gelu(ONNXEncoders.layerNorm2d(g, x, pe.maskNorm2, p + "4"), name: p + "5")
        x = ONNXEncoders.conv(g, x, pe.maskConv3, p + "6")
        let used = g.op("Mul", [x, hasMask], name: "prompt_encoder.mask_embedding")
        let noMask = g.weight("prompt_encoder.no_mask_embed.weight", pe.noMaskEmbed.value.data, shape: [1, pe.embedDim, 1, 1])
        let unused = g.op("Mul", [g.op("Sub", [g.scalar(1, name: "one"), hasMask], name: "prompt_encoder.no_mask_input"), noMask],
                          name: "prompt_encoder.no_mask_embedding")
        return g.op("Add", [used, unused], name: "prompt_encoder.dense_embedding")
    }

    /// `MaskDecoder.predict_masks`: → (low-res mask logits (1, M, 4h, 4w), IoU predictions (1, M)).
    static func predictMasks(_ g: GraphBuilder, _ md: MaskDecoder, _ pe: PromptEncoder, embeddings: String, sparse: String,
                             dense: String) -> (String, String) {
        let p = "mask_decoder.", C = md.transformerDim, M = md.numMaskTokens
        let h = pe.imageEmbeddingSize.height, w = pe.imageEmbeddingSize.width
        let outputTokens = g.weight(p + "output_tokens", md.iouToken.value.data + md.maskTokens.value.data, shape: [1, 1 + M, C])
        let tokens = g.op("Concat", [outputTokens, sparse], [.int("axis", 1)], name: p + "tokens")     // (1, 1 + M + N, C)
        let src = g.op("Add", [embeddings, dense], name: p + "src")                                    // (1, C, h, w)
        var keys = g.transpose(g.reshape(src, [1, C, h * w], name: p + "src.flat"), [0, 2, 1], name: p + "src.tokens")
        // get_dense_pe(), flattened as the transformer takes it: (1, h·w, C)
        let densePE = pe.peLayer.grid(height: h, width: w).reshaped([C, h * w]).permuted([1, 0])
        let keyPE = g.weight("prompt_encoder.dense_pe", densePE.data, shape: [1, h * w, C])
        var queries = tokens
        let t = md.transformer, tp = p + "transformer."
        for (i, layer) in t.layers.enumerated() {
            (queries, keys) = twoWayBlock(g, layer, queries: queries, keys: keys, queryPE: tokens, keyPE: keyPE, tp + "layers.\(i).")
        }
        let q = g.op("Add", [queries, tokens], name: tp + "final.q")
        let k = g.op("Add", [keys, keyPE], name: tp + "final.k")
        let a = attention(g, t.finalAttnTokenToImage, q: q, k: k, v: keys, tp + "final_attn_token_to_image.")
        queries = ONNXEncoders.layerNorm(g, g.op("Add", [queries, a], name: tp + "final.residual"), t.normFinalAttn, tp + "norm_final_attn")

        let iouOut = g.reshape(g.slice(queries, starts: [0], ends: [1], axes: [1], name: p + "iou_token_out"), [1, C], name: p + "iou_token_flat")
        let maskOut = g.slice(queries, starts: [1], ends: [1 + M], axes: [1], name: p + "mask_tokens_out")   // (1, M, C)
        // output_upscaling on the image side: (1, C, h, w) → (1, C/8, 4h, 4w)
        let map = g.reshape(g.transpose(keys, [0, 2, 1], name: p + "src.channels_first"), [1, C, h, w], name: p + "src.map")
        var up = g.convTranspose(map, weight: md.upscaleConv1.weight.value, bias: md.upscaleConv1.bias?.value, name: p + "output_upscaling.0")
        up = g.gelu(ONNXEncoders.layerNorm2d(g, up, md.upscaleNorm, p + "output_upscaling.1"), name: p + "output_upscaling.2")
        up = g.convTranspose(up, weight: md.upscaleConv2.weight.value, bias: md.upscaleConv2.bias?.value, name: p + "output_upscaling.3")
        up = g.gelu(up, name: p + "output_upscaling.4")
        let D = md.upscaleConv2.outputChannels
        let hyper = (0..<M).map { i in
            let token = g.slice(maskOut, starts: [i], ends: [i + 1], axes: [1], name: p + "mask_token_\(i)")     // (1, 1, C)
            return mlp(g, token, md.outputHypernetworksMLPs[i], p + "output_hypernetworks_mlps.\(i).")         // (1, 1, D)
        }
        let hyperIn = g.op("Concat", hyper, [.int("axis", 1)], name: p + "hyper_in")                           // (1, M, D)
        let flat = g.reshape(up, [1, D, 16 * h * w], name: p + "upscaled.flat")
        let masks = g.reshape(g.op("MatMul", [hyperIn, flat], name: p + "masks.flat"), [1, M, 4 * h, 4 * w], name: p + "masks")
        let iou = mlp(g, iouOut, md.iouPredictionHead, p + "iou_prediction_head.")
        return (masks, iou)
    }

    /// TwoWayAttentionBlock: self-attention of the tokens, tokens → image, MLP, image → tokens.
    static func twoWayBlock(_ g: GraphBuilder, _ b: TwoWayAttentionBlock, queries: String, keys: String, queryPE: String,
                            keyPE: String, _ p: String) -> (String, String) {
        var queries = queries, keys = keys
        if b.skipFirstLayerPE {
            queries = attention(g, b.selfAttn, q: queries, k: queries, v: queries, p + "self_attn.")
        } else {
            let q = g.op("Add", [queries, queryPE], name: p + "self_attn.q")
            queries = g.op("Add", [queries, attention(g, b.selfAttn, q: q, k: q, v: queries, p + "self_attn.")], name: p + "self_attn.residual")
        }
        queries = ONNXEncoders.layerNorm(g, queries, b.norm1, p + "norm1")
        var q = g.op("Add", [queries, queryPE], name: p + "t2i.q")
        var k = g.op("Add", [keys, keyPE], name: p + "t2i.k")
        queries = g.op("Add", [queries, attention(g, b.crossAttnTokenToImage, q: q, k: k, v: keys, p + "cross_attn_token_to_image.")],
                       name: p + "t2i.residual")
        queries = ONNXEncoders.layerNorm(g, queries, b.norm2, p + "norm2")
        var m = ONNXEncoders.linear(g, queries, b.mlp.lin1, p + "mlp.lin1")
        m = b.mlp.activation == .relu ? g.relu(m, name: p + "mlp.act") : g.gelu(m, name: p + "mlp.act")
        m = ONNXEncoders.linear(g, m, b.mlp.lin2, p + "mlp.lin2")
        queries = ONNXEncoders.layerNorm(g, g.op("Add", [queries, m], name: p + "mlp.residual"), b.norm3, p + "norm3")
        q = g.op("Add", [queries, queryPE], name: p + "i2t.q")
        k = g.op("Add", [keys, keyPE], name: p + "i2t.k")
        keys = g.op("Add", [keys, attention(g, b.crossAttnImageToToken, q: k, k: q, v: queries, p + "cross_attn_image_to_token.")],
                    name: p + "i2t.residual")
        keys = ONNXEncoders.layerNorm(g, keys, b.norm4, p + "norm4")
        return (queries, keys)
    }

    /// MaskDecoderAttention: projections to the internal width, per-head softmax(q kᵀ / √d) v, out_proj.
    static func attention(_ g: GraphBuilder, _ a: MaskDecoderAttention, q: String, k: String, v: String, _ p: String) -> String {
        let H = a.heads, d = a.headDim
        func heads(_ x: String, _ l: Linear, _ n: String) -> String {
            let y = ONNXEncoders.linear(g, x, l, p + n)
            return g.transpose(g.reshape(y, [1, -1, H, d], name: p + n + ".heads"), [0, 2, 1, 3], name: p + n + ".per_head")
        }
        let qh = heads(q, a.qProj, "q_proj"), kh = heads(k, a.kProj, "k_proj"), vh = heads(v, a.vProj, "v_proj")
        let s = g.op("Div", [g.op("MatMul", [qh, g.transpose(kh, [0, 1, 3, 2], name: p + "k_transposed")], name: p + "scores"),
                             g.scalar(Float(d).squareRoot(), name: "sqrt_head_dim")], name: p + "scaled")
        let o = g.op("MatMul", [g.op("Softmax", [s], [.int("axis", -1)], name: p + "softmax"), vh], name: p + "attend")
        let merged = g.reshape(g.transpose(o, [0, 2, 1, 3], name: p + "heads_last"), [1, -1, H * d], name: p + "merge")
        return ONNXEncoders.linear(g, merged, a.outProj, p + "out_proj")
    }

    /// The mask decoder's MLP: Linear layers with ReLU between them (sigmoid after the last when set).
    static func mlp(_ g: GraphBuilder, _ x: String, _ m: MLP, _ p: String) -> String {
        var y = x
        for (i, l) in m.layers.enumerated() {
            y = ONNXEncoders.linear(g, y, l, p + "layers.\(i)")
            if i < m.layers.count - 1 { y = g.relu(y, name: p + "relu.\(i)") }
        }
        return m.sigmoidOutput ? g.op("Sigmoid", [y], name: p + "sigmoid") : y
    }

    /// `mask_postprocessing`: bilinear (half-pixel, as F.interpolate with align_corners=False) to
    /// S×S, crop to the resized image (longest side S, floor(· + 0.5)), bilinear to orig_im_size.
    static func postprocess(_ g: GraphBuilder, _ masks: String, originalSize: String, imageSize S: Int, maskCount M: Int) -> String {
        let p = "postprocess."
        let linear: [Attribute] = [.string("mode", "linear"), .string("coordinate_transformation_mode", "half_pixel")]
        let up = g.op("Resize", [masks, "", "", g.int64s([1, M, S, S], name: "sizes")], linear, name: p + "upscaled")
        let longest = g.op("ReduceMax", [originalSize], [.int("keepdims", 0)], name: p + "longest_side")
        let scale = g.op("Div", [g.scalar(Float(S), name: "image_size"), longest], name: p + "scale")
        let resized = g.op("Floor", [g.op("Add", [g.op("Mul", [scale, originalSize], name: p + "scaled_size"), g.scalar(0.5)],
                                          name: p + "scaled_size_rounding")], name: p + "prepadded_size_float")
        let int64 = Onnx_TensorProto.DataType.int64.rawValue
        let ends = g.op("Cast", [resized], [.int("to", int64)], name: p + "prepadded_size")
        let cropped = g.op("Slice", [up, g.int64s([0, 0], name: "starts"), ends, g.int64s([2, 3], name: "axes")], name: p + "cropped")
        let size = g.op("Cast", [originalSize], [.int("to", int64)], name: p + "original_size")
        let sizes = g.op("Concat", [g.int64s([1, M], name: "batch_masks"), size], [.int("axis", 0)], name: p + "sizes")
        return g.op("Resize", [cropped, "", "", sizes], linear, name: p + "masks")
    }
}

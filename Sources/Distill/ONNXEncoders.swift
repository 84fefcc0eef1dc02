import Foundation
import Layers
import ONNX
import SegmentAnything
import Tensor

// The image encoders as ONNX graphs (opset 17): a (1, 3, S, S) image, normalised and padded as SAM
// preprocesses it, → the embedding (1, C, S/16, S/16). Each function follows its Swift forward
// step by step (TinyViT.swift, ImageEncoderViT.swift, ConvStudent.swift, RepViT.swift and the layers they use),
// with BatchNorm folded into the convolution before it (running statistics: inference).
// Between transformer blocks the tokens (1, H·W, C) are kept as an NHWC grid (1, H, W, C);
// convolutions take NCHW. Initializers are named by checkpoint key (`image_encoder.…`).

enum ONNXEncoders {
    /// Adds `encoder` to `g` on `image`; returns the embedding's value name.
    static func build(_ encoder: any SAMImageEncoder, _ g: GraphBuilder, image: String) throws -> String {
        switch encoder {
        case let e as TinyViT: return tinyViT(e, g, image)
        case let e as ImageEncoderViT: return vit(e, g, image)
        case let e as ConvStudent: return convStudent(e, g, image)
        case let e as RepViT: return repViT(e, g, image)
        default: throw ExportError(file: "\(type(of: encoder))", reason: "no ONNX graph for this encoder type")
        }
    }

    // MARK: shared pieces

    /// Conv2d_BN with BatchNorm folded (`Conv2dBN.foldedParameters`).
    static func convBN(_ g: GraphBuilder, _ x: String, _ m: Conv2dBN, _ name: String) -> String {
        let (w, b) = m.foldedParameters()
        return g.conv(x, weight: w, bias: b, stride: m.conv.stride, padding: m.conv.padding, groups: m.conv.groups, name: name)
    }

    /// A bias-free Conv2d followed by its BatchNorm2d, folded as `Conv2dBN.foldedParameters` folds.
    static func convBN(_ g: GraphBuilder, _ x: String, _ conv: Conv2d, _ bn: BatchNorm2d, _ name: String) -> String {
        let O = conv.outputChannels, w = conv.weight.value, K = w.count / O
        var fw = Tensor.empty(w.shape)
        var fb = [Float](repeating: 0, count: O)
        for o in 0..<O {
            let s = bn.weight.value.data[o] / (bn.runningVar.value.data[o] + bn.eps).squareRoot()
            for i in 0..<K { fw.data[o * K + i] = w.data[o * K + i] * s }
            fb[o] = bn.bias.value.data[o] - bn.runningMean.value.data[o] * s
        }
        return g.conv(x, weight: fw, bias: fb, stride: conv.stride, padding: conv.padding, groups: conv.groups, name: name)
    }

    static func conv(_ g: GraphBuilder, _ x: String, _ c: Conv2d, _ name: String) -> String {
        g.conv(x, weight: c.weight.value, bias: c.bias?.value.data, stride: c.stride, padding: c.padding, groups: c.groups, name: name)
    }

    static func linear(_ g: GraphBuilder, _ x: String, _ l: Linear, _ name: String) -> String {
        g.linear(x, weight: l.weight.value, bias: l.bias?.value, name: name)
    }

    static func layerNorm(_ g: GraphBuilder, _ x: String, _ n: LayerNorm, _ name: String) -> String {
        g.layerNorm(x, weight: n.weight.value, bias: n.bias.value, eps: n.eps, name: name)
    }

    static func layerNorm2d(_ g: GraphBuilder, _ x: String, _ n: LayerNorm2d, _ name: String) -> String {
        g.layerNorm2d(x, weight: n.weight.value, bias: n.bias.value, eps: n.eps, name: name)
    }

    /// SAM's neck on NCHW: 1×1 conv, LayerNorm2d, 3×3 conv, LayerNorm2d.
    static func neck(_ g: GraphBuilder, _ x: String, _ n: EncoderNeck, _ p: String) -> String {
        var h = conv(g, x, n.conv1, p + "0")
        h = layerNorm2d(g, h, n.norm1, p + "1")
        h = conv(g, h, n.conv2, p + "2")
        return layerNorm2d(g, h, n.norm2, p + "3")
    }

    static func nchw(_ g: GraphBuilder, _ x: String, _ name: String) -> String { g.transpose(x, [0, 3, 1, 2], name: name) }
    static func nhwc(_ g: GraphBuilder, _ x: String, _ name: String) -> String { g.transpose(x, [0, 2, 3, 1], name: name) }

    /// `windowPartition` (Windows.swift) of a (1, H, W, C) grid: zero padding at the bottom and
    /// right to multiples of ws, then (nH·nW, ws, ws, C) windows in row-major window order.
    static func windows(_ g: GraphBuilder, _ x: String, height H: Int, width W: Int, channels C: Int, window ws: Int,
                        _ name: String) -> String {
        let nH = (H + ws - 1) / ws, nW = (W + ws - 1) / ws
        var p = x
        if nH * ws != H || nW * ws != W {
            p = g.op("Pad", [x, g.int64s([0, 0, 0, 0, 0, nH * ws - H, nW * ws - W, 0], name: "pads")], name: name + ".pad")
        }
        let r = g.reshape(p, [1, nH, ws, nW, ws, C], name: name + ".split")
        return g.reshape(g.transpose(r, [0, 1, 3, 2, 4, 5], name: name + ".order"), [nH * nW, ws, ws, C], name: name + ".windows")
    }

    /// `windowReverse`: (nH·nW, ws, ws, C) windows → the (1, H, W, C) grid, padding dropped.
    static func unwindows(_ g: GraphBuilder, _ x: String, height H: Int, width W: Int, channels C: Int, window ws: Int,
                          _ name: String) -> String {
        let nH = (H + ws - 1) / ws, nW = (W + ws - 1) / ws
        let r = g.reshape(x, [1, nH, nW, ws, ws, C], name: name + ".split")
        let m = g.reshape(g.transpose(r, [0, 1, 3, 2, 4, 5], name: name + ".order"), [1, nH * ws, nW * ws, C], name: name + ".grid")
        if nH * ws == H && nW * ws == W { return m }
        return g.slice(m, starts: [0, 0], ends: [H, W], axes: [1, 2], name: name + ".crop")
    }

    // MARK: TinyViT (MobileSAM)

    static func tinyViT(_ m: TinyViT, _ g: GraphBuilder, _ image: String) -> String {
        let p = "image_encoder.", S = m.config.imageSize, N = m.config.networkSize
        let input = N == S ? image : resample(g, image, from: S, to: N, name: p + "input_resize")  // (1, 3, N, N)
        var x = convBN(g, input, m.patchEmbed.conv1, p + "patch_embed.seq.0")
        x = g.gelu(x, name: p + "patch_embed.seq.1")
        x = convBN(g, x, m.patchEmbed.conv2, p + "patch_embed.seq.2")          // (1, C0, S/4, S/4)
        for (i, b) in m.convStage.blocks.enumerated() { x = mbConv(g, x, b, p + "layers.0.blocks.\(i).") }
        if let d = m.convStage.downsample { x = patchMerging(g, x, d, p + "layers.0.downsample.") }
        x = nhwc(g, x, p + "layers.1.grid")                                    // (1, H1, W1, C1)
        for (i, s) in m.stages.enumerated() {
            let sp = p + "layers.\(i + 1)."
            for (j, b) in s.blocks.enumerated() { x = tinyViTBlock(g, x, b, sp + "blocks.\(j).") }
            if let d = s.downsample {
                x = nhwc(g, patchMerging(g, nchw(g, x, sp + "downsample.map"), d, sp + "downsample."), sp + "downsample.grid")
            }
        }
        let y = neck(g, nchw(g, x, p + "neck.map"), m.neck, p + "neck.")       // (1, 256, N/16, N/16)
        let R = m.config.stageResolutions.last!, O = m.outputResolution
        return R == O ? y : resample(g, y, from: R, to: O, name: p + "output_resize")  // (1, 256, S/16, S/16)
    }

    /// `BilinearResample` of a square (1, C, n, n) map to (1, C, m, m), one axis at a time, from its
    /// tap table (m outputs × K taps): Gather the K source columns of every output, weight, sum
    /// (opset 17's Resize has no antialiasing; a dense matrix would cost m·n per row instead of m·K).
    static func resample(_ g: GraphBuilder, _ x: String, from n: Int, to m: Int, name: String) -> String {
        let t = BilinearResample.Taps(input: n, output: m)
        let indices = g.int64s(t.indices, shape: [m, t.width], name: name + ".taps")
        let last = g.int64s([-1], name: name + ".axes")
        // across: (1, C, n, n) → (1, C, n, m, K) → (1, C, n, m)
        let gathered = g.op("Gather", [x, indices], [.int("axis", 3)], name: name + ".across_taps")
        let weighted = g.op("Mul", [gathered, g.constant(t.weights, shape: [m, t.width], name: name + ".across_weights")],
                            name: name + ".across_weighted")
        let across = g.op("ReduceSum", [weighted, last], [.int("keepdims", 0)], name: name + ".across")
        // down: (1, C, n, m) → (1, C, m, K, m) → (1, C, m, m)
        let rows = g.op("Gather", [across, indices], [.int("axis", 2)], name: name + ".down_taps")
        let weightedRows = g.op("Mul", [rows, g.constant(t.weights, shape: [m, t.width, 1], name: name + ".down_weights")],
                                name: name + ".down_weighted")
        return g.op("ReduceSum", [weightedRows, g.int64s([3], name: name + ".down_axes")], [.int("keepdims", 0)], name: name)
    }

    /// MBConv: 1×1 expand, GELU, 3×3 depthwise, GELU, 1×1 project, + x, GELU (NCHW).
    static func mbConv(_ g: GraphBuilder, _ x: String, _ b: MBConv, _ p: String) -> String {
        var h = g.gelu(convBN(g, x, b.conv1, p + "conv1"), name: p + "act1")
        h = g.gelu(convBN(g, h, b.conv2, p + "conv2"), name: p + "act2")
        h = convBN(g, h, b.conv3, p + "conv3")
        return g.gelu(g.op("Add", [h, x], name: p + "residual"), name: p + "act3")
    }

    /// PatchMerging on an NCHW map → NCHW map (the Swift layer flattens to tokens afterwards).
    static func patchMerging(_ g: GraphBuilder, _ x: String, _ d: PatchMerging, _ p: String) -> String {
        var h = g.gelu(convBN(g, x, d.conv1, p + "conv1"), name: p + "act1")
        h = g.gelu(convBN(g, h, d.conv2, p + "conv2"), name: p + "act2")
        return convBN(g, h, d.conv3, p + "conv3")
    }

    /// TinyViTBlock on the (1, H, W, C) grid: x + attn(windows(x)), local conv, + MLP.
    static func tinyViTBlock(_ g: GraphBuilder, _ x: String, _ b: TinyViTBlock, _ p: String) -> String {
        let H = b.height, W = b.width, C = b.dim, ws = b.windowSize
        let a: String
        if H == ws && W == ws {
            let t = g.reshape(x, [1, H * W, C], name: p + "tokens")
            a = g.reshape(tinyViTAttention(g, t, b.attn, p + "attn."), [1, H, W, C], name: p + "attn.grid")
        } else {
            let w = windows(g, x, height: H, width: W, channels: C, window: ws, p + "attn")
            let n = (H + ws - 1) / ws * ((W + ws - 1) / ws)
            let t = tinyViTAttention(g, g.reshape(w, [n, ws * ws, C], name: p + "attn.tokens"), b.attn, p + "attn.")
            a = unwindows(g, t, height: H, width: W, channels: C, window: ws, p + "attn.reverse")
        }
        let h = g.op("Add", [x, a], name: p + "attn.residual")
        let c = nhwc(g, convBN(g, nchw(g, h, p + "local_conv.map"), b.localConv, p + "local_conv"), p + "local_conv.grid")
        var y = layerNorm(g, c, b.mlp.norm, p + "mlp.norm")
        y = linear(g, y, b.mlp.fc1, p + "mlp.fc1")
        y = linear(g, g.gelu(y, name: p + "mlp.act"), b.mlp.fc2, p + "mlp.fc2")
        return g.op("Add", [c, y], name: p + "mlp.residual")
    }

    /// TinyViT's attention on (B', N, C): LayerNorm, qkv, per head softmax(q kᵀ · keyDim^-½ +
    /// attention_biases[h, idx]) v, proj.
    static func tinyViTAttention(_ g: GraphBuilder, _ x: String, _ a: TinyViTAttention, _ p: String) -> String {
        let N = a.tokens, H = a.heads, kd = a.keyDim, d = a.valueDim
        let t = linear(g, layerNorm(g, x, a.norm, p + "norm"), a.qkv, p + "qkv")            // (B', N, H·(2kd + d))
        let heads = g.transpose(g.reshape(t, [-1, N, H, 2 * kd + d], name: p + "qkv.heads"), [0, 2, 1, 3], name: p + "qkv.per_head")
        let qkv = g.op("Split", [heads, g.int64s([kd, kd, d], name: "split")], [.int("axis", 3)], outputs: 3, name: p + "qkv.split")
        let kT = g.transpose(qkv[1], [0, 1, 3, 2], name: p + "k_transposed")
        var s = g.op("Mul", [g.op("MatMul", [qkv[0], kT], name: p + "scores"), g.scalar(a.scale, name: "scale")], name: p + "scaled")
        // attention_biases (H, offsets) gathered by the (N, N) offset index → (H, N, N)
        let idx = g.int64s(a.biasIndices.map(Int.init), shape: [N, N], name: p + "attention_bias_idxs")
        let bias = g.op("Gather", [g.weight(p + "attention_biases", a.attentionBiases.value), idx], [.int("axis", 1)], name: p + "bias")
        s = g.op("Add", [s, bias], name: p + "biased")
        let o = g.op("MatMul", [g.op("Softmax", [s], [.int("axis", -1)], name: p + "softmax"), qkv[2]], name: p + "attend")
        let merged = g.reshape(g.transpose(o, [0, 2, 1, 3], name: p + "heads_last"), [-1, N, H * d], name: p + "merge")
        return linear(g, merged, a.proj, p + "proj")
    }

    // MARK: SAM ViT

    static func vit(_ m: ImageEncoderViT, _ g: GraphBuilder, _ image: String) -> String {
        let p = "image_encoder."
        var x = nhwc(g, conv(g, image, m.patchEmbed.proj, p + "patch_embed.proj"), p + "patch_embed.grid")  // (1, G, G, C)
        if let pos = m.positionEmbedding { x = g.op("Add", [x, g.weight(p + "pos_embed", pos.value)], name: p + "pos_embed.add") }
        let G = m.config.gridSize
        for (i, b) in m.blocks.enumerated() { x = vitBlock(g, x, b, grid: G, p + "blocks.\(i).") }
        return neck(g, nchw(g, x, p + "neck.map"), m.neck, p + "neck.")
    }

    /// ViT block: x + attn(norm1(x)) (windowed or global), + mlp(norm2(·)).
    static func vitBlock(_ g: GraphBuilder, _ x: String, _ b: ViTBlock, grid G: Int, _ p: String) -> String {
        let C = b.dim, ws = b.windowSize
        let xn = layerNorm(g, x, b.norm1, p + "norm1")
        let a: String
        if ws > 0 {
            let w = windows(g, xn, height: G, width: G, channels: C, window: ws, p + "attn")
            let n = (G + ws - 1) / ws * ((G + ws - 1) / ws)
            a = unwindows(g, vitAttention(g, w, b.attn, batch: n, height: ws, width: ws, p + "attn."),
                          height: G, width: G, channels: C, window: ws, p + "attn.reverse")
        } else {
            a = vitAttention(g, xn, b.attn, batch: 1, height: G, width: G, p + "attn.")
        }
        let x1 = g.op("Add", [x, a], name: p + "attn.residual")
        var y = linear(g, layerNorm(g, x1, b.norm2, p + "norm2"), b.mlp.lin1, p + "mlp.lin1")
        y = linear(g, g.gelu(y, name: p + "mlp.act"), b.mlp.lin2, p + "mlp.lin2")
        return g.op("Add", [x1, y], name: p + "mlp.residual")
    }

    /// SAM's ViT attention on (B', h, w, C) with decomposed relative positions:
    /// S = (q·scale) kᵀ + rel_h + rel_w, rel_h[(qh, qw), (kh, ·)] = q · rel_pos_h[qh − kh + h − 1],
    /// rel_w[(qh, qw), (·, kw)] = q · rel_pos_w[qw − kw + w − 1] (q unscaled).
    static func vitAttention(_ g: GraphBuilder, _ x: String, _ a: ViTAttention, batch B: Int, height h: Int, width w: Int,
                             _ p: String) -> String {
        let C = a.dim, nh = a.heads, d = a.headDim, N = h * w, BH = B * nh
        let t = linear(g, x, a.qkv, p + "qkv")                                                  // (B', h, w, 3C)
        let r = g.transpose(g.reshape(t, [B, N, 3, nh, d], name: p + "qkv.heads"), [2, 0, 3, 1, 4], name: p + "qkv.per_head")
        let qkv = g.op("Split", [g.reshape(r, [3, BH, N, d], name: p + "qkv.stack"), g.int64s([1, 1, 1], name: "split")],
                       [.int("axis", 0)], outputs: 3, name: p + "qkv.split")
        let q = g.reshape(qkv[0], [BH, N, d], name: p + "q"), k = g.reshape(qkv[1], [BH, N, d], name: p + "k")
        let v = g.reshape(qkv[2], [BH, N, d], name: p + "v")
        let qs = g.op("Mul", [q, g.scalar(1 / Float(d).squareRoot(), name: "scale")], name: p + "q_scaled")
        var s = g.op("MatMul", [qs, g.transpose(k, [0, 2, 1], name: p + "k_transposed")], name: p + "scores")  // (BH, N, N)
        if a.useRelPos, let rh = a.relPosH, let rw = a.relPosW {
            func table(_ t: Tensor, _ n: Int, _ key: String) -> String {
                // (n, n, d) gathered by q − k + n − 1, transposed to (n, d, n) for MatMul
                let idx = g.int64s((0..<n * n).map { $0 / n - $0 % n + n - 1 }, shape: [n, n], name: p + key + "_idx")
                let r = g.op("Gather", [g.weight(p + key, t), idx], [.int("axis", 0)], name: p + key + "_gathered")
                return g.transpose(r, [0, 2, 1], name: p + key + "_transposed")
            }
            let rq = g.reshape(q, [BH, h, w, d], name: p + "q_grid")
            let relH = g.op("MatMul", [rq, table(rh.value, h, "rel_pos_h")], name: p + "rel_h")  // (BH, h, w, kh)
            let rqT = g.transpose(rq, [0, 2, 1, 3], name: p + "q_grid_transposed")               // (BH, w, h, d)
            let relW = g.transpose(g.op("MatMul", [rqT, table(rw.value, w, "rel_pos_w")], name: p + "rel_w_t"),
                                   [0, 2, 1, 3], name: p + "rel_w")                               // (BH, h, w, kw)
            let s5 = g.reshape(s, [BH, h, w, h, w], name: p + "scores_grid")
            let withH = g.op("Add", [s5, g.reshape(relH, [BH, h, w, h, 1], name: p + "rel_h_b")], name: p + "scores_rel_h")
            let withW = g.op("Add", [withH, g.reshape(relW, [BH, h, w, 1, w], name: p + "rel_w_b")], name: p + "scores_rel_w")
            s = g.reshape(withW, [BH, N, N], name: p + "scores_rel")
        }
        let o = g.op("MatMul", [g.op("Softmax", [s], [.int("axis", -1)], name: p + "softmax"), v], name: p + "attend")
        let merged = g.reshape(g.transpose(g.reshape(o, [B, nh, h, w, d], name: p + "o_heads"), [0, 2, 3, 1, 4], name: p + "o_order"),
                               [B, h, w, C], name: p + "merge")
        return linear(g, merged, a.proj, p + "proj")
    }

    // MARK: conv student

    static func convStudent(_ m: ConvStudent, _ g: GraphBuilder, _ image: String) -> String {
        let p = "image_encoder."
        var x = g.relu(convBN(g, image, m.stemConv, m.stemBN, p + "stem"), name: p + "stem.relu")
        for (i, s) in m.stages.enumerated() {
            for (j, b) in s.enumerated() {
                let bp = p + "layers.\(i).\(j)."
                let a = g.relu(convBN(g, x, b.conv1, b.bn1, bp + "conv1"), name: bp + "relu1")
                let h = convBN(g, a, b.conv2, b.bn2, bp + "conv2")
                let shortcut = b.downsample.map { convBN(g, x, $0.conv, $0.bn, bp + "downsample") } ?? x
                x = g.relu(g.op("Add", [h, shortcut], name: bp + "residual"), name: bp + "relu2")
            }
        }
        for (k, u) in m.upsample.enumerated() {
            x = g.relu(g.convTranspose(x, weight: u.weight.value, bias: u.bias?.value, name: p + "up.\(2 * k)"), name: p + "up.\(2 * k + 1)")
        }
        return conv(g, x, m.head, p + "head")
    }

    // MARK: RepViT

    /// A Conv2d_BN or its fused conv, as one Conv (`RepConv.foldedParameters`).
    static func repConv(_ g: GraphBuilder, _ x: String, _ c: RepConv, _ name: String) -> String {
        let (w, b) = c.foldedParameters(), k = c.conv
        return g.conv(x, weight: w, bias: b, stride: k.stride, padding: k.padding, groups: k.groups, name: name)
    }

    /// timm's SqueezeExcite: x · σ(fc2(ReLU(fc1(mean_HW(x))))).
    static func squeezeExcite(_ g: GraphBuilder, _ x: String, _ se: SqueezeExcite, _ p: String) -> String {
        let s = g.op("GlobalAveragePool", [x], name: p + "pool")
        let h = g.relu(conv(g, s, se.fc1, p + "fc1"), name: p + "act")
        let a = g.op("Sigmoid", [conv(g, h, se.fc2, p + "fc2")], name: p + "gate")
        return g.op("Mul", [x, a], name: p + "scale")
    }

    /// EdgeSAM's RepViT, structurally re-parameterised whatever form `m` is in: every Conv2d_BN
    /// and every RepVGGDW one Conv; the stage-3 upsampling is Resize (cubic, A = −0.75,
    /// pytorch_half_pixel: PyTorch's bicubic with align_corners=False).
    static func repViT(_ m: RepViT, _ g: GraphBuilder, _ image: String) -> String {
        let p = "image_encoder."
        let stem = g.gelu(repConv(g, image, m.stem.conv1, p + "features.0.0"), name: p + "features.0.1")
        var x = repConv(g, stem, m.stem.conv2, p + "features.0.2"), s2 = x
        for (i, b) in m.blocks.enumerated() {
            let bp = p + "features.\(i + 1)."
            var t: String
            if let mixer = b.mixer {
                let (w, bias) = mixer.foldedParameters()
                t = g.conv(x, weight: w, bias: bias, stride: 1, padding: 1, groups: mixer.channels, name: bp + "token_mixer.0")
            } else {
                t = repConv(g, x, b.downsample!.depthwise, bp + "token_mixer.0")
            }
            if let se = b.se { t = squeezeExcite(g, t, se, bp + "token_mixer.1.") }
            if let d = b.downsample { t = repConv(g, t, d.pointwise, bp + "token_mixer.2") }
            let h = g.gelu(repConv(g, t, b.expand, bp + "channel_mixer.m.0"), name: bp + "channel_mixer.m.1")
            x = g.op("Add", [repConv(g, h, b.project, bp + "channel_mixer.m.2"), t], name: bp + "channel_mixer")
            if i == m.stage2End { s2 = x }
        }
        let f2 = conv(g, s2, m.fusion.fuseStage2, p + "fuse_stage2")
        let f3 = g.op("Resize", [conv(g, x, m.fusion.fuseStage3, p + "fuse_stage3.op_list.0"), "",
                                 g.constant([1, 1, 2, 2], shape: [4], name: p + "fuse_stage3.scales")],
                      [.string("mode", "cubic"), .float("cubic_coeff_a", -0.75),
                       .string("coordinate_transformation_mode", "pytorch_half_pixel")], name: p + "fuse_stage3.op_list.1")
        return neck(g, g.op("Add", [f2, f3], name: p + "fuse"), m.fusion.neck, p + "neck.")
    }
}

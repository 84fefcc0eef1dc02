import Foundation
import Layers
import Tensor

/// Architecture of a TinyViT image encoder (MobileSAM's `TinyViT`, tiny_vit_sam.py). Codable with
/// snake_case keys so configs and export metadata read naturally.
public struct TinyViTConfig: Codable, Equatable, Sendable {
    public var imageSize: Int = 1024
    public var inputChannels: Int = 3
    public var embedDims: [Int] = [64, 128, 160, 320]
    public var depths: [Int] = [2, 2, 6, 2]
    public var numHeads: [Int] = [2, 4, 5, 10]
    public var windowSizes: [Int] = [7, 7, 14, 7]
    /// Stride of each PatchMerging between stages (count = stages − 1). MobileSAM: [2, 2, 1]
    /// (the reference uses stride 1 into a 320/448/576-wide stage, 2 otherwise).
    public var mergeStrides: [Int]? = nil
    public var mlpRatio: Float = 4
    /// MLP ratio of each stage (entry 0, the MBConv stage, unused, as `numHeads[0]`); nil: `mlpRatio`
    /// everywhere. A width-pruned student narrows its MLPs here (`DepthPruning` keeps the teacher's
    /// most important hidden units).
    public var mlpRatios: [Float]? = nil
    public var mbconvExpandRatio: Float = 4
    public var localConvSize: Int = 3
    public var neckChannels: Int = 256
    /// A reduced-resolution encoder: the (imageSize)² input is resized (antialiased bilinear) to
    /// this side, the network runs there, and its embedding grid is resized back up to the one a
    /// full-size input gives (64 for 1024). nil: the network runs at `imageSize`. The cost falls
    /// with the square of the side (672: 43%) and every weight of a full-size encoder still fits.
    public var inputResize: Int? = nil

    enum CodingKeys: String, CodingKey {
        case imageSize = "image_size", inputChannels = "input_channels", embedDims = "embed_dims", depths
        case numHeads = "num_heads", windowSizes = "window_sizes", mergeStrides = "merge_strides"
        case mlpRatio = "mlp_ratio", mlpRatios = "mlp_ratios", mbconvExpandRatio = "mbconv_expand_ratio"
        case localConvSize = "local_conv_size", neckChannels = "neck_channels", inputResize = "input_resize"
    }

    public init() {}

    /// MobileSAM's encoder (TinyViT-5M at 1024×1024).
    public static let mobileSAM = TinyViTConfig()

    /// The merge strides in effect: explicit, or the reference's rule.
    public var resolvedMergeStrides: [Int] {
        mergeStrides ?? (1..<embedDims.count).map { PatchMerging.referenceStride(outputDim: embedDims[$0]) }
    }

    /// MLP hidden width of the blocks of transformer stage `stage` (≥ 1).
    public func mlpHidden(stage: Int) -> Int {
        Int(Float(embedDims[stage]) * (mlpRatios?[stage] ?? mlpRatio))
    }

    /// The side the network runs at: `inputResize`, or `imageSize`.
    public var networkSize: Int { inputResize ?? imageSize }

    /// Token grid of each stage at `networkSize`: the patch embedding divides by 4, each merge by its stride.
    public var stageResolutions: [Int] { stageResolutions(networkSize) }

    func stageResolutions(_ side: Int) -> [Int] {
        var r = [side / 4]
        for s in resolvedMergeStrides { r.append((r.last! + s - 1) / s) }
        return r
    }

    /// The embedding grid's side: the last stage's at `imageSize` (64 for 1024), whatever `inputResize`.
    public var outputResolution: Int { stageResolutions(imageSize).last! }

    /// Problems with this configuration, each naming its key (empty when valid).
    public func problems() -> [String] {
        var p: [String] = []
        let n = embedDims.count
        if n < 2 { p.append("embed_dims: needs at least two stages (an MBConv stage and a transformer stage)") }
        if depths.count != n { p.append("depths: \(depths.count) entries for \(n) stages") }
        if numHeads.count != n { p.append("num_heads: \(numHeads.count) entries for \(n) stages") }
        if windowSizes.count != n { p.append("window_sizes: \(windowSizes.count) entries for \(n) stages") }
        if let m = mergeStrides, m.count != n - 1 { p.append("merge_strides: \(m.count) entries for \(n - 1) merges") }
        if let m = mergeStrides, m.contains(where: { $0 != 1 && $0 != 2 }) { p.append("merge_strides: each must be 1 or 2") }
        if imageSize % 4 != 0 { p.append("image_size: \(imageSize) is not a multiple of 4") }
        if let r = inputResize, r % 4 != 0 || r < 32 || r > imageSize {
            p.append("input_resize: \(r) must be a multiple of 4 in 32...image_size (\(imageSize))")
        }
        for i in 1..<max(n, 2) where i < numHeads.count && i < embedDims.count {
            if numHeads[i] < 1 || embedDims[i] % numHeads[i] != 0 {
                p.append("num_heads[\(i)]: embed_dims[\(i)] = \(embedDims[i]) is not divisible by \(numHeads[i]) heads")
            }
        }
        if depths.contains(where: { $0 < 0 }) { p.append("depths: negative depth") }
        if windowSizes.contains(where: { $0 < 1 }) { p.append("window_sizes: must be positive") }
        if let r = mlpRatios, r.count != n { p.append("mlp_ratios: \(r.count) entries for \(n) stages") }
        if let r = mlpRatios, r.count == n, embedDims.count == n,
           (1..<max(n, 1)).contains(where: { Int(Float(embedDims[$0]) * r[$0]) < 1 }) {
            p.append("mlp_ratios: every transformer stage needs at least one hidden unit")
        }
        return p
    }
}

/// Stage 0 of TinyViT (`ConvLayer`): MBConv blocks on (B, C, H, W), then a PatchMerging into
/// stage 1 (tokens). Keys `blocks.N.*`, `downsample.*`.
public final class TinyViTConvStage: Module {
    public let blocks: [MBConv]
    public let downsample: PatchMerging?

    init(dim: Int, resolution: Int, depth: Int, expandRatio: Float, outDim: Int, mergeStride: Int?) {
        blocks = (0..<depth).map { _ in MBConv(inputChannels: dim, outputChannels: dim, expandRatio: expandRatio) }
        downsample = mergeStride.map {
            PatchMerging(inputResolution: (resolution, resolution), dim: dim, outputDim: outDim, stride: $0)
        }
    }

    public func namedParameters() -> [(String, Parameter)] {
        var p: [(String, Parameter)] = []
        for (i, b) in blocks.enumerated() { p += prefixed("blocks.\(i).", b) }
        if let downsample { p += prefixed("downsample.", downsample) }
        return p
    }
}

/// Stages 1… of TinyViT (`BasicLayer`): TinyViT blocks on tokens (B, L, C), then an optional
/// PatchMerging. Keys `blocks.N.*`, `downsample.*`.
public final class TinyViTStage: Module {
    public let blocks: [TinyViTBlock]
    public let downsample: PatchMerging?

    init(dim: Int, resolution: Int, depth: Int, heads: Int, window: Int, mlpHidden: Int, localConvSize: Int,
         outDim: Int, mergeStride: Int?) {
        blocks = (0..<depth).map { _ in
            TinyViTBlock(dim: dim, resolution: (resolution, resolution), heads: heads, windowSize: window,
                         mlpHidden: mlpHidden, localConvSize: localConvSize)
        }
        downsample = mergeStride.map {
            PatchMerging(inputResolution: (resolution, resolution), dim: dim, outputDim: outDim, stride: $0)
        }
    }

    public func namedParameters() -> [(String, Parameter)] {
        var p: [(String, Parameter)] = []
        for (i, b) in blocks.enumerated() { p += prefixed("blocks.\(i).", b) }
        if let downsample { p += prefixed("downsample.", downsample) }
        return p
    }
}

/// MobileSAM's image encoder: TinyViT + the SAM neck, (B, 3, S, S) → (B, 256, S/16, S/16).
/// Checkpoint keys (relative to `image_encoder.`): `patch_embed.*`, `layers.0.*` (conv stage),
/// `layers.N.*`, `neck.*`. The classification head (`norm_head.*`, `head.*`) is not part of the
/// encoder and is ignored when loading (`TinyViT.ignoredKeys`).
public final class TinyViT: Module {
    public let config: TinyViTConfig
    public let patchEmbed: PatchEmbed
    public let convStage: TinyViTConvStage
    public let stages: [TinyViTStage]
    public let neck: EncoderNeck

    public static func ignoredKeys(_ key: String) -> Bool {
        key.hasPrefix("norm_head.") || key.hasPrefix("head.") || key.hasSuffix("num_batches_tracked")
    }

    public init(_ config: TinyViTConfig) {
        let problems = config.problems()
        precondition(problems.isEmpty, "TinyViT config: " + problems.joined(separator: "; "))
        self.config = config
        let dims = config.embedDims, res = config.stageResolutions, strides = config.resolvedMergeStrides
        let n = dims.count
        patchEmbed = PatchEmbed(inputChannels: config.inputChannels, embedDim: dims[0])
        convStage = TinyViTConvStage(dim: dims[0], resolution: res[0], depth: config.depths[0],
                                     expandRatio: config.mbconvExpandRatio, outDim: dims[min(1, n - 1)],
                                     mergeStride: n > 1 ? strides[0] : nil)
        stages = (1..<n).map { i in
            TinyViTStage(dim: dims[i], resolution: res[i], depth: config.depths[i], heads: config.numHeads[i],
                         window: config.windowSizes[i], mlpHidden: config.mlpHidden(stage: i),
                         localConvSize: config.localConvSize, outDim: dims[min(i + 1, n - 1)],
                         mergeStride: i < n - 1 ? strides[i] : nil)
        }
        neck = EncoderNeck(inputChannels: dims[n - 1], outputChannels: config.neckChannels)
    }

    /// Leading units kept frozen in training: 0 none, 1 `patch_embed`, 2 also `layers.0`, k also
    /// `layers.0` … `layers.(k−2)`. Frozen units always run as in inference (BatchNorm running
    /// statistics, no activations kept) and `backward` stops before them, so their gradients stay
    /// zero and nothing is spent on them; the trainer leaves their parameters out of the optimiser.
    public var frozenUnits = 0 {
        didSet { precondition((0...stages.count + 1).contains(frozenUnits), "TinyViT: frozenUnits \(frozenUnits) out of 0...\(stages.count + 1)") }
    }

    /// Checkpoint-key prefixes of the units, in order (`patch_embed.`, `layers.0.`, …): what `frozenUnits` counts.
    public var unitPrefixes: [String] { ["patch_embed."] + (0...stages.count).map { "layers.\($0)." } }

    public func namedParameters() -> [(String, Parameter)] {
        var p = prefixed("patch_embed.", patchEmbed) + prefixed("layers.0.", convStage)
        for (i, s) in stages.enumerated() { p += prefixed("layers.\(i + 1).", s) }
        return p + prefixed("neck.", neck)
    }

    /// Output grid side (64 for 1024×1024 inputs, with or without `inputResize`).
    public var outputResolution: Int { config.outputResolution }

    /// Stage taps for intermediate-feature distillation: with `recordsStageOutputs`, `forward`
    /// keeps the output of every stage unit (layers.0 … layers.N, downsample included, as tokens
    /// (B, L, C)) in `stageOutputs`; `backward` adds `stageGradients[k]` (when present) to the
    /// gradient arriving at output k, then clears them. A depth-pruned student and its teacher
    /// have the same stage outputs' shapes.
    public var recordsStageOutputs = false
    public private(set) var stageOutputs: [Tensor] = []
    public var stageGradients: [Tensor?] = []

    /// image: (B, 3, S, S) normalised and padded -> embedding (B, neck, S/16, S/16)
    public func forward(_ image: Tensor, mode: ForwardMode) -> Tensor {
        let S = config.imageSize, N = config.networkSize
        precondition(image.rank == 4 && image.shape[1] == config.inputChannels && image.shape[2] == S && image.shape[3] == S,
                     "TinyViT: expected (B, \(config.inputChannels), \(S), \(S)), got \(image.shape)")
        let B = image.shape[0]
        func unitMode(_ u: Int) -> ForwardMode { u < frozenUnits ? .inference : mode }
        stageOutputs = []
        // input: (B, 3, N, N), the image at the network's side
        let input = N == S ? image : BilinearResample.forward(image, height: N, width: N)
        var x = patchEmbed.forward(input, mode: unitMode(0))            // (B, C0, N/4, N/4)
        for b in convStage.blocks { x = b.forward(x, mode: unitMode(1)) }
        if let d = convStage.downsample { x = d.forward(x, mode: unitMode(1)) }  // (B, L1, C1)
        if recordsStageOutputs { stageOutputs.append(x) }
        for (i, s) in stages.enumerated() {
            for b in s.blocks { x = b.forward(x, mode: unitMode(i + 2)) }
            if let d = s.downsample { x = d.forward(x, mode: unitMode(i + 2)) }
            if recordsStageOutputs { stageOutputs.append(x) }
        }
        let R = config.stageResolutions.last!, C = config.embedDims.last!, O = outputResolution
        // tokens (B, R·R, C) -> (B, C, R, R)
        precondition(x.shape == [B, R * R, C], "TinyViT: last stage gives \(x.shape), expected \([B, R * R, C])")
        let y = neck.forward(ConvLayout.tokensToMap(x, height: R, width: R), mode: mode)  // (B, neck, R, R)
        return R == O ? y : BilinearResample.forward(y, height: O, width: O)               // (B, neck, O, O)
    }

    /// dEmbedding: (B, neck, R, R) -> dImage: (B, 3, S, S); accumulates every parameter gradient.
    /// With `frozenUnits` > 0 it stops before the frozen units and returns an empty tensor (shape [0]);
    /// so it does with `imageGradient: false` (training: the first conv's input gradient is skipped).
    @discardableResult
    public func backward(_ dy: Tensor, imageGradient: Bool = true) -> Tensor {
        let extra = stageGradients
        stageGradients = []
        func addStageGradient(_ k: Int, _ g: inout Tensor) {
            if k < extra.count, let e = extra[k] { g.add(e) }
        }
        let R = config.stageResolutions.last!, S = config.imageSize
        let dNeck = R == outputResolution ? dy : BilinearResample.backward(dy, height: R, width: R)  // (B, neck, R, R)
        var g = ConvLayout.mapToTokens(neck.backward(dNeck))  // (B, L, C)
        for (i, s) in stages.enumerated().reversed() {
            if i + 2 < frozenUnits { return Tensor(zeros: [0]) }
            addStageGradient(i + 1, &g)
            if let d = s.downsample { g = d.backward(g) }
            for b in s.blocks.reversed() { g = b.backward(g) }
        }
        if frozenUnits > 1 { return Tensor(zeros: [0]) }
        addStageGradient(0, &g)
        if let d = convStage.downsample { g = d.backward(g) }
        for b in convStage.blocks.reversed() { g = b.backward(g) }
        if frozenUnits > 0 { return Tensor(zeros: [0]) }
        let dInput = patchEmbed.backward(g, inputGradient: imageGradient)  // (B, 3, N, N) or empty
        return config.networkSize == S || !imageGradient ? dInput : BilinearResample.backward(dInput, height: S, width: S)
    }
}

extension TinyViT {
    /// Multiply-accumulates of one image's forward pass (convolutions, linears and attention
    /// products; norms, activations and softmax excluded).
    public var multiplyAccumulates: Int {
        let m = self, c = config
        var macs = 0
        func conv(_ layer: Conv2d, outputSide: Int) {
            macs += outputSide * outputSide * layer.outputChannels * (layer.inputChannels / layer.groups) * layer.kernelSize * layer.kernelSize
        }
        var side = c.networkSize
        side = m.patchEmbed.conv1.conv.outputSize(height: side, width: side).height
        conv(m.patchEmbed.conv1.conv, outputSide: side)
        side = m.patchEmbed.conv2.conv.outputSize(height: side, width: side).height
        conv(m.patchEmbed.conv2.conv, outputSide: side)
        for b in m.convStage.blocks {
            conv(b.conv1.conv, outputSide: side); conv(b.conv2.conv, outputSide: side); conv(b.conv3.conv, outputSide: side)
        }
        func merge(_ d: PatchMerging) {
            conv(d.conv1.conv, outputSide: side)
            side = d.outputResolution.height
            conv(d.conv2.conv, outputSide: side); conv(d.conv3.conv, outputSide: side)
        }
        if let d = m.convStage.downsample { merge(d) }
        for s in m.stages {
            for b in s.blocks {
                let L = side * side, C = b.dim, a = b.attn
                let w = b.windowSize
                let windows = ((side + w - 1) / w) * ((side + w - 1) / w)
                let N = a.tokens
                macs += L * C * a.qkv.outputFeatures + L * a.proj.inputFeatures * C         // qkv, proj (per real token)
                macs += windows * a.heads * N * N * (a.keyDim + a.valueDim)                 // q·kᵀ, p·v (padded windows)
                conv(b.localConv.conv, outputSide: side)
                macs += L * C * b.mlp.fc1.outputFeatures * 2                                // fc1, fc2
            }
            if let d = s.downsample { merge(d) }
        }
        conv(m.neck.conv1, outputSide: side); conv(m.neck.conv2, outputSide: side)
        return macs
    }
}

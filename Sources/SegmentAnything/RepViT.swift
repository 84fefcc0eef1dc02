import Foundation
import Layers
import Tensor

// EdgeSAM's RepViT image encoder (`edge_sam/modeling/rep_vit.py`, `RepViT(arch, fuse=True)`):
// the CPU-fast conv student. Its layers are in Sources/Layers/RepViT.swift; its PyTorch twin for
// the tests is Scripts/refdump/repvit.py. Trained in the multi-branch form; `fused()` is the
// structurally re-parameterised network `samdistill export` writes.

/// A RepViT encoder (`RepViT`). Keys: `image_size`, `input_channels`, `embed_dims`, `depths`,
/// `se_blocks`, `fusion_channels`, `neck_channels`, `fused`.
public struct RepViTConfig: Codable, Equatable, Sendable {
    public var imageSize: Int = 1024
    public var inputChannels: Int = 3
    /// Widths of the four stages, at S/4, S/8, S/16, S/32.
    public var embedDims: [Int] = [48, 96, 192, 384]
    /// Blocks per stage; the first block of stages 1–3 is the stride-2 downsampling block.
    public var depths: [Int] = [3, 4, 16, 3]
    /// Indices (over all blocks, from 0) of the blocks with squeeze-and-excitation.
    public var seBlocks: [Int] = [0, 4, 8, 10, 12, 14, 16, 18, 20, 24]
    /// Width of EdgeSAM's fusion of stages 2 and 3 (the neck's input).
    public var fusionChannels: Int = 256
    /// Embedding channels (SAM: 256).
    public var neckChannels: Int = 256
    /// The re-parameterised form: every Conv2d_BN and RepVGGDW a single biased conv.
    public var fused: Bool = false

    enum CodingKeys: String, CodingKey, CaseIterable {
        case imageSize = "image_size", inputChannels = "input_channels", embedDims = "embed_dims", depths
        case seBlocks = "se_blocks", fusionChannels = "fusion_channels", neckChannels = "neck_channels", fused
    }
    public init() {}

    /// EdgeSAM's RepViT-M1 (`rep_vit_m1`, m1_cfgs): 5.1 M encoder parameters.
    public static let m1 = RepViTConfig()

    /// Output grid side: S / 16.
    public var outputResolution: Int { imageSize / 16 }

    /// Problems, each naming its key (relative to the student section).
    public func problems() -> [String] {
        var p: [String] = []
        if embedDims.count != 4 { p.append("embed_dims: RepViT has 4 stages (S/4 … S/32), got \(embedDims.count)") }
        if depths.count != embedDims.count { p.append("depths: \(depths.count) entries for \(embedDims.count) stages") }
        if depths.contains(where: { $0 < 1 }) { p.append("depths: each stage needs at least one block") }
        if embedDims.contains(where: { $0 < 2 || $0 % 2 != 0 }) { p.append("embed_dims: each must be a positive even number") }
        let n = depths.reduce(0, +)
        if let bad = seBlocks.first(where: { $0 < 0 || $0 >= n }) { p.append("se_blocks: \(bad) is not a block index (0..<\(n))") }
        if fusionChannels < 1 || neckChannels < 1 { p.append("neck_channels: must be positive") }
        if inputChannels < 1 { p.append("input_channels: must be positive") }
        if imageSize < 32 || imageSize % 32 != 0 { p.append("image_size: \(imageSize) is not a positive multiple of 32") }
        return p
    }
}

/// EdgeSAM's RepViT encoder (`RepViTConfig`):
///
///     features.0      stem: Conv2d_BN 3×3 s2 (in → d0/2), GELU, Conv2d_BN 3×3 s2 (→ d0)        S/4
///     features.1…     RepViT blocks, stage by stage; stages 1–3 open with a stride-2 block   S/4 … S/32
///     fuse_stage2     1×1 conv of stage 2's output (S/16) → fusion_channels
///     fuse_stage3     1×1 conv of stage 3's output (S/32) → fusion_channels, bicubic ×2; added
///     neck            SAM's neck (1×1 conv, LayerNorm2d, 3×3 conv, LayerNorm2d) → neck_channels
///
/// (B, in, S, S) → (B, neck_channels, S/16, S/16). Keys as the reference names them
/// (`features.N.token_mixer.0.conv.c.weight`, …); fused: as `RepConv` and `RepVGGDW` say.
public final class RepViT: Module {
    public let config: RepViTConfig
    public let stem: RepViTStem
    /// Every block in order (`features.1`, `features.2`, …).
    public let blocks: [RepViTBlock]
    public let fusion: RepViTFusionNeck
    /// Index in `blocks` of stage 2's last block (its output feeds `fuse_stage2`).
    public let stage2End: Int

    // s2: stage 2's output, kept between forward and backward only when training
    private var keptStage2 = false

    public init(_ config: RepViTConfig) {
        let problems = config.problems()
        precondition(problems.isEmpty, "RepViT config: " + problems.joined(separator: "; "))
        self.config = config
        let d = config.embedDims, fused = config.fused
        stem = RepViTStem(inputChannels: config.inputChannels, outputChannels: d[0], fused: fused)
        var blocks: [RepViTBlock] = []
        var c = d[0]
        for (s, depth) in config.depths.enumerated() {
            for j in 0..<depth {
                let stride = s > 0 && j == 0 ? 2 : 1
                blocks.append(RepViTBlock(inputChannels: c, outputChannels: d[s], stride: stride,
                                          squeezeExcite: config.seBlocks.contains(blocks.count), fused: fused))
                c = d[s]
            }
        }
        self.blocks = blocks
        stage2End = config.depths[0] + config.depths[1] + config.depths[2] - 1
        fusion = RepViTFusionNeck(stage2Channels: d[2], stage3Channels: d[3], channels: config.fusionChannels,
                                  outputChannels: config.neckChannels)
    }

    public func namedParameters() -> [(String, Parameter)] {
        var p = prefixed("features.0.", stem)
        for (i, b) in blocks.enumerated() { p += prefixed("features.\(i + 1).", b) }
        return p + fusion.namedParameters()
    }

    /// image: (B, in, S, S) -> embedding (B, neck_channels, S/16, S/16)
    public func forward(_ image: Tensor, mode: ForwardMode) -> Tensor {
        let S = config.imageSize
        precondition(image.rank == 4 && image.shape[1] == config.inputChannels && image.shape[2] == S && image.shape[3] == S,
                     "RepViT: expected (B, \(config.inputChannels), \(S), \(S)), got \(image.shape)")
        var x = stem.forward(image, mode: mode)
        var s2 = x
        for (i, b) in blocks.enumerated() {
            x = b.forward(x, mode: mode)
            if i == stage2End { s2 = x }
        }
        keptStage2 = mode.keepsActivations
        return fusion.forward(stage2: s2, stage3: x, mode: mode)
    }

    /// dEmbedding: (B, neck_channels, S/16, S/16) -> dImage: (B, in, S, S), or an empty tensor
    /// with `imageGradient: false`.
    @discardableResult
    public func backward(_ dy: Tensor, imageGradient: Bool = true) -> Tensor {
        precondition(keptStage2, "RepViT.backward without a training-mode forward")
        keptStage2 = false
        let (d2, d3) = fusion.backward(dy)
        var g = d3
        for (i, b) in blocks.enumerated().reversed() {
            if i == stage2End { g.add(d2) }
            g = b.backward(g)
        }
        return stem.backward(g, inputGradient: imageGradient)
    }

    /// The structurally re-parameterised network: every Conv2d_BN folded into one biased conv,
    /// every RepVGGDW (3×3 + 1×1 + identity, with their BatchNorms) into one 3×3 depthwise conv.
    /// Equal to this network in eval mode (running statistics). A fused network returns itself.
    public func fused() -> RepViT {
        if config.fused { return self }
        var c = config
        c.fused = true
        let f = RepViT(c)
        stem.fuse(into: f.stem)
        for (b, t) in zip(blocks, f.blocks) { b.fuse(into: t) }
        for ((_, src), (_, dst)) in zip(fusion.namedParameters(), f.fusion.namedParameters()) { dst.value = src.value }
        return f
    }

    /// Multiply-accumulates of one image's forward pass (convolutions, the SE's 1×1s; norms,
    /// activations and the bicubic upsampling excluded).
    public var multiplyAccumulates: Int {
        let S = config.imageSize
        var macs = 0
        var side = S
        for c in [stem.conv1.conv, stem.conv2.conv] {
            side = c.outputSize(height: side, width: side).height
            macs += side * side * c.outputChannels * c.inputChannels * c.kernelSize * c.kernelSize
        }
        for b in blocks {
            macs += b.multiplyAccumulates(height: side, width: side)
            if b.stride == 2 { side = (side + 1) / 2 }
        }
        let g = S / 16, f = config.fusionChannels, n = config.neckChannels, d = config.embedDims
        macs += g * g * f * d[2] + (g / 2) * (g / 2) * f * d[3]
        macs += g * g * n * f + g * g * n * n * 9
        return macs
    }
}

import Foundation
import Layers
import Tensor

/// Architecture of SAM's ViT image encoder (image_encoder.py `ImageEncoderViT`).
public struct ViTConfig: Codable, Equatable, Sendable {
    public var imageSize: Int = 1024
    public var patchSize: Int = 16
    public var inputChannels: Int = 3
    public var embedDim: Int = 768
    public var depth: Int = 12
    public var numHeads: Int = 12
    public var mlpRatio: Double = 4
    public var outChannels: Int = 256
    public var windowSize: Int = 14
    public var globalAttentionIndexes: [Int] = [2, 5, 8, 11]
    public var useRelativePosition: Bool = true
    public var useAbsolutePosition: Bool = true

    enum CodingKeys: String, CodingKey {
        case imageSize = "image_size", patchSize = "patch_size", inputChannels = "input_channels"
        case embedDim = "embed_dim", depth, numHeads = "num_heads", mlpRatio = "mlp_ratio"
        case outChannels = "out_channels", windowSize = "window_size"
        case globalAttentionIndexes = "global_attention_indexes"
        case useRelativePosition = "use_rel_pos", useAbsolutePosition = "use_abs_pos"
    }

    public init() {}

    /// SAM ViT-B, ViT-L, ViT-H (build_sam.py).
    public static let vitB = ViTConfig()
    public static var vitL: ViTConfig {
        var c = ViTConfig(); c.embedDim = 1024; c.depth = 24; c.numHeads = 16; c.globalAttentionIndexes = [5, 11, 17, 23]; return c
    }
    public static var vitH: ViTConfig {
        var c = ViTConfig(); c.embedDim = 1280; c.depth = 32; c.numHeads = 16; c.globalAttentionIndexes = [7, 15, 23, 31]; return c
    }

    public var gridSize: Int { imageSize / patchSize }

    public func problems() -> [String] {
        var p: [String] = []
        if patchSize < 1 || imageSize % patchSize != 0 { p.append("patch_size: \(patchSize) does not divide image_size \(imageSize)") }
        if numHeads < 1 || embedDim % numHeads != 0 { p.append("num_heads: embed_dim \(embedDim) is not divisible by \(numHeads)") }
        if depth < 1 { p.append("depth: must be at least 1") }
        if let bad = globalAttentionIndexes.first(where: { $0 < 0 || $0 >= depth }) {
            p.append("global_attention_indexes: \(bad) is outside 0..<\(depth)")
        }
        if windowSize < 0 { p.append("window_size: must be ≥ 0") }
        return p
    }
}

/// SAM's ViT patch embedding: a `patch × patch` conv with stride `patch` (with bias), output as
/// (B, H, W, C) tokens. Keys `proj.weight`, `proj.bias`.
public final class ViTPatchEmbed: Module {
    public let proj: Conv2d
    public init(patchSize: Int, inputChannels: Int, embedDim: Int) {
        proj = Conv2d(inputChannels: inputChannels, outputChannels: embedDim, kernelSize: patchSize,
                      stride: patchSize, padding: 0, groups: 1, bias: true)
    }
    public func namedParameters() -> [(String, Parameter)] { prefixed("proj.", proj) }

    /// x: (B, 3, S, S) -> (B, S/p, S/p, C)
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        proj.forward(x, mode: mode).permuted([0, 2, 3, 1])
    }
    /// dy: (B, H, W, C) -> dx: (B, 3, S, S)
    public func backward(_ dy: Tensor) -> Tensor { proj.backward(dy.permuted([0, 3, 1, 2])) }
}

/// SAM's ViT image encoder: patch embedding + absolute position embedding, ViT blocks (windowed
/// attention with relative positions, global attention at `globalAttentionIndexes`), neck.
/// Keys: `patch_embed.proj.*`, `pos_embed` (1, S/p, S/p, C), `blocks.N.*`, `neck.*`.
public final class ImageEncoderViT: Module {
    public let config: ViTConfig
    public let patchEmbed: ViTPatchEmbed
    public let positionEmbedding: Parameter?
    public let blocks: [ViTBlock]
    public let neck: EncoderNeck

    public init(_ config: ViTConfig) {
        let problems = config.problems()
        precondition(problems.isEmpty, "ViT config: " + problems.joined(separator: "; "))
        self.config = config
        let G = config.gridSize
        patchEmbed = ViTPatchEmbed(patchSize: config.patchSize, inputChannels: config.inputChannels, embedDim: config.embedDim)
        positionEmbedding = config.useAbsolutePosition ? Parameter(Tensor(zeros: [1, G, G, config.embedDim]), decays: false) : nil
        blocks = (0..<config.depth).map { i in
            ViTBlock(dim: config.embedDim, heads: config.numHeads, mlpRatio: config.mlpRatio,
                     useRelPos: config.useRelativePosition,
                     windowSize: config.globalAttentionIndexes.contains(i) ? 0 : config.windowSize,
                     inputSize: (G, G))
        }
        neck = EncoderNeck(inputChannels: config.embedDim, outputChannels: config.outChannels)
    }

    public func namedParameters() -> [(String, Parameter)] {
        var p = prefixed("patch_embed.", patchEmbed)
        if let positionEmbedding { p.append(("pos_embed", positionEmbedding)) }
        for (i, b) in blocks.enumerated() { p += prefixed("blocks.\(i).", b) }
        return p + prefixed("neck.", neck)
    }

    /// image: (B, 3, S, S) -> (B, out, S/p, S/p)
    public func forward(_ image: Tensor, mode: ForwardMode) -> Tensor {
        let S = config.imageSize
        precondition(image.rank == 4 && image.shape[1] == config.inputChannels && image.shape[2] == S && image.shape[3] == S,
                     "ImageEncoderViT: expected (B, \(config.inputChannels), \(S), \(S)), got \(image.shape)")
        var x = patchEmbed.forward(image, mode: mode)  // (B, G, G, C)
        if let pos = positionEmbedding {
            let n = pos.value.count, B = x.shape[0]
            x.data.withUnsafeMutableBufferPointer { xp in
                pos.value.data.withUnsafeBufferPointer { pp in
                    for b in 0..<B { for i in 0..<n { xp[b * n + i] += pp[i] } }
                }
            }
        }
        for b in blocks { x = b.forward(x, mode: mode) }
        return neck.forward(x.permuted([0, 3, 1, 2]), mode: mode)
    }

    /// dy: (B, out, G, G) -> dImage; accumulates every parameter gradient.
    @discardableResult
    public func backward(_ dy: Tensor) -> Tensor {
        var g = neck.backward(dy).permuted([0, 2, 3, 1])  // (B, G, G, C)
        for b in blocks.reversed() { g = b.backward(g) }
        if let pos = positionEmbedding {
            let n = pos.value.count, B = g.shape[0]
            for b in 0..<B { for i in 0..<n { pos.grad.data[i] += g.data[b * n + i] } }
        }
        return patchEmbed.backward(g)
    }
}

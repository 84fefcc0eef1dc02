import Foundation
import Layers
import Tensor

// The conv-only NanoSAM-style student: a ResNet trunk, transposed convolutions back to S/16 and a
// 1×1 projection to the embedding. A SAM image encoder like TinyViT and the ViT (`SAMModel` runs
// it), trained by the distiller; its PyTorch twin is Scripts/refdump/students.py.

/// A conv-only NanoSAM-style student (`ConvStudent`). Keys: `image_size`, `input_channels`,
/// `stem_channels`, `stem_stride`, `channels`, `blocks`, `strides`, `upsample_channels`,
/// `out_channels`.
public struct ConvStudentConfig: Codable, Equatable, Sendable {
    public var imageSize: Int = 1024
    public var inputChannels: Int = 3
    public var stemChannels: Int = 32
    public var stemStride: Int = 2
    /// Output channels of each stage of basic blocks.
    public var channels: [Int] = [32, 64, 128, 256]
    /// Basic blocks per stage.
    public var blocks: [Int] = [2, 2, 2, 2]
    /// Stride of the first block of each stage (1 or 2).
    public var strides: [Int] = [1, 2, 2, 2]
    /// Channels of each 2×2 stride-2 transposed convolution that brings the map back to S/16.
    public var upsampleChannels: Int = 256
    /// Embedding channels (SAM: 256).
    public var outChannels: Int = 256

    enum CodingKeys: String, CodingKey, CaseIterable {
        case imageSize = "image_size", inputChannels = "input_channels", stemChannels = "stem_channels"
        case stemStride = "stem_stride", channels, blocks, strides, upsampleChannels = "upsample_channels"
        case outChannels = "out_channels"
    }
    public init() {}

    /// Total downsampling of the trunk: stem stride × Π stage strides.
    public var trunkStride: Int { strides.reduce(stemStride, *) }
    /// Number of ×2 upsampling steps to reach S/16 (valid when `problems()` is empty).
    public var upsampleSteps: Int {
        var s = trunkStride, n = 0
        while s > 16 { s /= 2; n += 1 }
        return n
    }
    /// Output grid side: S / 16.
    public var outputResolution: Int { imageSize / 16 }

    /// Problems, each naming its key (relative to the student section).
    public func problems() -> [String] {
        var p: [String] = []
        let n = channels.count
        if n < 1 { p.append("channels: needs at least one stage") }
        if blocks.count != n { p.append("blocks: \(blocks.count) entries for \(n) stages") }
        if strides.count != n { p.append("strides: \(strides.count) entries for \(n) stages") }
        if strides.contains(where: { $0 != 1 && $0 != 2 }) { p.append("strides: each must be 1 or 2") }
        if ![1, 2, 4].contains(stemStride) { p.append("stem_stride: must be 1, 2 or 4, got \(stemStride)") }
        if blocks.contains(where: { $0 < 1 }) { p.append("blocks: each stage needs at least one block") }
        if channels.contains(where: { $0 < 1 }) || stemChannels < 1 || upsampleChannels < 1 {
            p.append("channels: must be positive")
        }
        if imageSize < 16 || imageSize % 16 != 0 { p.append("image_size: \(imageSize) is not a positive multiple of 16") }
        let s = trunkStride
        if s < 16 || (s & (s - 1)) != 0 {
            p.append("strides: total stride stem_stride × Π strides = \(s) must be 16 · 2^k (the embedding grid is image_size / 16)")
        } else if imageSize % s != 0 {
            p.append("image_size: \(imageSize) is not divisible by the trunk stride \(s)")
        }
        return p
    }
}

/// A ResNet basic block (torchvision's `BasicBlock`): conv1 3×3 (stride s) → bn1 → ReLU →
/// conv2 3×3 → bn2, plus the identity or, when the stride or width changes, a projection
/// shortcut `downsample` = 1×1 conv (stride s) → BN; then ReLU.
/// Keys: `conv1.weight`, `bn1.*`, `conv2.weight`, `bn2.*`, `downsample.0.weight`, `downsample.1.*`.
public final class BasicBlock: Module {
    public let inputChannels: Int
    public let outputChannels: Int
    public let stride: Int
    public let conv1: Conv2d
    public let bn1: BatchNorm2d
    public let conv2: Conv2d
    public let bn2: BatchNorm2d
    /// `downsample.0` (1×1 conv, stride s) and `downsample.1` (BN), when the shape changes.
    public let downsample: (conv: Conv2d, bn: BatchNorm2d)?

    // h1: (B, O, Ho, Wo) bn1 output (pre-ReLU); s: (B, O, Ho, Wo) the residual sum (pre-ReLU)
    private var h1: Tensor?, sum: Tensor?

    public init(inputChannels: Int, outputChannels: Int, stride: Int) {
        self.inputChannels = inputChannels
        self.outputChannels = outputChannels
        self.stride = stride
        conv1 = Conv2d(inputChannels: inputChannels, outputChannels: outputChannels, kernelSize: 3, stride: stride,
                       padding: 1, bias: false)
        bn1 = BatchNorm2d(outputChannels)
        conv2 = Conv2d(inputChannels: outputChannels, outputChannels: outputChannels, kernelSize: 3, stride: 1,
                       padding: 1, bias: false)
        bn2 = BatchNorm2d(outputChannels)
        if stride != 1 || inputChannels != outputChannels {
            downsample = (Conv2d(inputChannels: inputChannels, outputChannels: outputChannels, kernelSize: 1,
                                 stride: stride, bias: false), BatchNorm2d(outputChannels))
        } else {
            downsample = nil
        }
    }

    public func namedParameters() -> [(String, Parameter)] {
        var p = prefixed("conv1.", conv1) + prefixed("bn1.", bn1) + prefixed("conv2.", conv2) + prefixed("bn2.", bn2)
        if let d = downsample { p += prefixed("downsample.0.", d.conv) + prefixed("downsample.1.", d.bn) }
        return p
    }

    /// x: (B, I, H, W) -> (B, O, ⌈H/s⌉, ⌈W/s⌉)
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        precondition(x.rank == 4 && x.shape[1] == inputChannels,
                     "BasicBlock(\(inputChannels)→\(outputChannels), stride \(stride)): expected (B, \(inputChannels), H, W), got \(x.shape)")
        let a = bn1.forward(conv1.forward(x, mode: mode), mode: mode)
        var s = bn2.forward(conv2.forward(Activation.relu.forward(a), mode: mode), mode: mode)
        if let d = downsample {
            s.add(d.bn.forward(d.conv.forward(x, mode: mode), mode: mode))
        } else {
            s.add(x)
        }
        if mode.keepsActivations { h1 = a; sum = s } else { h1 = nil; sum = nil }
        return Activation.relu.forward(s)
    }

    /// dy: (B, O, Ho, Wo) -> dx: (B, I, H, W)
    public func backward(_ dy: Tensor) -> Tensor {
        guard let a = h1, let s = sum else { preconditionFailure("BasicBlock.backward without a training-mode forward") }
        h1 = nil; sum = nil
        let ds = Activation.relu.backward(dy, input: s)  // gradient at the residual sum
        let da = Activation.relu.backward(conv2.backward(bn2.backward(ds)), input: a)
        var dx = conv1.backward(bn1.backward(da))
        if let d = downsample { dx.add(d.conv.backward(d.bn.backward(ds))) } else { dx.add(ds) }
        return dx
    }
}

/// The conv-only NanoSAM-style student (`ConvStudentConfig`):
///
///     stem    Conv2d(in, stem, k, stride stem_stride, pad k/2, no bias) → BN → ReLU
///             (k = 3 for stride ≤ 2, 2·stride − 1 above)
///     layers  per stage i: blocks[i] BasicBlocks, the first with stride strides[i]
///     up      per ×2 step back to S/16: ConvTranspose2d(c, upsample_channels, 2, stride 2) → ReLU
///     head    Conv2d(c, out_channels, 1) with bias
///
/// Keys (as the PyTorch module in Scripts/refdump/students.py names them): `stem.0.weight`,
/// `stem.1.*`, `layers.I.J.*` (BasicBlock keys), `up.{2k}.weight`, `up.{2k}.bias`, `head.weight`,
/// `head.bias`.
public final class ConvStudent: Module {
    public let config: ConvStudentConfig
    public let stemConv: Conv2d
    public let stemBN: BatchNorm2d
    public let stages: [[BasicBlock]]
    public let upsample: [ConvTranspose2d]
    public let head: Conv2d

    // Pre-ReLU activations for backward: stem BN output and each upsampling output
    private var stemOut: Tensor?
    private var upOut: [Tensor] = []

    public init(_ config: ConvStudentConfig) {
        let problems = config.problems()
        precondition(problems.isEmpty, "ConvStudent config: " + problems.joined(separator: "; "))
        self.config = config
        let k = config.stemStride <= 2 ? 3 : 2 * config.stemStride - 1
        stemConv = Conv2d(inputChannels: config.inputChannels, outputChannels: config.stemChannels, kernelSize: k,
                          stride: config.stemStride, padding: k / 2, bias: false)
        stemBN = BatchNorm2d(config.stemChannels)
        var c = config.stemChannels
        var stages: [[BasicBlock]] = []
        for (i, width) in config.channels.enumerated() {
            var blocks: [BasicBlock] = []
            for j in 0..<config.blocks[i] {
                blocks.append(BasicBlock(inputChannels: c, outputChannels: width, stride: j == 0 ? config.strides[i] : 1))
                c = width
            }
            stages.append(blocks)
        }
        self.stages = stages
        var up: [ConvTranspose2d] = []
        for _ in 0..<config.upsampleSteps {
            up.append(ConvTranspose2d(inputChannels: c, outputChannels: config.upsampleChannels, kernelSize: 2, stride: 2))
            c = config.upsampleChannels
        }
        upsample = up
        head = Conv2d(inputChannels: c, outputChannels: config.outChannels, kernelSize: 1, bias: true)
    }

    public func namedParameters() -> [(String, Parameter)] {
        var p = prefixed("stem.0.", stemConv) + prefixed("stem.1.", stemBN)
        for (i, s) in stages.enumerated() {
            for (j, b) in s.enumerated() { p += prefixed("layers.\(i).\(j).", b) }
        }
        for (k, u) in upsample.enumerated() { p += prefixed("up.\(2 * k).", u) }
        return p + prefixed("head.", head)
    }

    /// image: (B, in, S, S) -> embedding (B, out, S/16, S/16)
    public func forward(_ image: Tensor, mode: ForwardMode) -> Tensor {
        let S = config.imageSize
        precondition(image.rank == 4 && image.shape[1] == config.inputChannels && image.shape[2] == S && image.shape[3] == S,
                     "ConvStudent: expected (B, \(config.inputChannels), \(S), \(S)), got \(image.shape)")
        let s0 = stemBN.forward(stemConv.forward(image, mode: mode), mode: mode)
        var x = Activation.relu.forward(s0)
        for s in stages { for b in s { x = b.forward(x, mode: mode) } }
        var ups: [Tensor] = []
        for u in upsample {
            let y = u.forward(x, mode: mode)
            if mode.keepsActivations { ups.append(y) }
            x = Activation.relu.forward(y)
        }
        stemOut = mode.keepsActivations ? s0 : nil
        upOut = ups
        return head.forward(x, mode: mode)
    }

    /// dEmbedding: (B, out, S/16, S/16) -> dImage: (B, in, S, S), or an empty tensor (shape [0])
    /// with `imageGradient: false`.
    @discardableResult
    public func backward(_ dy: Tensor, imageGradient: Bool = true) -> Tensor {
        guard let s0 = stemOut, upOut.count == upsample.count else {
            preconditionFailure("ConvStudent.backward without a training-mode forward")
        }
        var g = head.backward(dy)
        for (k, u) in upsample.enumerated().reversed() { g = u.backward(Activation.relu.backward(g, input: upOut[k])) }
        for s in stages.reversed() { for b in s.reversed() { g = b.backward(g) } }
        g = stemConv.backward(stemBN.backward(Activation.relu.backward(g, input: s0)), inputGradient: imageGradient)
        stemOut = nil; upOut = []
        return g
    }

    /// Multiply-accumulates of one image's forward pass (convolutions and transposed
    /// convolutions; norms and activations excluded).
    public var multiplyAccumulates: Int {
        var macs = 0
        var side = config.imageSize
        func conv(_ c: Conv2d) { side = c.outputSize(height: side, width: side).height
                                 macs += side * side * c.outputChannels * (c.inputChannels / c.groups) * c.kernelSize * c.kernelSize }
        conv(stemConv)
        for s in stages {
            for b in s {
                let inSide = side
                conv(b.conv1); conv(b.conv2)
                if let d = b.downsample {
                    let o = d.conv.outputSize(height: inSide, width: inSide).height
                    macs += o * o * d.conv.outputChannels * d.conv.inputChannels
                }
            }
        }
        for u in upsample {
            macs += side * side * u.inputChannels * u.outputChannels * 4
            side *= 2
        }
        conv(head)
        return macs
    }
}

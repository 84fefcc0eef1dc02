import Tensor

/// The image-encoder neck shared by MobileSAM's TinyViT and SAM's ViT: 1×1 conv (no bias) →
/// LayerNorm2d → 3×3 conv (padding 1, no bias) → LayerNorm2d, (B, Cin, H, W) → (B, Cout, H, W).
/// Checkpoint keys (an `nn.Sequential`): `0.weight`, `1.weight`, `1.bias`, `2.weight`, `3.weight`, `3.bias`.
public final class EncoderNeck: Module {
    public let inputChannels: Int
    public let outputChannels: Int
    public let conv1: Conv2d       // `0`
    public let norm1: LayerNorm2d  // `1`
    public let conv2: Conv2d       // `2`
    public let norm2: LayerNorm2d  // `3`

    public init(inputChannels: Int, outputChannels: Int = 256) {
        self.inputChannels = inputChannels
        self.outputChannels = outputChannels
        conv1 = Conv2d(inputChannels: inputChannels, outputChannels: outputChannels, kernelSize: 1,
                       stride: 1, padding: 0, groups: 1, bias: false)
        norm1 = LayerNorm2d(outputChannels)
        conv2 = Conv2d(inputChannels: outputChannels, outputChannels: outputChannels, kernelSize: 3,
                       stride: 1, padding: 1, groups: 1, bias: false)
        norm2 = LayerNorm2d(outputChannels)
    }

    public func namedParameters() -> [(String, Parameter)] {
        prefixed("0.", conv1) + prefixed("1.", norm1) + prefixed("2.", conv2) + prefixed("3.", norm2)
    }

    /// x: (B, Cin, H, W) -> (B, Cout, H, W)
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        precondition(x.rank == 4 && x.shape[1] == inputChannels,
                     "EncoderNeck(\(inputChannels)→\(outputChannels)): expected (B, \(inputChannels), H, W), got \(x.shape)")
        var h = conv1.forward(x, mode: mode)
        h = norm1.forward(h, mode: mode)
        h = conv2.forward(h, mode: mode)
        return norm2.forward(h, mode: mode)
    }

    /// dy: (B, Cout, H, W) -> dx: (B, Cin, H, W)
    public func backward(_ dy: Tensor) -> Tensor {
        var g = norm2.backward(dy)
        g = conv2.backward(g)
        g = norm1.backward(g)
        return conv1.backward(g)
    }
}

import Foundation
import Tensor

/// TinyViT's `PatchEmbed`: `seq.0` Conv2d_BN(in, embed/2, 3, s2, p1), GELU, `seq.2`
/// Conv2d_BN(embed/2, embed, 3, s2, p1). (B, in, H, W) -> (B, embed, H/4, W/4) for H, W divisible by 4
/// (in general ⌈⌈H/2⌉/2⌉). Keys `seq.0.*`, `seq.2.*` (Conv2d_BN keys).
public final class PatchEmbed: Module {
    public let inputChannels: Int
    public let embedDim: Int
    /// `seq.0`
    public let conv1: Conv2dBN
    /// `seq.2`
    public let conv2: Conv2dBN

    public init(inputChannels: Int, embedDim: Int) {
        self.inputChannels = inputChannels
        self.embedDim = embedDim
        conv1 = Conv2dBN(inputChannels: inputChannels, outputChannels: embedDim / 2, kernelSize: 3, stride: 2, padding: 1)
        conv2 = Conv2dBN(inputChannels: embedDim / 2, outputChannels: embedDim, kernelSize: 3, stride: 2, padding: 1)
    }

    public func namedParameters() -> [(String, Parameter)] { prefixed("seq.0.", conv1) + prefixed("seq.2.", conv2) }

    /// x: (B, in, H, W) -> (B, embed, H/4, W/4)
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        precondition(x.rank == 4 && x.shape[1] == inputChannels,
                     "PatchEmbed(\(inputChannels)→\(embedDim)): expected input of shape (B, \(inputChannels), H, W), got \(x.shape)")
        // conv1's GELU runs inside its BatchNorm pass (and its backward), in every mode
        return conv2.forward(conv1.forward(x, mode: mode, residual: nil, activation: .gelu), mode: mode)
    }

    /// dy: (B, embed, H/4, W/4) -> dx: (B, in, H, W), or an empty tensor (shape [0]) without
    /// `inputGradient` (the image's gradient is rarely wanted: its GEMM and col2im are skipped).
    public func backward(_ dy: Tensor, inputGradient: Bool = true) -> Tensor {
        conv1.backward(conv2.backward(dy), inputGradient: inputGradient)
    }
}

import Foundation
import Tensor

/// TinyViT's `MBConv` (inverted residual): conv1 1×1 expand (Conv2d_BN), GELU, conv2 3×3
/// depthwise (Conv2d_BN), GELU, conv3 1×1 project (Conv2d_BN, bn_weight_init 0), + input, GELU.
/// Keys `conv1.*`, `conv2.*`, `conv3.*`. Hidden channels: Int(in · expandRatio).
public final class MBConv: Module {
    public let inputChannels: Int
    public let outputChannels: Int
    public let hiddenChannels: Int
    public let conv1: Conv2dBN
    public let conv2: Conv2dBN
    public let conv3: Conv2dBN

    // a3: (B, C, H, W) the residual sum before the last GELU, g3 its GELU (the output), kept for
    // backward; conv1's and conv2's GELUs run inside their BatchNorm passes (and backward).
    private var a3: Tensor?, g3: Tensor?

    /// When set, every forward adds each hidden channel's Σ a and Σ a² (a = conv2's GELU output,
    /// conv3's input) over its pixels: what width pruning ranks channels by.
    public var hiddenStatistics: HiddenStatistics?

    /// The reference adds the input back, so `outputChannels` must equal `inputChannels`.
    public init(inputChannels: Int, outputChannels: Int, expandRatio: Float) {
        precondition(inputChannels == outputChannels,
                     "MBConv: the residual needs outputChannels == inputChannels, got \(inputChannels)→\(outputChannels)")
        self.inputChannels = inputChannels
        self.outputChannels = outputChannels
        hiddenChannels = Int(Float(inputChannels) * expandRatio)
        conv1 = Conv2dBN(inputChannels: inputChannels, outputChannels: hiddenChannels, kernelSize: 1)
        conv2 = Conv2dBN(inputChannels: hiddenChannels, outputChannels: hiddenChannels, kernelSize: 3, stride: 1,
                         padding: 1, groups: hiddenChannels)
        conv3 = Conv2dBN(inputChannels: hiddenChannels, outputChannels: outputChannels, kernelSize: 1,
                         batchNormWeightInit: 0)
    }

    public func namedParameters() -> [(String, Parameter)] {
        prefixed("conv1.", conv1) + prefixed("conv2.", conv2) + prefixed("conv3.", conv3)
    }

    /// x: (B, C, H, W) -> (B, C, H, W)
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        precondition(x.rank == 4 && x.shape[1] == inputChannels,
                     "MBConv(\(inputChannels), hidden \(hiddenChannels)): expected input of shape (B, \(inputChannels), H, W), got \(x.shape)")
        a3 = nil; g3 = nil
        let o1 = conv1.forward(x, mode: mode, residual: nil, activation: .gelu)
        let o2 = conv2.forward(o1, mode: mode, residual: nil, activation: .gelu)
        if var st = hiddenStatistics {  // o2: (B, hidden, H, W)
            st.addChannels(o2)
            hiddenStatistics = st
        }
        if mode.foldsBatchNorm { return conv3.forward(o2, mode: mode, residual: x, activation: .gelu) }
        var h3 = conv3.forward(o2, mode: mode)
        h3.add(x)
        let y = Activation.gelu.forward(h3)
        if mode.keepsActivations { a3 = h3; g3 = y }
        return y
    }

    /// dy: (B, C, H, W) -> dx: (B, C, H, W)
    public func backward(_ dy: Tensor) -> Tensor {
        guard let h3 = a3, let o3 = g3 else { preconditionFailure("MBConv.backward without a training-mode forward") }
        a3 = nil; g3 = nil
        let d3 = Activation.gelu.backward(dy, input: h3, output: o3)  // gradient at the residual sum
        var dx = conv1.backward(conv2.backward(conv3.backward(d3)))
        dx.add(d3)
        return dx
    }
}

import Foundation
import Tensor

/// TinyViT's `PatchMerging`: conv1 1×1 (dim → out), GELU, conv2 3×3 depthwise with stride 2
/// (stride 1 when out is 320, 448 or 576, as the reference decides), GELU, conv3 1×1; the output
/// is flattened to tokens. Keys `conv1.*`, `conv2.*`, `conv3.*`.
///
/// Input: tokens (B, H·W, dim) at `inputResolution` (viewed as (B, H, W, dim), permuted to NCHW),
/// or an NCHW map (B, dim, H, W) of any size, as in the reference. Output: (B, Ho·Wo, out).
public final class PatchMerging: Module {
    public let inputResolution: (height: Int, width: Int)
    public let dim: Int
    public let outputDim: Int
    /// 2, or 1 when `outputDim` is 320, 448 or 576 (the reference's rule), unless given explicitly
    /// (students may choose their own per-stage strides).
    public let stride: Int
    public let conv1: Conv2dBN
    public let conv2: Conv2dBN
    public let conv3: Conv2dBN

    // inputShape: the layout of x for dx, outputShape: conv3's output map (B, out, Ho, Wo) ([] when
    // nothing is kept); conv1's and conv2's GELUs run inside their BatchNorm passes (and backward)
    private var inputShape: [Int] = [], outputShape: [Int] = []

    public init(inputResolution: (height: Int, width: Int), dim: Int, outputDim: Int, stride: Int? = nil) {
        self.inputResolution = inputResolution
        self.dim = dim
        self.outputDim = outputDim
        self.stride = stride ?? PatchMerging.referenceStride(outputDim: outputDim)
        conv1 = Conv2dBN(inputChannels: dim, outputChannels: outputDim, kernelSize: 1)
        conv2 = Conv2dBN(inputChannels: outputDim, outputChannels: outputDim, kernelSize: 3, stride: self.stride,
                         padding: 1, groups: outputDim)
        conv3 = Conv2dBN(inputChannels: outputDim, outputChannels: outputDim, kernelSize: 1)
    }

    public func namedParameters() -> [(String, Parameter)] {
        prefixed("conv1.", conv1) + prefixed("conv2.", conv2) + prefixed("conv3.", conv3)
    }

    /// The reference's stride rule: 1 into a 320-, 448- or 576-wide stage, 2 otherwise.
    public static func referenceStride(outputDim: Int) -> Int { [320, 448, 576].contains(outputDim) ? 1 : 2 }

    /// The output map size for a tokens input at `inputResolution`.
    public var outputResolution: (height: Int, width: Int) {
        conv2.conv.outputSize(height: inputResolution.height, width: inputResolution.width)
    }

    var name: String { "PatchMerging(\(dim)→\(outputDim), \(inputResolution.height)×\(inputResolution.width), stride \(stride))" }

    /// x: (B, H·W, dim) or (B, dim, H, W) -> (B, Ho·Wo, out)
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        let map: Tensor
        if x.rank == 3 {
            let (H, W) = inputResolution
            precondition(x.shape[1] == H * W && x.shape[2] == dim,
                         "\(name): expected input of shape (B, \(H * W), \(dim)) or (B, \(dim), H, W), got \(x.shape)")
            map = ConvLayout.tokensToMap(x, height: H, width: W)
        } else {
            precondition(x.rank == 4 && x.shape[1] == dim,
                         "\(name): expected input of shape (B, \(inputResolution.height * inputResolution.width), \(dim)) or (B, \(dim), H, W), got \(x.shape)")
            map = x
        }
        let o1 = conv1.forward(map, mode: mode, residual: nil, activation: .gelu)
        let o2 = conv2.forward(o1, mode: mode, residual: nil, activation: .gelu)
        let y = conv3.forward(o2, mode: mode)
        inputShape = mode.keepsActivations ? x.shape : []
        outputShape = mode.keepsActivations ? y.shape : []
        return ConvLayout.mapToTokens(y)
    }

    /// dy: (B, Ho·Wo, out) -> dx in the input's layout ((B, H·W, dim) or (B, dim, H, W))
    public func backward(_ dy: Tensor) -> Tensor {
        guard outputShape.count == 4 else { preconditionFailure("\(name).backward without a training-mode forward") }
        let B = outputShape[0], Ho = outputShape[2], Wo = outputShape[3]
        precondition(dy.shape == [B, Ho * Wo, outputDim],
                     "\(name).backward: expected dy of shape \([B, Ho * Wo, outputDim]), got \(dy.shape)")
        let tokensInput = inputShape.count == 3
        inputShape = []; outputShape = []
        let dmap = conv1.backward(conv2.backward(conv3.backward(ConvLayout.tokensToMap(dy, height: Ho, width: Wo))))
        return tokensInput ? ConvLayout.mapToTokens(dmap) : dmap
    }
}

import Foundation
import Tensor

/// The convolutional blocks of MobileSAM's TinyViT (`mobile_sam/modeling/tiny_vit_sam.py`):
/// `Conv2d_BN` here; `PatchEmbed`, `MBConv`, `PatchMerging` (and `ConvLayout`, tokens ⇄ maps)
/// in their own files; with the reference's checkpoint keys.
/// Activations are exact GELU (`nn.GELU`, the TinyViT default). Drop path is not represented
/// (MobileSAM's TinyViT uses drop_path_rate 0 for inference; a student that wants stochastic
/// depth composes it around these blocks).

extension ForwardMode {
    /// Inference proper (running statistics, nothing kept): BatchNorm can be folded into the
    /// preceding conv and activations fused into its output pass.
    public var foldsBatchNorm: Bool { !batchStatistics && !keepsActivations }
}

/// `Conv2d_BN`: a bias-free `Conv2d` followed by `BatchNorm2d`.
/// Keys: `c.weight` (O, I/groups, k, k), `bn.weight`, `bn.bias`, `bn.running_mean`, `bn.running_var` (O).
public final class Conv2dBN: Module {
    /// `c`
    public let conv: Conv2d
    /// `bn`
    public let bn: BatchNorm2d

    /// `batchNormWeightInit` is the reference's `bn_weight_init` (MBConv's last conv uses 0).
    public init(inputChannels: Int, outputChannels: Int, kernelSize: Int = 1, stride: Int = 1, padding: Int = 0,
                groups: Int = 1, batchNormWeightInit: Float = 1) {
        conv = Conv2d(inputChannels: inputChannels, outputChannels: outputChannels, kernelSize: kernelSize,
                      stride: stride, padding: padding, groups: groups, bias: false)
        bn = BatchNorm2d(outputChannels, weightInit: batchNormWeightInit)
    }

    public func namedParameters() -> [(String, Parameter)] { prefixed("c.", conv) + prefixed("bn.", bn) }

    /// x: (B, I, H, W) -> (B, O, Ho, Wo). Inference (`mode.foldsBatchNorm`) runs the conv with
    /// BatchNorm folded into its weights (`foldedParameters`), one pass over the output.
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        forward(x, mode: mode, residual: nil, activation: nil)
    }

    /// y = activation(BN(conv(x)) + residual), residual: (B, O, Ho, Wo) or nil. Inference runs the
    /// folded conv with the bias, residual and activation fused into the conv's output pass
    /// (nothing kept). Other modes run conv and BatchNorm as layers, kept for `backward`. Without a
    /// residual the activation runs inside BatchNorm's pass and `backward` covers it (dy is then the
    /// gradient at the activation's output); with a residual, `backward` covers conv and BatchNorm
    /// only and the caller keeps what the residual and activation need (as MBConv's last conv does).
    public func forward(_ x: Tensor, mode: ForwardMode, residual: Tensor?, activation: Activation?) -> Tensor {
        if mode.foldsBatchNorm {
            let (w, b) = foldedParameters()
            return conv.forwardInference(x, weight: w, bias: b, residual: residual, activation: activation)
        }
        guard let residual else { return bn.forward(conv.forward(x, mode: mode), mode: mode, activation: activation) }
        var y = bn.forward(conv.forward(x, mode: mode), mode: mode)
        y.add(residual)
        if let activation { activation.apply(&y) }
        return y
    }

    /// BatchNorm's running-statistics affine map folded into the conv: with
    /// s[o] = γ[o] / √(running_var[o] + eps), w'[o, …] = w[o, …] · s[o] and b'[o] = β[o] − mean[o] · s[o].
    /// Computed from the current values on every call (O·K multiplies, nothing cached), so it is
    /// always in step with `load` and optimiser updates.
    public func foldedParameters() -> (weight: Tensor, bias: [Float]) {
        let O = conv.outputChannels, w = conv.weight.value, K = w.count / O
        var fw = Tensor.empty(w.shape)
        var fb = [Float](repeating: 0, count: O)
        for o in 0..<O {
            let sc = bn.weight.value.data[o] / (bn.runningVar.value.data[o] + bn.eps).squareRoot()
            for i in 0..<K { fw.data[o * K + i] = w.data[o * K + i] * sc }
            fb[o] = bn.bias.value.data[o] - bn.runningMean.value.data[o] * sc
        }
        return (fw, fb)
    }

    /// dy: (B, O, Ho, Wo) -> dx: (B, I, H, W), or an empty tensor without `inputGradient` (`Conv2d.backward`).
    public func backward(_ dy: Tensor, inputGradient: Bool = true) -> Tensor {
        conv.backward(bn.backward(dy), inputGradient: inputGradient)
    }
}

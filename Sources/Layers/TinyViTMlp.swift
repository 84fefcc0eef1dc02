import Tensor

/// TinyViT's MLP: `Mlp(in_features, hidden_features, out_features)` of
/// mobile_sam/modeling/tiny_vit_sam.py: y = fc2(GELU(fc1(LayerNorm(x)))) over the last dimension.
/// (Its dropout is 0 in MobileSAM and is not represented.)
///
/// Checkpoint keys: `norm.weight`, `norm.bias` (in), `fc1.weight` (hidden, in), `fc1.bias`,
/// `fc2.weight` (out, hidden), `fc2.bias` (out).
public final class TinyViTMlp: Module {
    public let inputFeatures: Int
    public let hiddenFeatures: Int
    public let outputFeatures: Int
    public let norm: LayerNorm
    public let fc1: Linear
    public let fc2: Linear

    // h: (..., hidden) fc1's output before GELU, a = GELU(h) (also fc2's kept input); kept for backward
    private var hidden: Tensor?, activation: Tensor?

    /// When set, every forward adds each hidden unit's Σ a and Σ a² over its tokens (a = GELU(h),
    /// fc2's input): what width pruning ranks units by.
    public var hiddenStatistics: HiddenStatistics?

    /// As the reference: `hiddenFeatures` and `outputFeatures` default to `inputFeatures`.
    public init(inputFeatures: Int, hiddenFeatures: Int? = nil, outputFeatures: Int? = nil) {
        self.inputFeatures = inputFeatures
        self.hiddenFeatures = hiddenFeatures ?? inputFeatures
        self.outputFeatures = outputFeatures ?? inputFeatures
        norm = LayerNorm(inputFeatures)
        fc1 = Linear(inputFeatures, self.hiddenFeatures)
        fc2 = Linear(self.hiddenFeatures, self.outputFeatures)
    }

    public func namedParameters() -> [(String, Parameter)] {
        prefixed("norm.", norm) + prefixed("fc1.", fc1) + prefixed("fc2.", fc2)
    }

    /// x: (B, N, in) (any leading dimensions) -> y: (B, N, out)
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        if x.shape.last != inputFeatures {
            preconditionFailure("TinyViTMlp(\(inputFeatures)→\(hiddenFeatures)→\(outputFeatures)): expected last dimension \(inputFeatures), got shape \(x.shape)")
        }
        // h: (..., hidden)
        let h = fc1.forward(norm.forward(x, mode: mode), mode: mode)
        let a = Activation.gelu.forward(h)
        hidden = mode.keepsActivations ? h : nil
        activation = mode.keepsActivations ? a : nil
        if var st = hiddenStatistics {
            st.addTokens(a)
            hiddenStatistics = st
        }
        return fc2.forward(a, mode: mode)
    }

    /// dy: (B, N, out) -> dx: (B, N, in); accumulates every parameter gradient.
    public func backward(_ dy: Tensor) -> Tensor {
        guard let h = hidden, let a = activation else { preconditionFailure("TinyViTMlp.backward without a training-mode forward") }
        var expected = h.shape
        expected[expected.count - 1] = outputFeatures
        precondition(dy.shape == expected, "TinyViTMlp.backward: dy \(dy.shape) does not match the forward's output \(expected)")
        hidden = nil; activation = nil
        let da = fc2.backward(dy)
        return norm.backward(fc1.backward(Activation.gelu.backward(da, input: h, output: a)))
    }
}

import Foundation
import Tensor

/// SAM's `MLPBlock` (`common.py`): `lin2(act(lin1(x)))` over the last dimension, `act` GELU by
/// default (the ViT block's MLP) or ReLU (the two-way transformer's MLP, `act=nn.ReLU`).
/// Checkpoint keys: `lin1.weight` (M, C), `lin1.bias` (M), `lin2.weight` (C, M), `lin2.bias` (C).
public final class MLPBlock: Module {
    public let embeddingDim: Int
    public let mlpDim: Int
    public let activation: Activation
    public let lin1: Linear
    public let lin2: Linear

    // hidden: (..., M) pre-activation lin1(x), kept for the activation's backward
    private var hidden: Tensor?

    public init(embeddingDim: Int, mlpDim: Int, activation: Activation = .gelu) {
        self.embeddingDim = embeddingDim
        self.mlpDim = mlpDim
        self.activation = activation
        lin1 = Linear(embeddingDim, mlpDim)
        lin2 = Linear(mlpDim, embeddingDim)
    }

    public func namedParameters() -> [(String, Parameter)] {
        prefixed("lin1.", lin1) + prefixed("lin2.", lin2)
    }

    /// x: (..., C) -> y: (..., C)
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        precondition(x.shape.last == embeddingDim,
                     "MLPBlock(\(embeddingDim)→\(mlpDim)→\(embeddingDim)): expected last dimension \(embeddingDim), got shape \(x.shape)")
        let a = lin1.forward(x, mode: mode)  // (..., M)
        hidden = mode.keepsActivations ? a : nil
        return lin2.forward(activation.forward(a), mode: mode)
    }

    /// dy: (..., C) -> dx: (..., C)
    public func backward(_ dy: Tensor) -> Tensor {
        guard let a = hidden else { preconditionFailure("MLPBlock.backward without a training-mode forward") }
        hidden = nil
        let dg = lin2.backward(dy)  // (..., M)
        return lin1.backward(activation.backward(dg, input: a))
    }
}

/// The mask decoder's `MLP` (`mask_decoder.py`): `layers` Linear layers
/// (input → hidden → … → hidden → output), ReLU between them, optional sigmoid on the output.
/// Checkpoint keys: `layers.0.weight`, `layers.0.bias`, `layers.1.*`, …
public final class MLP: Module {
    public let inputDim: Int
    public let hiddenDim: Int
    public let outputDim: Int
    public let sigmoidOutput: Bool
    /// The Linear layers in order (`layers.i`).
    public let layers: [Linear]

    // preActivations[i]: (..., hidden) input of the ReLU after layers[i] (i < count − 1);
    // output: (..., out) the sigmoid's output (when sigmoidOutput). Kept for backward.
    private var preActivations: [Tensor] = []
    private var output: Tensor?
    private var hasActivations = false

    public init(inputDim: Int, hiddenDim: Int, outputDim: Int, layers: Int, sigmoidOutput: Bool = false) {
        precondition(layers >= 1, "MLP: needs at least one layer, got \(layers)")
        self.inputDim = inputDim
        self.hiddenDim = hiddenDim
        self.outputDim = outputDim
        self.sigmoidOutput = sigmoidOutput
        let ins = [inputDim] + [Int](repeating: hiddenDim, count: layers - 1)
        let outs = [Int](repeating: hiddenDim, count: layers - 1) + [outputDim]
        self.layers = zip(ins, outs).map { Linear($0, $1) }
    }

    public func namedParameters() -> [(String, Parameter)] {
        layers.enumerated().flatMap { prefixed("layers.\($0.offset).", $0.element) }
    }

    /// x: (..., in) -> y: (..., out)
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        precondition(x.shape.last == inputDim,
                     "MLP(\(inputDim)→\(hiddenDim)×\(layers.count - 1)→\(outputDim)): expected last dimension \(inputDim), got shape \(x.shape)")
        let keep = mode.keepsActivations
        preActivations = []
        var h = x
        for (i, layer) in layers.enumerated() {
            h = layer.forward(h, mode: mode)
            if i < layers.count - 1 {
                if keep { preActivations.append(h) }
                h = Activation.relu.forward(h)
            }
        }
        if sigmoidOutput { h = h.map { 1 / (1 + expf(-$0)) } }
        output = keep && sigmoidOutput ? h : nil
        hasActivations = keep
        return h
    }

    /// dy: (..., out) -> dx: (..., in)
    public func backward(_ dy: Tensor) -> Tensor {
        precondition(hasActivations, "MLP.backward without a training-mode forward")
        var g = dy
        if let s = output {
            precondition(dy.shape == s.shape, "MLP.backward: dy \(dy.shape) vs output \(s.shape)")
            // d sigmoid = s (1 − s)
            for i in 0..<g.count { let v = s.data[i]; g.data[i] *= v * (1 - v) }
        }
        for i in stride(from: layers.count - 1, through: 0, by: -1) {
            g = layers[i].backward(g)
            if i > 0 { g = Activation.relu.backward(g, input: preActivations[i - 1]) }
        }
        preActivations = []
        output = nil
        hasActivations = false
        return g
    }
}

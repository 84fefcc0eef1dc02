import Tensor

/// `nn.Linear`: y = x Wᵀ + b over the last dimension.
/// Checkpoint keys: `weight` (out, in), `bias` (out).
public final class Linear: Module {
    public let inputFeatures: Int
    public let outputFeatures: Int
    /// `weight`: (out, in)
    public let weight: Parameter
    /// `bias`: (out), absent when built with `bias: false`
    public let bias: Parameter?

    // x: (..., in), kept for backward
    private var input: Tensor?

    public init(_ inputFeatures: Int, _ outputFeatures: Int, bias: Bool = true) {
        self.inputFeatures = inputFeatures
        self.outputFeatures = outputFeatures
        self.weight = Parameter(Tensor(zeros: [outputFeatures, inputFeatures]))
        self.bias = bias ? Parameter(Tensor(zeros: [outputFeatures]), decays: false) : nil
    }

    public func namedParameters() -> [(String, Parameter)] {
        var p = [("weight", weight)]
        if let bias { p.append(("bias", bias)) }
        return p
    }

    /// x: (..., in) -> y: (..., out)
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        precondition(x.shape.last == inputFeatures,
                     "Linear(\(inputFeatures)→\(outputFeatures)): expected last dimension \(inputFeatures), got shape \(x.shape)")
        let rows = x.count / inputFeatures
        var outShape = x.shape
        outShape[outShape.count - 1] = outputFeatures
        var y = Tensor.empty(outShape)
        let I = inputFeatures, O = outputFeatures
        y.data.withUnsafeMutableBufferPointer { yp in
            if let bias {
                bias.value.data.withUnsafeBufferPointer { bp in
                    for r in 0..<rows { (yp.baseAddress! + r * O).update(from: bp.baseAddress!, count: O) }
                }
            }
            x.data.withUnsafeBufferPointer { xp in
                weight.value.data.withUnsafeBufferPointer { wp in
                    // y (rows, O) = x (rows, I) · Wᵀ (I, O) [+ y]
                    gemm(transB: true, m: rows, n: O, k: I, a: xp.baseAddress!, lda: I,
                         b: wp.baseAddress!, ldb: I, beta: bias == nil ? 0 : 1, c: yp.baseAddress!, ldc: O)
                }
            }
        }
        input = mode.keepsActivations ? x : nil
        return y
    }

    /// dy: (..., out) -> dx: (..., in); accumulates dW += dyᵀ x, db += Σ dy (unless frozen).
    public func backward(_ dy: Tensor) -> Tensor {
        guard let x = input else { preconditionFailure("Linear.backward without a training-mode forward") }
        let I = inputFeatures, O = outputFeatures
        let rows = x.count / I
        precondition(dy.count == rows * O, "Linear.backward: dy shape \(dy.shape) does not match input \(x.shape)")
        var dx = Tensor.empty(x.shape)
        dy.data.withUnsafeBufferPointer { dyp in
            if weight.requiresGradient { x.data.withUnsafeBufferPointer { xp in
                // dW (O, I) += dyᵀ (O, rows) · x (rows, I)
                weight.grad.data.withUnsafeMutableBufferPointer { gw in
                    gemm(transA: true, m: O, n: I, k: rows, a: dyp.baseAddress!, lda: O,
                         b: xp.baseAddress!, ldb: I, beta: 1, c: gw.baseAddress!, ldc: I)
                }
            } }
            weight.value.data.withUnsafeBufferPointer { wp in
                dx.data.withUnsafeMutableBufferPointer { dxp in
                    // dx (rows, I) = dy (rows, O) · W (O, I)
                    gemm(m: rows, n: I, k: O, a: dyp.baseAddress!, lda: O,
                         b: wp.baseAddress!, ldb: I, c: dxp.baseAddress!, ldc: I)
                }
            }
            if let bias, bias.requiresGradient {
                bias.grad.data.withUnsafeMutableBufferPointer { gb in
                    for r in 0..<rows { for o in 0..<O { gb[o] += dyp[r * O + o] } }
                }
            }
        }
        input = nil
        return dx
    }
}

import Foundation
import Tensor

// The layers every exported model is made of, as ONNX nodes (opset 17). Each takes and returns
// value names; weights are passed as Tensors in their checkpoint layout with the checkpoint key
// they are stored under.

extension GraphBuilder {
    /// y = x Wᵀ + b over the last axis; W: (out, in) as PyTorch stores it (stored transposed, (in, out),
    /// as MatMul takes it).
    public func linear(_ x: String, weight w: Tensor, bias b: Tensor?, name: String) -> String {
        precondition(w.rank == 2, "linear \(name): weight shape \(w.shape)")
        let wt = weight(name + ".weight_transposed", w.transposed2D().data, shape: [w.shape[1], w.shape[0]])
        let y = op("MatMul", [x, wt], name: name + ".matmul")
        guard let b else { return y }
        return op("Add", [y, weight(name + ".bias", b)], name: name)
    }

    /// LayerNormalization over the last axis.
    public func layerNorm(_ x: String, weight w: Tensor, bias b: Tensor, eps: Float, name: String) -> String {
        op("LayerNormalization", [x, weight(name + ".weight", w), weight(name + ".bias", b)],
           [.int("axis", -1), .float("epsilon", eps)], name: name)
    }

    /// SAM's LayerNorm2d on NCHW maps, as the reference computes it: u = mean_c x,
    /// s = mean_c (x − u)², y = w[c] · (x − u) / √(s + eps) + b[c].
    public func layerNorm2d(_ x: String, weight w: Tensor, bias b: Tensor, eps: Float, name: String) -> String {
        let u = op("ReduceMean", [x], [.ints("axes", [1]), .int("keepdims", 1)], name: name + ".mean")
        let d = op("Sub", [x, u], name: name + ".centred")
        let s = op("ReduceMean", [op("Mul", [d, d], name: name + ".square")], [.ints("axes", [1]), .int("keepdims", 1)], name: name + ".var")
        let n = op("Div", [d, op("Sqrt", [op("Add", [s, scalar(eps, name: "eps")], name: name + ".var_eps")], name: name + ".std")], name: name + ".normalised")
        let c = w.count
        let scaled = op("Mul", [n, weight(name + ".weight", w.data, shape: [c, 1, 1])], name: name + ".scaled")
        return op("Add", [scaled, weight(name + ".bias", b.data, shape: [c, 1, 1])], name: name)
    }

    /// Exact GELU, 0.5 · x · (1 + erf(x / √2)) (opset 17 has no Gelu op).
    public func gelu(_ x: String, name: String) -> String {
        let e = op("Erf", [op("Div", [x, scalar(Float(2).squareRoot(), name: "sqrt2")], name: name + ".div")], name: name + ".erf")
        let h = op("Mul", [x, op("Add", [e, scalar(1, name: "one")], name: name + ".add")], name: name + ".mul")
        return op("Mul", [h, scalar(0.5, name: "half")], name: name)
    }

    public func relu(_ x: String, name: String) -> String { op("Relu", [x], name: name) }

    /// Conv2d on NCHW: weight (O, I/groups, k, k), bias (O) or nil.
    public func conv(_ x: String, weight w: Tensor, bias b: [Float]?, stride: Int = 1, padding: Int = 0, groups: Int = 1,
                     name: String) -> String {
        precondition(w.rank == 4, "conv \(name): weight shape \(w.shape)")
        var inputs = [x, weight(name + ".weight", w)]
        if let b { inputs.append(weight(name + ".bias", b, shape: [b.count])) }
        return op("Conv", inputs, [.ints("kernel_shape", [w.shape[2], w.shape[3]]), .ints("strides", [stride, stride]),
                                    .ints("pads", [padding, padding, padding, padding]), .ints("dilations", [1, 1]),
                                    .int("group", groups)], name: name)
    }

    /// ConvTranspose2d with kernel == stride, no padding: weight (I, O, k, k), bias (O) or nil.
    public func convTranspose(_ x: String, weight w: Tensor, bias b: Tensor?, name: String) -> String {
        precondition(w.rank == 4, "convTranspose \(name): weight shape \(w.shape)")
        var inputs = [x, weight(name + ".weight", w)]
        if let b { inputs.append(weight(name + ".bias", b)) }
        return op("ConvTranspose", inputs, [.ints("kernel_shape", [w.shape[2], w.shape[3]]),
                                             .ints("strides", [w.shape[2], w.shape[3]])], name: name)
    }

    public func reshape(_ x: String, _ shape: [Int], name: String) -> String {
        op("Reshape", [x, int64s(shape, name: "shape")], name: name)
    }

    public func transpose(_ x: String, _ perm: [Int], name: String) -> String {
        op("Transpose", [x], [.ints("perm", perm)], name: name)
    }

    /// x[..., starts:ends] along `axes`.
    public func slice(_ x: String, starts: [Int], ends: [Int], axes: [Int], name: String) -> String {
        op("Slice", [x, int64s(starts, name: "starts"), int64s(ends, name: "ends"), int64s(axes, name: "axes")], name: name)
    }
}

extension Tensor {
    /// (R, C) → (C, R).
    func transposed2D() -> Tensor {
        let R = shape[0], C = shape[1]
        var out = Tensor.empty([C, R])
        for r in 0..<R { for c in 0..<C { out.data[c * R + r] = data[r * C + c] } }
        return out
    }
}

import Foundation
import Tensor

/// The convolutional blocks of MobileSAM's TinyViT (`mobile_sam/modeling/tiny_vit_sam.py`):
/// `Conv2d_BN`, `PatchEmbed`, `MBConv`, `PatchMerging`, with the reference's checkpoint keys.
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

/// Conversions between token sequences (B, H·W, C) and NCHW maps (B, C, H, W): a per-image
/// transpose, tiled and parallel over (image, tile). Each is the other's adjoint (and inverse),
/// so each one's backward is the other.
public enum ConvLayout {
    /// x: (B, H·W, C) -> (B, C, H, W)  (PyTorch: x.view(B, H, W, C).permute(0, 3, 1, 2))
    public static func tokensToMap(_ x: Tensor, height H: Int, width W: Int) -> Tensor {
        precondition(x.rank == 3 && x.shape[1] == H * W,
                     "ConvLayout.tokensToMap: expected (B, \(H * W), C) for \(H)×\(W), got \(x.shape)")
        let B = x.shape[0], C = x.shape[2]
        var y = Tensor.empty([B, C, H, W])
        transposeBatched(x, into: &y, batch: B, rows: H * W, cols: C)
        return y
    }

    /// x: (B, C, H, W) -> (B, H·W, C)  (PyTorch: x.flatten(2).transpose(1, 2))
    public static func mapToTokens(_ x: Tensor) -> Tensor {
        precondition(x.rank == 4, "ConvLayout.mapToTokens: expected (B, C, H, W), got \(x.shape)")
        let B = x.shape[0], C = x.shape[1], HW = x.shape[2] * x.shape[3]
        var y = Tensor.empty([B, HW, C])
        transposeBatched(x, into: &y, batch: B, rows: C, cols: HW)
        return y
    }

    /// For each of `batch` (rows, cols) matrices of x: y_b = x_bᵀ (cols, rows), in 32×32 tiles of
    /// 4×4 register transposes (scalar at ragged edges). Parallel over (matrix, row tile).
    private static func transposeBatched(_ x: Tensor, into y: inout Tensor, batch: Int, rows: Int, cols: Int) {
        let t = 32
        let rowTiles = (rows + t - 1) / t, colTiles = (cols + t - 1) / t
        x.data.withUnsafeBufferPointer { xb in
            y.data.withUnsafeMutableBufferPointer { yb in
                let xp = xb.baseAddress!, yp = yb.baseAddress!
                parallelFor(batch * rowTiles, costPerItem: t * cols) { job in
                    let b = job / rowTiles, r0 = (job % rowTiles) * t, r1 = Swift.min(rows, r0 + t)
                    let xi = xp + b * rows * cols, yi = yp + b * rows * cols
                    for ct in 0..<colTiles {
                        let c0 = ct * t, c1 = Swift.min(cols, c0 + t)
                        transposeTile(xi, ldx: cols, yi, ldy: rows, rows: r0..<r1, cols: c0..<c1)
                    }
                }
            }
        }
    }

    /// y[c·ldy + r] = x[r·ldx + c] for r in `rows`, c in `cols`.
    @inline(__always)
    static func transposeTile(_ x: UnsafePointer<Float>, ldx: Int, _ y: UnsafeMutablePointer<Float>, ldy: Int,
                              rows: Range<Int>, cols: Range<Int>) {
        let r4 = rows.lowerBound + rows.count / 4 * 4, c4 = cols.lowerBound + cols.count / 4 * 4
        var r = rows.lowerBound
        while r < r4 {
            var c = cols.lowerBound
            while c < c4 {
                transpose4x4(x + r * ldx + c, ldx, y + c * ldy + r, ldy)
                c += 4
            }
            for c in c4..<cols.upperBound { for i in r..<(r + 4) { y[c * ldy + i] = x[i * ldx + c] } }
            r += 4
        }
        for r in r4..<rows.upperBound { for c in cols { y[c * ldy + r] = x[r * ldx + c] } }
    }

    /// One 4×4 block: rows of x (stride ldx) become columns of y (stride ldy), in SSE shuffles.
    @inline(__always)
    static func transpose4x4(_ x: UnsafePointer<Float>, _ ldx: Int, _ y: UnsafeMutablePointer<Float>, _ ldy: Int) {
        let src = UnsafeRawPointer(x), dst = UnsafeMutableRawPointer(y)
        let r0 = src.loadUnaligned(as: SIMD4<Float>.self)
        let r1 = (src + 4 * ldx).loadUnaligned(as: SIMD4<Float>.self)
        let r2 = (src + 8 * ldx).loadUnaligned(as: SIMD4<Float>.self)
        let r3 = (src + 12 * ldx).loadUnaligned(as: SIMD4<Float>.self)
        // a = (r0 r1), b = (r2 r3); e/o: even/odd columns of each pair, then split again
        let a = SIMD8(lowHalf: r0, highHalf: r1), b = SIMD8(lowHalf: r2, highHalf: r3)
        let e = SIMD8(lowHalf: a.evenHalf, highHalf: b.evenHalf), o = SIMD8(lowHalf: a.oddHalf, highHalf: b.oddHalf)
        dst.storeBytes(of: e.evenHalf, as: SIMD4<Float>.self)               // column 0
        (dst + 4 * ldy).storeBytes(of: o.evenHalf, as: SIMD4<Float>.self)   // column 1
        (dst + 8 * ldy).storeBytes(of: e.oddHalf, as: SIMD4<Float>.self)    // column 2
        (dst + 12 * ldy).storeBytes(of: o.oddHalf, as: SIMD4<Float>.self)   // column 3
    }

    /// Plain loops for `tokensToMap` (tests): y[b, c, p] = x[b, p, c].
    public static func tokensToMapReference(_ x: Tensor, height H: Int, width W: Int) -> Tensor {
        let B = x.shape[0], P = H * W, C = x.shape[2]
        var y = Tensor(zeros: [B, C, H, W])
        for b in 0..<B { for p in 0..<P { for c in 0..<C { y.data[(b * C + c) * P + p] = x.data[(b * P + p) * C + c] } } }
        return y
    }

    /// Plain loops for `mapToTokens` (tests): y[b, p, c] = x[b, c, p].
    public static func mapToTokensReference(_ x: Tensor) -> Tensor {
        let B = x.shape[0], C = x.shape[1], P = x.shape[2] * x.shape[3]
        var y = Tensor(zeros: [B, P, C])
        for b in 0..<B { for c in 0..<C { for p in 0..<P { y.data[(b * P + p) * C + c] = x.data[(b * C + c) * P + p] } } }
        return y
    }
}

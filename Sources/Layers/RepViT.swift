import Foundation
import Tensor

// The RepViT family (EdgeSAM's image encoder, `edge_sam/modeling/rep_vit.py`): `RepConv`
// (Conv2d_BN or the conv it folds into), `RepVGGDW` (the re-parameterisable token mixer),
// `SqueezeExcite` (timm's), `RepViTBlock` (stride 1 or the stride-2 downsampling block),
// `RepViTStem` and `RepViTFusionNeck` (EdgeSAM's last-two-stage fusion and SAM's neck), with
// the reference's checkpoint keys.
//
// Every module has two forms. Training form: the reference's multi-branch modules with their
// BatchNorms. Fused form (`fused: true`, what `samdistill export` writes): each Conv2d_BN is one
// biased conv and each RepVGGDW one biased 3×3 depthwise conv (structural re-parameterisation;
// keys as RepViT's `replace_batchnorm` leaves them: `X.c.weight` + `X.bn.*` become `X.weight`,
// `X.bias`). `fuse(into:)` writes a training-form module's eval-mode function into its fused twin.
// Inference in the training form already runs the folded convs (nothing is fused in training).

/// RepViT's `Conv2d_BN` (bias-free conv → BatchNorm; keys `c.weight`, `bn.*`), or the single biased
/// conv it folds into (keys `weight`, `bias`). Padding (k − 1) / 2.
public final class RepConv: Module {
    /// Training form.
    public let unfused: Conv2dBN?
    /// Fused form.
    public let fused: Conv2d?
    /// The convolution either way (shapes, MAC counts).
    public var conv: Conv2d { unfused?.conv ?? fused! }

    // pre: (B, O, Ho, Wo) the fused conv's output before `act`, kept for backward
    private var pre: Tensor?
    private var act: Activation?

    public init(_ inputChannels: Int, _ outputChannels: Int, kernelSize: Int = 1, stride: Int = 1, groups: Int = 1,
                batchNormWeightInit: Float = 1, fused: Bool) {
        let p = (kernelSize - 1) / 2
        if fused {
            unfused = nil
            self.fused = Conv2d(inputChannels: inputChannels, outputChannels: outputChannels, kernelSize: kernelSize,
                                stride: stride, padding: p, groups: groups, bias: true)
        } else {
            unfused = Conv2dBN(inputChannels: inputChannels, outputChannels: outputChannels, kernelSize: kernelSize,
                               stride: stride, padding: p, groups: groups, batchNormWeightInit: batchNormWeightInit)
            self.fused = nil
        }
    }

    public func namedParameters() -> [(String, Parameter)] { unfused?.namedParameters() ?? fused!.namedParameters() }

    /// y = activation(conv(x) + residual), x: (B, I, H, W), residual: (B, O, Ho, Wo) or nil.
    /// As `Conv2dBN.forward(_:mode:residual:activation:)`: without a residual `backward` covers the
    /// activation; with one, only the conv (the caller adds dy to the residual's gradient).
    public func forward(_ x: Tensor, mode: ForwardMode, residual: Tensor? = nil, activation: Activation? = nil) -> Tensor {
        if let unfused { return unfused.forward(x, mode: mode, residual: residual, activation: activation) }
        let f = fused!
        pre = nil; act = nil
        if !mode.keepsActivations {
            return f.forwardInference(x, weight: f.weight.value, bias: f.bias!.value.data, residual: residual, activation: activation)
        }
        var y = f.forward(x, mode: mode)
        if let residual { y.add(residual) }
        guard let activation else { return y }
        if residual == nil { pre = y; act = activation }
        return activation.forward(y)
    }

    /// dy: (B, O, Ho, Wo) -> dx: (B, I, H, W), or an empty tensor without `inputGradient`.
    public func backward(_ dy: Tensor, inputGradient: Bool = true) -> Tensor {
        if let unfused { return unfused.backward(dy, inputGradient: inputGradient) }
        var g = dy
        if let a = act, let p = pre { g = a.backward(dy, input: p); pre = nil; act = nil }
        return fused!.backward(g, inputGradient: inputGradient)
    }

    /// The single conv's eval-mode (weight (O, I/g, k, k), bias (O)).
    public func foldedParameters() -> (weight: Tensor, bias: [Float]) {
        if let unfused { return unfused.foldedParameters() }
        return (fused!.weight.value, fused!.bias!.value.data)
    }

    /// Writes this module's eval-mode function into `target`, a fused twin.
    public func fuse(into target: RepConv) {
        guard let t = target.fused else { preconditionFailure("RepConv.fuse(into:): the target is not fused") }
        let (w, b) = foldedParameters()
        precondition(w.shape == t.weight.value.shape, "RepConv.fuse(into:): weight \(w.shape) vs \(t.weight.value.shape)")
        t.weight.value = w
        t.bias!.value = Tensor(shape: [b.count], data: b)
    }
}

/// RepViT's `RepVGGDW`, the stride-1 token mixer: y = BN(dw3×3(x)) + BN(dw1×1(x)) + x.
/// Keys `conv.*` (3×3 depthwise Conv2d_BN), `conv1.*` (1×1 depthwise Conv2d_BN). Fused: one
/// biased 3×3 depthwise conv, w = w₃ + pad(w₁) + δ (1 at the centre), b = b₃ + b₁; keys `weight`, `bias`.
public final class RepVGGDW: Module {
    public let channels: Int
    /// The 3×3 branch (the whole module when fused).
    public let conv: RepConv
    /// The 1×1 branch (nil when fused).
    public let conv1: RepConv?

    public init(_ channels: Int, fused: Bool) {
        self.channels = channels
        conv = RepConv(channels, channels, kernelSize: 3, groups: channels, fused: fused)
        conv1 = fused ? nil : RepConv(channels, channels, kernelSize: 1, groups: channels, fused: false)
    }

    public func namedParameters() -> [(String, Parameter)] {
        guard let conv1 else { return conv.namedParameters() }
        return prefixed("conv.", conv) + prefixed("conv1.", conv1)
    }

    /// x: (B, C, H, W) -> (B, C, H, W). Inference runs the three branches as one folded conv.
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        precondition(x.rank == 4 && x.shape[1] == channels, "RepVGGDW(\(channels)): expected (B, \(channels), H, W), got \(x.shape)")
        guard let conv1 else { return conv.forward(x, mode: mode) }
        if mode.foldsBatchNorm {
            let (w, b) = foldedParameters()
            return conv.conv.forwardInference(x, weight: w, bias: b)
        }
        var y = conv.forward(x, mode: mode, residual: conv1.forward(x, mode: mode))
        y.add(x)
        return y
    }

    /// dy: (B, C, H, W) -> dx: (B, C, H, W)
    public func backward(_ dy: Tensor) -> Tensor {
        guard let conv1 else { return conv.backward(dy) }
        var dx = conv.backward(dy)
        dx.add(conv1.backward(dy))
        dx.add(dy)
        return dx
    }

    /// The eval-mode function as one 3×3 depthwise conv: (weight (C, 1, 3, 3), bias (C)).
    public func foldedParameters() -> (weight: Tensor, bias: [Float]) {
        guard let conv1 else { return conv.foldedParameters() }
        var (w, b) = conv.foldedParameters()
        let (w1, b1) = conv1.foldedParameters()
        for c in 0..<channels {
            w.data[c * 9 + 4] += w1.data[c] + 1
            b[c] += b1[c]
        }
        return (w, b)
    }

    /// Writes the eval-mode function into `target`, a fused twin.
    public func fuse(into target: RepVGGDW) {
        precondition(target.conv1 == nil && target.channels == channels, "RepVGGDW.fuse(into:): the target is not a fused RepVGGDW(\(channels))")
        let (w, b) = foldedParameters()
        target.conv.fused!.weight.value = w
        target.conv.fused!.bias!.value = Tensor(shape: [channels], data: b)
    }
}

/// timm's `SqueezeExcite` (`SEModule`) as RepViT uses it: y = x ⊙ σ(fc2(ReLU(fc1(mean_HW(x))))),
/// fc1, fc2 biased 1×1 convs C → R → C, R = make_divisible(C/4, 8) (timm, round_limit 0).
/// Keys `fc1.weight` (R, C, 1, 1), `fc1.bias`, `fc2.weight` (C, R, 1, 1), `fc2.bias`. Unchanged by fusing.
public final class SqueezeExcite: Module {
    public let channels: Int
    public let reduced: Int
    public let fc1: Conv2d
    public let fc2: Conv2d

    // x: (B, C, H, W) input; s: (B, C) means; h: (B, R) fc1 output (pre-ReLU); a: (B, C) gate
    private var input: Tensor?
    private var s: [Float] = [], h: [Float] = [], a: [Float] = []

    /// timm's make_divisible(C · 0.25, 8, round_limit 0).
    public static func reducedChannels(_ c: Int) -> Int { Swift.max(8, (c * 2 + 32) / 64 * 8) }

    public init(_ channels: Int) {
        self.channels = channels
        reduced = Self.reducedChannels(channels)
        fc1 = Conv2d(inputChannels: channels, outputChannels: reduced, kernelSize: 1, bias: true)
        fc2 = Conv2d(inputChannels: reduced, outputChannels: channels, kernelSize: 1, bias: true)
    }

    public func namedParameters() -> [(String, Parameter)] { prefixed("fc1.", fc1) + prefixed("fc2.", fc2) }

    /// x: (B, C, H, W) -> (B, C, H, W)
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        precondition(x.rank == 4 && x.shape[1] == channels, "SqueezeExcite(\(channels)): expected (B, \(channels), H, W), got \(x.shape)")
        let B = x.shape[0], C = channels, R = reduced, HW = x.shape[2] * x.shape[3]
        var s = [Float](repeating: 0, count: B * C)
        x.data.withUnsafeBufferPointer { xb in
            for p in 0..<(B * C) { s[p] = Float(Double(Reductions.sum(xb.baseAddress! + p * HW, HW)) / Double(HW)) }
        }
        let w1 = fc1.weight.value.data, b1 = fc1.bias!.value.data, w2 = fc2.weight.value.data, b2 = fc2.bias!.value.data
        var h = [Float](repeating: 0, count: B * R), a = [Float](repeating: 0, count: B * C)
        for b in 0..<B {
            for r in 0..<R {
                var v = b1[r]
                for c in 0..<C { v += w1[r * C + c] * s[b * C + c] }
                h[b * R + r] = v
            }
            for c in 0..<C {
                var v = b2[c]
                for r in 0..<R { v += w2[c * R + r] * Swift.max(h[b * R + r], 0) }
                a[b * C + c] = 1 / (1 + expf(-v))
            }
        }
        var y = Tensor.empty(x.shape)
        x.data.withUnsafeBufferPointer { xb in
            y.data.withUnsafeMutableBufferPointer { yb in
                let xp = xb.baseAddress!, yp = yb.baseAddress!
                parallelFor(B * C, costPerItem: HW) { p in
                    let g = a[p]
                    for i in 0..<HW { yp[p * HW + i] = xp[p * HW + i] * g }
                }
            }
        }
        if mode.keepsActivations { input = x; self.s = s; self.h = h; self.a = a } else { input = nil }
        return y
    }

    /// dy: (B, C, H, W) -> dx: (B, C, H, W)
    public func backward(_ dy: Tensor) -> Tensor {
        guard let x = input else { preconditionFailure("SqueezeExcite.backward without a training-mode forward") }
        input = nil
        let B = x.shape[0], C = channels, R = reduced, HW = x.shape[2] * x.shape[3]
        // dg: (B, C) gradient at fc2's output; ds: (B, C) at the means
        var dg = [Float](repeating: 0, count: B * C), ds = [Float](repeating: 0, count: B * C)
        x.data.withUnsafeBufferPointer { xb in
            dy.data.withUnsafeBufferPointer { gb in
                for p in 0..<(B * C) {
                    var da: Double = 0
                    for i in 0..<HW { da += Double(gb[p * HW + i]) * Double(xb[p * HW + i]) }
                    dg[p] = Float(da) * a[p] * (1 - a[p])
                }
            }
        }
        let w1 = fc1.weight.value.data, w2 = fc2.weight.value.data
        let train1 = fc1.weight.isTrainable, train2 = fc2.weight.isTrainable
        for b in 0..<B {
            var dh = [Float](repeating: 0, count: R)
            for r in 0..<R {
                let hr = h[b * R + r], rr = Swift.max(hr, 0)
                var v: Float = 0
                for c in 0..<C {
                    v += w2[c * R + r] * dg[b * C + c]
                    if train2 { fc2.weight.grad.data[c * R + r] += dg[b * C + c] * rr }
                }
                dh[r] = hr > 0 ? v : 0
            }
            for c in 0..<C {
                if train2 { fc2.bias!.grad.data[c] += dg[b * C + c] }
                var v: Float = 0
                for r in 0..<R {
                    v += w1[r * C + c] * dh[r]
                    if train1 { fc1.weight.grad.data[r * C + c] += dh[r] * s[b * C + c] }
                }
                ds[b * C + c] = v / Float(HW)
            }
            if train1 { for r in 0..<R { fc1.bias!.grad.data[r] += dh[r] } }
        }
        var dx = Tensor.empty(x.shape)
        dy.data.withUnsafeBufferPointer { gb in
            x.data.withUnsafeBufferPointer { _ in
                dx.data.withUnsafeMutableBufferPointer { ob in
                    let gp = gb.baseAddress!, op = ob.baseAddress!
                    let a = a, ds = ds
                    parallelFor(B * C, costPerItem: HW) { p in
                        for i in 0..<HW { op[p * HW + i] = gp[p * HW + i] * a[p] + ds[p] }
                    }
                }
            }
        }
        return dx
    }
}

/// `RepViTBlock`: token mixer, then the residual channel mixer
/// t + BN(1×1(GELU(BN(1×1 expand(t))))) with 2·out hidden channels (projection BN weight init 0).
/// - stride 1 (in == out): token mixer `token_mixer.0` RepVGGDW, `token_mixer.1` SqueezeExcite (optional).
/// - stride 2 (downsampling): `token_mixer.0` 3×3 depthwise Conv2d_BN stride 2, `token_mixer.1`
///   SqueezeExcite (optional), `token_mixer.2` 1×1 Conv2d_BN in → out.
/// Channel mixer keys `channel_mixer.m.0.*` (expand), `channel_mixer.m.2.*` (project).
public final class RepViTBlock: Module {
    public let inputChannels: Int
    public let outputChannels: Int
    public let stride: Int
    /// Stride 1: `token_mixer.0`.
    public let mixer: RepVGGDW?
    /// Stride 2: `token_mixer.0` (depthwise) and `token_mixer.2` (in → out).
    public let downsample: (depthwise: RepConv, pointwise: RepConv)?
    /// `token_mixer.1`
    public let se: SqueezeExcite?
    /// `channel_mixer.m.0`: out → 2·out, GELU after it
    public let expand: RepConv
    /// `channel_mixer.m.2`: 2·out → out
    public let project: RepConv

    public init(inputChannels: Int, outputChannels: Int, stride: Int, squeezeExcite: Bool, fused: Bool) {
        precondition(stride == 2 || (stride == 1 && inputChannels == outputChannels),
                     "RepViTBlock: stride 1 needs in == out channels, got \(inputChannels)→\(outputChannels), stride \(stride)")
        self.inputChannels = inputChannels
        self.outputChannels = outputChannels
        self.stride = stride
        if stride == 1 {
            mixer = RepVGGDW(inputChannels, fused: fused)
            downsample = nil
        } else {
            mixer = nil
            downsample = (RepConv(inputChannels, inputChannels, kernelSize: 3, stride: 2, groups: inputChannels, fused: fused),
                          RepConv(inputChannels, outputChannels, fused: fused))
        }
        se = squeezeExcite ? SqueezeExcite(inputChannels) : nil
        expand = RepConv(outputChannels, 2 * outputChannels, fused: fused)
        project = RepConv(2 * outputChannels, outputChannels, batchNormWeightInit: 0, fused: fused)
    }

    public var isFused: Bool { expand.fused != nil }

    public func namedParameters() -> [(String, Parameter)] {
        var p = mixer.map { prefixed("token_mixer.0.", $0) } ?? prefixed("token_mixer.0.", downsample!.depthwise)
        if let se { p += prefixed("token_mixer.1.", se) }
        if let d = downsample { p += prefixed("token_mixer.2.", d.pointwise) }
        return p + prefixed("channel_mixer.m.0.", expand) + prefixed("channel_mixer.m.2.", project)
    }

    /// x: (B, in, H, W) -> (B, out, H/s, W/s) (⌈·⌉)
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        precondition(x.rank == 4 && x.shape[1] == inputChannels,
                     "RepViTBlock(\(inputChannels)→\(outputChannels), stride \(stride)): expected (B, \(inputChannels), H, W), got \(x.shape)")
        var t = mixer?.forward(x, mode: mode) ?? downsample!.depthwise.forward(x, mode: mode)
        if let se { t = se.forward(t, mode: mode) }
        if let d = downsample { t = d.pointwise.forward(t, mode: mode) }
        let h = expand.forward(t, mode: mode, activation: .gelu)
        return project.forward(h, mode: mode, residual: t)
    }

    /// dy: (B, out, Ho, Wo) -> dx: (B, in, H, W)
    public func backward(_ dy: Tensor) -> Tensor {
        var dt = expand.backward(project.backward(dy))
        dt.add(dy)
        if let d = downsample { dt = d.pointwise.backward(dt) }
        if let se { dt = se.backward(dt) }
        return mixer?.backward(dt) ?? downsample!.depthwise.backward(dt)
    }

    /// Writes the eval-mode function into `target`, a fused twin.
    public func fuse(into target: RepViTBlock) {
        precondition(target.isFused && target.stride == stride && target.inputChannels == inputChannels
                     && target.outputChannels == outputChannels && (target.se == nil) == (se == nil),
                     "RepViTBlock.fuse(into:): the target is not this block's fused twin")
        if let m = mixer { m.fuse(into: target.mixer!) }
        if let d = downsample {
            d.depthwise.fuse(into: target.downsample!.depthwise)
            d.pointwise.fuse(into: target.downsample!.pointwise)
        }
        if let se { try! target.se!.load(se.stateDict()) }
        expand.fuse(into: target.expand)
        project.fuse(into: target.project)
    }

    /// Multiply-accumulates for an H × W input.
    public func multiplyAccumulates(height: Int, width: Int) -> Int {
        var macs = 0
        func conv(_ c: Conv2d, _ side: (Int, Int)) -> (Int, Int) {
            let o = c.outputSize(height: side.0, width: side.1)
            macs += o.height * o.width * c.outputChannels * (c.inputChannels / c.groups) * c.kernelSize * c.kernelSize
            return (o.height, o.width)
        }
        var side = (height, width)
        if let m = mixer { _ = conv(m.conv.conv, side); if let c1 = m.conv1 { _ = conv(c1.conv, side) } }
        if let d = downsample { side = conv(d.depthwise.conv, side); _ = conv(d.pointwise.conv, side) }
        if let se { macs += 2 * se.channels * se.reduced }
        _ = conv(expand.conv, side)
        _ = conv(project.conv, side)
        return macs
    }
}

/// RepViT's stem (`features.0`): 3×3 stride-2 Conv2d_BN in → out/2, GELU, 3×3 stride-2 Conv2d_BN
/// out/2 → out. Keys `0.*`, `2.*`.
public final class RepViTStem: Module {
    public let conv1: RepConv
    public let conv2: RepConv

    public init(inputChannels: Int, outputChannels: Int, fused: Bool) {
        conv1 = RepConv(inputChannels, outputChannels / 2, kernelSize: 3, stride: 2, fused: fused)
        conv2 = RepConv(outputChannels / 2, outputChannels, kernelSize: 3, stride: 2, fused: fused)
    }

    public func namedParameters() -> [(String, Parameter)] { prefixed("0.", conv1) + prefixed("2.", conv2) }

    /// x: (B, in, H, W) -> (B, out, H/4, W/4) (⌈·⌉ twice)
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        conv2.forward(conv1.forward(x, mode: mode, activation: .gelu), mode: mode)
    }

    /// dy -> dx (an empty tensor without `inputGradient`: the input is the image)
    public func backward(_ dy: Tensor, inputGradient: Bool = true) -> Tensor {
        conv1.backward(conv2.backward(dy), inputGradient: inputGradient)
    }

    public func fuse(into target: RepViTStem) {
        conv1.fuse(into: target.conv1)
        conv2.fuse(into: target.conv2)
    }
}

/// EdgeSAM's fusion of RepViT's last two stages and SAM's neck:
/// e = neck(fuse_stage2(s2) + bicubic×2(fuse_stage3(s3))), fuse_stage2 / fuse_stage3 bias-free 1×1
/// convs to `channels`, the neck `EncoderNeck(channels → out)`. s2: (B, C2, H, W) at S/16, s3:
/// (B, C3, H/2, W/2) at S/32 -> (B, out, H, W). Keys (the encoder's): `fuse_stage2.weight`,
/// `fuse_stage3.op_list.0.weight`, `neck.*`. Unchanged by fusing (no BatchNorm).
public final class RepViTFusionNeck: Module {
    public let fuseStage2: Conv2d
    public let fuseStage3: Conv2d
    public let neck: EncoderNeck

    public init(stage2Channels: Int, stage3Channels: Int, channels: Int = 256, outputChannels: Int = 256) {
        fuseStage2 = Conv2d(inputChannels: stage2Channels, outputChannels: channels, kernelSize: 1, bias: false)
        fuseStage3 = Conv2d(inputChannels: stage3Channels, outputChannels: channels, kernelSize: 1, bias: false)
        neck = EncoderNeck(inputChannels: channels, outputChannels: outputChannels)
    }

    public func namedParameters() -> [(String, Parameter)] {
        prefixed("fuse_stage2.", fuseStage2) + prefixed("fuse_stage3.op_list.0.", fuseStage3) + prefixed("neck.", neck)
    }

    /// (s2: (B, C2, H, W), s3: (B, C3, H/2, W/2)) -> (B, out, H, W)
    public func forward(stage2 s2: Tensor, stage3 s3: Tensor, mode: ForwardMode) -> Tensor {
        precondition(s2.rank == 4 && s3.rank == 4 && s3.shape[2] * 2 == s2.shape[2] && s3.shape[3] * 2 == s2.shape[3],
                     "RepViTFusionNeck: stage 3 \(s3.shape) must be half the side of stage 2 \(s2.shape)")
        var x = fuseStage2.forward(s2, mode: mode)
        x.add(BicubicUpsample.forward(fuseStage3.forward(s3, mode: mode)))
        return neck.forward(x, mode: mode)
    }

    /// dy: (B, out, H, W) -> (dStage2, dStage3)
    public func backward(_ dy: Tensor) -> (stage2: Tensor, stage3: Tensor) {
        let dx = neck.backward(dy)
        return (fuseStage2.backward(dx), fuseStage3.backward(BicubicUpsample.backward(dx)))
    }
}

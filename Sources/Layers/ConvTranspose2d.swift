import Foundation
import Tensor

/// `nn.ConvTranspose2d(Cin, Cout, kernel_size=k, stride=k)` with kernel == stride and no padding
/// (SAM's mask-decoder upscaling). Checkpoint keys: `weight` (Cin, Cout, k, k), `bias` (Cout).
///
/// Kernel == stride makes the output blocks disjoint: the k×k block of output pixels above input
/// pixel (iy, ix) is y[co, iy·k + ky, ix·k + kx] = bias[co] + Σ_ci W[ci, co, ky, kx] · x[ci, iy, ix].
/// Per image that is one GEMM, Z (Cout·k·k, H·W) = Wᵀ · x (Cin, H·W), then a scatter of Z's rows
/// into the blocks (parallel over output channels). Backward gathers dy into the same layout.
public final class ConvTranspose2d: Module {
    public let inputChannels: Int
    public let outputChannels: Int
    public let kernelSize: Int
    public var stride: Int { kernelSize }
    /// `weight`: (Cin, Cout, k, k)
    public let weight: Parameter
    /// `bias`: (Cout), absent when built with `bias: false`. Parameters start at zero (as `Linear`).
    public let bias: Parameter?

    // x: (B, Cin, H, W), kept for backward
    private var input: Tensor?

    /// `stride` must equal `kernelSize` (the only case SAM uses; blocks do not overlap).
    public init(inputChannels: Int, outputChannels: Int, kernelSize: Int, stride: Int, bias: Bool = true) {
        precondition(kernelSize >= 1 && stride == kernelSize,
                     "ConvTranspose2d: only kernel_size == stride is supported, got kernel \(kernelSize), stride \(stride)")
        self.inputChannels = inputChannels
        self.outputChannels = outputChannels
        self.kernelSize = kernelSize
        weight = Parameter(Tensor(zeros: [inputChannels, outputChannels, kernelSize, kernelSize]))
        self.bias = bias ? Parameter(Tensor(zeros: [outputChannels]), decays: false) : nil
    }

    public func namedParameters() -> [(String, Parameter)] {
        var p = [("weight", weight)]
        if let bias { p.append(("bias", bias)) }
        return p
    }

    var name: String { "ConvTranspose2d(\(inputChannels)→\(outputChannels), k\(kernelSize) s\(kernelSize))" }

    /// x: (B, Cin, H, W) -> y: (B, Cout, H·k, W·k)
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        precondition(x.rank == 4 && x.shape[1] == inputChannels,
                     "\(name): expected input of shape (B, \(inputChannels), H, W), got \(x.shape)")
        let B = x.shape[0], Ci = inputChannels, Co = outputChannels, H = x.shape[2], W = x.shape[3]
        let k = kernelSize, kk = k * k, HW = H * W, Ho = H * k, Wo = W * k
        var y = Tensor.empty([B, Co, Ho, Wo])
        // z: (Cout·k·k, H·W) for one image
        var z = [Float](repeating: 0, count: Co * kk * HW)
        let biasValues = bias?.value.data
        x.data.withUnsafeBufferPointer { xb in
            y.data.withUnsafeMutableBufferPointer { yb in
                weight.value.data.withUnsafeBufferPointer { wb in
                    z.withUnsafeMutableBufferPointer { zb in
                        let xp = xb.baseAddress!, yp = yb.baseAddress!, wp = wb.baseAddress!, zp = zb.baseAddress!
                        for b in 0..<B {
                            // z (Cout·k·k, HW) = Wᵀ (Cout·k·k, Cin) · x_b (Cin, HW)
                            gemm(transA: true, m: Co * kk, n: HW, k: Ci, a: wp, lda: Co * kk,
                                 b: xp + b * Ci * HW, ldb: HW, c: zp, ldc: HW)
                            let yi = yp + b * Co * Ho * Wo
                            parallelFor(Co, costPerItem: kk * HW) { co in
                                let bv = biasValues?[co] ?? 0
                                for iy in 0..<H { for ky in 0..<k {
                                    let yrow = yi + (co * Ho + iy * k + ky) * Wo
                                    for kx in 0..<k {
                                        let zrow = zp + (co * kk + ky * k + kx) * HW + iy * W
                                        for ix in 0..<W { yrow[ix * k + kx] = zrow[ix] + bv }
                                    }
                                } }
                            }
                        }
                    }
                }
            }
        }
        input = mode.keepsActivations ? x : nil
        return y
    }

    /// dy: (B, Cout, H·k, W·k) -> dx: (B, Cin, H, W); dW += x · dZᵀ, db += Σ dy (unless frozen).
    public func backward(_ dy: Tensor) -> Tensor {
        guard let x = input else { preconditionFailure("\(name).backward without a training-mode forward") }
        let B = x.shape[0], Ci = inputChannels, Co = outputChannels, H = x.shape[2], W = x.shape[3]
        let k = kernelSize, kk = k * k, HW = H * W, Ho = H * k, Wo = W * k
        precondition(dy.shape == [B, Co, Ho, Wo], "\(name).backward: expected dy of shape \([B, Co, Ho, Wo]), got \(dy.shape)")
        var dx = Tensor.empty(x.shape)
        // dz: (Cout·k·k, H·W) for one image
        var dz = [Float](repeating: 0, count: Co * kk * HW)
        let weightGradient = weight.requiresGradient
        x.data.withUnsafeBufferPointer { xb in
            dy.data.withUnsafeBufferPointer { gb in
                dx.data.withUnsafeMutableBufferPointer { dxb in
                    weight.value.data.withUnsafeBufferPointer { wb in
                        weight.grad.data.withUnsafeMutableBufferPointer { gwb in
                            dz.withUnsafeMutableBufferPointer { dzb in
                                let xp = xb.baseAddress!, gp = gb.baseAddress!, dxp = dxb.baseAddress!
                                let wp = wb.baseAddress!, gw = gwb.baseAddress, dzp = dzb.baseAddress!
                                for b in 0..<B {
                                    let gi = gp + b * Co * Ho * Wo
                                    parallelFor(Co, costPerItem: kk * HW) { co in
                                        for iy in 0..<H { for ky in 0..<k {
                                            let grow = gi + (co * Ho + iy * k + ky) * Wo
                                            for kx in 0..<k {
                                                let zrow = dzp + (co * kk + ky * k + kx) * HW + iy * W
                                                for ix in 0..<W { zrow[ix] = grow[ix * k + kx] }
                                            }
                                        } }
                                    }
                                    if weightGradient {
                                        // dW (Cin, Cout·k·k) += x_b (Cin, HW) · dzᵀ (HW, Cout·k·k)
                                        gemm(transB: true, m: Ci, n: Co * kk, k: HW, a: xp + b * Ci * HW, lda: HW,
                                             b: dzp, ldb: HW, beta: 1, c: gw!, ldc: Co * kk)
                                    }
                                    // dx_b (Cin, HW) = W (Cin, Cout·k·k) · dz (Cout·k·k, HW)
                                    gemm(m: Ci, n: HW, k: Co * kk, a: wp, lda: Co * kk, b: dzp, ldb: HW,
                                         c: dxp + b * Ci * HW, ldc: HW)
                                }
                            }
                        }
                    }
                }
                if let bias, bias.requiresGradient {
                    bias.grad.data.withUnsafeMutableBufferPointer { gbb in
                        accumulateChannelBiasGradient(gb.baseAddress!, gbb.baseAddress!, B: B, C: Co, HW: Ho * Wo)
                    }
                }
            }
        }
        input = nil
        return dx
    }
}

/// Naive `F.conv_transpose2d` without padding: y[b, co, iy·s + ky, ix·s + kx] += x[b, ci, iy, ix] ·
/// W[ci, co, ky, kx] (+ bias), accumulated in Double; any kernel and stride.
/// x: (B, Cin, H, W), weight: (Cin, Cout, k, k) -> (B, Cout, (H−1)·s + k, (W−1)·s + k)
public func convTranspose2dReference(_ x: Tensor, weight: Tensor, bias: Tensor?, stride s: Int) -> Tensor {
    let B = x.shape[0], Ci = x.shape[1], H = x.shape[2], W = x.shape[3]
    precondition(weight.rank == 4 && weight.shape[0] == Ci, "convTranspose2dReference: weight \(weight.shape) vs input \(x.shape)")
    let Co = weight.shape[1], k = weight.shape[2]
    let Ho = (H - 1) * s + k, Wo = (W - 1) * s + k
    var acc = [Double](repeating: 0, count: B * Co * Ho * Wo)
    for b in 0..<B { for co in 0..<Co {
        for i in 0..<(Ho * Wo) { acc[(b * Co + co) * Ho * Wo + i] = Double(bias?.data[co] ?? 0) }
        for ci in 0..<Ci { for iy in 0..<H { for ix in 0..<W {
            let xv = Double(x.data[((b * Ci + ci) * H + iy) * W + ix])
            for ky in 0..<k { for kx in 0..<k {
                acc[((b * Co + co) * Ho + iy * s + ky) * Wo + ix * s + kx]
                    += xv * Double(weight.data[((ci * Co + co) * k + ky) * k + kx])
            } }
        } } }
    } }
    return Tensor(shape: [B, Co, Ho, Wo], data: acc.map(Float.init))
}

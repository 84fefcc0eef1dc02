import Foundation
import Tensor

/// `nn.BatchNorm2d(C)` (eps 1e-5, momentum 0.1) on NCHW maps.
/// Checkpoint keys: `weight` (C), `bias` (C), buffers `running_mean` (C), `running_var` (C);
/// `num_batches_tracked` is not represented.
///
/// - `mode.batchStatistics` (PyTorch `train()`): normalises with the batch mean and biased
///   variance over (B, H, W), and updates running_mean / running_var with momentum, the variance
///   UNBIASED (n / (n − 1)), as PyTorch does. Needs more than one value per channel.
/// - otherwise (`eval()`): normalises with the running statistics (a per-channel affine map).
/// Backward follows whichever statistics the forward used: through the batch statistics in
/// training, a per-channel scale in eval mode.
/// - Synchronised (`mode.crossReplica` set, with batch statistics): the statistics are those of
///   the batches of every process together, as if they were one batch (PyTorch's SyncBatchNorm):
///   forward sums Σx and the count, then Σ(x − mean)², over the processes; backward sums Σdy and
///   Σdy·x̂ for dx (the parameter gradients keep this process's sums: the data-parallel gradient
///   average combines them).
///
/// `forward(_:mode:activation:)` applies an activation to the normalised output in the same pass
/// (MBConv's and PatchMerging's Conv2d_BN → GELU): BN's own output is then never stored, backward
/// takes the gradient at the activation's output and recomputes the pre-activation x̂·γ + β (the
/// same float expression as the forward) for f', and forms f'·dy inside the pass that sums the
/// per-channel reductions: two passes over the stage-0 maps fewer in forward and two in backward.
public final class BatchNorm2d: Module {
    public let channels: Int
    public let eps: Float
    public let momentum: Float
    /// `weight`: (C)
    public let weight: Parameter
    /// `bias`: (C)
    public let bias: Parameter
    /// `running_mean`: (C), buffer
    public let runningMean: Parameter
    /// `running_var`: (C), buffer
    public let runningVar: Parameter

    // xhat: (B, C, H, W) normalised input; rstd: (C) 1/sqrt(var + eps) of the statistics used;
    // usedBatchStatistics: which backward applies; activation, activated: the fused activation and
    // its output (B, C, H, W). Kept for backward only.
    private var xhat: Tensor?
    private var rstd: [Float] = []
    private var usedBatchStatistics = false
    private var activation: Activation?
    private var activated: Tensor?
    // reducer, globalCount: the synchronised forward's reducer and its values per channel over
    // every process (B·H·W summed), for backward.
    private var reducer: CrossReplicaSum?
    private var globalCount = 0

    public init(_ channels: Int, eps: Float = 1e-5, momentum: Float = 0.1, weightInit: Float = 1) {
        self.channels = channels
        self.eps = eps
        self.momentum = momentum
        weight = Parameter(Tensor(repeating: weightInit, shape: [channels]), decays: false)
        bias = Parameter(Tensor(zeros: [channels]), decays: false)
        runningMean = Parameter(buffer: Tensor(zeros: [channels]))
        runningVar = Parameter(buffer: Tensor(repeating: 1, shape: [channels]))
    }

    public func namedParameters() -> [(String, Parameter)] {
        [("weight", weight), ("bias", bias), ("running_mean", runningMean), ("running_var", runningVar)]
    }

    /// x: (B, C, H, W) -> y: (B, C, H, W)
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor { forward(x, mode: mode, activation: nil) }

    /// x: (B, C, H, W) -> y = activation(BN(x)): (B, C, H, W). `backward` then takes dL/dy.
    public func forward(_ x: Tensor, mode: ForwardMode, activation act: Activation?) -> Tensor {
        precondition(x.rank == 4 && x.shape[1] == channels,
                     "BatchNorm2d(\(channels)): expected input of shape (B, \(channels), H, W), got \(x.shape)")
        let B = x.shape[0], C = channels, HW = x.shape[2] * x.shape[3], n = B * HW
        // mean, scale: (C) the statistics used: batch statistics or running averages
        var mean = [Float](repeating: 0, count: C), scale = [Float](repeating: 0, count: C)
        var count = n
        if mode.batchStatistics, let sync = mode.crossReplica {
            // Synchronised: Σx and the count over every process, then Σ(x − mean)² about the
            // global mean (the same two passes as below, each total summed across processes).
            var sums = [Double](repeating: 0, count: C + 1)
            x.data.withUnsafeBufferPointer { xb in
                sums.withUnsafeMutableBufferPointer { sb in
                    let xp = xb.baseAddress!, sp = sb.baseAddress!
                    parallelFor(C, costPerItem: n) { c in
                        var total: Double = 0
                        for b in 0..<B { total += Double(Reductions.sum(xp + (b * C + c) * HW, HW)) }
                        sp[c] = total
                    }
                }
            }
            sums[C] = Double(n)
            sync.sum(&sums)
            count = Int(sums[C])
            precondition(count > 1, "BatchNorm2d(\(channels)): training needs more than one value per channel over all processes")
            for c in 0..<C { mean[c] = Float(sums[c] / Double(count)) }
            var squares = [Double](repeating: 0, count: C)
            x.data.withUnsafeBufferPointer { xb in
                squares.withUnsafeMutableBufferPointer { qb in
                    let xp = xb.baseAddress!, qp = qb.baseAddress!
                    parallelFor(C, costPerItem: n) { c in
                        var sq: Double = 0
                        for b in 0..<B {
                            sq += Double(Reductions.sumSquaredDeviations(xp + (b * C + c) * HW, HW, from: mean[c]))
                        }
                        qp[c] = sq
                    }
                }
            }
            sync.sum(&squares)
            let mom = momentum, unbias = Float(count) / Float(count - 1)
            for c in 0..<C {
                let variance = Float(squares[c] / Double(count))
                scale[c] = 1 / (variance + eps).squareRoot()
                runningMean.value.data[c] = (1 - mom) * runningMean.value.data[c] + mom * mean[c]
                runningVar.value.data[c] = (1 - mom) * runningVar.value.data[c] + mom * variance * unbias
            }
        } else if mode.batchStatistics {
            precondition(n > 1, "BatchNorm2d(\(channels)): training needs more than one value per channel, got input \(x.shape)")
            var variance = [Float](repeating: 0, count: C)
            x.data.withUnsafeBufferPointer { xb in
                mean.withUnsafeMutableBufferPointer { mb in
                    variance.withUnsafeMutableBufferPointer { vb in
                        let xp = xb.baseAddress!, mp = mb.baseAddress!, vp = vb.baseAddress!
                        // Two passes per channel (mean, then squared deviations), partial sums per plane
                        // in Float (vectorised), totals in Double.
                        parallelFor(C, costPerItem: n * 2) { c in
                            var total: Double = 0
                            for b in 0..<B { total += Double(Reductions.sum(xp + (b * C + c) * HW, HW)) }
                            let m = Float(total / Double(n))
                            var sq: Double = 0
                            for b in 0..<B {
                                sq += Double(Reductions.sumSquaredDeviations(xp + (b * C + c) * HW, HW, from: m))
                            }
                            mp[c] = m
                            vp[c] = Float(sq / Double(n))
                        }
                    }
                }
            }
            let mom = momentum, unbias = Float(n) / Float(n - 1)
            for c in 0..<C {
                scale[c] = 1 / (variance[c] + eps).squareRoot()
                runningMean.value.data[c] = (1 - mom) * runningMean.value.data[c] + mom * mean[c]
                runningVar.value.data[c] = (1 - mom) * runningVar.value.data[c] + mom * variance[c] * unbias
            }
        } else {
            for c in 0..<C {
                mean[c] = runningMean.value.data[c]
                scale[c] = 1 / (runningVar.value.data[c] + eps).squareRoot()
            }
        }
        let keep = mode.keepsActivations
        var y = Tensor.empty(x.shape)
        var xh = keep ? Tensor.empty(x.shape) : Tensor(zeros: [0])
        x.data.withUnsafeBufferPointer { xb in
            y.data.withUnsafeMutableBufferPointer { yb in
                xh.data.withUnsafeMutableBufferPointer { hb in
                    weight.value.data.withUnsafeBufferPointer { wb in
                        bias.value.data.withUnsafeBufferPointer { bb in
                            let xp = xb.baseAddress!, yp = yb.baseAddress!, hp = hb.baseAddress
                            let w = wb.baseAddress!, bv = bb.baseAddress!
                            parallelFor(B * C, costPerItem: HW * (act == nil ? 2 : 6)) { bc in
                                let c = bc % C, o = bc * HW
                                let m = mean[c], s = scale[c], a = s * w[c], shift = bv[c] - m * a
                                if keep {
                                    let h = hp! + o
                                    for i in 0..<HW { h[i] = (xp[o + i] - m) * s; yp[o + i] = h[i] * w[c] + bv[c] }
                                } else {
                                    for i in 0..<HW { yp[o + i] = xp[o + i] * a + shift }
                                }
                                // the activation on the plane while it is in cache
                                switch act {
                                case .gelu: FastMath.geluInPlace(yp + o, HW)
                                case .relu: for i in 0..<HW where yp[o + i] < 0 { yp[o + i] = 0 }
                                case nil: break
                                }
                            }
                        }
                    }
                }
            }
        }
        if keep {
            xhat = xh; rstd = scale; usedBatchStatistics = mode.batchStatistics
            activation = act; activated = act == nil ? nil : y
            reducer = mode.batchStatistics ? mode.crossReplica : nil; globalCount = count
        } else {
            xhat = nil; rstd = []; activation = nil; activated = nil; reducer = nil
        }
        return y
    }

    /// dy: (B, C, H, W) -> dx; dW += Σ dy·x̂, dB += Σ dy.
    /// Batch statistics: dx = w·rstd·(dy − mean(dy) − x̂·mean(dy·x̂)) per channel.
    /// Running statistics: dx = w·rstd·dy.
    /// After a forward with an activation f, dy is the gradient at f's output: the formulas above
    /// apply to dy·f'(x̂·w + b), formed plane by plane in the reductions' pass (into dx's buffer).
    public func backward(_ dy: Tensor) -> Tensor {
        guard let xh = xhat else { preconditionFailure("BatchNorm2d.backward without a training-mode forward") }
        precondition(dy.shape == xh.shape, "BatchNorm2d(\(channels)).backward: dy \(dy.shape) vs input \(xh.shape)")
        let B = xh.shape[0], C = channels, HW = xh.shape[2] * xh.shape[3], n = B * HW
        // sumDy, sumDyXhat: (C) over the gradient at BN's output
        var sumDy = [Double](repeating: 0, count: C), sumDyXhat = [Double](repeating: 0, count: C)
        // dx: (B, C, H, W); with an activation it first holds dy·f' (BN's output gradient)
        var dx = Tensor.empty(xh.shape)
        let batch = usedBatchStatistics, rs = rstd, act = activation
        let y = activated ?? Tensor(zeros: [0])
        dy.data.withUnsafeBufferPointer { gb in
            xh.data.withUnsafeBufferPointer { hb in
                dx.data.withUnsafeMutableBufferPointer { ob in
                    y.data.withUnsafeBufferPointer { yb in
                        weight.value.data.withUnsafeBufferPointer { wb in
                            bias.value.data.withUnsafeBufferPointer { bb in
                                let h = hb.baseAddress!, out = ob.baseAddress!, w = wb.baseAddress!
                                let yp = yb.baseAddress, bv = bb.baseAddress!, dyp = gb.baseAddress!
                                // g: the gradient at BN's output (dy, or dy·f' written into dx)
                                let g = act == nil ? dyp : UnsafePointer(out)
                                sumDy.withUnsafeMutableBufferPointer { s1b in
                                    sumDyXhat.withUnsafeMutableBufferPointer { s2b in
                                        let s1 = s1b.baseAddress!, s2 = s2b.baseAddress!
                                        parallelFor(C, costPerItem: n * (act == nil ? 2 : 6)) { c in
                                            var t1: Double = 0, t2: Double = 0
                                            for b in 0..<B {
                                                let o = (b * C + c) * HW
                                                switch act {
                                                case .gelu:
                                                    normalizedGELUBackward(dyp + o, normalized: h + o, scale: w[c], shift: bv[c],
                                                                           gelu: yp! + o, out + o, HW)
                                                case .relu:
                                                    for i in 0..<HW { out[o + i] = yp![o + i] > 0 ? dyp[o + i] : 0 }
                                                case nil: break
                                                }
                                                t1 += Double(Reductions.sum(g + o, HW))
                                                t2 += Double(Reductions.dot(g + o, h + o, HW))
                                            }
                                            s1[c] = t1; s2[c] = t2
                                        }
                                    }
                                }
                                // Synchronised: the means of dx's formula over every process's batch.
                                let (m1, m2): ([Float], [Float])
                                if batch, let sync = reducer {
                                    var sums = sumDy + sumDyXhat
                                    sync.sum(&sums)
                                    let total = Double(globalCount)
                                    (m1, m2) = (sums[0..<C].map { Float($0 / total) }, sums[C...].map { Float($0 / total) })
                                } else {
                                    (m1, m2) = (sumDy.map { Float($0 / Double(n)) }, sumDyXhat.map { Float($0 / Double(n)) })
                                }
                                parallelFor(B * C, costPerItem: HW * 2) { bc in
                                    let c = bc % C, o = bc * HW, a = w[c] * rs[c]
                                    let mg = batch ? m1[c] : 0, mgx = batch ? m2[c] : 0
                                    if act == nil {
                                        for i in 0..<HW { out[o + i] = a * (dyp[o + i] - mg - h[o + i] * mgx) }
                                    } else {  // in place over dy·f' (a loop of its own: no overlap check)
                                        for i in 0..<HW { out[o + i] = a * (out[o + i] - mg - h[o + i] * mgx) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        for c in 0..<C {
            weight.grad.data[c] += Float(sumDyXhat[c])
            bias.grad.data[c] += Float(sumDy[c])
        }
        xhat = nil; rstd = []; activation = nil; activated = nil; reducer = nil
        return dx
    }
}

/// dx[i] = dy[i] · GELU'(v) with v = xhat[i]·scale + shift recomputed (BatchNorm's output, the
/// same float expression its forward evaluated) and y[i] = GELU(v) (distinct buffers): the fused
/// BatchNorm → GELU backward's elementwise step.
private func normalizedGELUBackward(_ dy: UnsafePointer<Float>, normalized xhat: UnsafePointer<Float>, scale: Float,
                                    shift: Float, gelu y: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, _ n: Int) {
    for i in 0..<n { dx[i] = dy[i] * FastMath.geluDerivative(xhat[i] * scale + shift, gelu: y[i]) }
}

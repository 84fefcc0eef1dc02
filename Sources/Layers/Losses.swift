import Foundation
import Tensor

// Losses: each takes the prediction and the target (same shape) and returns the scalar value
// and the gradient with respect to the prediction. Reductions follow PyTorch's default `mean`.
//
// Numerics: every term is evaluated in Double from the Float32 inputs and summed in Double over
// fixed blocks of elements whose partial sums are added in block order, so the value does not
// depend on the thread count; the gradient is computed in Double and rounded to Float32 once.
// The gradient already includes the 1/N of the mean: a trainer weighting several losses scales
// it by the loss weight and hands it to the model's backward.

/// A loss value and its gradient with respect to the prediction (same shape as the prediction).
public struct LossResult {
    public var value: Double
    public var gradient: Tensor

    public init(value: Double, gradient: Tensor) {
        self.value = value
        self.gradient = gradient
    }
}

/// Shared driver of the elementwise mean losses: `term(p, t)` gives (value, d value / d p) for
/// one element in Double; the result is the mean and the gradient divided by N.
@inline(__always)
func elementwiseMeanLoss(_ name: String, _ prediction: Tensor, _ target: Tensor, costPerItem: Int = 4,
                         _ term: (Double, Double) -> (Double, Double)) -> LossResult {
    precondition(prediction.shape == target.shape,
                 "\(name): prediction shape \(prediction.shape) does not match target shape \(target.shape)")
    let n = prediction.count
    precondition(n > 0, "\(name): empty prediction \(prediction.shape)")
    let invN = 1 / Double(n)
    var grad = Tensor.empty(prediction.shape)
    let total = prediction.data.withUnsafeBufferPointer { pb in
        target.data.withUnsafeBufferPointer { tb in
            grad.data.withUnsafeMutableBufferPointer { gb in
                let p = pb.baseAddress!, t = tb.baseAddress!, g = gb.baseAddress!
                return blockedSum(n, costPerItem: costPerItem) { r in
                    var s: Double = 0
                    for i in r {
                        let (v, d) = term(Double(p[i]), Double(t[i]))
                        s += v
                        g[i] = Float(d * invN)
                    }
                    return s
                }
            }
        }
    }
    return LossResult(value: total * invN, gradient: grad)
}

/// `F.mse_loss(prediction, target)`: mean of (p − t)²; gradient 2(p − t)/N.
public func mseLoss(_ prediction: Tensor, _ target: Tensor) -> LossResult {
    elementwiseMeanLoss("mseLoss", prediction, target) { p, t in
        let d = p - t
        return (d * d, 2 * d)
    }
}

/// MSE with every channel weighed by the inverse of the target's variance in that channel over
/// the batch: (B, C, H, W), v_c = Var_{b,h,w}(t[:, c]), w_c = 1 / (v_c + ε) scaled so that
/// mean_c w_c = 1 (the loss is then on MSE's scale), ε = 1e-3 · mean_c v_c (no channel weighs more
/// than 1000× the mean). L = Σ w_c (p − t)² / N; gradient 2 w_c (p − t) / N. The weights are
/// constants of the target (not differentiated). A channel of large variance no longer dominates
/// the loss: the decoder reads every channel.
public func channelNormalizedMSELoss(_ prediction: Tensor, _ target: Tensor) -> LossResult {
    precondition(prediction.shape == target.shape,
                 "channelNormalizedMSELoss: prediction shape \(prediction.shape) does not match target shape \(target.shape)")
    precondition(prediction.rank == 4 && prediction.count > 0, "channelNormalizedMSELoss: expected (B, C, H, W), got \(prediction.shape)")
    let B = target.shape[0], C = target.shape[1], HW = target.shape[2] * target.shape[3], M = B * HW
    // v: (C) the target's per-channel variance over (B, H, W), in Double
    var v = [Double](repeating: 0, count: C)
    for c in 0..<C {
        var sum = 0.0, sq = 0.0
        for b in 0..<B {
            let o = (b * C + c) * HW
            for i in 0..<HW { let x = Double(target.data[o + i]); sum += x; sq += x * x }
        }
        let mean = sum / Double(M)
        v[c] = max(0, sq / Double(M) - mean * mean)
    }
    let eps = 1e-3 * v.reduce(0, +) / Double(C)
    var w = v.map { 1 / ($0 + eps) }
    let meanW = w.reduce(0, +) / Double(C)
    w = w.map { $0 / meanW }
    let invN = 1 / Double(prediction.count)
    var grad = Tensor.empty(prediction.shape)
    var total = 0.0
    for b in 0..<B {
        for c in 0..<C {
            let o = (b * C + c) * HW, wc = w[c]
            var s = 0.0
            for i in 0..<HW {
                let d = Double(prediction.data[o + i]) - Double(target.data[o + i])
                s += d * d
                grad.data[o + i] = Float(2 * wc * d * invN)
            }
            total += wc * s
        }
    }
    return LossResult(value: total * invN, gradient: grad)
}

/// `F.l1_loss(prediction, target)`: mean of |p − t|; gradient sign(p − t)/N (0 where p = t,
/// as PyTorch's `sgn`).
public func l1Loss(_ prediction: Tensor, _ target: Tensor) -> LossResult {
    elementwiseMeanLoss("l1Loss", prediction, target) { p, t in
        let d = p - t
        return (abs(d), d > 0 ? 1 : (d < 0 ? -1 : 0))
    }
}

/// `F.huber_loss(prediction, target, delta=delta)`: mean of ½d² where |d| < delta and
/// delta·(|d| − ½delta) elsewhere (d = p − t); gradient d/N inside, ±delta/N outside.
public func huberLoss(_ prediction: Tensor, _ target: Tensor, delta: Double = 1.0) -> LossResult {
    precondition(delta > 0, "huberLoss: delta must be positive, got \(delta)")
    return elementwiseMeanLoss("huberLoss", prediction, target) { p, t in
        let d = p - t, a = abs(d)
        if a < delta { return (0.5 * d * d, d) }
        return (delta * (a - 0.5 * delta), d > 0 ? delta : -delta)
    }
}

/// `F.binary_cross_entropy_with_logits(logits, target)` (no weights): mean of
/// max(x, 0) − x·t + log(1 + e^(−|x|)), the overflow-free form of −t·log σ(x) − (1 − t)·log(1 − σ(x));
/// gradient (σ(x) − t)/N. Targets are probabilities in [0, 1] (soft targets allowed).
public func bceWithLogitsLoss(_ logits: Tensor, _ target: Tensor) -> LossResult {
    elementwiseMeanLoss("bceWithLogitsLoss", logits, target, costPerItem: 40) { x, t in
        let e = exp(-abs(x))
        let value = Swift.max(x, 0) - x * t + log1p(e)
        let sigmoid = x >= 0 ? 1 / (1 + e) : e / (1 + e)
        return (value, sigmoid - t)
    }
}

/// Dice loss on mask logits. Every slice over the last two dimensions is one mask (logits
/// (M, H, W) or (B, M, H, W), …): with p = σ(x),
///   dice_m = 1 − (2·Σ p·t + smooth) / (Σ p + Σ t + smooth)
/// summed over the mask's pixels, and the loss is the mean of dice_m over the masks (DETR/SAM's
/// `dice_loss` with `num_masks` = the number of masks, smooth = 1 by default). Gradient per
/// pixel: −(2t·D − (2I + smooth)) / D² · p(1 − p) / M, with I = Σ p·t and D = Σ p + Σ t + smooth.
public func diceLoss(_ logits: Tensor, _ target: Tensor, smooth: Double = 1.0) -> LossResult {
    precondition(logits.shape == target.shape,
                 "diceLoss: logits shape \(logits.shape) does not match target shape \(target.shape)")
    precondition(logits.rank >= 2 && logits.count > 0, "diceLoss: expected (…, H, W) masks, got shape \(logits.shape)")
    precondition(smooth >= 0, "diceLoss: smooth must be ≥ 0, got \(smooth)")
    let HW = logits.dim(-2) * logits.dim(-1), M = logits.count / HW
    var grad = Tensor.empty(logits.shape)
    var perMask = [Double](repeating: 0, count: M)
    logits.data.withUnsafeBufferPointer { xb in
        target.data.withUnsafeBufferPointer { tb in
            grad.data.withUnsafeMutableBufferPointer { gb in
                perMask.withUnsafeMutableBufferPointer { mb in
                    let x = xb.baseAddress!, t = tb.baseAddress!, g = gb.baseAddress!, losses = mb.baseAddress!
                    parallelFor(M, costPerItem: HW * 40) { m in
                        // x, t, g: (HW) slices of mask m; g holds σ(x) until the second pass.
                        let xm = x + m * HW, tm = t + m * HW, gm = g + m * HW
                        var inter: Double = 0, sumP: Double = 0, sumT: Double = 0
                        var sig = [Double](repeating: 0, count: HW)
                        for i in 0..<HW {
                            let v = Double(xm[i])
                            let s = v >= 0 ? 1 / (1 + exp(-v)) : { let e = exp(v); return e / (1 + e) }()
                            sig[i] = s
                            let tv = Double(tm[i])
                            inter += s * tv; sumP += s; sumT += tv
                        }
                        let num = 2 * inter + smooth, den = sumP + sumT + smooth
                        losses[m] = 1 - num / den
                        let scale = 1 / (den * den * Double(M))
                        for i in 0..<HW {
                            let s = sig[i]
                            gm[i] = Float(-(2 * Double(tm[i]) * den - num) * scale * s * (1 - s))
                        }
                    }
                }
            }
        }
    }
    return LossResult(value: perMask.reduce(0, +) / Double(M), gradient: grad)
}

// MARK: - MSE over the valid (unpadded) part of embeddings

/// The part of a (H, W) embedding grid that covers the real image: rows `0..<height`, columns
/// `0..<width` (the image is resized so its longer side is the encoder's input size, then padded
/// at the bottom and right, so the valid cells are the top-left ones).
public struct ValidRegion: Equatable, Sendable, Codable {
    public var height: Int
    public var width: Int

    public init(height: Int, width: Int) {
        self.height = height
        self.width = width
    }

    /// How a grid cell that is partly image, partly padding is counted.
    public enum Rule: String, Sendable, Codable {
        /// Every cell that holds at least one image pixel: ⌈h · grid / input⌉.
        case covering
        /// EdgeSAM's rule: bilinear (align_corners=False) downsampling of the full-resolution
        /// validity mask, thresholded at > 0.5. For the 16× stride this is ⌊(h + 7)/16⌋, i.e.
        /// h/16 rounded to the nearest integer with ties down.
        case edgeSAM = "edge_sam"
    }

    /// The valid region of a `gridSize`×`gridSize` embedding for an image resized to
    /// `resizedHeight`×`resizedWidth` inside the padded `inputSize`×`inputSize` input
    /// (1024 → 64 for SAM). `inputSize` must be a multiple of `gridSize`.
    public static func embedding(resizedHeight: Int, resizedWidth: Int, inputSize: Int = 1024,
                                 gridSize: Int = 64, rule: Rule = .covering) -> ValidRegion {
        precondition(inputSize % gridSize == 0, "ValidRegion: input size \(inputSize) is not a multiple of grid size \(gridSize)")
        precondition((0...inputSize).contains(resizedHeight) && (0...inputSize).contains(resizedWidth),
                     "ValidRegion: resized size \(resizedHeight)×\(resizedWidth) outside the \(inputSize)² input")
        let s = inputSize / gridSize
        func cells(_ n: Int) -> Int {
            switch rule {
            case .covering: return (n + s - 1) / s
            case .edgeSAM:
                // Output cell i samples input position (i + ½)·s − ½, between pixels i·s + s/2 − 1
                // and i·s + s/2 (s even): > 0.5 iff both are valid, i.e. i·s + s/2 < n.
                return s % 2 == 0 ? Swift.max(0, (n + s / 2 - 1) / s) : (n + s / 2) / s
            }
        }
        return ValidRegion(height: cells(resizedHeight), width: cells(resizedWidth))
    }
}

/// How `maskedMSELoss` normalises the sum of squared errors.
public enum MaskedMSENormalization: String, Sendable, Codable {
    /// Σ over all valid elements of all samples of (p − t)², divided by the number of valid
    /// elements Σ_b C·h_b·w_b: every valid element weighs the same (a larger image counts more).
    case validElements = "valid_elements"
    /// EdgeSAM's: per sample Σ (p − t)² / (C·h_b·w_b), then the mean over the samples whose
    /// region is not empty: every image weighs the same.
    case perSample = "per_sample"
}

/// MSE between (B, C, H, W) embeddings restricted, per sample b, to the top-left
/// `regions[b].height × regions[b].width` cells (the part that covers the unpadded image).
/// Normalisation: `.validElements` (default) = sum of squared errors over the valid elements /
/// number of valid elements; `.perSample` = EdgeSAM's per-image mean, averaged over images.
/// Padding cells get a zero gradient. An all-empty batch gives 0 and a zero gradient.
public func maskedMSELoss(_ prediction: Tensor, _ target: Tensor, regions: [ValidRegion],
                          normalization: MaskedMSENormalization = .validElements) -> LossResult {
    precondition(prediction.shape == target.shape,
                 "maskedMSELoss: prediction shape \(prediction.shape) does not match target shape \(target.shape)")
    precondition(prediction.rank == 4, "maskedMSELoss: expected (B, C, H, W) embeddings, got shape \(prediction.shape)")
    let B = prediction.shape[0], C = prediction.shape[1], H = prediction.shape[2], W = prediction.shape[3]
    precondition(regions.count == B, "maskedMSELoss: \(regions.count) valid regions for a batch of \(B)")
    for (b, r) in regions.enumerated() {
        precondition((0...H).contains(r.height) && (0...W).contains(r.width),
                     "maskedMSELoss: valid region \(r.height)×\(r.width) of sample \(b) outside the \(H)×\(W) grid")
    }
    // weight[b]: the factor applied to sample b's sum of squared errors.
    var weight = [Double](repeating: 0, count: B)
    switch normalization {
    case .validElements:
        let count = regions.reduce(0) { $0 + C * $1.height * $1.width }
        if count > 0 { for b in 0..<B { weight[b] = 1 / Double(count) } }
    case .perSample:
        let nonEmpty = regions.filter { $0.height * $0.width > 0 }.count
        for b in 0..<B where regions[b].height * regions[b].width > 0 {
            weight[b] = 1 / (Double(C * regions[b].height * regions[b].width) * Double(nonEmpty))
        }
    }
    var grad = Tensor(zeros: prediction.shape)
    // perPlane[b·C + c]: Σ (p − t)² over the valid cells of channel c of sample b.
    var perPlane = [Double](repeating: 0, count: B * C)
    prediction.data.withUnsafeBufferPointer { pb in
        target.data.withUnsafeBufferPointer { tb in
            grad.data.withUnsafeMutableBufferPointer { gb in
                perPlane.withUnsafeMutableBufferPointer { sb in
                    let p = pb.baseAddress!, t = tb.baseAddress!, g = gb.baseAddress!, sums = sb.baseAddress!
                    parallelFor(B * C, costPerItem: H * W * 4) { bc in
                        let b = bc / C, h = regions[b].height, w = regions[b].width
                        let twoWeight = 2 * weight[b]
                        var s: Double = 0
                        for y in 0..<h {
                            let o = bc * H * W + y * W
                            for x in 0..<w {
                                let d = Double(p[o + x]) - Double(t[o + x])
                                s += d * d
                                g[o + x] = Float(twoWeight * d)
                            }
                        }
                        sums[bc] = s
                    }
                }
            }
        }
    }
    var value: Double = 0
    for b in 0..<B {
        var s: Double = 0
        for c in 0..<C { s += perPlane[b * C + c] }
        value += s * weight[b]
    }
    return LossResult(value: value, gradient: grad)
}

import Foundation
import Layers
import Tensor
import TestSupport
import XCTest

final class LossTests: XCTestCase {
    /// Central differences on every element of the prediction. The loss is accumulated in
    /// Double from Float32 inputs, so the only errors are the O(eps²) truncation (zero for the
    /// piecewise-quadratic losses away from their kinks) and the Float32 rounding of the analytic
    /// gradient (6e-8 relative); the step is the actual Float32 perturbation, measured in Double.
    /// Passes when |a − n| ≤ atol + rtol·max(|a|, |n|), rtol 1e-5, atol 1e-9.
    func assertFiniteDifferences(_ prediction: Tensor, eps: Float = 1e-3, rtol: Double = 1e-5, atol: Double = 1e-9,
                                 _ name: String, _ loss: (Tensor) -> LossResult,
                                 file: StaticString = #filePath, line: UInt = #line) {
        let analytic = loss(prediction).gradient
        XCTAssertEqual(analytic.shape, prediction.shape, name, file: file, line: line)
        var x = prediction
        var worst: Double = 0
        for i in 0..<x.count {
            let v = x.data[i]
            let up = v + eps, down = v - eps
            x.data[i] = up; let lp = loss(x).value
            x.data[i] = down; let lm = loss(x).value
            x.data[i] = v
            let numeric = (lp - lm) / (Double(up) - Double(down))
            let a = Double(analytic.data[i])
            let ratio = abs(a - numeric) / (atol + rtol * max(abs(a), abs(numeric)))
            worst = max(worst, ratio)
            XCTAssertLessThanOrEqual(ratio, 1, "\(name)[\(i)]: analytic \(a), numeric \(numeric)", file: file, line: line)
        }
        XCTAssertGreaterThan(analytic.maxAbs(), 0, "\(name): gradient is all zero", file: file, line: line)
    }

    /// Keeps |p − t| at least `margin` away from each kink in `kinks` (|d| = kink).
    func awayFromKinks(_ p: Tensor, _ t: Tensor, kinks: [Float], margin: Float = 0.01) -> Tensor {
        var q = p
        for i in 0..<q.count {
            for k in kinks {
                let d = q.data[i] - t.data[i]
                if abs(abs(d) - k) < margin { q.data[i] += d >= 0 ? 2 * margin : -2 * margin }
            }
        }
        return q
    }

    func testElementwiseLossesFiniteDifferences() {
        var rng = SeededRandom(seed: 31)
        let t = Tensor.randomNormal([2, 3, 7], rng: &rng)
        let p = Tensor.randomNormal([2, 3, 7], std: 1.5, rng: &rng)
        assertFiniteDifferences(p, "mse") { mseLoss($0, t) }
        assertFiniteDifferences(awayFromKinks(p, t, kinks: [0]), "l1") { l1Loss($0, t) }
        for delta in [1.0, 0.4] {
            let q = awayFromKinks(p, t, kinks: [Float(delta)])
            var inside = 0
            for i in 0..<q.count where abs(q.data[i] - t.data[i]) < Float(delta) { inside += 1 }
            XCTAssert(inside > 3 && inside < q.count - 3, "Huber data must straddle delta \(delta) (\(inside) inside)")
            assertFiniteDifferences(q, "huber(\(delta))") { huberLoss($0, t, delta: delta) }
        }
        let soft = Tensor.randomUniform([2, 3, 7], 0, 1, rng: &rng)
        assertFiniteDifferences(p.map { $0 * 3 }, "bce") { bceWithLogitsLoss($0, soft) }
    }

    /// channelNormalizedMSELoss: the value against a direct Double computation of its definition
    /// (weights 1/(v_c + ε) normalised to mean 1, ε = 1e-3 · mean v) to 1e-12 relative; the
    /// gradient against central differences (the weights do not depend on the prediction).
    func testChannelNormalizedMSE() {
        var rng = SeededRandom(seed: 33)
        var t = Tensor.randomNormal([2, 4, 3, 5], rng: &rng)
        for i in 0..<15 { t.data[i] *= 6; t.data[60 + i] *= 6 }  // channel 0: 36× the variance
        let p = t + Tensor.randomNormal([2, 4, 3, 5], std: 0.5, rng: &rng)
        var v = [Double](repeating: 0, count: 4)
        for c in 0..<4 {
            let xs = (0..<2).flatMap { b in (0..<15).map { Double(t.data[(b * 4 + c) * 15 + $0]) } }
            let m = xs.reduce(0, +) / 30
            v[c] = xs.map { ($0 - m) * ($0 - m) }.reduce(0, +) / 30
        }
        let eps = 1e-3 * v.reduce(0, +) / 4
        let raw = v.map { 1 / ($0 + eps) }, w = raw.map { $0 / (raw.reduce(0, +) / 4) }
        var expected = 0.0
        for i in 0..<p.count {
            let d = Double(p.data[i]) - Double(t.data[i])
            expected += w[(i / 15) % 4] * d * d / Double(p.count)
        }
        let r = channelNormalizedMSELoss(p, t)
        XCTAssertEqual(r.value, expected, accuracy: 1e-12 * expected)
        XCTAssertLessThan(w[0], 0.2, "the high-variance channel weighs less: \(w)")
        assertFiniteDifferences(p, "channel_normalized_mse") { channelNormalizedMSELoss($0, t) }
    }

    func testDiceAndMaskedMSEFiniteDifferences() {
        var rng = SeededRandom(seed: 32)
        let logits = Tensor.randomNormal([2, 2, 4, 5], std: 2, rng: &rng)
        let binary = Tensor.randomUniform([2, 2, 4, 5], 0, 1, rng: &rng).map { $0 > 0.6 ? 1 : 0 }
        for smooth in [1.0, 0.25] {
            assertFiniteDifferences(logits, "dice(smooth \(smooth))") { diceLoss($0, binary, smooth: smooth) }
        }
        let p = Tensor.randomNormal([3, 2, 5, 6], rng: &rng), t = Tensor.randomNormal([3, 2, 5, 6], rng: &rng)
        let regions = [ValidRegion(height: 5, width: 6), ValidRegion(height: 3, width: 4), ValidRegion(height: 1, width: 2)]
        for norm in [MaskedMSENormalization.validElements, .perSample] {
            // Padding cells: the loss does not depend on them, so both gradients are exactly 0 there
            // (atol covers them); valid cells are quadratic, so central differences are exact.
            assertFiniteDifferences(p, "maskedMSE(\(norm))") { maskedMSELoss($0, t, regions: regions, normalization: norm) }
        }
    }

    /// Against PyTorch autograd (Scripts/refdump/losses.py, float64 from float32 values): value
    /// and gradient within 1e-5 relative (value: |a − e|/|e|; gradient: max-normalised).
    func testMatchPyTorch() throws {
        let f = try Fixture("losses")
        func check(_ name: String, _ loss: (Tensor, Tensor) -> LossResult) {
            let r = loss(f[name + ".prediction"], f[name + ".target"])
            let expected = Double(f.metadata[name + ".value"]!)!
            XCTAssertLessThanOrEqual(abs(r.value - expected) / abs(expected), 1e-5, "\(name) value \(r.value) vs \(expected)")
            XCTAssertLessThanOrEqual(relativeError(r.gradient, f[name + ".grad"]), 1e-5, "\(name) gradient")
        }
        check("mse") { mseLoss($0, $1) }
        check("l1") { l1Loss($0, $1) }
        check("huber") { huberLoss($0, $1) }
        let delta = Double(f.metadata["huber_delta.delta"]!)!
        check("huber_delta") { huberLoss($0, $1, delta: delta) }
        // The Huber fixtures really cover both branches.
        let d = f["huber_delta.prediction"] - f["huber_delta.target"]
        XCTAssert(d.data.contains { abs($0) < Float(delta) } && d.data.contains { abs($0) > Float(delta) })

        let regions = f.metadata["masked_mse.regions"]!.split(separator: ";").map { s -> ValidRegion in
            let hw = s.split(separator: "x").map { Int($0)! }
            return ValidRegion(height: hw[0], width: hw[1])
        }
        XCTAssertEqual(Set(regions.map(\.height)).count, 3, "different valid sizes per sample")
        check("masked_mse") { maskedMSELoss($0, $1, regions: regions) }
        check("masked_mse_per_sample") { maskedMSELoss($0, $1, regions: regions, normalization: .perSample) }
        check("bce") { bceWithLogitsLoss($0, $1) }
        check("bce_binary") { bceWithLogitsLoss($0, $1) }
        check("dice") { diceLoss($0, $1) }
        let smooth = Double(f.metadata["dice_soft.smooth"]!)!
        check("dice_soft") { diceLoss($0, $1, smooth: smooth) }
    }

    /// Masked MSE: padding cells get exactly zero gradient and do not change the value; with the
    /// whole grid valid it equals the plain MSE.
    func testMaskedMSEIgnoresPadding() {
        var rng = SeededRandom(seed: 33)
        let p = Tensor.randomNormal([2, 3, 4, 4], rng: &rng), t = Tensor.randomNormal([2, 3, 4, 4], rng: &rng)
        let regions = [ValidRegion(height: 2, width: 3), ValidRegion(height: 4, width: 1)]
        let r = maskedMSELoss(p, t, regions: regions)
        var q = p
        for b in 0..<2 { for c in 0..<3 { for y in 0..<4 { for x in 0..<4
            where y >= regions[b].height || x >= regions[b].width {
            let i = ((b * 3 + c) * 4 + y) * 4 + x
            XCTAssertEqual(r.gradient.data[i], 0)
            q.data[i] += 100
        } } } }
        XCTAssertEqual(maskedMSELoss(q, t, regions: regions).value, r.value)
        let full = [ValidRegion(height: 4, width: 4), ValidRegion(height: 4, width: 4)]
        let m = mseLoss(p, t), mm = maskedMSELoss(p, t, regions: full)
        XCTAssertEqual(mm.value, m.value, accuracy: 1e-12 * m.value)
        XCTAssertEqual(relativeError(mm.gradient, m.gradient), 0, accuracy: 1e-7)
        let empty = maskedMSELoss(p, t, regions: [ValidRegion(height: 0, width: 4), ValidRegion(height: 3, width: 0)])
        XCTAssertEqual(empty.value, 0)
        XCTAssertEqual(empty.gradient.maxAbs(), 0)
    }

    /// The valid-region helper: `.covering` is ⌈h/16⌉; `.edgeSAM` reproduces EdgeSAM's
    /// bilinear-downsample-then-threshold mask, computed by PyTorch in the fixture.
    func testValidRegion() throws {
        let f = try Fixture("losses")
        let heights = f["edgesam.heights"].data.map { Int($0) }, cells = f["edgesam.cells"].data.map { Int($0) }
        for (h, c) in zip(heights, cells) {
            XCTAssertEqual(ValidRegion.embedding(resizedHeight: h, resizedWidth: 1024, rule: .edgeSAM).height, c, "h = \(h)")
            XCTAssertEqual(ValidRegion.embedding(resizedHeight: h, resizedWidth: 1024).height, (h + 15) / 16, "h = \(h)")
        }
        XCTAssertEqual(ValidRegion.embedding(resizedHeight: 1024, resizedWidth: 683), ValidRegion(height: 64, width: 43))
    }

    /// Large tensors (parallel blocked reduction) against a naive serial Double loop: value
    /// within 1e-12 relative (only the summation order differs), gradients identical.
    func testLargeTensorsMatchNaiveLoops() {
        var rng = SeededRandom(seed: 34)
        let shape = [2, 8, 64, 80]  // 81,920 values: several reduction blocks
        let p = Tensor.randomNormal(shape, rng: &rng), t = Tensor.randomNormal(shape, rng: &rng)
        let n = Double(p.count)
        var mse: Double = 0, l1: Double = 0, bce: Double = 0
        for i in 0..<p.count {
            let d = Double(p.data[i]) - Double(t.data[i])
            mse += d * d; l1 += abs(d)
            let x = Double(p.data[i]), y = Double(t.data[i] > 0 ? 1 : 0)
            bce += max(x, 0) - x * y + log1p(exp(-abs(x)))
        }
        let rm = mseLoss(p, t)
        XCTAssertEqual(rm.value, mse / n, accuracy: 1e-12 * mse / n)
        XCTAssertEqual(rm.gradient.data[12345], Float(2 * (Double(p.data[12345]) - Double(t.data[12345])) / n))
        XCTAssertEqual(l1Loss(p, t).value, l1 / n, accuracy: 1e-12 * l1 / n)
        XCTAssertEqual(bceWithLogitsLoss(p, t.map { $0 > 0 ? 1 : 0 }).value, bce / n, accuracy: 1e-12 * bce / n)
        let regions = [ValidRegion(height: 40, width: 80), ValidRegion(height: 64, width: 33)]
        var sq: Double = 0
        for b in 0..<2 { for c in 0..<8 { for y in 0..<regions[b].height { for x in 0..<regions[b].width {
            let i = ((b * 8 + c) * 64 + y) * 80 + x
            let d = Double(p.data[i]) - Double(t.data[i]); sq += d * d
        } } } }
        let count = Double(8 * (40 * 80 + 64 * 33))
        XCTAssertEqual(maskedMSELoss(p, t, regions: regions).value, sq / count, accuracy: 1e-12 * sq / count)
    }

    /// The mask losses of prompt-in-the-loop distillation on 256×256 low-res logits against
    /// EdgeSAM's sigmoid_ce_loss and dice_loss (Scripts/refdump/mask_losses.py, closed-formula
    /// logits and disc targets): value within 1e-6 relative, gradient (every 8th pixel) 1e-5.
    func testMaskLossesMatchEdgeSAM() throws {
        let f = try Fixture("mask_losses")
        let M = 3
        var logits = Tensor(zeros: [M, 256, 256]), target = Tensor(zeros: [M, 256, 256])
        for m in 0..<M { for y in 0..<256 { for x in 0..<256 {
            let i = (m * 256 + y) * 256 + x
            logits.data[i] = Float(8 * sin(0.031 * Double(x) + 0.7 * Double(m)) * cos(0.023 * Double(y) - 0.4 * Double(m)) + 0.5)
            let dx = Double(x - 100 - 30 * m), dy = Double(y - 140)
            target.data[i] = dx * dx + dy * dy < 4900 ? 1 : 0
        } } }
        for (name, r) in [("bce", bceWithLogitsLoss(logits, target)), ("dice", diceLoss(logits, target))] {
            let expected = Double(f.metadata["\(name).value"]!)!
            let eValue = abs(r.value - expected) / abs(expected)
            var sub = Tensor(zeros: [M, 32, 32])
            for m in 0..<M { for y in 0..<32 { for x in 0..<32 {
                sub.data[(m * 32 + y) * 32 + x] = r.gradient.data[(m * 256 + 3 + 8 * y) * 256 + 5 + 8 * x]
            } } }
            let eGrad = relativeError(sub, f["\(name).grad_sub"])
            print("\(name): value \(r.value) (relative error \(eValue)), gradient relative error \(eGrad)")
            XCTAssertLessThanOrEqual(eValue, 1e-6, name)
            XCTAssertLessThanOrEqual(eGrad, 1e-5, name)
        }
    }
}

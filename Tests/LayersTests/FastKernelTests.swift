import Foundation
import Layers
import LayersReference
import Tensor
import TestSupport
import XCTest

/// Optimised kernels against their plain references (GELU, softmax).
final class FastKernelTests: XCTestCase {
    /// Vectorised GELU forward/backward vs the libm scalar references: ≤ 4e-7·max(1, |x|) (erf ≤ 4.5e-7, see FastMathTests).
    func testGeluKernelsMatchReference() {
        var rng = SeededRandom(seed: 11)
        let x = Tensor.randomNormal([3, 5, 37], std: 3, rng: &rng)
        let dy = Tensor.randomNormal(x.shape, rng: &rng)
        let y = Activation.gelu.forward(x), yr = Activation.gelu.forwardReference(x)
        let dx = Activation.gelu.backward(dy, input: x), dxr = Activation.gelu.backwardReference(dy, input: x)
        for i in 0..<x.count {
            let s = max(1, abs(x.data[i]))
            XCTAssertEqual(y.data[i], yr.data[i], accuracy: 4e-7 * s)
            XCTAssertEqual(dx.data[i], dxr.data[i], accuracy: 6e-7 * max(1, abs(dy.data[i])))
        }
        var inPlace = x
        Activation.gelu.apply(&inPlace)
        XCTAssertEqual(inPlace.data, y.data)
    }

    /// softmaxRows (vectorised exp) vs softmaxRowsReference (libm): ≤ 1e-6 relative per row.
    func testSoftmaxRowsMatchReference() {
        var rng = SeededRandom(seed: 12)
        for n in [1, 7, 49, 196] {
            let x = Tensor.randomNormal([5, n], std: 4, rng: &rng)
            var a = x.data, b = x.data
            a.withUnsafeMutableBufferPointer { softmaxRows($0.baseAddress!, rows: 5, n: n) }
            b.withUnsafeMutableBufferPointer { softmaxRowsReference($0.baseAddress!, rows: 5, n: n) }
            for i in 0..<a.count { XCTAssertEqual(a[i], b[i], accuracy: 1e-6 * max(b[i], 1e-3)) }
        }
    }
}

/// The inference fast path of Conv2d_BN (BatchNorm folded into the conv, bias/residual/GELU fused
/// into the blocked conv's output pass) against the plain path (conv, BatchNorm, add, GELU as
/// separate layers, `evaluationWithGradients`), and the blocked conv against `conv2dReference`.
final class FusedConvTests: XCTestCase {
    private func randomBN(_ m: Conv2dBN, rng: inout SeededRandom) {
        randomiseParameters(m, std: 0.5, rng: &rng)
        let C = m.bn.channels
        m.bn.runningMean.value = .randomNormal([C], std: 0.3, rng: &rng)
        m.bn.runningVar.value = .randomUniform([C], 0.5, 2, rng: &rng)
    }

    /// Pointwise, depthwise, 3×3 stride 2 (im2col) and grouped paths; with and without residual
    /// and GELU: relative error ≤ 1e-5 (folding rounds differently, ~1e-7).
    func testFoldedInferenceMatchesUnfusedLayers() {
        var rng = SeededRandom(seed: 21)
        let cases: [(String, Int, Int, Int, Int, Int, Int)] = [  // name, in, out, k, stride, pad, groups
            ("pointwise", 6, 10, 1, 1, 0, 1), ("depthwise", 8, 8, 3, 1, 1, 8), ("depthwise s2", 8, 8, 3, 2, 1, 8),
            ("im2col s2", 3, 6, 3, 2, 1, 1), ("im2col s1", 5, 7, 3, 1, 1, 1), ("grouped", 6, 4, 3, 1, 1, 2),
        ]
        for (name, I, O, k, s, p, g) in cases {
            let m = Conv2dBN(inputChannels: I, outputChannels: O, kernelSize: k, stride: s, padding: p, groups: g)
            randomBN(m, rng: &rng)
            let x = Tensor.randomNormal([2, I, 13, 11], rng: &rng)
            let plain = m.forward(x, mode: .evaluationWithGradients)
            let residual = Tensor.randomNormal(plain.shape, rng: &rng)
            for (res, act) in [(nil, nil), (nil, Activation.gelu), (residual, Activation.gelu), (residual, nil)] as [(Tensor?, Activation?)] {
                var expected = m.forward(x, mode: .evaluationWithGradients)
                if let res { expected.add(res) }
                if let act { expected = act.forwardReference(expected) }
                let fused = m.forward(x, mode: .inference, residual: res, activation: act)
                XCTAssertLessThanOrEqual(relativeError(fused, expected), 1e-5, "\(name) residual \(res != nil) \(String(describing: act))")
            }
            // the fold follows parameter changes (loads, optimiser steps): nothing is cached
            m.conv.weight.value.add(.randomNormal(m.conv.weight.shape, std: 0.1, rng: &rng))
            m.bn.runningVar.value.scale(by: 1.5)
            XCTAssertLessThanOrEqual(relativeError(m.forward(x, mode: .inference), m.forward(x, mode: .evaluationWithGradients)), 1e-5, "\(name) after update")
        }
    }

    /// The blocked GEMM conv (many blocks: a 70-row output) against the naive reference: ≤ 1e-5.
    func testBlockedConvMatchesReference() {
        var rng = SeededRandom(seed: 22)
        for (I, O, k, s, p) in [(3, 4, 3, 2, 1), (40, 24, 3, 1, 1), (24, 600, 1, 1, 0)] {
            let c = Conv2d(inputChannels: I, outputChannels: O, kernelSize: k, stride: s, padding: p)
            randomiseParameters(c, std: 0.3, rng: &rng)
            let x = Tensor.randomNormal([2, I, 140, 9], rng: &rng)
            let y = c.forward(x, mode: .inference)
            let r = conv2dReference(x, weight: c.weight.value, bias: c.bias!.value, stride: s, padding: p)
            XCTAssertLessThanOrEqual(relativeError(y, r), 1e-5, "conv \(I)→\(O) k\(k) s\(s)")
        }
    }

    /// Concurrent single-threaded GEMMs on the workers equal serial calls (bit for bit).
    func testParallelSerialBLASMatchesSerialCalls() {
        var rng = SeededRandom(seed: 23)
        let jobs = 16, m = 37, n = 45, k = 29
        let a = Tensor.randomNormal([jobs, m, k], rng: &rng), b = Tensor.randomNormal([jobs, k, n], rng: &rng)
        var c1 = Tensor(zeros: [jobs, m, n]), c2 = c1
        a.data.withUnsafeBufferPointer { ab in b.data.withUnsafeBufferPointer { bb in
            c1.data.withUnsafeMutableBufferPointer { cb in
                let ap = ab.baseAddress!, bp = bb.baseAddress!, cp = cb.baseAddress!
                parallelChunksSerialBLAS(jobs) { r in
                    for j in r { gemm(m: m, n: n, k: k, a: ap + j * m * k, lda: k, b: bp + j * k * n, ldb: n, c: cp + j * m * n, ldc: n) }
                }
            }
            c2.data.withUnsafeMutableBufferPointer { cb in
                for j in 0..<jobs {
                    gemm(m: m, n: n, k: k, a: ab.baseAddress! + j * m * k, lda: k, b: bb.baseAddress! + j * k * n, ldb: n,
                         c: cb.baseAddress! + j * m * n, ldc: n)
                }
            }
        } }
        XCTAssertEqual(c1.data, c2.data)
    }
}

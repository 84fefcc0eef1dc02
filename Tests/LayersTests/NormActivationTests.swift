import Layers
import Tensor
import TestSupport
import XCTest

final class NormActivationTests: XCTestCase {
    // Finite differences: eps 1e-2, atol 1e-3, rtol 1e-2 (GradientCheck defaults): the error of a
    // central difference is O(eps²·f'''), about 1e-4 for these smooth layers.

    func testLayerNormFiniteDifferences() {
        var rng = SeededRandom(seed: 1)
        let ln = LayerNorm(7)
        randomiseParameters(ln, rng: &rng)
        assertGradientsMatchFiniteDifferences(ln, input: .randomNormal([2, 3, 7], rng: &rng),
            forward: { ln.forward($0, mode: .training) }, backward: { ln.backward($0) })
    }

    func testLayerNorm2dFiniteDifferences() {
        var rng = SeededRandom(seed: 2)
        let ln = LayerNorm2d(5)
        randomiseParameters(ln, rng: &rng)
        assertGradientsMatchFiniteDifferences(ln, input: .randomNormal([2, 5, 3, 4], rng: &rng),
            forward: { ln.forward($0, mode: .training) }, backward: { ln.backward($0) })
    }

    func testActivationsFiniteDifferences() {
        var rng = SeededRandom(seed: 3)
        for kind in [Activation.gelu, .relu] {
            let act = ActivationLayer(kind)
            // ReLU: keep inputs away from the kink at 0 (|x| ≥ 0.1 > eps).
            let x = Tensor.randomNormal([4, 9], rng: &rng).map { $0 >= 0 ? $0 + 0.1 : $0 - 0.1 }
            assertGradientsMatchFiniteDifferences(act, input: x,
                forward: { act.forward($0, mode: .training) }, backward: { act.backward($0) })
        }
    }

    func testSoftmaxFiniteDifferences() {
        var rng = SeededRandom(seed: 6)
        let sm = Softmax()
        assertGradientsMatchFiniteDifferences(sm, input: .randomNormal([3, 8], std: 2, rng: &rng),
            forward: { sm.forward($0, mode: .training) }, backward: { sm.backward($0) })
    }

    /// PyTorch autograd dumps (Scripts/refdump/norms.py): relative error ≤ 1e-5.
    func testMatchPyTorch() throws {
        let ln = LayerNorm(10)
        try assertMatchesFixture(Fixture("layernorm"), module: ln, tolerance: 1e-5,
            forward: { ln.forward($0, mode: .training) }, backward: { ln.backward($0) })
        let ln2 = LayerNorm2d(6)
        try assertMatchesFixture(Fixture("layernorm2d"), module: ln2, tolerance: 1e-5,
            forward: { ln2.forward($0, mode: .training) }, backward: { ln2.backward($0) })
        let sm = Softmax()
        try assertMatchesFixture(Fixture("softmax"), module: sm, tolerance: 1e-5,
            forward: { sm.forward($0, mode: .training) }, backward: { sm.backward($0) })
        for (name, kind) in [("gelu", Activation.gelu), ("relu", .relu)] {
            let act = ActivationLayer(kind)
            try assertMatchesFixture(Fixture(name), module: act, tolerance: 1e-5,
                forward: { act.forward($0, mode: .training) }, backward: { act.backward($0) })
        }
    }

    /// Large LayerNorm2d (parallel path) equals a naive per-pixel loop, 1e-5 relative.
    func testLayerNorm2dParallelMatchesNaive() {
        var rng = SeededRandom(seed: 4)
        let ln = LayerNorm2d(16)
        randomiseParameters(ln, rng: &rng)
        let (B, C, H, W) = (2, 16, 33, 31)
        let x = Tensor.randomNormal([B, C, H, W], rng: &rng)
        let y = ln.forward(x, mode: .inference)
        var ref = Tensor(zeros: x.shape)
        for b in 0..<B { for p in 0..<(H * W) {
            var m: Double = 0, v: Double = 0
            for c in 0..<C { m += Double(x.data[(b * C + c) * H * W + p]) }
            m /= Double(C)
            for c in 0..<C { let d = Double(x.data[(b * C + c) * H * W + p]) - m; v += d * d }
            v /= Double(C)
            for c in 0..<C {
                let i = (b * C + c) * H * W + p
                ref.data[i] = Float((Double(x.data[i]) - m) / (v + 1e-6).squareRoot()) * ln.weight.value.data[c] + ln.bias.value.data[c]
            }
        } }
        XCTAssertLessThan(relativeError(y, ref), 1e-5)
    }

    /// Large LayerNorm (SIMD reductions, parallel backward over row blocks, a ragged last block and
    /// a channel tail) equals a Double reference (1e-5 relative for y, dx, dW, dB), and its
    /// parameter gradients are bitwise the same with 1 and 4 threads.
    func testLayerNormLargeMatchesDoubleReferenceForAnyThreadCount() {
        var rng = SeededRandom(seed: 7)
        let (rows, C) = (700, 37)
        let x = Tensor.randomNormal([rows, C], std: 3, rng: &rng), dy = Tensor.randomNormal([rows, C], rng: &rng)
        var gradients: [[Float]] = []
        for threads in [1, 4] {
            let saved = Threads.count
            Threads.count = threads
            defer { Threads.count = saved }
            var r = SeededRandom(seed: 8)
            let ln = LayerNorm(C)
            randomiseParameters(ln, rng: &r)
            let y = ln.forward(x, mode: .training)
            let dx = ln.backward(dy)
            gradients.append(ln.weight.grad.data + ln.bias.grad.data)
            var yRef = Tensor(zeros: x.shape), dxRef = Tensor(zeros: x.shape)
            var dwRef = [Double](repeating: 0, count: C), dbRef = [Double](repeating: 0, count: C)
            let w = ln.weight.value.data.map(Double.init), b = ln.bias.value.data.map(Double.init)
            for i in 0..<rows {
                let row = (0..<C).map { Double(x.data[i * C + $0]) }, g = (0..<C).map { Double(dy.data[i * C + $0]) }
                let m = row.reduce(0, +) / Double(C)
                let s = 1 / (row.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(C) + Double(ln.eps)).squareRoot()
                let h = row.map { ($0 - m) * s }
                let m1 = (0..<C).map { g[$0] * w[$0] }.reduce(0, +) / Double(C)
                let m2 = (0..<C).map { g[$0] * w[$0] * h[$0] }.reduce(0, +) / Double(C)
                for c in 0..<C {
                    yRef.data[i * C + c] = Float(h[c] * w[c] + b[c])
                    dxRef.data[i * C + c] = Float(s * (g[c] * w[c] - m1 - h[c] * m2))
                    dwRef[c] += g[c] * h[c]; dbRef[c] += g[c]
                }
            }
            XCTAssertLessThan(relativeError(y, yRef), 1e-5)
            XCTAssertLessThan(relativeError(dx, dxRef), 1e-5)
            XCTAssertLessThan(relativeError(ln.weight.grad, Tensor(shape: [C], data: dwRef.map(Float.init))), 1e-5)
            XCTAssertLessThan(relativeError(ln.bias.grad, Tensor(shape: [C], data: dbRef.map(Float.init))), 1e-5)
        }
        XCTAssertEqual(gradients[0], gradients[1])
    }

    /// Partition then reverse is the identity (with padding); reverse is partition's adjoint:
    /// ⟨partition(x), w⟩ = ⟨x, reverse(w)⟩.
    func testWindowPartitionRoundTripAndAdjoint() {
        var rng = SeededRandom(seed: 5)
        for (H, W, ws) in [(7, 7, 7), (9, 5, 4), (14, 14, 7), (5, 8, 3)] {
            let x = Tensor.randomNormal([2, H, W, 3], rng: &rng)
            let win = windowPartition(x, window: ws)
            let nH = (H + ws - 1) / ws, nW = (W + ws - 1) / ws
            XCTAssertEqual(win.shape, [2 * nH * nW, ws * ws, 3])
            XCTAssertEqual(windowReverse(win, window: ws, batch: 2, height: H, width: W).data, x.data)
            let w = Tensor.randomNormal(win.shape, rng: &rng)
            let lhs = win.dot(w), rhs = x.dot(windowReverse(w, window: ws, batch: 2, height: H, width: W))
            XCTAssertEqual(lhs, rhs, accuracy: 1e-9 * max(1, abs(lhs)))
            // Token (b=1, h=H-1, w=0) lands in the expected window row.
            let wh = (H - 1) / ws, i = (H - 1) % ws
            let row = ((1 * nH + wh) * nW + 0) * ws * ws + i * ws
            XCTAssertEqual(win.data[row * 3], x.data[((1 * H + H - 1) * W) * 3])
        }
    }
}

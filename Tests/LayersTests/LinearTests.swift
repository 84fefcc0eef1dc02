import Layers
import Tensor
import TestSupport
import XCTest

final class LinearTests: XCTestCase {
    /// Finite differences, eps 1e-2: Linear is linear, so only float32 rounding remains
    /// (atol 1e-3, rtol 1e-2).
    func testBackwardMatchesFiniteDifferences() {
        var rng = SeededRandom(seed: 11)
        for hasBias in [true, false] {
            let layer = Linear(6, 5, bias: hasBias)
            layer.weight.value = .randomNormal([5, 6], std: 0.5, rng: &rng)
            layer.bias?.value = .randomNormal([5], std: 0.5, rng: &rng)
            var inputs = [Tensor.randomNormal([2, 3, 6], rng: &rng)]
            let report = GradientCheck().run(
                inputs: &inputs, parameters: layer.namedParameters(),
                forward: { layer.forward($0[0], mode: .training) },
                backward: { [layer.backward($0)] })
            XCTAssertTrue(report.passed, "\(report)")
        }
    }

    /// Against PyTorch autograd (Scripts/refdump/linear.py): relative error ≤ 1e-5.
    func testMatchesPyTorch() throws {
        for name in ["linear", "linear_nobias"] {
            let f = try Fixture(name)
            let layer = Linear(f.int("in"), f.int("out"), bias: f.int("bias") == 1)
            try layer.load(f.stateDict())
            let y = layer.forward(f["x"], mode: .training)
            XCTAssertLessThan(relativeError(y, f["y"]), 1e-5, name)
            let dx = layer.backward(f["dy"])
            XCTAssertLessThan(relativeError(dx, f["dx"]), 1e-5, name)
            for (k, p) in layer.namedParameters() {
                XCTAssertLessThan(relativeError(p.grad, f["grad." + k]), 1e-5, "\(name) \(k)")
            }
        }
    }

    func testStrictLoadingReportsAllProblems() {
        let layer = Linear(4, 3)
        let bad: [String: Tensor] = ["weight": Tensor(zeros: [3, 5]), "extra": Tensor(zeros: [1])]
        XCTAssertThrowsError(try layer.load(bad)) { error in
            let e = error as! WeightLoadingError
            XCTAssertEqual(e.missing, ["bias"])
            XCTAssertEqual(e.unexpected, ["extra"])
            XCTAssertEqual(e.misshaped.map(\.key), ["weight"])
        }
        XCTAssertEqual(layer.weight.value.shape, [3, 4], "nothing changed after a failed load")
    }

    func testInferenceKeepsNoActivations() {
        let layer = Linear(4, 3)
        _ = layer.forward(Tensor(zeros: [2, 4]), mode: .inference)
        // A backward after an inference-mode forward is a programming error (precondition);
        // here we only check the training path still works afterwards.
        _ = layer.forward(Tensor(zeros: [2, 4]), mode: .training)
        XCTAssertEqual(layer.backward(Tensor(zeros: [2, 3])).shape, [2, 4])
    }

    /// Frozen parameters (`Module.freezeParameters`): Linear, LayerNorm, LayerNorm2d and
    /// ConvTranspose2d give bit-identical input gradients, and their `grad`s stay empty.
    func testFrozenParametersGiveTheSameInputGradient() {
        var rng = SeededRandom(seed: 12)
        func randomize(_ m: Module) {
            for (_, p) in m.namedParameters() { p.value = Tensor.randomNormal(p.shape, std: 0.5, rng: &rng) }
        }
        let linear = Linear(6, 5), norm = LayerNorm(6), norm2d = LayerNorm2d(4)
        let convT = ConvTranspose2d(inputChannels: 4, outputChannels: 3, kernelSize: 2, stride: 2)
        let cases: [(Module, Tensor, (Tensor) -> Tensor, (Tensor) -> Tensor)] = [
            (linear, Tensor.randomNormal([3, 6], rng: &rng), { linear.forward($0, mode: .training) }, linear.backward),
            (norm, Tensor.randomNormal([3, 6], rng: &rng), { norm.forward($0, mode: .training) }, norm.backward),
            (norm2d, Tensor.randomNormal([2, 4, 3, 3], rng: &rng), { norm2d.forward($0, mode: .training) }, norm2d.backward),
            (convT, Tensor.randomNormal([2, 4, 3, 3], rng: &rng), { convT.forward($0, mode: .training) }, convT.backward),
        ]
        for (m, x, forward, backward) in cases {
            randomize(m)
            let dy = Tensor.randomNormal(forward(x).shape, rng: &rng)
            let dx = backward(dy)
            XCTAssertTrue(m.namedParameters().allSatisfy { $0.1.grad.maxAbs() > 0 }, "\(type(of: m)) accumulates when trainable")
            m.freezeParameters()
            _ = forward(x)
            XCTAssertEqual(backward(dy).data, dx.data, "\(type(of: m))")
            XCTAssertTrue(m.namedParameters().allSatisfy { !$0.1.requiresGradient && $0.1.grad.count == 0 }, "\(type(of: m))")
        }
    }
}

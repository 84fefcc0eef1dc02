import Layers
import Tensor
import XCTest

/// Compares one layer's forward, input gradient and parameter gradients with a PyTorch dump.
/// `forward`/`backward` run the layer; the fixture's `param.` entries are loaded first.
/// `gradientFloor` = r > 0 measures each parameter gradient's error against at least r × the
/// largest reference gradient: max |a − e| / max(max |e|, r · scale) ≤ tolerance. For gradients
/// that are zero but for BatchNorm's eps (a weight or bias a train-mode BatchNorm is invariant to),
/// which float32 resolves only to ~1e-7 of the scale; a gradient above the floor is checked as usual.
public func assertMatchesFixture(_ fixture: Fixture, module: Module, tolerance: Double, gradientFloor: Double = 0,
                                 forward: (Tensor) -> Tensor, backward: (Tensor) -> Tensor,
                                 file: StaticString = #filePath, line: UInt = #line) throws {
    try module.load(fixture.stateDict())
    module.zeroGradients()
    let y = forward(fixture["x"])
    XCTAssertEqual(y.shape, fixture["y"].shape, "\(fixture.name): output shape", file: file, line: line)
    let ey = relativeError(y, fixture["y"])
    XCTAssertLessThanOrEqual(ey, tolerance, "\(fixture.name): forward relative error", file: file, line: line)
    let dx = backward(fixture["dy"])
    let edx = relativeError(dx, fixture["dx"])
    XCTAssertLessThanOrEqual(edx, tolerance, "\(fixture.name): input gradient relative error", file: file, line: line)
    let scale = fixture.tensors.filter { $0.key.hasPrefix("grad.") }.values.map { Double($0.maxAbs()) }.max() ?? 0
    for (k, p) in module.namedParameters() where p.isTrainable {
        let expected = fixture["grad." + k]
        var e = relativeError(p.grad, expected)
        let floor = gradientFloor * scale
        if Double(expected.maxAbs()) < floor { e = Double((p.grad - expected).maxAbs()) / floor }
        XCTAssertLessThanOrEqual(e, tolerance, "\(fixture.name): gradient of \(k)", file: file, line: line)
    }
    for (k, p) in module.namedParameters() where !p.isTrainable {
        if let after = fixture.tensors["buffer." + k] {
            XCTAssertLessThanOrEqual(relativeError(p.value, after), tolerance, "\(fixture.name): buffer \(k)", file: file, line: line)
        }
    }
}

/// Runs the finite-difference check for a single-input module and asserts it passed.
public func assertGradientsMatchFiniteDifferences(
    _ module: Module, input: Tensor, check: GradientCheck = GradientCheck(),
    forward: @escaping (Tensor) -> Tensor, backward: @escaping (Tensor) -> Tensor,
    file: StaticString = #filePath, line: UInt = #line) {
    var inputs = [input]
    let report = check.run(inputs: &inputs, parameters: module.namedParameters(),
                           forward: { forward($0[0]) }, backward: { [backward($0)] })
    XCTAssertTrue(report.passed, "\(type(of: module)): \(report)", file: file, line: line)
}

/// Fills every trainable parameter with N(mean, std²) values: layers start at PyTorch's
/// constant initialisations (ones, zeros), which would hide mistakes in gradient checks.
public func randomiseParameters(_ module: Module, std: Float = 0.5, rng: inout SeededRandom) {
    for (_, p) in module.namedParameters() where p.isTrainable {
        p.value = .randomNormal(p.value.shape, std: std, rng: &rng)
    }
}

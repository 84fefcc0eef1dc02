/// A learnable tensor (or a buffer such as BatchNorm's running mean) and its gradient.
///
/// Layers own their parameters. `backward` accumulates into `grad` with `+=`; the trainer zeroes
/// all gradients once per step (`Module.zeroGradients()`). A frozen parameter (`freeze()`, e.g.
/// the mask decoder that prompt-in-the-loop distillation backpropagates through) has no gradient:
/// backward passes compute their input gradients and skip its `grad`.
public final class Parameter {
    public var value: Tensor
    /// Same shape as `value` for trainable parameters; empty for buffers and frozen parameters.
    public var grad: Tensor
    /// False for buffers (running statistics): saved and loaded, never optimised.
    public let isTrainable: Bool
    /// Whether AdamW applies weight decay: false for biases, norm weights and bias tables.
    public let decays: Bool
    /// Whether backward passes accumulate into `grad`: false for buffers and after `freeze()`.
    public private(set) var requiresGradient: Bool

    public init(_ value: Tensor, decays: Bool = true) {
        self.value = value
        self.grad = Tensor(zeros: value.shape)
        self.isTrainable = true
        self.decays = decays
        self.requiresGradient = true
    }

    public init(buffer value: Tensor) {
        self.value = value
        self.grad = Tensor(zeros: [0])
        self.isTrainable = false
        self.decays = false
        self.requiresGradient = false
    }

    /// No gradient from now on: `grad` is released (empty) and backward passes skip it.
    public func freeze() {
        requiresGradient = false
        grad = Tensor(zeros: [0])
    }

    public var shape: [Int] { value.shape }
}

/// Missing, unexpected and mis-shaped keys, all at once: what loading parameters (a module's
/// weights, an optimiser's state) reports.
public struct WeightLoadingError: Error, CustomStringConvertible, Equatable {
    public var missing: [String]
    public var unexpected: [String]
    public var misshaped: [(key: String, expected: [Int], found: [Int])]
    public var source: String = ""

    public init(missing: [String], unexpected: [String], misshaped: [(key: String, expected: [Int], found: [Int])]) {
        self.missing = missing; self.unexpected = unexpected; self.misshaped = misshaped
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.missing == b.missing && a.unexpected == b.unexpected
            && a.misshaped.map(\.key) == b.misshaped.map(\.key) && a.source == b.source
    }

    public var description: String {
        var lines = ["weights\(source.isEmpty ? "" : " in \(source)") do not match the model:"]
        func list(_ title: String, _ keys: [String]) {
            guard !keys.isEmpty else { return }
            let shown = keys.prefix(10).joined(separator: ", ")
            lines.append("  \(title) (\(keys.count)): \(shown)\(keys.count > 10 ? ", …" : "")")
        }
        list("missing keys", missing)
        list("unexpected keys", unexpected)
        if !misshaped.isEmpty {
            lines.append("  mis-shaped keys (\(misshaped.count)): "
                + misshaped.prefix(10).map { "\($0.key) expects \($0.expected), file has \($0.found)" }.joined(separator: "; "))
        }
        return lines.joined(separator: "\n")
    }
}

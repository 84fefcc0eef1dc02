import Tensor

/// How a forward pass runs.
/// - `batchStatistics`: BatchNorm normalises with the batch's statistics and updates its running
///   averages (PyTorch's `train()`); otherwise it uses the running averages (`eval()`).
/// - `keepsActivations`: the layer stores what `backward` needs. Off for inference, where no
///   backward comes and nothing may stay alive after the forward returns.
/// - `crossReplica`: with batch statistics, BatchNorm sums its per-channel statistics over the
///   processes of a data-parallel run through it (synchronised BatchNorm; nil: this process's batch).
public struct ForwardMode: Sendable, Equatable {
    public var batchStatistics: Bool
    public var keepsActivations: Bool
    public var crossReplica: CrossReplicaSum?

    public init(batchStatistics: Bool, keepsActivations: Bool, crossReplica: CrossReplicaSum? = nil) {
        self.batchStatistics = batchStatistics
        self.keepsActivations = keepsActivations
        self.crossReplica = crossReplica
    }

    public static func == (a: ForwardMode, b: ForwardMode) -> Bool {
        a.batchStatistics == b.batchStatistics && a.keepsActivations == b.keepsActivations && a.crossReplica === b.crossReplica
    }

    /// This mode with BatchNorm's batch statistics summed over processes by `reducer`.
    public func synchronised(by reducer: CrossReplicaSum?) -> ForwardMode {
        var m = self
        m.crossReplica = reducer
        return m
    }

    /// Inference: running statistics, nothing kept.
    public static let inference = ForwardMode(batchStatistics: false, keepsActivations: false)
    /// Training: batch statistics, activations kept for backward.
    public static let training = ForwardMode(batchStatistics: true, keepsActivations: true)
    /// Gradients through a model in eval mode (frozen norms): running statistics, activations kept.
    public static let evaluationWithGradients = ForwardMode(batchStatistics: false, keepsActivations: true)
}

/// Sums per-channel statistics over the processes of a data-parallel run (synchronised
/// BatchNorm): the trainer passes one (over MPI) in its `ForwardMode` with `sync_batchnorm`.
public protocol CrossReplicaSum: AnyObject, Sendable {
    /// values ← Σ over processes, element-wise (every process gets the sums; a collective: every
    /// process calls it, in the same order).
    func sum(_ values: inout [Double])
}

/// Anything that owns parameters, directly or through sub-modules. Keys are the PyTorch
/// state-dict keys relative to this module (`"attn.qkv.weight"`), so a whole model's keys are
/// exactly its checkpoint's keys.
public protocol Module: AnyObject {
    /// Parameters and buffers in a fixed order, with their checkpoint keys.
    func namedParameters() -> [(String, Parameter)]
}

extension Module {
    /// The trainable parameters in order (what the optimiser steps).
    public func trainableParameters() -> [Parameter] {
        namedParameters().map(\.1).filter(\.isTrainable)
    }

    /// Freezes every parameter (`Parameter.freeze`): backward passes still give input gradients,
    /// but compute and store no parameter gradients.
    public func freezeParameters() {
        for (_, p) in namedParameters() { p.freeze() }
    }

    /// Zeroes every gradient (once per training step, before the backward passes).
    public func zeroGradients() {
        for (_, p) in namedParameters() where p.isTrainable { p.grad.zero() }
    }

    /// Every parameter and buffer by key.
    public func stateDict() -> [String: Tensor] {
        var d: [String: Tensor] = [:]
        for (k, p) in namedParameters() { d[k] = p.value }
        return d
    }

    /// Total number of trainable values.
    public var parameterCount: Int { trainableParameters().reduce(0) { $0 + $1.value.count } }

    /// Strict loading: every key of the module must be present with its shape, and every key of
    /// `tensors` must belong to the module unless `ignoring` says so. All problems are reported
    /// together in one error; nothing is changed unless everything matches.
    public func load(_ tensors: [String: Tensor], ignoring ignore: (String) -> Bool = { _ in false }) throws {
        let params = namedParameters()
        var missing: [String] = []
        var misshaped: [(key: String, expected: [Int], found: [Int])] = []
        var known = Set<String>()
        for (k, p) in params {
            known.insert(k)
            guard let t = tensors[k] else { missing.append(k); continue }
            if t.shape != p.value.shape { misshaped.append((k, p.value.shape, t.shape)) }
        }
        let unexpected = tensors.keys.filter { !known.contains($0) && !ignore($0) }.sorted()
        if !missing.isEmpty || !unexpected.isEmpty || !misshaped.isEmpty {
            throw WeightLoadingError(missing: missing, unexpected: unexpected, misshaped: misshaped)
        }
        for (k, p) in params { p.value = tensors[k]! }
    }
}

/// Prefixes child keys: `prefixed("attn.", attn)`.
@inlinable
public func prefixed(_ prefix: String, _ m: Module) -> [(String, Parameter)] {
    m.namedParameters().map { (prefix + $0.0, $0.1) }
}

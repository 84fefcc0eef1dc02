import Foundation

/// A learning rate per optimisation step. `step` counts from 0: `lr(at: 0)` is the rate of the
/// first optimiser step (PyTorch: the group's `lr` before the first `scheduler.step()`).
public protocol LearningRateScheduling {
    func lr(at step: Int) -> Float
}

/// A constant rate. Coding keys: `lr`.
public struct ConstantSchedule: LearningRateScheduling, Codable, Equatable, Sendable {
    public var lr: Double

    public init(lr: Double) { self.lr = lr }

    public func lr(at step: Int) -> Float { Float(lr) }

    enum CodingKeys: String, CodingKey, CaseIterable { case lr }

    public init(from decoder: Decoder) throws {
        try rejectUnknownKeys(decoder, allowed: CodingKeys.allCases.map(\.rawValue) + ["type"], in: "constant schedule")
        let c = try decoder.container(keyedBy: CodingKeys.self)
        lr = try c.decode(Double.self, forKey: .lr)
        try check(lr > 0, c, .lr, "lr must be positive, got \(lr)")
    }
}

/// Linear warmup then cosine decay to a minimum rate. With W = `warmupSteps`, T = `totalSteps`:
///
///     lr(s) = peak · (s + 1) / W                                        s < W
///     lr(s) = min + (peak − min) · ½ · (1 + cos(π · (s − W) / (T − W)))  W ≤ s < T
///     lr(s) = min                                                        s ≥ T
///
/// The first step already trains (peak/W), the rate reaches `peak` at step W − 1 and `min`
/// at step T. Equals PyTorch's SequentialLR([LinearLR(start_factor=1/W, end_factor=1,
/// total_iters=W−1), CosineAnnealingLR(T_max=T−W, eta_min=min)], milestones=[W]) for s < T
/// (PyTorch's cosine rises again after T; this one stays at `min`).
/// Coding keys: `peak_lr`, `min_lr` (default 0), `warmup_steps` (default 0), `total_steps`.
public struct WarmupCosineSchedule: LearningRateScheduling, Codable, Equatable, Sendable {
    public var peakLR: Double
    public var minLR: Double
    public var warmupSteps: Int
    public var totalSteps: Int

    public init(peakLR: Double, minLR: Double = 0, warmupSteps: Int = 0, totalSteps: Int) {
        self.peakLR = peakLR; self.minLR = minLR; self.warmupSteps = warmupSteps; self.totalSteps = totalSteps
        precondition(Self.problem(peakLR, minLR, warmupSteps, totalSteps) == nil,
                     "WarmupCosineSchedule: \(Self.problem(peakLR, minLR, warmupSteps, totalSteps)!.1)")
    }

    public func lr(at step: Int) -> Float {
        precondition(step >= 0, "WarmupCosineSchedule: negative step \(step)")
        if step < warmupSteps { return Float(peakLR * Double(step + 1) / Double(warmupSteps)) }
        if step >= totalSteps { return Float(minLR) }
        let progress = Double(step - warmupSteps) / Double(totalSteps - warmupSteps)
        return Float(minLR + (peakLR - minLR) * 0.5 * (1 + cos(Double.pi * progress)))
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case peakLR = "peak_lr", minLR = "min_lr", warmupSteps = "warmup_steps", totalSteps = "total_steps"
    }

    static func problem(_ peak: Double, _ min: Double, _ warmup: Int, _ total: Int) -> (CodingKeys, String)? {
        if !(peak > 0) { return (.peakLR, "peak_lr must be positive, got \(peak)") }
        if !(min >= 0 && min <= peak) { return (.minLR, "min_lr must be in [0, peak_lr], got \(min)") }
        if warmup < 0 { return (.warmupSteps, "warmup_steps must be ≥ 0, got \(warmup)") }
        if total <= warmup { return (.totalSteps, "total_steps (\(total)) must exceed warmup_steps (\(warmup))") }
        return nil
    }

    public init(from decoder: Decoder) throws {
        try rejectUnknownKeys(decoder, allowed: CodingKeys.allCases.map(\.rawValue) + ["type"], in: "warmup_cosine schedule")
        let c = try decoder.container(keyedBy: CodingKeys.self)
        peakLR = try c.decode(Double.self, forKey: .peakLR)
        minLR = try c.decodeIfPresent(Double.self, forKey: .minLR) ?? 0
        warmupSteps = try c.decodeIfPresent(Int.self, forKey: .warmupSteps) ?? 0
        totalSteps = try c.decode(Int.self, forKey: .totalSteps)
        if let (key, why) = Self.problem(peakLR, minLR, warmupSteps, totalSteps) { try check(false, c, key, why) }
    }
}

/// `torch.optim.lr_scheduler.OneCycleLR` with `anneal_strategy="cos"`, `three_phase=False`:
/// from max/div_factor up to `max_lr` over the first pct_start·T − 1 steps, then down to
/// max/div_factor/final_div_factor at step T − 1 (cosine annealing in both phases). Steps past
/// T − 1 keep the final rate (PyTorch raises an error). Momentum cycling (`cycle_momentum`) is
/// not modelled: AdamW keeps its configured β1.
/// Coding keys: `max_lr`, `total_steps`, `pct_start` (default 0.3), `div_factor` (25),
/// `final_div_factor` (1e4).
public struct OneCycleSchedule: LearningRateScheduling, Codable, Equatable, Sendable {
    public var maxLR: Double
    public var totalSteps: Int
    public var pctStart: Double
    public var divFactor: Double
    public var finalDivFactor: Double

    public init(maxLR: Double, totalSteps: Int, pctStart: Double = 0.3, divFactor: Double = 25,
                finalDivFactor: Double = 1e4) {
        self.maxLR = maxLR; self.totalSteps = totalSteps; self.pctStart = pctStart
        self.divFactor = divFactor; self.finalDivFactor = finalDivFactor
        precondition(Self.problem(maxLR, totalSteps, pctStart, divFactor, finalDivFactor) == nil,
                     "OneCycleSchedule: \(Self.problem(maxLR, totalSteps, pctStart, divFactor, finalDivFactor)!.1)")
    }

    public var initialLR: Double { maxLR / divFactor }
    public var finalLR: Double { initialLR / finalDivFactor }

    public func lr(at step: Int) -> Float {
        precondition(step >= 0, "OneCycleSchedule: negative step \(step)")
        // PyTorch's phases: (end_step, start_lr, end_lr); a phase covers start_step...end_step.
        let s = Double(Swift.min(step, totalSteps - 1))
        let end1 = pctStart * Double(totalSteps) - 1, end2 = Double(totalSteps - 1)
        func anneal(_ start: Double, _ end: Double, _ pct: Double) -> Double {
            end + (start - end) / 2 * (cos(Double.pi * pct) + 1)
        }
        if s <= end1 { return Float(anneal(initialLR, maxLR, s / end1)) }
        return Float(anneal(maxLR, finalLR, (s - end1) / (end2 - end1)))
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case maxLR = "max_lr", totalSteps = "total_steps", pctStart = "pct_start"
        case divFactor = "div_factor", finalDivFactor = "final_div_factor"
    }

    static func problem(_ maxLR: Double, _ total: Int, _ pct: Double, _ div: Double, _ finalDiv: Double) -> (CodingKeys, String)? {
        if !(maxLR > 0) { return (.maxLR, "max_lr must be positive, got \(maxLR)") }
        if total < 2 { return (.totalSteps, "total_steps must be ≥ 2, got \(total)") }
        // PyTorch divides by end1 = pct·T − 1 and by (T − 1) − end1: both must be positive.
        let end1 = pct * Double(total) - 1
        if !(pct > 0 && pct < 1) || !(end1 > 0) || !(end1 < Double(total - 1)) {
            return (.pctStart, "pct_start \(pct) leaves an empty phase for total_steps \(total)")
        }
        if !(div > 0) { return (.divFactor, "div_factor must be positive, got \(div)") }
        if !(finalDiv > 0) { return (.finalDivFactor, "final_div_factor must be positive, got \(finalDiv)") }
        return nil
    }

    public init(from decoder: Decoder) throws {
        try rejectUnknownKeys(decoder, allowed: CodingKeys.allCases.map(\.rawValue) + ["type"], in: "one_cycle schedule")
        let c = try decoder.container(keyedBy: CodingKeys.self)
        maxLR = try c.decode(Double.self, forKey: .maxLR)
        totalSteps = try c.decode(Int.self, forKey: .totalSteps)
        pctStart = try c.decodeIfPresent(Double.self, forKey: .pctStart) ?? 0.3
        divFactor = try c.decodeIfPresent(Double.self, forKey: .divFactor) ?? 25
        finalDivFactor = try c.decodeIfPresent(Double.self, forKey: .finalDivFactor) ?? 1e4
        if let (key, why) = Self.problem(maxLR, totalSteps, pctStart, divFactor, finalDivFactor) { try check(false, c, key, why) }
    }
}

/// One of the schedules, as a config names it: a flat object with a `type` key
/// (`constant`, `warmup_cosine`, `one_cycle`) beside the schedule's own snake_case keys, e.g.
/// `{"type": "warmup_cosine", "peak_lr": 1e-3, "min_lr": 1e-5, "warmup_steps": 500, "total_steps": 20000}`.
public enum LearningRateSchedule: LearningRateScheduling, Codable, Equatable, Sendable {
    case constant(ConstantSchedule)
    case warmupCosine(WarmupCosineSchedule)
    case oneCycle(OneCycleSchedule)

    public func lr(at step: Int) -> Float {
        switch self {
        case .constant(let s): return s.lr(at: step)
        case .warmupCosine(let s): return s.lr(at: step)
        case .oneCycle(let s): return s.lr(at: step)
        }
    }

    public var typeName: String {
        switch self {
        case .constant: return "constant"
        case .warmupCosine: return "warmup_cosine"
        case .oneCycle: return "one_cycle"
        }
    }

    enum TypeKey: String, CodingKey { case type }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: TypeKey.self)
        let type = try c.decode(String.self, forKey: .type)
        switch type {
        case "constant": self = .constant(try ConstantSchedule(from: decoder))
        case "warmup_cosine": self = .warmupCosine(try WarmupCosineSchedule(from: decoder))
        case "one_cycle": self = .oneCycle(try OneCycleSchedule(from: decoder))
        default:
            throw DecodingError.dataCorruptedError(forKey: .type, in: c, debugDescription:
                "unknown schedule type '\(type)' (expected constant, warmup_cosine or one_cycle)")
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: TypeKey.self)
        try c.encode(typeName, forKey: .type)
        switch self {
        case .constant(let s): try s.encode(to: encoder)
        case .warmupCosine(let s): try s.encode(to: encoder)
        case .oneCycle(let s): try s.encode(to: encoder)
        }
    }
}

// MARK: - Strict decoding helpers

struct AnyCodingKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

/// Throws when the object being decoded has a key outside `allowed`, naming the key.
func rejectUnknownKeys(_ decoder: Decoder, allowed: [String], in what: String) throws {
    let c = try decoder.container(keyedBy: AnyCodingKey.self)
    for key in c.allKeys.sorted(by: { $0.stringValue < $1.stringValue }) where !allowed.contains(key.stringValue) {
        throw DecodingError.dataCorrupted(.init(
            codingPath: decoder.codingPath + [key],
            debugDescription: "unknown key '\(key.stringValue)' in \(what) (allowed: \(allowed.sorted().joined(separator: ", ")))"))
    }
}

/// Throws a decoding error naming `key` unless `condition` holds.
func check<K: CodingKey>(_ condition: Bool, _ c: KeyedDecodingContainer<K>, _ key: K, _ why: String) throws {
    if !condition { throw DecodingError.dataCorruptedError(forKey: key, in: c, debugDescription: why) }
}

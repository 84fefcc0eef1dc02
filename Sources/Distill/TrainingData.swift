import Foundation
import Layers
import SegmentAnything
import Tensor

/// One batch of distillation data: preprocessed images and the teacher's embeddings.
public struct TrainingBatch: Sendable {
    /// images: (B, 3, S, S), normalised and padded as SAM's preprocessing does
    public var images: Tensor
    /// targets: (B, 256, S/16, S/16), the teacher's embeddings
    public var targets: Tensor
    /// The part of each embedding grid that covers the unpadded image (B entries).
    public var validRegions: [ValidRegion]
    /// Each sample's teacher everything-masks on the low-res mask grid (B entries, empty for a
    /// sample without), nil when no sample has any: prompt-in-the-loop samples prompts from them.
    public var everythingMasks: [[MaskRLE]]?

    public init(images: Tensor, targets: Tensor, validRegions: [ValidRegion], everythingMasks: [[MaskRLE]]? = nil) {
        precondition(images.rank == 4 && targets.rank == 4 && images.shape[0] == targets.shape[0]
                     && validRegions.count == images.shape[0] && (everythingMasks?.count ?? images.shape[0]) == images.shape[0],
                     "TrainingBatch: images \(images.shape), targets \(targets.shape), \(validRegions.count) regions, \(everythingMasks?.count ?? 0) mask lists")
        self.images = images; self.targets = targets; self.validRegions = validRegions; self.everythingMasks = everythingMasks
    }
}

/// A source of training (or validation) samples, addressed by row `0..<count`.
///
/// `batch` may be called from a background thread (the trainer prefetches the next
/// micro-batch while the current one trains), never twice at the same time. `seed` is a
/// deterministic per-micro-batch seed for augmentation (the same rows and seed must give the
/// same batch: this is what makes `--resume` exact).
public protocol TrainingData: AnyObject {
    var count: Int { get }
    func batch(_ rows: [Int], seed: UInt64) throws -> TrainingBatch
}

/// Samples held in memory (tests, small experiments): images (N, 3, S, S), targets
/// (N, C, g, g), one valid region per sample (default: the whole grid).
public final class InMemoryTrainingData: TrainingData {
    public let images: Tensor
    public let targets: Tensor
    public let validRegions: [ValidRegion]

    public init(images: Tensor, targets: Tensor, validRegions: [ValidRegion]? = nil) {
        precondition(images.rank == 4 && targets.rank == 4 && images.shape[0] == targets.shape[0],
                     "InMemoryTrainingData: images \(images.shape) and targets \(targets.shape) disagree")
        self.images = images
        self.targets = targets
        self.validRegions = validRegions
            ?? Array(repeating: ValidRegion(height: targets.shape[2], width: targets.shape[3]), count: images.shape[0])
        precondition(self.validRegions.count == images.shape[0], "InMemoryTrainingData: one valid region per sample")
    }

    public var count: Int { images.shape[0] }

    public func batch(_ rows: [Int], seed: UInt64) throws -> TrainingBatch {
        TrainingBatch(images: Self.gather(images, rows), targets: Self.gather(targets, rows),
                      validRegions: rows.map { validRegions[$0] })
    }

    /// Rows of a (N, …) tensor -> (rows.count, …)
    static func gather(_ t: Tensor, _ rows: [Int]) -> Tensor {
        let per = t.count / t.shape[0]
        var out = Tensor(zeros: [rows.count] + t.shape.dropFirst())
        for (i, r) in rows.enumerated() {
            precondition((0..<t.shape[0]).contains(r), "InMemoryTrainingData: row \(r) outside 0..<\(t.shape[0])")
            out.data.replaceSubrange((i * per)..<((i + 1) * per), with: t.data[(r * per)..<((r + 1) * per)])
        }
        return out
    }
}

/// The order samples are visited in: an endless stream of epochs, each a seeded permutation of
/// `0..<count`. Position `cursor` (samples consumed so far) fully determines what comes next, so
/// a checkpoint only stores the seed and the cursor.
///
/// Epoch e's permutation: Fisher–Yates (from the last element down, j uniform in 0...i by
/// rejection-free multiply-shift) driven by `SeededRandom(seed: seed ^ (e + 1) · φ64)`.
public struct BatchOrder: Sendable {
    public let seed: UInt64
    public let count: Int
    private var cachedEpoch = -1
    private var cached: [Int] = []

    public init(seed: UInt64, count: Int) {
        precondition(count > 0, "BatchOrder: no samples")
        self.seed = seed; self.count = count
    }

    public static func permutation(seed: UInt64, epoch: Int, count: Int) -> [Int] {
        var rng = SeededRandom(seed: seed ^ (UInt64(epoch + 1) &* 0x9E37_79B9_7F4A_7C15))
        var p = Array(0..<count)
        var i = count - 1
        while i > 0 {
            let j = Int(rng.next().multipliedFullWidth(by: UInt64(i + 1)).high)
            p.swapAt(i, j)
            i -= 1
        }
        return p
    }

    /// The `n` rows starting at `cursor` (crossing epoch boundaries).
    public mutating func rows(cursor: Int, n: Int) -> [Int] {
        (cursor..<(cursor + n)).map { c in
            let e = c / count
            if e != cachedEpoch { cached = Self.permutation(seed: seed, epoch: e, count: count); cachedEpoch = e }
            return cached[c % count]
        }
    }
}

/// Loads the next micro-batch on a background queue while the current one trains.
public final class Prefetcher: @unchecked Sendable {
    public let data: TrainingData
    private let queue = DispatchQueue(label: "samdistill.prefetch")
    private var pending: (rows: [Int], seed: UInt64, group: DispatchGroup, box: ResultBox)?

    final class ResultBox: @unchecked Sendable { var result: Result<TrainingBatch, Error>? }

    public init(_ data: TrainingData) { self.data = data }

    /// Starts loading `rows` (with `seed`) in the background.
    public func request(_ rows: [Int], seed: UInt64) {
        let group = DispatchGroup(), box = ResultBox(), data = self.data
        group.enter()
        queue.async {
            box.result = Result { try data.batch(rows, seed: seed) }
            group.leave()
        }
        pending = (rows, seed, group, box)
    }

    /// The batch for `rows`: the prefetched one when it matches, else loaded now.
    public func take(_ rows: [Int], seed: UInt64) throws -> TrainingBatch {
        if let p = pending {
            p.group.wait()
            pending = nil
            if p.rows == rows && p.seed == seed { return try p.box.result!.get() }
        }
        return try data.batch(rows, seed: seed)
    }

    /// Waits for a pending load and drops it.
    public func drain() {
        pending?.group.wait()
        pending = nil
    }
}

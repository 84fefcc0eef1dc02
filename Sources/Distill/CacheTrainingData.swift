import Foundation
import Layers
import SegmentAnything
import Tensor

/// Training and validation samples drawn from one or more feature caches (the trainer's
/// `TrainingData` over `CacheReader`s).
///
/// Rows: the complete rows of `data.train_split` in every cache, in cache order. Validation:
/// the rows of `data.val_split` when the caches have any; otherwise the rows whose source is
/// listed in `data.val_list`; otherwise, with `data.val_fraction` > 0, the rows of a fraction of
/// the source images chosen by a stable hash of the source path (all views of one image fall on
/// the same side).
public final class CacheTrainingData: TrainingData {
    public let readers: [CacheReader]
    /// (cache index, row) of each sample.
    public let samples: [(cache: Int, row: Int)]

    public init(readers: [CacheReader], samples: [(cache: Int, row: Int)]) {
        self.readers = readers
        self.samples = samples
    }

    public var count: Int { samples.count }

    /// Reads the rows as one batch; `seed` is unused: augmentation was applied when caching
    /// (`--views`), so the same rows always give the same batch.
    public func batch(_ rows: [Int], seed: UInt64) throws -> TrainingBatch {
        var images: [Tensor] = [], targets: [Tensor] = [], regions: [ValidRegion] = [], masks: [[MaskRLE]] = []
        // Group consecutive rows by cache to read each cache's rows in one call.
        var i = 0
        while i < rows.count {
            let cache = samples[rows[i]].cache
            var j = i
            while j < rows.count && samples[rows[j]].cache == cache { j += 1 }
            let reader = readers[cache]
            let b = try reader.batch(rows: rows[i..<j].map { samples[$0].row })
            images.append(b.images); targets.append(b.embeddings)
            masks += b.everythingMasks?.map { $0.map(\.rle) } ?? Array(repeating: [], count: j - i)
            let grid = reader.embeddingShape[1]
            regions += b.validSizes.map {
                ValidRegion.embedding(resizedHeight: $0.height, resizedWidth: $0.width, inputSize: reader.imageSize, gridSize: grid)
            }
            i = j
        }
        let anyMasks = readers.contains { $0.everythingMaskSize != nil }
        return TrainingBatch(images: Self.concatenate(images), targets: Self.concatenate(targets), validRegions: regions,
                             everythingMasks: anyMasks ? masks : nil)
    }

    static func concatenate(_ parts: [Tensor]) -> Tensor {
        if parts.count == 1 { return parts[0] }
        var data: [Float] = []
        data.reserveCapacity(parts.reduce(0) { $0 + $1.count })
        for p in parts { data += p.data }
        return Tensor(shape: [parts.reduce(0) { $0 + $1.shape[0] }] + parts[0].shape.dropFirst(), data: data)
    }

    /// Opens the caches of `data` and splits them as described above.
    public static func open(_ data: DataConfig, relativeTo base: URL? = nil) throws -> (train: CacheTrainingData, validation: CacheTrainingData?) {
        guard !data.train.isEmpty else { throw CacheReader.FormatError(file: "data.train", reason: "no cache files given") }
        let readers = try data.train.map { path -> CacheReader in
            let url = base.map { URL(fileURLWithPath: path, relativeTo: $0) } ?? URL(fileURLWithPath: path)
            return try CacheReader(url)
        }
        let shapes = Set(readers.map { "\($0.imageSize) \($0.embeddingShape)" })
        guard shapes.count == 1 else {
            throw CacheReader.FormatError(file: data.train.joined(separator: ", "), reason: "caches differ in image size or embedding shape: \(shapes.sorted())")
        }
        var train: [(cache: Int, row: Int)] = [], val: [(cache: Int, row: Int)] = []
        for (c, r) in readers.enumerated() {
            train += r.rows(split: data.trainSplit).map { (c, $0) }
            if let v = data.valSplit { val += r.rows(split: v).map { (c, $0) } }
        }
        if val.isEmpty, let listPath = data.valList {
            // The cache builder's rule: a listed path or file name is validation.
            let rule = try SplitRule.list(file: URL(fileURLWithPath: listPath))
            var keep: [(cache: Int, row: Int)] = []
            for s in train { (rule.isValidation(try readers[s.cache].source(of: s.row)) ? { val.append(s) } : { keep.append(s) })() }
            train = keep
        } else if val.isEmpty, data.valFraction > 0 {
            var keep: [(cache: Int, row: Int)] = []
            for s in train {
                let h = FNV1a.hash(try readers[s.cache].source(of: s.row))
                if Double(h % 10_000) / 10_000 < data.valFraction { val.append(s) } else { keep.append(s) }
            }
            train = keep
        }
        guard !train.isEmpty else {
            throw CacheReader.FormatError(file: data.train.joined(separator: ", "), reason: "no complete '\(data.trainSplit.name)' rows to train on")
        }
        return (CacheTrainingData(readers: readers, samples: train), val.isEmpty ? nil : CacheTrainingData(readers: readers, samples: val))
    }
}

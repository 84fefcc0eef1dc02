import Foundation
import HDF5
import ImageCodecs
import SegmentAnything
import Tensor

/// Train/val membership of a cache row (dataset `split`).
public enum CacheSplit: Int, Sendable, CaseIterable {
    case train = 0, val = 1

    /// "train" or "val": the name configs, `--split` and the cache's split attribute use.
    public var name: String { self == .train ? "train" : "val" }

    public init?(name: String) {
        guard let s = Self.allCases.first(where: { $0.name == name }) else { return nil }
        self = s
    }

}

/// The rows an evaluation reads: `train`, `val` or `all` (eval.split in configs, `eval --split`).
public enum CacheSelection: String, CaseIterable, Codable, Sendable {
    case train, val, all

    /// The split to filter on (nil: every row).
    public var split: CacheSplit? {
        switch self {
        case .train: .train
        case .val: .val
        case .all: nil
        }
    }
}

/// One cache row, as stored.
public struct CacheRow: Sendable {
    public let row: Int
    /// The padded uint8 image (S, S, 3) and its valid region.
    public let image: PaddedImage
    /// (C, G, G) Float32 (float16 widened).
    public let embedding: Tensor
    public let originalSize: ImageSize
    public let source: String
    public let view: Int
    public let viewParameters: ViewParameters
    public let split: CacheSplit
}

/// A batch for the trainer or the evaluator.
public struct CacheBatch: Sendable {
    public let rows: [Int]
    /// (B, 3, S, S): normalised with the cache's pixel mean/std, zero padding (the encoder's input).
    public let images: Tensor
    /// (B, C, G, G) Float32: the teacher's embeddings.
    public let embeddings: Tensor
    /// The valid (resized, unpadded) region of each image.
    public let validSizes: [ImageSize]
    /// Each row's decoded image size (for mapping prompts and masks back).
    public let originalSizes: [ImageSize]
    /// Each row's teacher everything-masks (low-res grid), nil when the cache has none.
    public var everythingMasks: [[EverythingMask]]? = nil
}

/// Reads a feature cache (one file, or a sharded index) as one row space: random access by
/// row, batches, and a background prefetch thread. Accepts any file of the schema
/// (`CacheSchema`), whatever wrote it (this toolkit or `Scripts/cache_teacher_pytorch.py`), and
/// any image size and embedding shape it declares. Only rows whose `complete` flag is 1 are
/// offered by `rows(split:)`; `row(_:)` refuses the others.
///
/// Thread safety: all HDF5 access is serialised (see `HDF5Lock`); a reader may be used from the
/// prefetch thread and the caller's thread at once.
public final class CacheReader {
    public let url: URL
    public let teacher: String
    public let teacherSHA256: String
    public let imageSize: Int
    /// (C, G, G)
    public let embeddingShape: [Int]
    /// "float16" or "float32", as stored.
    public let embeddingDType: String
    public let pixelMean: [Float]
    public let pixelStd: [Float]
    public let views: Int
    /// Root attributes of the index (or single file).
    public let attributes: [String: HDF5AttributeValue]
    /// L of the everything-masks' L×L grid, nil when the cache holds none.
    public let everythingMaskSize: Int?

    private struct Part {
        let writer: CacheFileWriter
        let firstRow: Int
    }
    private let parts: [Part]
    /// Rows in all files (complete or not).
    public let count: Int
    private let completeFlags: [Bool]
    private let splits: [Int]

    public struct FormatError: Error, CustomStringConvertible {
        public let file: String
        public let reason: String
        public var description: String { "\(file): not a usable feature cache: \(reason)" }
    }

    public init(_ url: URL) throws {
        self.url = url
        let index = try HDF5File(url, mode: .readOnly)
        var attrs: [String: HDF5AttributeValue] = [:]
        for n in try index.attributeNames() { attrs[n] = try index.attribute(n) }
        attributes = attrs
        func fail(_ r: String) -> FormatError { FormatError(file: url.path, reason: r) }
        guard attrs["format"]?.stringValue == CacheSchema.format else {
            throw fail("root attribute 'format' is \(attrs["format"].map { "\($0)" } ?? "missing"), expected \"\(CacheSchema.format)\"")
        }
        guard let version = attrs["format_version"]?.intValue, version >= 1, version <= CacheSchema.version else {
            throw fail("unsupported format_version \(attrs["format_version"].map { "\($0)" } ?? "(missing)") (this reader knows 1…\(CacheSchema.version))")
        }
        guard let s = attrs["image_size"]?.intValue, s > 0 else { throw fail("root attribute 'image_size' missing or not a positive integer") }
        imageSize = s
        guard let shape = attrs["embedding_shape"]?.doublesValue, shape.count == 3 else {
            throw fail("root attribute 'embedding_shape' missing or not 3 integers")
        }
        embeddingShape = shape.map { Int($0) }
        guard let dt = attrs["embedding_dtype"]?.stringValue, ["float16", "float32"].contains(dt) else {
            throw fail("root attribute 'embedding_dtype' must be \"float16\" or \"float32\"")
        }
        embeddingDType = dt
        guard let mean = attrs["pixel_mean"]?.doublesValue, mean.count == 3,
              let std = attrs["pixel_std"]?.doublesValue, std.count == 3 else {
            throw fail("root attributes 'pixel_mean' and 'pixel_std' must hold 3 numbers each")
        }
        pixelMean = mean.map { Float($0) }
        pixelStd = std.map { Float($0) }
        teacher = attrs["teacher"]?.stringValue ?? "?"
        teacherSHA256 = attrs["teacher_sha256"]?.stringValue ?? ""
        views = attrs["views"]?.intValue ?? 1
        if attrs["everything_masks"] != nil {
            guard let m = attrs["everything_mask_size"]?.doublesValue, m.count == 2, m[0] == m[1], m[0] >= 1 else {
                throw fail("root attribute 'everything_mask_size' must be [L, L] when 'everything_masks' is set")
            }
            everythingMaskSize = Int(m[0])
        } else {
            everythingMaskSize = nil
        }

        var files: [HDF5File] = []
        if case .strings(let names)? = attrs["shards"] {
            index.close()
            for n in names { files.append(try HDF5File(url.deletingLastPathComponent().appendingPathComponent(n), mode: .readOnly)) }
        } else {
            files = [index]
        }
        var parts: [Part] = []
        var first = 0
        var complete: [Bool] = [], splits: [Int] = []
        for f in files {
            for name in CacheSchema.datasets where !f.exists(name) {
                throw FormatError(file: f.filePath, reason: "dataset '\(name)' is missing")
            }
            let w = try CacheFileWriter(file: f, firstRow: first)
            let S = imageSize
            func expect(_ d: HDF5Dataset, _ shape: [Int], _ types: [HDF5ElementType]) throws {
                guard Array(d.shape.dropFirst()) == shape else {
                    throw FormatError(file: f.filePath, reason: "dataset '\(d.name)' has rows of shape \(Array(d.shape.dropFirst())), expected \(shape)")
                }
                guard let t = d.elementType, types.contains(t) || types.isEmpty else {
                    throw FormatError(file: f.filePath, reason: "dataset '\(d.name)' stores \(d.elementType?.description ?? d.typeName), expected \(types.map(\.description).joined(separator: " or "))")
                }
            }
            try expect(w.image, [S, S, 3], [.uint8])
            try expect(w.embedding, embeddingShape, [dt == "float16" ? .float16 : .float32])
            try expect(w.originalSize, [2], [.int32, .int64])
            try expect(w.resizedSize, [2], [.int32, .int64])
            try expect(w.viewParams, [5], [.float32, .float64])
            try expect(w.view, [], [.int32, .int64])
            try expect(w.split, [], [.uint8, .int32, .int64])
            try expect(w.complete, [], [.uint8])
            if everythingMaskSize != nil {
                guard let e = w.everything else {
                    throw FormatError(file: f.filePath, reason: "root attribute 'everything_masks' is set but dataset 'everything_masks' is missing")
                }
                let M = e[2].rowCount
                let shapes = [[], [], [M], [e[3].rowCount], [M], [M]], types: [HDF5ElementType] = [.int32, .int32, .int32, .int32, .float32, .float32]
                for i in e.indices { try expect(e[i], shapes[i], [types[i]]) }
            }
            guard case .string? = w.source.elementType else {
                throw FormatError(file: f.filePath, reason: "dataset 'source' must hold fixed-length strings (h5py dtype 'S<n>'), found \(w.source.typeName)")
            }
            complete += try w.complete.readInts(rows: 0, count: w.rows).map { $0 == 1 }
            splits += try w.split.readInts(rows: 0, count: w.rows)
            parts.append(Part(writer: w, firstRow: first))
            first += w.rows
        }
        self.parts = parts
        count = first
        completeFlags = complete
        self.splits = splits
    }

    /// Complete rows (in row order), optionally of one split.
    public func rows(split: CacheSplit? = nil) -> [Int] {
        (0..<count).filter { completeFlags[$0] && (split == nil || splits[$0] == split!.rawValue) }
    }

    public func isComplete(_ row: Int) -> Bool { completeFlags[row] }

    /// Closes the cache's files now (they also close when the reader is released); the reader
    /// must not be used afterwards.
    public func close() {
        for p in parts { p.writer.file.close() }
    }

    private func locate(_ row: Int) throws -> (CacheFileWriter, Int) {
        guard row >= 0, row < count else { throw FormatError(file: url.path, reason: "row \(row) outside 0..<\(count)") }
        guard completeFlags[row] else { throw FormatError(file: url.path, reason: "row \(row) is not complete") }
        let p = parts.last { $0.firstRow <= row }!
        return (p.writer, row - p.firstRow)
    }

    /// Runs the reads of `row` (row `local` of `w`'s file); a failed HDF5 read (a chunk that fails
    /// its Fletcher-32 checksum, a short file) becomes one error naming the file, the dataset and
    /// the row, so damaged data is reported and never used.
    private func reading<T>(_ row: Int, _ w: CacheFileWriter, _ local: Int, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let e as HDF5Error {
            let which = parts.count > 1 ? "row \(row) (row \(local) of this file)" : "row \(row)"
            if e.reason.localizedCaseInsensitiveContains("fletcher32") {
                throw CacheError("\(e.file): \(which) is damaged: dataset '\(e.object)' fails its Fletcher-32 checksum")
            }
            throw CacheError("\(e.file): \(which): dataset '\(e.object)': \(e.operation) failed" + (e.reason.isEmpty ? "" : " (\(e.reason))"))
        }
    }

    private func readEmbedding(_ w: CacheFileWriter, _ local: Int, into out: UnsafeMutablePointer<Float>) throws {
        let n = embeddingShape.reduce(1, *)
        if embeddingDType == "float16" {
            var h = [UInt16](repeating: 0, count: n)
            try h.withUnsafeMutableBytes { try w.embedding.readRaw(rows: local, count: 1, type: .float16, into: $0) }
            h.withUnsafeBufferPointer { FloatConversion.fromHalfBits($0, into: out) }
        } else {
            try UnsafeMutableRawBufferPointer(start: out, count: n * 4).withMemoryRebound(to: UInt8.self) {
                try w.embedding.readRaw(rows: local, count: 1, type: .float32, into: UnsafeMutableRawBufferPointer($0))
            }
        }
    }

    private func readImage(_ w: CacheFileWriter, _ local: Int) throws -> PaddedImage {
        let S = imageSize
        var px = [UInt8](repeating: 0, count: S * S * 3)
        try px.withUnsafeMutableBytes { try w.image.readRaw(rows: local, count: 1, type: .uint8, into: $0) }
        let rs = try w.resizedSize.readInts(rows: local, count: 1)
        return PaddedImage(size: S, pixels: px, validSize: ImageSize(height: rs[0], width: rs[1]))
    }

    /// The source path (relative to the cached folder) of a complete row, without reading pixels.
    public func source(of row: Int) throws -> String {
        let (w, local) = try locate(row)
        return try reading(row, w, local) { try w.source.readStrings(rows: local, count: 1)[0] }
    }

    /// One complete row, as stored (embedding widened to Float32).
    public func row(_ row: Int) throws -> CacheRow {
        let (w, local) = try locate(row)
        return try reading(row, w, local) {
            var e = Tensor(zeros: embeddingShape)
            try e.data.withUnsafeMutableBufferPointer { try readEmbedding(w, local, into: $0.baseAddress!) }
            let os = try w.originalSize.readInts(rows: local, count: 1)
            let vp = try w.viewParams.readFloats(rows: local, count: 1)
            return CacheRow(row: row, image: try readImage(w, local), embedding: e,
                            originalSize: ImageSize(height: os[0], width: os[1]),
                            source: try w.source.readStrings(rows: local, count: 1)[0],
                            view: try w.view.readInts(rows: local, count: 1)[0],
                            viewParameters: ViewParameters(stored: vp),
                            split: CacheSplit(rawValue: try w.split.readInts(rows: local, count: 1)[0]) ?? .train)
        }
    }

    /// The teacher everything-masks of a complete row (nil when the cache has none). Stored counts
    /// that do not make L×L masks are an error naming the file and the row.
    public func everythingMasks(_ row: Int) throws -> [EverythingMask]? {
        guard let L = everythingMaskSize else { return nil }
        let (w, local) = try locate(row)
        let d = w.everything!
        func bad(_ why: String) -> FormatError { FormatError(file: w.file.filePath, reason: "row \(local): everything masks: \(why)") }
        let (n, lengths, counts, iou, stability) = try reading(row, w, local) {
            (try d[0].readInts(rows: local, count: 1)[0], try d[2].readInts(rows: local, count: 1), try d[3].readInts(rows: local, count: 1),
             try d[4].readFloats(rows: local, count: 1), try d[5].readFloats(rows: local, count: 1))
        }
        guard (0...lengths.count).contains(n) else { throw bad("\(n) masks, the row holds at most \(lengths.count)") }
        var masks: [EverythingMask] = [], start = 0
        for i in 0..<n {
            let c = lengths[i]
            guard c >= 1, start + c <= counts.count else { throw bad("mask \(i) has \(c) counts from \(start), of \(counts.count)") }
            let runs = Array(counts[start..<(start + c)])
            guard runs.allSatisfy({ $0 >= 0 }), runs.reduce(0, +) == L * L else {
                throw bad("mask \(i)'s counts add up to \(runs.reduce(0, +)), an \(L)×\(L) mask needs \(L * L)")
            }
            masks.append(EverythingMask(rle: MaskRLE(height: L, width: L, counts: runs), predictedIoU: iou[i], stabilityScore: stability[i]))
            start += c
        }
        return masks
    }

    /// Images (normalised + padded) and embeddings of `rows`, in that order.
    public func batch(rows: [Int]) throws -> CacheBatch {
        let B = rows.count, S = imageSize
        let C = embeddingShape[0], G = embeddingShape[1], G2 = embeddingShape[2]
        var images = Tensor(zeros: [B, 3, S, S])
        var embeddings = Tensor(zeros: [B, C, G, G2])
        var valid: [ImageSize] = [], original: [ImageSize] = []
        for (b, r) in rows.enumerated() {
            let (w, local) = try locate(r)
            try reading(r, w, local) {
                let img = try readImage(w, local)
                images.data.withUnsafeMutableBufferPointer {
                    img.normalise(into: $0.baseAddress! + b * 3 * S * S, mean: pixelMean, std: pixelStd)
                }
                try embeddings.data.withUnsafeMutableBufferPointer {
                    try readEmbedding(w, local, into: $0.baseAddress! + b * C * G * G2)
                }
                valid.append(img.validSize)
                let os = try w.originalSize.readInts(rows: local, count: 1)
                original.append(ImageSize(height: os[0], width: os[1]))
            }
        }
        var batch = CacheBatch(rows: rows, images: images, embeddings: embeddings, validSizes: valid, originalSizes: original)
        if everythingMaskSize != nil { batch.everythingMasks = try rows.map { try everythingMasks($0)! } }
        return batch
    }

    /// Shuffled batches of `size` rows from `rows` (the last one may be short unless
    /// `dropLast`), with a seeded generator: an epoch's order for the trainer.
    public static func shuffledBatches(_ rows: [Int], size: Int, seed: UInt64, dropLast: Bool = false) -> [[Int]] {
        var rng = SeededRandom(seed: seed)
        var r = rows
        for i in stride(from: r.count - 1, to: 0, by: -1) {
            let j = Int(rng.next() % UInt64(i + 1))
            r.swapAt(i, j)
        }
        var out: [[Int]] = []
        for s in stride(from: 0, to: r.count, by: size) {
            let b = Array(r[s..<min(r.count, s + size)])
            if b.count == size || !dropLast { out.append(b) }
        }
        return out
    }
}

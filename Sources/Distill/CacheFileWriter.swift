import Foundation
import HDF5
import SegmentAnything
import Tensor

/// The datasets of one cache file (a whole cache, or one shard) open for writing.
final class CacheFileWriter {
    let file: HDF5File
    let firstRow: Int
    let rows: Int
    let image, embedding, originalSize, resizedSize, viewParams, complete: HDF5Dataset
    let source, view, split: HDF5Dataset
    /// `CacheSchema.everythingDatasets` in that order, when the file has them.
    let everything: [HDF5Dataset]?

    init(file: HDF5File, firstRow: Int) throws {
        self.file = file
        self.firstRow = firstRow
        image = try file.dataset("image")
        embedding = try file.dataset("embedding")
        originalSize = try file.dataset("original_size")
        resizedSize = try file.dataset("resized_size")
        viewParams = try file.dataset("view_params")
        complete = try file.dataset("complete")
        source = try file.dataset("source")
        view = try file.dataset("view")
        split = try file.dataset("split")
        rows = complete.rows
        let present = CacheSchema.everythingDatasets.filter { file.exists($0) }
        if present.isEmpty {
            everything = nil
        } else {
            guard present.count == CacheSchema.everythingDatasets.count else {
                throw CacheError("\(file.filePath): has \(present.joined(separator: ", ")) but not every one of \(CacheSchema.everythingDatasets.joined(separator: ", "))")
            }
            everything = try present.map { try file.dataset($0) }
        }
        for d in [image, embedding, originalSize, resizedSize, viewParams, source, view, split] + (everything ?? []) where d.rows != rows {
            throw CacheError("\(file.filePath): dataset '\(d.name)' has \(d.rows) rows, 'complete' has \(rows): not a consistent cache file")
        }
    }

    /// Creates a cache file with every row planned and space reserved (so writing rows later
    /// never changes HDF5 metadata), at a temporary name renamed into place once complete.
    /// Every dataset's chunks carry HDF5's Fletcher-32 checksum (format version 2). With the
    /// filter, HDF5 writes every reserved chunk (zeros, checksum 0) at creation instead of leaving
    /// the file sparse: the rows' disk space is taken now, so a disk too small fails here, before
    /// any row is computed, and never in the middle of the run.
    static func create(_ url: URL, settings: CacheSettings, plan: ArraySlice<PlannedRow>, command: String,
                       extra: (HDF5File) throws -> Void = { _ in }) throws {
        let tmp = url.deletingLastPathComponent().appendingPathComponent(url.lastPathComponent + ".creating")
        try? FileManager.default.removeItem(at: tmp)
        do {
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        } catch {
            throw CacheError("\(url.deletingLastPathComponent().path): cannot create the cache's folder (\(error.localizedDescription))")
        }
        do {
            let f = try HDF5File(tmp, mode: .create)
            try settings.write(to: f)
            try f.setAttribute("command", command)
            try f.setAttribute("created", ISO8601DateFormatter().string(from: Date()))
            try extra(f)
            let n = plan.count, S = settings.imageSize
            let embType: HDF5ElementType = settings.embeddingDType == "float32" ? .float32 : .float16
            _ = try f.createDataset("image", type: .uint8, rowShape: [S, S, 3], rows: n, allocateEarly: true, checksum: true)
            _ = try f.createDataset("embedding", type: embType, rowShape: settings.embeddingShape, rows: n, allocateEarly: true, checksum: true)
            _ = try f.createDataset("original_size", type: .int32, rowShape: [2], rows: n, allocateEarly: true, checksum: true)
            _ = try f.createDataset("resized_size", type: .int32, rowShape: [2], rows: n, allocateEarly: true, checksum: true)
            _ = try f.createDataset("view_params", type: .float32, rowShape: [5], rows: n, allocateEarly: true, checksum: true)
            let width = max(64, ((plan.map { $0.source.utf8.count }.max() ?? 0) + 63) / 64 * 64)
            let src = try f.createDataset("source", type: .string(width), rowShape: [], rows: n, allocateEarly: true, checksum: true)
            try src.writeStrings(rows: 0, plan.map(\.source))
            let v = try f.createDataset("view", type: .int32, rowShape: [], rows: n, allocateEarly: true, checksum: true)
            try v.write(rows: 0, plan.map { Int32($0.view) })
            let sp = try f.createDataset("split", type: .uint8, rowShape: [], rows: n, allocateEarly: true, checksum: true)
            try sp.write(rows: 0, plan.map { UInt8($0.split) })
            let c = try f.createDataset("complete", type: .uint8, rowShape: [], rows: n, allocateEarly: true, checksum: true)
            try c.write(rows: 0, [UInt8](repeating: 0, count: n))
            // Zero sizes and parameters so incomplete rows read as zeros, never garbage.
            for name in ["original_size", "resized_size"] {
                try f.dataset(name).write(rows: 0, [Int32](repeating: 0, count: 2 * n))
            }
            try f.dataset("view_params").write(rows: 0, [Float](repeating: 0, count: 5 * n))
            if let e = settings.everything {
                let M = e.maxMasks
                for (name, shape, type) in [("everything_masks", [Int](), HDF5ElementType.int32), ("everything_dropped", [], .int32),
                                            ("everything_rle_lengths", [M], .int32), ("everything_rle_counts", [e.maxCounts], .int32),
                                            ("everything_iou", [M], .float32), ("everything_stability", [M], .float32)] {
                    _ = try f.createDataset(name, type: type, rowShape: shape, rows: n, allocateEarly: true, checksum: true)
                }
                // Counts of 0 so incomplete rows read as holding no masks.
                for name in ["everything_masks", "everything_dropped"] {
                    try f.dataset(name).write(rows: 0, [Int32](repeating: 0, count: n))
                }
            }
            try f.flush()
            f.close()
            try FileManager.default.moveItem(atPath: tmp.path, toPath: url.path)
        } catch let e as HDF5Error {
            // Named by the cache's own name (the temporary one is gone): e.g. a disk too small.
            try? FileManager.default.removeItem(at: tmp)
            throw CacheError("\(url.path): cannot create the cache: \(e.object.isEmpty ? "" : "dataset '\(e.object)': ")\(e.operation) failed"
                             + (e.reason.isEmpty ? "" : " (\(e.reason))"))
        } catch {
            try? FileManager.default.removeItem(at: tmp)
            throw error
        }
    }

    func readPlan() throws -> [PlannedRow] {
        let s = try source.readStrings(rows: 0, count: rows)
        let v = try view.readInts(rows: 0, count: rows)
        let sp = try split.readInts(rows: 0, count: rows)
        return (0..<rows).map { PlannedRow(source: s[$0], view: v[$0], split: sp[$0]) }
    }
}

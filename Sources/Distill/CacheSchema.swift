import Foundation
import HDF5
import SegmentAnything
import Tensor

/// The feature cache's HDF5 schema (format `samdistill-feature-cache`, version 2).
///
/// Versions: 2 stores every chunk with HDF5's Fletcher-32 checksum filter (h5py reads it with
/// no plugin), so a damaged row fails to read, naming its file, dataset and row, instead of
/// reading as data; 1 (no checksums, otherwise the same) still opens and resumes.
///
/// Root attributes: `format`, `format_version`, `teacher`, `teacher_architecture`,
/// `teacher_config` (JSON), `teacher_sha256`, `image_size`, `pixel_mean`, `pixel_std` (float64
/// [3]), `embedding_dtype` ("float16" | "float32"), `embedding_shape` ([C, G, G]), `views`,
/// `seed`, `augmentation` (JSON), `split` (how train/val was chosen), `command`, `created`.
///
/// Datasets, one row per view, every one chunked one row per chunk and extendable along rows:
/// - `image`          uint8 (N, S, S, 3): resized longest side → S, zero-padded bottom/right, BEFORE normalisation
/// - `embedding`      float16 | float32 (N, C, G, G): the teacher's output
/// - `original_size`  int32 (N, 2): decoded image (height, width)
/// - `resized_size`   int32 (N, 2): valid region of `image` (height, width)
/// - `source`         fixed-length UTF-8 string (N,): path relative to the image folder
/// - `view`           int32 (N,): view index (0 = plain SAM preprocessing)
/// - `view_params`    float32 (N, 5): crop x, y, width, height (original pixels), flipped (0/1)
/// - `split`          uint8 (N,): 0 train, 1 val
/// - `complete`       uint8 (N,): 1 once every other field of the row is written (written last)
///
/// `source`, `view` and `split` (the plan) are written when the file is created; a row whose
/// `complete` is 0 holds no valid data (not yet computed, or its file could not be decoded).
///
/// Optional, with `--everything-masks` / `data.everything_masks` (EverythingMasks.swift): the
/// teacher's everything-masks of each row on the L×L low-res grid of the padded input (L = S/4),
/// as COCO uncompressed RLE (column-major run lengths, starting with a run of zeros), in fixed
/// per-row capacity (M = max_masks, K = max_counts). Root attributes `everything_masks` (the
/// generator settings, JSON), `everything_mask_size` ([L, L]) and `everything_rle` (the encoding).
/// - `everything_masks`     int32 (N,): masks stored in the row
/// - `everything_dropped`   int32 (N,): generated masks not stored (over M or K, or empty at L×L)
/// - `everything_rle_lengths` int32 (N, M): counts of each stored mask (0 after the last)
/// - `everything_rle_counts`  int32 (N, K): the masks' counts, concatenated (0 after the last)
/// - `everything_iou`, `everything_stability` float32 (N, M): predicted IoU, stability score
/// Mask i of row r: counts[r, sum(lengths[r, :i]) ..< sum(lengths[r, :i+1])].
///
/// Sharded caches (`--shard-size`): the file named by the user is an index holding the same root
/// attributes plus `shards` (file names relative to the index) and `shard_rows`; each shard is a
/// full cache file of this schema. `CacheReader` opens either as one row space.
public enum CacheSchema {
    public static let format = "samdistill-feature-cache"
    public static let version = 2
    public static let datasets = ["image", "embedding", "original_size", "resized_size", "source", "view",
                                  "view_params", "split", "complete"]
    public static let splitNames = CacheSplit.allCases.map(\.name)
    /// Present together, or not at all.
    public static let everythingDatasets = ["everything_masks", "everything_dropped", "everything_rle_lengths",
                                            "everything_rle_counts", "everything_iou", "everything_stability"]
    public static let everythingRLE = "coco_uncompressed_rle: run lengths over the column-major (Fortran order) flattening, "
        + "starting with a run of 0s (pycocotools 'counts' list); grid: the padded input at 1/4 resolution"
}

/// Where the train/val split comes from.
public enum SplitRule: Equatable, Sendable {
    case none
    /// Each image is in val when `FNV1a.hash(relative path) / 2⁶⁴ < fraction` (independent of seed).
    case fraction(Double)
    /// Images whose relative path (or file name) is listed are val.
    case list([String], sha256: String)

    public var attribute: String {
        switch self {
        case .none: "none"
        case .fraction(let f): "val_fraction=\(f)"
        case .list(_, let sha): "val_list_sha256=\(sha)"
        }
    }

    public static func list(file url: URL) throws -> SplitRule {
        let lines = try listFileEntries(url)
        return .list(lines, sha256: Checksum.sha256(Data(lines.sorted().joined(separator: "\n").utf8)))
    }

    /// The entries of a list file: one per line, blank lines and `#` comments skipped.
    public static func listFileEntries(_ url: URL) throws -> [String] {
        let data: Data
        do { data = try Data(contentsOf: url) } catch { throw CacheError("\(url.path): cannot read the list (\(error.localizedDescription))") }
        return String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline)
            .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty && !$0.hasPrefix("#") }
    }

    public func isValidation(_ source: String) -> Bool {
        switch self {
        case .none: return false
        case .fraction(let f): return Double(FNV1a.hash(source) >> 11) / Double(UInt64(1) << 53) < f
        case .list(let names, _):
            let base = (source as NSString).lastPathComponent
            return names.contains(source) || names.contains(base)
        }
    }
}

/// Everything that decides a cache's content; a resumed run must match it exactly.
public struct CacheSettings: Equatable, Sendable {
    public var teacher: String
    public var teacherArchitecture: String
    public var teacherConfig: String
    public var teacherSHA256: String
    public var imageSize: Int
    public var pixelMean: [Double] = SAMPreprocessing.pixelMean.map(Double.init)
    public var pixelStd: [Double] = SAMPreprocessing.pixelStd.map(Double.init)
    public var embeddingDType: String
    public var embeddingShape: [Int]
    public var views: Int
    public var seed: Int
    public var augmentation: String
    public var split: String
    /// The everything-masks' settings and L (the low-res grid's side), nil and 0 without them.
    public var everything: EverythingMaskSettings? = nil
    public var everythingMaskSize = 0

    public init(teacher: TeacherEncoder, embeddingDType: String, views: Int, seed: Int,
                augmentation: Augmentation, split: SplitRule) {
        self.teacher = teacher.id
        teacherArchitecture = teacher.architecture
        teacherConfig = teacher.configJSON
        teacherSHA256 = teacher.checkpointSHA256
        imageSize = teacher.imageSize
        self.embeddingDType = embeddingDType
        embeddingShape = teacher.embeddingShape
        self.views = views
        self.seed = seed
        self.augmentation = augmentation.json
        self.split = split.attribute
    }

    func write(to o: HDF5Object) throws {
        try o.setAttribute("format", CacheSchema.format)
        try o.setAttribute("format_version", CacheSchema.version)
        try o.setAttribute("teacher", teacher)
        try o.setAttribute("teacher_architecture", teacherArchitecture)
        try o.setAttribute("teacher_config", teacherConfig)
        try o.setAttribute("teacher_sha256", teacherSHA256)
        try o.setAttribute("image_size", imageSize)
        try o.setAttribute("pixel_mean", doubles: pixelMean)
        try o.setAttribute("pixel_std", doubles: pixelStd)
        try o.setAttribute("embedding_dtype", embeddingDType)
        try o.setAttribute("embedding_shape", ints: embeddingShape)
        try o.setAttribute("views", views)
        try o.setAttribute("seed", seed)
        try o.setAttribute("augmentation", augmentation)
        try o.setAttribute("split", split)
        if let everything {
            try o.setAttribute("everything_masks", everything.json)
            try o.setAttribute("everything_mask_size", ints: [everythingMaskSize, everythingMaskSize])
            try o.setAttribute("everything_rle", CacheSchema.everythingRLE)
        }
    }

    /// Differences between these settings and a file's attributes, one line each, naming the
    /// attribute (empty when they match).
    func differences(from o: HDF5Object) throws -> [String] {
        var d: [String] = []
        func s(_ key: String, _ mine: String) throws {
            let theirs = try o.attribute(key)?.stringValue
            if theirs != mine { d.append("\(key): cache has \(theirs.map { "\"\($0)\"" } ?? "nothing"), this run \"\(mine)\"") }
        }
        func n(_ key: String, _ mine: [Double]) throws {
            let theirs = try o.attribute(key)?.doublesValue
            // Whole numbers print as integers (views 3, not 3.0).
            func text(_ v: [Double]) -> String {
                let items = v.map { $0 == $0.rounded() && abs($0) < 1e15 ? String(Int64($0)) : "\($0)" }
                return items.count == 1 ? items[0] : "[" + items.joined(separator: ", ") + "]"
            }
            if theirs != mine { d.append("\(key): cache has \(theirs.map(text) ?? "nothing"), this run \(text(mine))") }
        }
        try s("teacher", teacher)
        try s("teacher_architecture", teacherArchitecture)
        try s("teacher_config", teacherConfig)
        try s("teacher_sha256", teacherSHA256)
        try n("image_size", [Double(imageSize)])
        try n("pixel_mean", pixelMean)
        try n("pixel_std", pixelStd)
        try s("embedding_dtype", embeddingDType)
        try n("embedding_shape", embeddingShape.map(Double.init))
        try n("views", [Double(views)])
        try n("seed", [Double(seed)])
        try s("augmentation", augmentation)
        try s("split", split)
        let theirs = try o.attribute("everything_masks")?.stringValue ?? ""
        if theirs != everything?.json ?? "" {
            func text(_ v: String) -> String { v.isEmpty ? "none" : v }
            d.append("everything_masks: cache has \(text(theirs)), this run \(text(everything?.json ?? ""))")
        }
        return d
    }
}

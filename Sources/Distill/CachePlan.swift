import Foundation

// What a cache holds before any row is written: the images of a folder, in the order rows
// follow, and the planned rows (views, split).

/// One planned row: which file, which view, which split.
public struct PlannedRow: Equatable, Sendable {
    public var source: String
    public var view: Int
    public var split: Int
}

extension FeatureCacheBuilder {
    /// Every JPEG/PNG (by extension, case-insensitive) under `directory`, recursively, as paths
    /// relative to it, sorted by their UTF-8 bytes (stable across file systems).
    public static func listImages(_ directory: URL) throws -> [String] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory.path, isDirectory: &isDir), isDir.boolValue else {
            throw CacheError("\(directory.path): no such folder")
        }
        let base = directory.standardizedFileURL.resolvingSymlinksInPath().path
        guard let e = FileManager.default.enumerator(atPath: base) else { throw CacheError("\(base): cannot list") }
        var out: [String] = []
        while let rel = e.nextObject() as? String {
            let ext = (rel as NSString).pathExtension.lowercased()
            guard ["jpg", "jpeg", "png"].contains(ext) else { continue }
            var d: ObjCBool = false
            if FileManager.default.fileExists(atPath: base + "/" + rel, isDirectory: &d), !d.boolValue { out.append(rel) }
        }
        return out.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
    }

    /// The rows for `sources`: train images get `views` rows (view 0 plain, 1… augmented), val
    /// images one plain row.
    public static func plan(sources: [String], views: Int, split: SplitRule) -> [PlannedRow] {
        var rows: [PlannedRow] = []
        for s in sources {
            let val = split.isValidation(s)
            for v in 0..<(val ? 1 : views) { rows.append(PlannedRow(source: s, view: v, split: val ? 1 : 0)) }
        }
        return rows
    }
}

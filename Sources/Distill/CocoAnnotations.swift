import Foundation
import ImageCodecs
import SegmentAnything

// COCO instances files (ground truth for `samdistill eval --annotations`), read strictly, with
// masks decoded exactly as pycocotools decodes them (`COCO.annToMask`).
//
// What is read (everything else — info, licenses, categories, category_id, … — is ignored):
//   images:      [{id: int, file_name: str, width: int, height: int}]
//   annotations: [{id: int, image_id: int, bbox: [x, y, w, h], area: number, iscrowd: 0 | 1,
//                  segmentation: polygons [[x, y, x, y, …], …]
//                              | {"size": [h, w], "counts": [int, …]}   (uncompressed RLE)
//                              | {"size": [h, w], "counts": "…"}        (compressed RLE)}]
// Every error names the file and the JSON path: `instances.json: annotations[12].segmentation:
// …`. Besides types and missing keys, the reader rejects: duplicate image or annotation ids, an
// annotation of an unknown image, non-positive image sizes, a bbox that is not 4 finite numbers
// with w, h ≥ 0, a negative area, iscrowd other than 0/1, polygons with an odd number of
// coordinates or fewer than 3 points (pycocotools silently drops an odd last coordinate, and
// takes a 4-number "polygon" for a box), coordinates beyond ±100000 px, RLE sizes that differ
// from the image's, RLE counts that do not add up to h·w, and malformed compressed strings.
//
// Masks (pycocotools' maskApi.c, ported; COCO's RLE runs are column-major, starting with a run
// of zeros):
// - polygon (`rleFrPoly`): vertices scaled ×5 and rounded with (int)(5v + 0.5) (truncation), the
//   closed boundary walked pixel by pixel in that ×5 grid (one point per step of the longer axis,
//   the other coordinate (int)(a + s·t + 0.5)), and every step of the walk in x that lands on
//   a pixel column ((x + 0.5)/5 − 0.5 integral, inside [0, w − 1]) toggles the column at row
//   ceil(clamp((min(y, y') + 0.5)/5 − 0.5, 0, h)). Several polygons of one annotation are merged
//   (union, `rleMerge`).
// - compressed counts (`rleFrString`): LEB128-like, 6 bits per character (ASCII 48 + value), 5
//   payload bits, bit 0x20 = more, bit 0x10 of the last character = sign; counts from the fourth
//   on are stored as the difference to the count two before.
//
// Size classes by the annotation's `area` field: small < 32², medium < 96², large otherwise.
// (COCOeval's area ranges are closed at both ends, so an area of exactly 32² or 96² falls in two
// of its ranges; here every annotation is in exactly one class.)

/// An error in a COCO file: the file, the JSON path and what is wrong.
public struct CocoError: Error, CustomStringConvertible, Equatable {
    public let file: String
    /// The JSON path, e.g. `annotations[12].segmentation[0]` (empty: the whole file).
    public let path: String
    public let reason: String

    public init(file: String, path: String, reason: String) {
        self.file = file; self.path = path; self.reason = reason
    }

    public var description: String { path.isEmpty ? "\(file): \(reason)" : "\(file): \(path): \(reason)" }
}

/// One entry of `images`.
public struct CocoImage: Sendable, Equatable {
    public var id: Int
    public var fileName: String
    public var width: Int
    public var height: Int
    /// Position in the file's `images` list (for error paths).
    public var index: Int

    public var size: ImageSize { ImageSize(height: height, width: width) }
}

/// COCO's object size classes, by annotation area.
public enum CocoSizeClass: String, Codable, CaseIterable, Sendable {
    case small, medium, large

    /// small: area < 32², medium: area < 96², large: otherwise.
    public init(area: Double) {
        self = area < 32 * 32 ? .small : area < 96 * 96 ? .medium : .large
    }
}

/// A decoded-to-runs segmentation.
public enum CocoSegmentation: Sendable, Equatable {
    /// Polygons, each [x0, y0, x1, y1, …] in pixels (≥ 3 points).
    case polygons([[Double]])
    /// Column-major run lengths (zeros first) over the image's h × w pixels; `compressed` says
    /// whether the file stored them as a string.
    case rle(counts: [UInt32], compressed: Bool)
}

/// One entry of `annotations`.
public struct CocoAnnotation: Sendable, Equatable {
    public var id: Int
    public var imageId: Int
    /// bbox: [x, y, w, h] in pixels.
    public var bbox: [Double]
    public var area: Double
    public var isCrowd: Bool
    public var segmentation: CocoSegmentation
    /// Position in the file's `annotations` list (for error paths).
    public var index: Int

    public var sizeClass: CocoSizeClass { CocoSizeClass(area: area) }

    /// The bbox as SAM's box prompt: (x, y, x + w, y + h).
    public var promptBox: PromptBox {
        PromptBox(x0: bbox[0], y0: bbox[1], x1: bbox[0] + bbox[2], y1: bbox[1] + bbox[3])
    }
}

/// A COCO instances file.
public struct CocoDataset: Sendable {
    /// The file's name, used in error messages.
    public let file: String
    public let images: [CocoImage]
    public let annotations: [CocoAnnotation]
    private let imageIndex: [Int: Int]
    private let annotationsOfImage: [Int: [Int]]

    /// Coordinates beyond this many pixels (either sign) are rejected.
    public static let coordinateLimit = 100_000.0

    /// Reads and checks `url` (errors name the file by its last path component).
    public static func read(_ url: URL) throws -> CocoDataset {
        let name = url.lastPathComponent
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw CocoError(file: name, path: "", reason: "cannot read the file (\(error.localizedDescription))")
        }
        return try CocoDataset(json: data, file: name)
    }

    /// Parses and checks a COCO instances JSON document; `file` names it in errors.
    public init(json: Data, file: String) throws {
        self.file = file
        let raw: RawFile
        do {
            raw = try JSONDecoder().decode(RawFile.self, from: json)
        } catch let e as DecodingError {
            throw Self.error(e, file: file)
        }
        var images: [CocoImage] = [], imageIndex: [Int: Int] = [:]
        for (i, r) in raw.images.enumerated() {
            let path = "images[\(i)]"
            if let j = imageIndex[r.id.value] { throw CocoError(file: file, path: path + ".id", reason: "duplicate image id \(r.id.value) (also images[\(j)])") }
            guard r.width.value > 0, r.height.value > 0 else {
                throw CocoError(file: file, path: path, reason: "image size \(r.width.value)×\(r.height.value) is empty")
            }
            guard !r.file_name.isEmpty else { throw CocoError(file: file, path: path + ".file_name", reason: "empty file name") }
            imageIndex[r.id.value] = i
            images.append(CocoImage(id: r.id.value, fileName: r.file_name, width: r.width.value, height: r.height.value, index: i))
        }
        var annotations: [CocoAnnotation] = [], seen: [Int: Int] = [:], byImage: [Int: [Int]] = [:]
        for (i, r) in raw.annotations.enumerated() {
            let path = "annotations[\(i)]"
            if let j = seen[r.id.value] { throw CocoError(file: file, path: path + ".id", reason: "duplicate annotation id \(r.id.value) (also annotations[\(j)])") }
            seen[r.id.value] = i
            guard let ii = imageIndex[r.image_id.value] else {
                throw CocoError(file: file, path: path + ".image_id", reason: "no image has id \(r.image_id.value)")
            }
            let image = images[ii]
            guard r.bbox.count == 4 else {
                throw CocoError(file: file, path: path + ".bbox", reason: "expected [x, y, w, h], got \(r.bbox.count) numbers")
            }
            guard r.bbox.allSatisfy({ $0.isFinite && abs($0) <= Self.coordinateLimit }), r.bbox[2] >= 0, r.bbox[3] >= 0 else {
                throw CocoError(file: file, path: path + ".bbox", reason: "\(r.bbox) is not a box [x, y, w, h] with finite coordinates and w, h ≥ 0")
            }
            guard r.area.isFinite, r.area >= 0 else { throw CocoError(file: file, path: path + ".area", reason: "area \(r.area) is not a non-negative number") }
            guard r.iscrowd.value == 0 || r.iscrowd.value == 1 else { throw CocoError(file: file, path: path + ".iscrowd", reason: "expected 0 or 1, got \(r.iscrowd.value)") }
            let segmentation: CocoSegmentation
            let sp = path + ".segmentation"
            switch r.segmentation {
            case .polygons(let polys):
                guard !polys.isEmpty else { throw CocoError(file: file, path: sp, reason: "no polygons") }
                for (k, p) in polys.enumerated() {
                    if p.count % 2 != 0 {
                        throw CocoError(file: file, path: sp + "[\(k)]", reason: "polygon with an odd number of coordinates (\(p.count)); expected x, y pairs")
                    }
                    if p.count < 6 {
                        throw CocoError(file: file, path: sp + "[\(k)]", reason: "polygon with \(p.count / 2) points; at least 3 needed")
                    }
                    if let bad = p.firstIndex(where: { !$0.isFinite || abs($0) > Self.coordinateLimit }) {
                        throw CocoError(file: file, path: sp + "[\(k)][\(bad)]", reason: "coordinate \(p[bad]) is not within ±\(Int(Self.coordinateLimit)) px")
                    }
                }
                segmentation = .polygons(polys)
            case .rle(let size, let counts):
                guard size.count == 2 else { throw CocoError(file: file, path: sp + ".size", reason: "expected [height, width], got \(size.count) numbers") }
                guard size[0] == image.height, size[1] == image.width else {
                    throw CocoError(file: file, path: sp + ".size", reason: "RLE size [\(size[0]), \(size[1])] differs from image \(image.id)'s [height, width] [\(image.height), \(image.width)]")
                }
                let runs: [UInt32], compressed: Bool
                switch counts {
                case .string(let s):
                    do { runs = try CocoMask.counts(compressed: s) } catch let e as CocoMask.StringError {
                        throw CocoError(file: file, path: sp + ".counts", reason: e.reason)
                    }
                    compressed = true
                case .list(let l):
                    if let bad = l.firstIndex(where: { $0 < 0 || $0 > Int(UInt32.max) }) {
                        throw CocoError(file: file, path: sp + ".counts[\(bad)]", reason: "run length \(l[bad]) is not a non-negative 32-bit count")
                    }
                    runs = l.map { UInt32($0) }
                    compressed = false
                }
                let total = runs.reduce(0) { $0 + Int($1) }
                guard total == image.width * image.height else {
                    throw CocoError(file: file, path: sp + ".counts", reason: "run lengths add up to \(total), the \(image.width)×\(image.height) image has \(image.width * image.height) pixels")
                }
                segmentation = .rle(counts: runs, compressed: compressed)
            }
            byImage[r.image_id.value, default: []].append(annotations.count)
            annotations.append(CocoAnnotation(id: r.id.value, imageId: r.image_id.value, bbox: r.bbox, area: r.area, isCrowd: r.iscrowd.value == 1,
                                              segmentation: segmentation, index: i))
        }
        self.images = images
        self.annotations = annotations
        self.imageIndex = imageIndex
        self.annotationsOfImage = byImage
    }

    /// The image with `id`, if any.
    public func image(id: Int) -> CocoImage? { imageIndex[id].map { images[$0] } }

    /// The annotations of image `id`, in file order.
    public func annotations(ofImage id: Int) -> [CocoAnnotation] { (annotationsOfImage[id] ?? []).map { annotations[$0] } }

    /// The ground-truth mask of an annotation at its image's size (`COCO.annToMask`).
    public func mask(_ a: CocoAnnotation) -> BinaryMask {
        guard let image = image(id: a.imageId) else {
            preconditionFailure("CocoDataset.mask: annotation \(a.id) belongs to image \(a.imageId), which is not in \(file)")
        }
        return CocoMask.mask(a.segmentation, height: image.height, width: image.width)
    }

    // MARK: JSON

    static func error(_ e: DecodingError, file: String) -> CocoError {
        func path(_ keys: [CodingKey]) -> String {
            var s = ""
            for k in keys {
                if let i = k.intValue { s += "[\(i)]" } else { s += (s.isEmpty ? "" : ".") + k.stringValue }
            }
            return s
        }
        switch e {
        case .keyNotFound(let key, let c):
            return CocoError(file: file, path: path(c.codingPath), reason: "missing key '\(key.stringValue)'")
        case .typeMismatch(_, let c):
            return CocoError(file: file, path: path(c.codingPath), reason: "wrong type: \(c.debugDescription)")
        case .valueNotFound(_, let c):
            return CocoError(file: file, path: path(c.codingPath), reason: "null value: \(c.debugDescription)")
        case .dataCorrupted(let c):
            if c.codingPath.isEmpty {
                return CocoError(file: file, path: "", reason: "not valid JSON: \(c.underlyingError.map { "\($0)" } ?? c.debugDescription)")
            }
            return CocoError(file: file, path: path(c.codingPath), reason: c.debugDescription)
        @unknown default:
            return CocoError(file: file, path: "", reason: "\(e)")
        }
    }

    // swiftlint:disable identifier_name
    struct RawFile: Decodable {
        let images: [RawImage]
        let annotations: [RawAnnotation]
    }

    struct RawImage: Decodable {
        let id: JSONInt
        let file_name: String
        let width: JSONInt
        let height: JSONInt
    }

    struct RawAnnotation: Decodable {
        let id: JSONInt
        let image_id: JSONInt
        let bbox: [Double]
        let area: Double
        let iscrowd: JSONInt
        let segmentation: RawSegmentation
    }

    /// An integer; a fractional number is an error at its own path (Foundation's decoder on
    /// Linux reports those as invalid JSON without a path).
    struct JSONInt: Decodable {
        let value: Int

        init(from decoder: Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let v = try? c.decode(Int.self) { value = v; return }
            if let x = try? c.decode(Double.self) {
                throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "expected an integer, got \(x)"))
            }
            value = try c.decode(Int.self)
        }
    }
    // swiftlint:enable identifier_name

    enum RawCounts { case string(String), list([Int]) }

    /// Polygons, or an RLE object; decoded from whichever the JSON holds.
    enum RawSegmentation: Decodable {
        case polygons([[Double]])
        case rle(size: [Int], counts: RawCounts)

        enum Keys: String, CodingKey { case size, counts }

        init(from decoder: Decoder) throws {
            if var list = try? decoder.unkeyedContainer() {
                var polys: [[Double]] = []
                while !list.isAtEnd {
                    var p = try list.nestedUnkeyedContainer()
                    var xy: [Double] = []
                    while !p.isAtEnd { xy.append(try p.decode(Double.self)) }
                    polys.append(xy)
                }
                self = .polygons(polys)
                return
            }
            guard let k = try? decoder.container(keyedBy: Keys.self) else {
                throw DecodingError.typeMismatch(RawSegmentation.self, .init(
                    codingPath: decoder.codingPath,
                    debugDescription: "expected polygons [[x, y, …], …] or an RLE object {\"size\": [h, w], \"counts\": …}"))
            }
            let size = try k.decode([JSONInt].self, forKey: .size).map(\.value)
            if let s = try? k.decode(String.self, forKey: .counts) {
                self = .rle(size: size, counts: .string(s))
            } else if k.contains(.counts), (try? k.decode([Double].self, forKey: .counts)) == nil {
                throw DecodingError.typeMismatch(RawSegmentation.self, .init(
                    codingPath: decoder.codingPath + [Keys.counts],
                    debugDescription: "expected a string (compressed RLE) or a list of run lengths (uncompressed RLE)"))
            } else {
                self = .rle(size: size, counts: .list(try k.decode([JSONInt].self, forKey: .counts).map(\.value)))
            }
        }
    }
}

/// pycocotools' run-length masks (maskApi.c), ported.
public enum CocoMask {
    /// A malformed compressed counts string.
    public struct StringError: Error, CustomStringConvertible {
        public let reason: String
        public var description: String { reason }
    }

    /// The mask of a segmentation over h × w pixels (polygons merged by union).
    public static func mask(_ s: CocoSegmentation, height h: Int, width w: Int) -> BinaryMask {
        switch s {
        case .rle(let counts, _):
            return decode(counts, height: h, width: w)
        case .polygons(let polys):
            var m = BinaryMask(width: w, height: h, pixels: [Bool](repeating: false, count: h * w))
            for p in polys {
                let part = decode(polygonCounts(p, height: h, width: w), height: h, width: w)
                for i in 0..<m.pixels.count where part.pixels[i] { m.pixels[i] = true }
            }
            return m
        }
    }

    /// `rleDecode`: column-major runs (zeros first) → a row-major mask. Runs past h·w are cut and
    /// a short total is padded with zeros, as pycocotools does; the decoding itself is `MaskRLE`'s.
    public static func decode(_ counts: [UInt32], height h: Int, width w: Int) -> BinaryMask {
        var left = h * w
        var runs = counts.map { c -> Int in
            let r = min(Int(c), left)
            left -= r
            return r
        }
        if left > 0 {
            if runs.count % 2 == 1 { runs.append(0) }  // the next run would be 1s: an empty one first
            runs.append(left)
        }
        return MaskRLE(height: h, width: w, counts: runs).decode()
    }

    /// `rleFrString`: counts from COCO's compressed string.
    public static func counts(compressed s: String) throws -> [UInt32] {
        let bytes = Array(s.utf8)
        var counts: [UInt32] = []
        var p = 0
        while p < bytes.count {
            var x: Int64 = 0, k = 0, more = true
            while more {
                guard p < bytes.count else { throw StringError(reason: "compressed counts end inside a number (character \(p))") }
                let c = Int64(bytes[p]) - 48
                guard c >= 0, c < 64 else {
                    throw StringError(reason: "character \(p) ('\(Character(UnicodeScalar(bytes[p])))') is outside COCO's alphabet (ASCII 48–111)")
                }
                guard k < 7 else { throw StringError(reason: "number at character \(p) is longer than 7 characters") }
                x |= (c & 0x1f) << (5 * Int64(k))
                more = c & 0x20 != 0
                p += 1; k += 1
                if !more && c & 0x10 != 0 { x |= -1 << (5 * Int64(k)) }
            }
            if counts.count > 2 { x += Int64(counts[counts.count - 2]) }
            guard x >= 0, x <= Int64(UInt32.max) else {
                throw StringError(reason: "run \(counts.count) has length \(x)")
            }
            counts.append(UInt32(x))
        }
        return counts
    }

    /// `rleFrPoly`: the column-major runs of one polygon [x0, y0, x1, y1, …] (≥ 1 point,
    /// coordinates within ±`CocoDataset.coordinateLimit`) over h × w pixels.
    public static func polygonCounts(_ xy: [Double], height h: Int, width w: Int) -> [UInt32] {
        precondition(xy.count >= 2 && xy.count % 2 == 0, "CocoMask.polygonCounts: \(xy.count) coordinates")
        precondition(xy.allSatisfy { $0.isFinite && abs($0) <= CocoDataset.coordinateLimit },
                     "CocoMask.polygonCounts: coordinates beyond ±\(CocoDataset.coordinateLimit)")
        let scale = 5.0, k = xy.count / 2
        // x, y: (k + 1) vertices in the ×5 grid, closed
        var x = [Int](repeating: 0, count: k + 1), y = [Int](repeating: 0, count: k + 1)
        for j in 0..<k {
            x[j] = Int(scale * xy[2 * j] + 0.5)
            y[j] = Int(scale * xy[2 * j + 1] + 0.5)
        }
        x[k] = x[0]; y[k] = y[0]
        // u, v: every grid point of the boundary walk
        var u: [Int] = [], v: [Int] = []
        for j in 0..<k {
            var xs = x[j], xe = x[j + 1], ys = y[j], ye = y[j + 1]
            let dx = abs(xe - xs), dy = abs(ys - ye)
            if dx == 0 && dy == 0 {
                // A repeated vertex: one point (the C code computes its y from 0/0, but that
                // point's x equals its neighbours', so its y is never read).
                u.append(xs); v.append(ys)
                continue
            }
            let flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye)
            if flip { swap(&xs, &xe); swap(&ys, &ye) }
            let s = dx >= dy ? Double(ye - ys) / Double(dx) : Double(xe - xs) / Double(dy)
            if dx >= dy {
                for d in 0...dx {
                    let t = flip ? dx - d : d
                    u.append(t + xs); v.append(Int(Double(ys) + s * Double(t) + 0.5))
                }
            } else {
                for d in 0...dy {
                    let t = flip ? dy - d : d
                    v.append(t + ys); u.append(Int(Double(xs) + s * Double(t) + 0.5))
                }
            }
        }
        // a: column-major indices where a column toggles, then h·w
        var a: [UInt32] = []
        for j in 1..<u.count where u[j] != u[j - 1] {
            var xd = Double(u[j] < u[j - 1] ? u[j] : u[j] - 1)
            xd = (xd + 0.5) / scale - 0.5
            if xd.rounded(.down) != xd || xd < 0 || xd > Double(w - 1) { continue }
            var yd = Double(min(v[j], v[j - 1]))
            yd = (yd + 0.5) / scale - 0.5
            if yd < 0 { yd = 0 } else if yd > Double(h) { yd = Double(h) }
            yd = yd.rounded(.up)
            a.append(UInt32(Int(xd) * h + Int(yd)))
        }
        a.append(UInt32(h * w))
        a.sort()
        var previous: UInt32 = 0
        for j in 0..<a.count {
            let t = a[j]
            a[j] -= previous
            previous = t
        }
        // b: runs, a zero-length run merged into the one before
        var b: [UInt32] = [a[0]]
        var j = 1
        while j < a.count {
            if a[j] > 0 {
                b.append(a[j]); j += 1
            } else {
                j += 1
                if j < a.count { b[b.count - 1] += a[j]; j += 1 }
            }
        }
        return b
    }
}

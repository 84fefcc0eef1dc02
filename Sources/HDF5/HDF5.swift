import CHDF5
import Foundation

/// A failed HDF5 operation, naming the file, the object inside it (dataset, attribute) and what
/// was being done. HDF5's own error stack is silenced; its top message is kept in `reason`.
public struct HDF5Error: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let object: String
    public let operation: String
    public let reason: String

    public init(file: String, object: String = "", operation: String, reason: String = "") {
        self.file = file
        self.object = object
        self.operation = operation
        self.reason = reason
    }

    public var description: String {
        var s = file
        if !object.isEmpty { s += ": " + object }
        s += ": " + operation + " failed"
        if !reason.isEmpty { s += " (" + reason + ")" }
        return s
    }
}

/// The serial HDF5 library is not thread-safe: every call in this file runs under this one lock,
/// so a prefetch thread and the trainer may both use cache files.
enum HDF5Lock {
    static let lock = NSRecursiveLock()
    static let initialised: Bool = {
        chdf5_silence_errors()
        return true
    }()

    @inline(__always)
    static func run<R>(_ body: () throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        _ = initialised
        return try body()
    }
}

/// The element types the cache stores. `float16` is IEEE half (numpy float16 in h5py);
/// `string(n)` is a fixed-length, NUL-padded UTF-8 string of `n` bytes (numpy `S<n>`).
public enum HDF5ElementType: Equatable, Sendable, CustomStringConvertible {
    case uint8, int32, int64, float16, float32, float64
    case string(Int)

    public var size: Int {
        switch self {
        case .uint8: 1
        case .float16: 2
        case .int32, .float32: 4
        case .int64, .float64: 8
        case .string(let n): n
        }
    }

    public var description: String {
        switch self {
        case .uint8: "uint8"
        case .int32: "int32"
        case .int64: "int64"
        case .float16: "float16"
        case .float32: "float32"
        case .float64: "float64"
        case .string(let n): "string[\(n)]"
        }
    }

    /// A new HDF5 type id for this element type (file and memory layouts are the same: the
    /// cache stores little-endian data and runs on little-endian machines). Caller closes it.
    func makeTypeID() -> hid_t {
        switch self {
        case .uint8: return H5Tcopy(chdf5_std_u8le())
        case .int32: return H5Tcopy(chdf5_std_i32le())
        case .int64: return H5Tcopy(chdf5_std_i64le())
        case .float16: return chdf5_create_f16le()
        case .float32: return H5Tcopy(chdf5_ieee_f32le())
        case .float64: return H5Tcopy(chdf5_ieee_f64le())
        case .string(let n):
            let t = H5Tcopy(chdf5_c_s1())
            H5Tset_size(t, n)
            H5Tset_strpad(t, H5T_STR_NULLPAD)
            H5Tset_cset(t, H5T_CSET_UTF8)
            return t
        }
    }

    /// Recognises a stored type: the cache's own types and what h5py writes for the same data.
    static func from(typeID t: hid_t) -> HDF5ElementType? {
        switch H5Tget_class(t) {
        case H5T_INTEGER:
            let signed = H5Tget_sign(t) == H5T_SGN_2
            switch (H5Tget_size(t), signed) {
            case (1, false): return .uint8
            case (4, true): return .int32
            case (8, true): return .int64
            default: return nil
            }
        case H5T_FLOAT:
            switch H5Tget_size(t) {
            case 2: return .float16
            case 4: return .float32
            case 8: return .float64
            default: return nil
            }
        case H5T_STRING:
            if H5Tis_variable_str(t) > 0 { return nil }
            return .string(H5Tget_size(t))
        default: return nil
        }
    }
}

/// A value stored as an attribute: a string, or a 1-D array of integers or doubles (a scalar
/// number reads back as a one-element array).
public enum HDF5AttributeValue: Equatable, Sendable, CustomStringConvertible {
    case string(String)
    case strings([String])
    case ints([Int])
    case doubles([Double])

    public var description: String {
        switch self {
        case .string(let s): return "\"\(s)\""
        case .strings(let a): return "[" + a.map { "\"\($0)\"" }.joined(separator: ", ") + "]"
        case .ints(let a): return a.count == 1 ? "\(a[0])" : "\(a)"
        case .doubles(let a): return a.count == 1 ? "\(a[0])" : "\(a)"
        }
    }

    public var stringValue: String? { if case .string(let s) = self { return s }; return nil }
    public var intValue: Int? {
        switch self {
        case .ints(let a) where a.count == 1: return a[0]
        case .doubles(let a) where a.count == 1 && a[0] == a[0].rounded(): return Int(a[0])
        default: return nil
        }
    }
    public var doublesValue: [Double]? {
        switch self {
        case .doubles(let a): return a
        case .ints(let a): return a.map(Double.init)
        default: return nil
        }
    }
}

/// An open HDF5 object with attributes (the file's root group, a group or a dataset).
public class HDF5Object {
    let id: hid_t
    /// The file's path, for error messages.
    public let filePath: String
    /// The object's path inside the file ("/" for the root group).
    public let name: String

    init(id: hid_t, filePath: String, name: String) {
        self.id = id
        self.filePath = filePath
        self.name = name
    }

    func error(_ operation: String, object: String? = nil) -> HDF5Error {
        HDF5Error(file: filePath, object: object ?? name, operation: operation, reason: HDF5Object.topErrorMessage())
    }

    /// The innermost message of HDF5's current error stack ("" when empty).
    static func topErrorMessage() -> String {
        var message = ""
        _ = withUnsafeMutablePointer(to: &message) { ptr in
            H5Ewalk2(chdf5_e_default(), H5E_WALK_UPWARD, { _, desc, ctx in
                guard let desc, let ctx else { return 0 }
                let m = ctx.assumingMemoryBound(to: String.self)
                if m.pointee.isEmpty, let d = desc.pointee.desc { m.pointee = String(cString: d) }
                return 0
            }, ptr)
        }
        H5Eclear2(chdf5_e_default())
        return conciseMessage(message)
    }

    /// HDF5's low-level I/O messages span lines and carry buffer addresses ("file write failed:
    /// time = …\n, filename = …, errno = 28, error message = 'No space left on device', buf = …"):
    /// kept as "file write failed: No space left on device (errno 28)", one line.
    static func conciseMessage(_ m: String) -> String {
        let oneLine = m.split(whereSeparator: \.isNewline).joined(separator: " ")
        guard let r = oneLine.range(of: "error message = '"),
              let end = oneLine[r.upperBound...].firstIndex(of: "'") else { return oneLine }
        let what = oneLine[..<(oneLine.firstIndex(of: ":") ?? oneLine.endIndex)]
        var errno = ""
        if let e = oneLine.range(of: "errno = ") {
            errno = " (errno " + oneLine[e.upperBound...].prefix { $0.isNumber } + ")"
        }
        return what + ": " + oneLine[r.upperBound..<end] + errno
    }

    // MARK: attributes

    /// Attribute names in creation/name order.
    public func attributeNames() throws -> [String] {
        try HDF5Lock.run {
            var info = H5O_info_t()
            guard H5Oget_info2(id, &info, UInt32(H5O_INFO_NUM_ATTRS)) >= 0 else { throw error("list attributes") }
            var names: [String] = []
            for i in 0..<info.num_attrs {
                let n = H5Aget_name_by_idx(id, ".", H5_INDEX_NAME, H5_ITER_INC, i, nil, 0, chdf5_p_default())
                guard n >= 0 else { throw error("read attribute name \(i)") }
                var buf = [CChar](repeating: 0, count: n + 1)
                H5Aget_name_by_idx(id, ".", H5_INDEX_NAME, H5_ITER_INC, i, &buf, n + 1, chdf5_p_default())
                names.append(String(cString: buf))
            }
            return names
        }
    }

    public func hasAttribute(_ key: String) -> Bool {
        HDF5Lock.run { H5Aexists(id, key) > 0 }
    }

    /// Writes (replacing) a UTF-8 string attribute, stored variable-length as h5py stores `str`.
    public func setAttribute(_ key: String, _ value: String) throws {
        try setStrings(key, [value], scalar: true)
    }

    /// Writes (replacing) a 1-D array of variable-length UTF-8 strings.
    public func setAttribute(_ key: String, strings: [String]) throws {
        try setStrings(key, strings, scalar: false)
    }

    public func setAttribute(_ key: String, _ value: Int) throws { try setNumbers(key, [Int64(value)], type: .int64, scalar: true) }
    public func setAttribute(_ key: String, ints: [Int]) throws { try setNumbers(key, ints.map(Int64.init), type: .int64, scalar: false) }
    public func setAttribute(_ key: String, _ value: Double) throws { try setNumbers(key, [value], type: .float64, scalar: true) }
    public func setAttribute(_ key: String, doubles: [Double]) throws { try setNumbers(key, doubles, type: .float64, scalar: false) }

    private func deleteIfPresent(_ key: String) throws {
        if H5Aexists(id, key) > 0, H5Adelete(id, key) < 0 { throw error("replace attribute", object: "\(name) @\(key)") }
    }

    private func makeSpace(_ count: Int, scalar: Bool) -> hid_t {
        if scalar { return H5Screate(H5S_SCALAR) }
        var dims = [hsize_t(count)]
        return H5Screate_simple(1, &dims, nil)
    }

    private func setNumbers<T>(_ key: String, _ values: [T], type: HDF5ElementType, scalar: Bool) throws {
        try HDF5Lock.run {
            try deleteIfPresent(key)
            let t = type.makeTypeID(); defer { H5Tclose(t) }
            let s = makeSpace(values.count, scalar: scalar); defer { H5Sclose(s) }
            let a = H5Acreate2(id, key, t, s, chdf5_p_default(), chdf5_p_default())
            guard a >= 0 else { throw error("create attribute", object: "\(name) @\(key)") }
            defer { H5Aclose(a) }
            let status = values.withUnsafeBytes { H5Awrite(a, t, $0.baseAddress) }
            guard status >= 0 else { throw error("write attribute", object: "\(name) @\(key)") }
        }
    }

    private func setStrings(_ key: String, _ values: [String], scalar: Bool) throws {
        try HDF5Lock.run {
            try deleteIfPresent(key)
            let t = H5Tcopy(chdf5_c_s1()); defer { H5Tclose(t) }
            H5Tset_size(t, -1 /* H5T_VARIABLE */)
            H5Tset_cset(t, H5T_CSET_UTF8)
            let s = makeSpace(values.count, scalar: scalar); defer { H5Sclose(s) }
            let a = H5Acreate2(id, key, t, s, chdf5_p_default(), chdf5_p_default())
            guard a >= 0 else { throw error("create attribute", object: "\(name) @\(key)") }
            defer { H5Aclose(a) }
            let cStrings = values.map { strdup($0) }
            defer { cStrings.forEach { free($0) } }
            let status = cStrings.map { UnsafePointer($0) }.withUnsafeBufferPointer { H5Awrite(a, t, $0.baseAddress) }
            guard status >= 0 else { throw error("write attribute", object: "\(name) @\(key)") }
        }
    }

    /// Reads an attribute: strings (fixed or variable length, scalar or 1-D), integers or floats.
    /// Nil when absent; throws for unreadable or unsupported attributes.
    public func attribute(_ key: String) throws -> HDF5AttributeValue? {
        try HDF5Lock.run {
            guard H5Aexists(id, key) > 0 else { return nil }
            let object = "\(name) @\(key)"
            let a = H5Aopen(id, key, chdf5_p_default())
            guard a >= 0 else { throw error("open attribute", object: object) }
            defer { H5Aclose(a) }
            let t = H5Aget_type(a); defer { H5Tclose(t) }
            let s = H5Aget_space(a); defer { H5Sclose(s) }
            let count = Int(H5Sget_simple_extent_npoints(s))
            let isScalar = H5Sget_simple_extent_type(s) == H5S_SCALAR
            switch H5Tget_class(t) {
            case H5T_STRING:
                var strings: [String] = []
                if H5Tis_variable_str(t) > 0 {
                    let mt = H5Tcopy(chdf5_c_s1()); defer { H5Tclose(mt) }
                    H5Tset_size(mt, -1 /* H5T_VARIABLE */)
                    H5Tset_cset(mt, H5Tget_cset(t))
                    var ptrs = [UnsafeMutablePointer<CChar>?](repeating: nil, count: count)
                    guard H5Aread(a, mt, &ptrs) >= 0 else { throw error("read attribute", object: object) }
                    strings = ptrs.map { $0.map { String(cString: $0) } ?? "" }
                    H5Dvlen_reclaim(mt, s, chdf5_p_default(), &ptrs)
                } else {
                    let n = H5Tget_size(t)
                    var buf = [UInt8](repeating: 0, count: n * count)
                    guard H5Aread(a, t, &buf) >= 0 else { throw error("read attribute", object: object) }
                    for i in 0..<count { strings.append(HDF5Dataset.decodeFixedString(buf[(i * n)..<((i + 1) * n)])) }
                }
                return isScalar ? .string(strings.first ?? "") : .strings(strings)
            case H5T_INTEGER:
                var v = [Int64](repeating: 0, count: count)
                guard H5Aread(a, chdf5_native_int64(), &v) >= 0 else { throw error("read attribute", object: object) }
                return .ints(v.map { Int($0) })
            case H5T_FLOAT:
                var v = [Double](repeating: 0, count: count)
                guard H5Aread(a, chdf5_native_double(), &v) >= 0 else { throw error("read attribute", object: object) }
                return .doubles(v)
            default:
                throw HDF5Error(file: filePath, object: object, operation: "read attribute", reason: "unsupported type class")
            }
        }
    }

    /// A required string attribute; absent or another type is an error naming it.
    public func stringAttribute(_ key: String) throws -> String {
        guard let v = try attribute(key) else {
            throw HDF5Error(file: filePath, object: "\(name) @\(key)", operation: "read attribute", reason: "missing")
        }
        guard let s = v.stringValue else {
            throw HDF5Error(file: filePath, object: "\(name) @\(key)", operation: "read attribute", reason: "expected a string, found \(v)")
        }
        return s
    }

    /// A required numeric attribute (scalar or array) as doubles.
    public func numbersAttribute(_ key: String) throws -> [Double] {
        guard let v = try attribute(key) else {
            throw HDF5Error(file: filePath, object: "\(name) @\(key)", operation: "read attribute", reason: "missing")
        }
        guard let d = v.doublesValue else {
            throw HDF5Error(file: filePath, object: "\(name) @\(key)", operation: "read attribute", reason: "expected numbers, found \(v)")
        }
        return d
    }
}

/// One entry of `HDF5File.walk()`: a group or a dataset, with its attributes.
public struct HDF5Entry: Sendable {
    public enum Kind: String, Sendable { case group, dataset, other }
    public let path: String
    public let kind: Kind
    /// Datasets: shape, element type (nil when this wrapper does not know it), chunk shape, and
    /// whether the chunks carry Fletcher-32 checksums.
    public let shape: [Int]
    public let typeDescription: String
    public let chunk: [Int]?
    public var checksum = false
    public let attributes: [(String, HDF5AttributeValue?)]
}

/// An open HDF5 file; its root group's attributes are the file's attributes. Closed on deinit.
public final class HDF5File: HDF5Object {
    public enum Mode { case readOnly, readWrite, create, createExclusive }
    public let url: URL
    private var closed = false

    /// Opens or creates `url`. `.create` truncates; `.createExclusive` fails if the file exists.
    public init(_ url: URL, mode: Mode) throws {
        self.url = url
        let path = url.path
        let fid: hid_t = HDF5Lock.run {
            // Strong close degree: `close()` really closes the file (and every dataset opened
            // from it) at once, instead of waiting for the last dataset object to be released —
            // otherwise the file stays open, and locked, for as long as any reference lingers.
            let fapl = H5Pcreate(chdf5_p_file_access())
            defer { H5Pclose(fapl) }
            H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG)
            // New files in the 1.10 format: superblock 3 and version-2 object headers, whose
            // metadata checksums libhdf5 verifies before parsing (a damaged header of an older
            // format can crash libhdf5 itself: Experiments/reliability/results.md).
            if mode == .create || mode == .createExclusive { H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_V18) }
            switch mode {
            case .readOnly: return H5Fopen(path, chdf5_acc_rdonly(), fapl)
            case .readWrite: return H5Fopen(path, chdf5_acc_rdwr(), fapl)
            case .create: return H5Fcreate(path, chdf5_acc_trunc(), chdf5_p_default(), fapl)
            case .createExclusive: return H5Fcreate(path, chdf5_acc_excl(), chdf5_p_default(), fapl)
            }
        }
        guard fid >= 0 else {
            let exists = FileManager.default.fileExists(atPath: path)
            let isHDF5 = exists && HDF5Lock.run { H5Fis_hdf5(path) > 0 }
            let op = mode == .readOnly || mode == .readWrite ? "open" : "create"
            let reason = HDF5Lock.run { HDF5Object.topErrorMessage() }
            if (mode == .readOnly || mode == .readWrite) && !exists {
                throw HDF5Error(file: path, operation: op, reason: "no such file")
            }
            if (mode == .readOnly || mode == .readWrite) && !isHDF5 {
                throw HDF5Error(file: path, operation: op, reason: "not an HDF5 file (or truncated)")
            }
            throw HDF5Error(file: path, operation: op, reason: reason)
        }
        let root = HDF5Lock.run { H5Gopen2(fid, "/", chdf5_p_default()) }
        guard root >= 0 else {
            HDF5Lock.run { _ = H5Fclose(fid) }
            throw HDF5Error(file: path, operation: "open root group")
        }
        self.fileID = fid
        super.init(id: root, filePath: path, name: "/")
    }

    let fileID: hid_t

    deinit { close() }

    /// Closes the file (idempotent). Datasets opened from it must not be used afterwards.
    public func close() {
        guard !closed else { return }
        closed = true
        HDF5Lock.run {
            if H5Iis_valid(id) > 0 { H5Gclose(id) }
            if H5Iis_valid(fileID) > 0 { H5Fclose(fileID) }
        }
    }

    /// The superblock's version: 2 or more means checksummed file metadata (samdistill writes 3;
    /// h5py's and libhdf5's defaults write 0, with unchecksummed version-1 object headers).
    public var superblockVersion: Int {
        HDF5Lock.run {
            var info = H5F_info2_t()
            return H5Fget_info2(fileID, &info) >= 0 ? Int(info.super.version) : -1
        }
    }

    /// Writes every buffered change (data and metadata) to the file.
    public func flush() throws {
        try HDF5Lock.run {
            guard H5Fflush(fileID, H5F_SCOPE_GLOBAL) >= 0 else { throw error("flush") }
        }
    }

    public func exists(_ path: String) -> Bool {
        HDF5Lock.run { H5Lexists(fileID, path, chdf5_p_default()) > 0 }
    }

    /// Opens an existing dataset.
    public func dataset(_ path: String) throws -> HDF5Dataset {
        try HDF5Lock.run {
            guard H5Lexists(fileID, path, chdf5_p_default()) > 0 else {
                throw HDF5Error(file: filePath, object: path, operation: "open dataset", reason: "no such dataset")
            }
            let d = H5Dopen2(fileID, path, chdf5_p_default())
            guard d >= 0 else { throw error("open dataset", object: path) }
            return try HDF5Dataset(id: d, file: self, name: path)
        }
    }

    /// Creates a dataset of `rows` rows of `rowShape` elements, extendable along rows without
    /// limit, chunked `chunkRows` rows per chunk. `allocateEarly` reserves every chunk's file
    /// space now (and at each extension), so later row writes change no file metadata.
    /// `checksum` adds HDF5's Fletcher-32 filter: each chunk is stored with a 4-byte checksum
    /// that every read verifies (a damaged chunk fails to read instead of reading as data).
    ///
    /// Checked on HDF5 1.10.8: Fletcher-32 with early allocation and fill time never is
    /// accepted; the reserved chunks are allocated at their filtered size (data + 4 bytes) and,
    /// filtered chunks having to be valid, written at creation with zeros (whose Fletcher-32 is
    /// 0) despite fill time never, so the file is not sparse and unwritten rows read as zeros;
    /// rewriting a chunk keeps its size, so it is rewritten in place and the index (file
    /// metadata) is untouched (`testChecksummedRowWritesChangeOnlyTheirChunk`). Late allocation
    /// would avoid the up-front write but add each chunk to the index at its first write: a
    /// metadata change per row, which the cache's crash safety rules out.
    public func createDataset(_ path: String, type: HDF5ElementType, rowShape: [Int], rows: Int,
                              chunkRows: Int = 1, allocateEarly: Bool = false, checksum: Bool = false) throws -> HDF5Dataset {
        try HDF5Lock.run {
            var dims = ([rows] + rowShape).map { hsize_t($0) }
            var maxDims = dims
            maxDims[0] = chdf5_s_unlimited()
            var chunk = ([max(1, chunkRows)] + rowShape).map { hsize_t(max(1, $0)) }
            let space = H5Screate_simple(Int32(dims.count), &dims, &maxDims)
            guard space >= 0 else { throw error("create dataspace", object: path) }
            defer { H5Sclose(space) }
            let dcpl = H5Pcreate(chdf5_p_dataset_create()); defer { H5Pclose(dcpl) }
            H5Pset_chunk(dcpl, Int32(chunk.count), &chunk)
            H5Pset_obj_track_times(dcpl, false)
            if allocateEarly { H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY) }
            H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER)
            if checksum, H5Pset_fletcher32(dcpl) < 0 { throw error("add the Fletcher-32 filter", object: path) }
            let t = type.makeTypeID(); defer { H5Tclose(t) }
            let d = H5Dcreate2(fileID, path, t, space, chdf5_p_default(), dcpl, chdf5_p_default())
            guard d >= 0 else { throw error("create dataset", object: path) }
            return try HDF5Dataset(id: d, file: self, name: path)
        }
    }

    /// Every group and dataset under the root, depth first in name order, with attributes
    /// (the root first, as "/").
    public func walk() throws -> [HDF5Entry] {
        var out: [HDF5Entry] = [HDF5Entry(path: "/", kind: .group, shape: [], typeDescription: "", chunk: nil,
                                          attributes: try attributeNames().map { ($0, try? attribute($0)) })]
        try walk(group: id, prefix: "/", into: &out)
        return out
    }

    private func walk(group gid: hid_t, prefix: String, into out: inout [HDF5Entry]) throws {
        let names: [String] = try HDF5Lock.run {
            var info = H5G_info_t()
            guard H5Gget_info(gid, &info) >= 0 else { throw error("list group", object: prefix) }
            return (0..<info.nlinks).map { i in
                let n = H5Lget_name_by_idx(gid, ".", H5_INDEX_NAME, H5_ITER_INC, i, nil, 0, chdf5_p_default())
                var buf = [CChar](repeating: 0, count: max(0, n) + 1)
                H5Lget_name_by_idx(gid, ".", H5_INDEX_NAME, H5_ITER_INC, i, &buf, max(0, n) + 1, chdf5_p_default())
                return String(cString: buf)
            }
        }
        for n in names {
            let path = prefix + n
            let oid = HDF5Lock.run { H5Oopen(gid, n, chdf5_p_default()) }
            guard oid >= 0 else { throw error("open object", object: path) }
            let kind = HDF5Lock.run { H5Iget_type(oid) }
            if kind == H5I_GROUP {
                let g = HDF5Object(id: oid, filePath: filePath, name: path)
                out.append(HDF5Entry(path: path, kind: .group, shape: [], typeDescription: "", chunk: nil,
                                     attributes: try g.attributeNames().map { ($0, try? g.attribute($0)) }))
                try walk(group: oid, prefix: path + "/", into: &out)
                HDF5Lock.run { _ = H5Oclose(oid) }
            } else if kind == H5I_DATASET {
                let d = try HDF5Dataset(id: oid, file: self, name: path)  // closes oid on deinit
                out.append(HDF5Entry(path: path, kind: .dataset, shape: d.shape,
                                     typeDescription: d.elementType?.description ?? d.typeName, chunk: d.chunkShape,
                                     checksum: d.hasChecksum,
                                     attributes: try d.attributeNames().map { ($0, try? d.attribute($0)) }))
            } else {
                out.append(HDF5Entry(path: path, kind: .other, shape: [], typeDescription: "", chunk: nil, attributes: []))
                HDF5Lock.run { _ = H5Oclose(oid) }
            }
        }
    }
}

/// A dataset whose first dimension is rows; reads and writes whole rows (hyperslabs).
public final class HDF5Dataset: HDF5Object {
    /// Keeps the file open while the dataset is used.
    public let file: HDF5File
    public private(set) var shape: [Int]
    /// The stored element type, nil when it is none the cache uses (see `typeName`).
    public let elementType: HDF5ElementType?
    /// HDF5's class name of the stored type, for messages.
    public let typeName: String
    public let chunkShape: [Int]?
    /// Whether the chunks carry HDF5's Fletcher-32 checksum (verified on every read).
    public let hasChecksum: Bool
    private let typeID: hid_t

    init(id: hid_t, file: HDF5File, name: String) throws {
        self.file = file
        let t = H5Dget_type(id)
        typeID = t
        elementType = HDF5ElementType.from(typeID: t)
        switch H5Tget_class(t) {
        case H5T_INTEGER: typeName = "integer(\(H5Tget_size(t)) bytes)"
        case H5T_FLOAT: typeName = "float(\(H5Tget_size(t)) bytes)"
        case H5T_STRING: typeName = H5Tis_variable_str(t) > 0 ? "string(variable length)" : "string(\(H5Tget_size(t)))"
        default: typeName = "class \(H5Tget_class(t).rawValue)"
        }
        let s = H5Dget_space(id)
        let rank = Int(H5Sget_simple_extent_ndims(s))
        var dims = [hsize_t](repeating: 0, count: max(rank, 1))
        H5Sget_simple_extent_dims(s, &dims, nil)
        H5Sclose(s)
        shape = rank == 0 ? [] : dims.prefix(rank).map { Int($0) }
        let dcpl = H5Dget_create_plist(id)
        if H5Pget_layout(dcpl) == H5D_CHUNKED {
            var c = [hsize_t](repeating: 0, count: max(rank, 1))
            H5Pget_chunk(dcpl, Int32(rank), &c)
            chunkShape = c.prefix(rank).map { Int($0) }
        } else {
            chunkShape = nil
        }
        var flags: UInt32 = 0, nelmts = 0, config: UInt32 = 0
        hasChecksum = H5Pget_filter_by_id2(dcpl, H5Z_filter_t(chdf5_z_filter_fletcher32()), &flags, &nelmts, nil, 0, nil, &config) >= 0
        H5Eclear2(chdf5_e_default())  // "filter not found" is the common answer, not an error
        H5Pclose(dcpl)
        super.init(id: id, filePath: file.filePath, name: name)
    }

    deinit {
        // Ids are already gone when the file was closed first (strong close degree) or the
        // library shut down first (a deinit during process exit): close only live ones, so no
        // error stack is printed.
        HDF5Lock.run {
            if H5Iis_valid(typeID) > 0 { H5Tclose(typeID) }
            if H5Iis_valid(id) > 0 { H5Dclose(id) }
        }
    }

    public var rows: Int { shape.first ?? 0 }
    /// Elements per row.
    public var rowCount: Int { shape.dropFirst().reduce(1, *) }

    /// Sets the number of rows (grow or shrink).
    public func setRows(_ n: Int) throws {
        try HDF5Lock.run {
            var dims = shape.map { hsize_t($0) }
            dims[0] = hsize_t(n)
            guard H5Dset_extent(id, &dims) >= 0 else { throw error("extend to \(n) rows") }
            shape[0] = n
        }
    }

    private func checkType(_ expected: HDF5ElementType, _ op: String) throws {
        guard elementType == expected else {
            throw HDF5Error(file: filePath, object: name, operation: op,
                            reason: "stored type is \(elementType?.description ?? typeName), expected \(expected)")
        }
    }

    /// "read row 3" or "read rows 0..<8": the operation on rows, for messages.
    static func rowsText(_ verb: String, _ start: Int, _ count: Int) -> String {
        count == 1 ? "\(verb) row \(start)" : "\(verb) rows \(start)..<\(start + count)"
    }

    /// The error of a failed read of rows `start..<start+count`: when several rows were read,
    /// each is read again alone and the first that fails (a damaged chunk) is named, with its
    /// own reason.
    private func readError(_ start: Int, _ count: Int, elementBytes: Int, memType: hid_t) -> HDF5Error {
        let whole = error(Self.rowsText("read", start, count))
        guard count > 1 else { return whole }
        var one = [UInt8](repeating: 0, count: rowCount * elementBytes)
        for r in start..<(start + count) {
            let failed: HDF5Error? = try? withRows(r, 1, "read") { fs, ms -> HDF5Error? in
                H5Dread(id, memType, ms, fs, chdf5_p_default(), &one) < 0 ? error(Self.rowsText("read", r, 1)) : nil
            }
            if let failed { return failed }
        }
        return whole
    }

    /// File offset and stored size (with its checksum) of the chunk holding `row`, nil when it
    /// has no file space yet. For tools and tests that look at the bytes on disk.
    public func chunkLocation(row: Int) throws -> (offset: Int, size: Int)? {
        try HDF5Lock.run {
            guard row >= 0, row < rows, chunkShape != nil else {
                throw HDF5Error(file: filePath, object: name, operation: "locate the chunk of row \(row)", reason: "not a chunked row")
            }
            var coord = [hsize_t](repeating: 0, count: shape.count)
            coord[0] = hsize_t(row)
            var mask: UInt32 = 0, addr: haddr_t = 0, size: hsize_t = 0
            guard H5Dget_chunk_info_by_coord(id, &coord, &mask, &addr, &size) >= 0 else { throw error("locate the chunk of row \(row)") }
            return addr == chdf5_haddr_undef() ? nil : (Int(addr), Int(size))
        }
    }

    /// Runs `body(fileSpace, memSpace)` with rows `start..<start+count` selected.
    private func withRows<R>(_ start: Int, _ count: Int, _ op: String, _ body: (hid_t, hid_t) throws -> R) throws -> R {
        guard start >= 0, count >= 0, start + count <= rows else {
            throw HDF5Error(file: filePath, object: name, operation: op,
                            reason: "rows \(start)..<\(start + count) outside 0..<\(rows)")
        }
        let fs = H5Dget_space(id); defer { H5Sclose(fs) }
        var off = [hsize_t](repeating: 0, count: shape.count)
        var cnt = shape.map { hsize_t($0) }
        off[0] = hsize_t(start)
        cnt[0] = hsize_t(count)
        guard H5Sselect_hyperslab(fs, H5S_SELECT_SET, &off, nil, &cnt, nil) >= 0 else { throw error(op) }
        let ms = H5Screate_simple(Int32(cnt.count), &cnt, nil); defer { H5Sclose(ms) }
        return try body(fs, ms)
    }

    /// Writes `count` rows from raw bytes already in the stored element layout
    /// (`count · rowCount · size` bytes).
    public func writeRaw(rows start: Int, count: Int, type: HDF5ElementType, bytes: UnsafeRawBufferPointer) throws {
        let op = Self.rowsText("write", start, count)
        try HDF5Lock.run {
            try checkType(type, op)
            precondition(bytes.count == count * rowCount * type.size,
                         "HDF5Dataset \(name): \(bytes.count) bytes for \(count) rows of \(rowCount) \(type)")
            try withRows(start, count, op) { fs, ms in
                guard H5Dwrite(id, typeID, ms, fs, chdf5_p_default(), bytes.baseAddress) >= 0 else { throw error(op) }
            }
        }
    }

    /// Reads `count` rows as raw bytes in the stored element layout into `into`.
    public func readRaw(rows start: Int, count: Int, type: HDF5ElementType, into: UnsafeMutableRawBufferPointer) throws {
        let op = Self.rowsText("read", start, count)
        try HDF5Lock.run {
            try checkType(type, op)
            precondition(into.count == count * rowCount * type.size,
                         "HDF5Dataset \(name): buffer of \(into.count) bytes for \(count) rows of \(rowCount) \(type)")
            try withRows(start, count, op) { fs, ms in
                guard H5Dread(id, typeID, ms, fs, chdf5_p_default(), into.baseAddress) >= 0 else {
                    throw readError(start, count, elementBytes: type.size, memType: typeID)
                }
            }
        }
    }

    /// Typed conveniences (the array's element type must match the stored type).
    public func write(rows start: Int, _ values: [UInt8]) throws {
        try values.withUnsafeBytes { try writeRaw(rows: start, count: values.count / max(1, rowCount), type: .uint8, bytes: $0) }
    }
    public func write(rows start: Int, _ values: [Int32]) throws {
        try values.withUnsafeBytes { try writeRaw(rows: start, count: values.count / max(1, rowCount), type: .int32, bytes: $0) }
    }
    public func write(rows start: Int, _ values: [Float]) throws {
        try values.withUnsafeBytes { try writeRaw(rows: start, count: values.count / max(1, rowCount), type: .float32, bytes: $0) }
    }

    /// Any integer dataset (uint8, int32, int64) as Int.
    public func readInts(rows start: Int, count: Int) throws -> [Int] {
        let op = Self.rowsText("read", start, count)
        return try HDF5Lock.run {
            guard H5Tget_class(typeID) == H5T_INTEGER else {
                throw HDF5Error(file: filePath, object: name, operation: op, reason: "stored type is \(typeName), expected integers")
            }
            var v = [Int64](repeating: 0, count: count * rowCount)
            try withRows(start, count, op) { fs, ms in
                guard H5Dread(id, chdf5_native_int64(), ms, fs, chdf5_p_default(), &v) >= 0 else {
                    throw readError(start, count, elementBytes: 8, memType: chdf5_native_int64())
                }
            }
            return v.map { Int($0) }
        }
    }

    /// Any float dataset as Float32.
    public func readFloats(rows start: Int, count: Int) throws -> [Float] {
        let op = Self.rowsText("read", start, count)
        return try HDF5Lock.run {
            guard H5Tget_class(typeID) == H5T_FLOAT else {
                throw HDF5Error(file: filePath, object: name, operation: op, reason: "stored type is \(typeName), expected floats")
            }
            var v = [Float](repeating: 0, count: count * rowCount)
            try withRows(start, count, op) { fs, ms in
                guard H5Dread(id, chdf5_native_float(), ms, fs, chdf5_p_default(), &v) >= 0 else {
                    throw readError(start, count, elementBytes: 4, memType: chdf5_native_float())
                }
            }
            return v
        }
    }

    /// A 1-D dataset of fixed-length strings (h5py `S<n>`), rows `start..<start+count`.
    public func readStrings(rows start: Int, count: Int) throws -> [String] {
        guard case .string(let n)? = elementType else {
            throw HDF5Error(file: filePath, object: name, operation: "read strings",
                            reason: "stored type is \(elementType?.description ?? typeName), expected fixed-length strings")
        }
        var buf = [UInt8](repeating: 0, count: n * count)
        try buf.withUnsafeMutableBytes { try readRaw(rows: start, count: count, type: .string(n), into: $0) }
        return (0..<count).map { Self.decodeFixedString(buf[($0 * n)..<(($0 + 1) * n)]) }
    }

    /// Writes fixed-length strings; a string longer than the width is an error.
    public func writeStrings(rows start: Int, _ values: [String]) throws {
        guard case .string(let n)? = elementType else {
            throw HDF5Error(file: filePath, object: name, operation: "write strings",
                            reason: "stored type is \(elementType?.description ?? typeName), expected fixed-length strings")
        }
        var buf = [UInt8](repeating: 0, count: n * values.count)
        for (i, s) in values.enumerated() {
            let u = Array(s.utf8)
            guard u.count <= n else {
                throw HDF5Error(file: filePath, object: name, operation: "write strings",
                                reason: "'\(s)' is \(u.count) bytes, longer than the \(n)-byte field")
            }
            buf.replaceSubrange((i * n)..<(i * n + u.count), with: u)
        }
        try buf.withUnsafeBytes { try writeRaw(rows: start, count: values.count, type: .string(n), bytes: $0) }
    }

    static func decodeFixedString(_ bytes: ArraySlice<UInt8>) -> String {
        let end = bytes.firstIndex(of: 0) ?? bytes.endIndex
        return String(decoding: bytes[bytes.startIndex..<end], as: UTF8.self)
    }
}

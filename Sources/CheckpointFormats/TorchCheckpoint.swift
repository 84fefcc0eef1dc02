import Foundation
import Tensor
import ZIPFoundation

// Reads PyTorch checkpoints (`torch.save`, zip format since PyTorch 1.6) without Python.
//
// Layout of the zip (the top folder, ARCHIVE, is named after the file when it was saved and
// varies: "mobile_sam_cpu/", "archive/"…):
//   ARCHIVE/data.pkl      the pickled object: state dict, or a dict holding one
//   ARCHIVE/data/KEY      the raw little-endian bytes of storage KEY
//   ARCHIVE/byteorder     "little" (absent in files from PyTorch < 1.10: little)
//   ARCHIVE/version, .format_version, .storage_alignment, .data/serialization_id  (not needed)
// Each tensor in the pickle is `_rebuild_tensor_v2(storage, offset, size, stride, …)` where the
// storage is a persistent id ('storage', torch.XStorage, KEY, location, numel): several tensors
// may view one storage at different offsets and with any strides.

/// The element types a PyTorch storage may hold (the ones checkpoints use).
public enum TorchDType: String, Sendable, CaseIterable {
    case float32, float16, bfloat16, float64, int64, int32, int16, int8, uint8, bool

    /// Bytes per element.
    public var byteCount: Int {
        switch self {
        case .float64, .int64: 8
        case .float32, .int32: 4
        case .float16, .bfloat16, .int16: 2
        case .int8, .uint8, .bool: 1
        }
    }

    /// The storage class `torch.save` names for this dtype (`torch.FloatStorage`…), without "torch.".
    public var storageClass: String {
        switch self {
        case .float32: "FloatStorage"
        case .float16: "HalfStorage"
        case .bfloat16: "BFloat16Storage"
        case .float64: "DoubleStorage"
        case .int64: "LongStorage"
        case .int32: "IntStorage"
        case .int16: "ShortStorage"
        case .int8: "CharStorage"
        case .uint8: "ByteStorage"
        case .bool: "BoolStorage"
        }
    }

    public init?(storageClass: String) {
        guard let d = TorchDType.allCases.first(where: { $0.storageClass == storageClass }) else { return nil }
        self = d
    }
}

/// A tensor read from a checkpoint: its values as Float32 (contiguous, row-major) and the dtype
/// it was stored in. Integers convert exactly up to 2^24 in magnitude, then round to nearest.
public struct CheckpointTensor: Sendable {
    public let dtype: TorchDType
    public let tensor: Tensor
}

/// Why a checkpoint could not be read. `description` names the file and the cause.
public struct TorchCheckpointError: Error, CustomStringConvertible, Equatable {
    public enum Kind: Equatable, Sendable {
        /// The file cannot be opened or read.
        case unreadable(String)
        /// Neither a zip archive nor a pickle: not a PyTorch checkpoint at all.
        case notACheckpoint(String)
        /// A pre-1.6 `torch.save` file (a bare pickle stream or a tar archive).
        case legacyFormat
        /// The zip container is damaged: truncated, bad central directory, CRC mismatch.
        case damagedArchive(String)
        /// A record the checkpoint needs is not in the zip (`data.pkl`, `data/KEY`).
        case missingRecord(String)
        /// The pickle uses an opcode outside the state-dict subset (name, byte offset in data.pkl).
        case unsupportedOpcode(String, offset: Int)
        /// The pickle refers to a Python class or function outside the allow-list (`module.name`):
        /// custom classes, NumPy scalars, optimiser objects… Save a plain state dict instead.
        case unsupportedGlobal(String, offset: Int)
        /// The pickle is inconsistent (truncated, wrong argument types…).
        case malformedPickle(String, offset: Int)
        /// The storages are big-endian (`byteorder` says "big").
        case bigEndian
        /// A tensor's view does not fit its storage, or its storage's record is the wrong size.
        case invalidTensor(name: String, reason: String)
    }

    public let file: String
    public let kind: Kind

    public init(file: String, kind: Kind) {
        self.file = file
        self.kind = kind
    }

    public var description: String {
        switch kind {
        case .unreadable(let why): "\(file): cannot read the checkpoint (\(why))"
        case .notACheckpoint(let why): "\(file): not a PyTorch checkpoint (\(why))"
        case .legacyFormat:
            "\(file): legacy torch.save format is not supported; re-save with torch.save(..., _use_new_zipfile_serialization=True)"
        case .damagedArchive(let why): "\(file): damaged checkpoint zip container (\(why))"
        case .missingRecord(let name): "\(file): the checkpoint has no record '\(name)'"
        case .unsupportedOpcode(let op, let offset):
            "\(file): unsupported pickle opcode \(op) at byte \(offset) of data.pkl"
        case .unsupportedGlobal(let name, let offset):
            "\(file): unsupported Python global '\(name)' at byte \(offset) of data.pkl (only state-dict types are read: OrderedDict, tensors, storages; save a plain state dict)"
        case .malformedPickle(let why, let offset): "\(file): malformed data.pkl at byte \(offset): \(why)"
        case .bigEndian: "\(file): big-endian checkpoints are not supported"
        case .invalidTensor(let name, let why): "\(file): tensor '\(name)': \(why)"
        }
    }
}

/// A storage as the pickle names it (BINPERSID).
struct TorchStorageReference {
    let key: String
    let dtype: TorchDType
    let count: Int
}

/// A tensor as the pickle builds it: a strided view of a storage (element units).
struct TorchTensorReference {
    let storage: TorchStorageReference
    let offset: Int
    let shape: [Int]
    let strides: [Int]
}

/// A PyTorch zip checkpoint read into Float32 tensors.
///
/// Nested containers are flattened with "." between keys, so `{"model": state_dict, "epoch": 3}`
/// gives tensors `model.image_encoder.…` and metadata `epoch` = "3"; a plain state dict keeps its
/// keys unchanged. Lists and tuples use their indices as keys ("layers.0"). A checkpoint that is a
/// bare tensor gets the name "". Non-tensor leaves (int, float, str, bool, None) go to `metadata`
/// as Python would print them; bytes and `_metadata` (module versions) are dropped.
/// Use `stateDict(under:)` to pick a sub-dict without its prefix.
public struct TorchCheckpoint: Sendable {
    /// The path it was read from (for messages).
    public let file: String
    /// Tensor names in the order they appear in the checkpoint.
    public let names: [String]
    public let tensors: [String: CheckpointTensor]
    public let metadata: [String: String]

    /// Reads every tensor of a `.pt`/`.pth` zip checkpoint. Throws `TorchCheckpointError`.
    public init(contentsOf url: URL) throws {
        let file = url.path
        func fail(_ kind: TorchCheckpointError.Kind) -> TorchCheckpointError {
            TorchCheckpointError(file: file, kind: kind)
        }
        try TorchCheckpoint.checkContainer(url, fail)
        let fileSize = ((try? FileManager.default.attributesOfItem(atPath: file)[.size]) as? NSNumber)?.uint64Value ?? 0
        if let problem = TorchCheckpoint.centralDirectoryProblem(url, fileSize: fileSize) { throw fail(.damagedArchive(problem)) }

        let archive: Archive
        do { archive = try Archive(url: url, accessMode: .read) } catch {
            throw fail(.damagedArchive("cannot open the zip archive: \(error)"))
        }
        var entries: [String: Entry] = [:]
        for entry in archive where entries[entry.path] == nil { entries[entry.path] = entry }
        guard let pklPath = entries.keys.filter({ $0 == "data.pkl" || $0.hasSuffix("/data.pkl") })
            .min(by: { $0.count < $1.count }) else {
            throw fail(.missingRecord("data.pkl"))
        }
        let prefix = String(pklPath.dropLast("data.pkl".count))  // "ARCHIVE/" (or "")

        func record(_ name: String) throws -> Data {
            guard let entry = entries[prefix + name] else { throw fail(.missingRecord(prefix + name)) }
            // A record's sizes come from the (possibly damaged) zip directory: no record may
            // claim more than its stored bytes (or deflate's 1032:1 ratio) before it is read.
            let stored = UInt64(entry.compressedSize), claimed = UInt64(entry.uncompressedSize)
            guard stored <= fileSize, claimed <= stored * 1032 + 1024 else {
                throw fail(.damagedArchive("record '\(entry.path)' claims \(claimed) bytes from \(stored) stored in a \(fileSize)-byte file"))
            }
            let expected = Int(claimed)
            var data = Data(capacity: min(expected, 1 << 26))
            do {
                let crc = try archive.extract(entry, bufferSize: max(1, min(expected, 1 << 26)), skipCRC32: false) {
                    data.append($0)
                }
                guard data.count == expected else {
                    throw fail(.damagedArchive("record '\(entry.path)' holds \(data.count) of its \(expected) bytes"))
                }
                guard crc == entry.checksum else {
                    throw fail(.damagedArchive("record '\(entry.path)' fails its CRC-32 check"))
                }
            } catch let error as TorchCheckpointError {
                throw error
            } catch {
                throw fail(.damagedArchive("cannot read record '\(entry.path)': \(error)"))
            }
            return data
        }

        if entries[prefix + "byteorder"] != nil {
            let order = String(decoding: try record("byteorder"), as: UTF8.self)
            if order.trimmingCharacters(in: .whitespacesAndNewlines) == "big" { throw fail(.bigEndian) }
        }

        // Unpickle.
        let root: PickleValue
        do {
            var machine = Unpickler(bytes: [UInt8](try record("data.pkl")), hooks: TorchCheckpoint.hooks)
            root = try machine.load()
        } catch let error as PickleError {
            switch error {
            case .unsupportedOpcode(let op, let offset):
                throw fail(.unsupportedOpcode(String(format: "%@ (0x%02X)", pickleOpcodeName(op), op), offset: offset))
            case .unsupportedGlobal(let name, let offset): throw fail(.unsupportedGlobal(name, offset: offset))
            case .malformed(let why, let offset): throw fail(.malformedPickle(why, offset: offset))
            }
        }

        // Flatten, then materialise each tensor from its (shared, cached) storage.
        var leaves: [(String, TorchTensorReference)] = []
        var metadata: [String: String] = [:]
        TorchCheckpoint.flatten(root, name: "", tensors: &leaves, metadata: &metadata)
        var storages: [String: Data] = [:]
        var tensors: [String: CheckpointTensor] = [:]
        var names: [String] = []
        for (name, ref) in leaves {
            let storage = ref.storage
            if storages[storage.key] == nil {
                let bytes = try record("data/" + storage.key)
                guard bytes.count >= storage.count * storage.dtype.byteCount else {
                    throw fail(.invalidTensor(name: name, reason: "storage '\(storage.key)' holds \(bytes.count) bytes, "
                        + "fewer than its \(storage.count) \(storage.dtype.rawValue) elements"))
                }
                storages[storage.key] = bytes
            }
            let values = try TorchCheckpoint.gather(ref, from: storages[storage.key]!) { fail(.invalidTensor(name: name, reason: $0)) }
            if tensors[name] == nil { names.append(name) }
            tensors[name] = CheckpointTensor(dtype: storage.dtype, tensor: Tensor(shape: ref.shape, data: values))
        }
        self.file = file
        self.names = names
        self.tensors = tensors
        self.metadata = metadata
    }

    /// The tensors whose names start with `prefix` + ".", keyed without that prefix (e.g.
    /// `stateDict(under: "model")` for `{"model": state_dict}`); all tensors for "".
    public func stateDict(under prefix: String = "") -> [String: Tensor] {
        var d: [String: Tensor] = [:]
        let p = prefix.isEmpty ? "" : prefix + "."
        for (k, v) in tensors where k.hasPrefix(p) { d[String(k.dropFirst(p.count))] = v.tensor }
        return d
    }

    // MARK: Container

    /// Tells zip archives from legacy pickles, tar files and foreign files by their first bytes.
    /// ZIPFoundation 0.9.20 traps on a central-directory offset ≥ 2⁶³ (its `readStruct` guard
    /// compares with UInt64.max, then converts to off_t): every directory and local-header offset
    /// is checked against the file size first. nil: fine (or no directory found: ZIPFoundation
    /// reports that itself).
    static func centralDirectoryProblem(_ url: URL, fileSize: UInt64) -> String? {
        guard let handle = FileHandle(forReadingAtPath: url.path) else { return nil }
        defer { try? handle.close() }
        func read(_ offset: UInt64, _ count: Int) -> [UInt8]? {
            guard offset < fileSize, (try? handle.seek(toOffset: offset)) != nil,
                  let d = try? handle.read(upToCount: count), d.count == count else { return nil }
            return [UInt8](d)
        }
        func le(_ b: [UInt8], _ at: Int, _ n: Int) -> UInt64 {
            (0..<n).reduce(UInt64(0)) { $0 | UInt64(b[at + $1]) << (8 * UInt64($1)) }
        }
        // The end-of-central-directory record: within the last 64 KiB + 22 bytes.
        let tailStart = fileSize > 65_557 ? fileSize - 65_557 : 0
        guard let tail = read(tailStart, Int(fileSize - tailStart)), tail.count >= 22,
              let eocd = (0...(tail.count - 22)).reversed().first(where: { le(tail, $0, 4) == 0x0605_4B50 }) else { return nil }
        var directory = le(tail, eocd + 16, 4), entries = le(tail, eocd + 10, 2)
        if directory == 0xFFFF_FFFF || entries == 0xFFFF, eocd >= 20, le(tail, eocd - 20, 4) == 0x0706_4B50 {
            let record = le(tail, eocd - 12, 8)  // the ZIP64 end-of-central-directory record
            guard let z = read(record, 56), le(z, 0, 4) == 0x0606_4B50 else { return "its ZIP64 directory record offset \(record) is outside the file" }
            directory = le(z, 48, 8); entries = le(z, 32, 8)
        }
        guard directory < fileSize else { return "its central directory offset \(directory) is outside the \(fileSize)-byte file" }
        var at = directory
        for _ in 0..<min(entries, 1 << 20) {
            guard let h = read(at, 46), le(h, 0, 4) == 0x0201_4B50 else { return nil }  // ZIPFoundation stops here too
            let nameLength = le(h, 28, 2), extraLength = le(h, 30, 2), commentLength = le(h, 32, 2)
            var local = le(h, 42, 4)
            if local == 0xFFFF_FFFF, let extra = read(at + 46 + nameLength, Int(extraLength)) {
                // ZIP64 extra field: the 8-byte values present are those whose 4-byte field is 0xFFFFFFFF.
                var i = 0
                while i + 4 <= extra.count {
                    let id = le(extra, i, 2), size = Int(le(extra, i + 2, 2))
                    if id == 1 {
                        let skip = (le(h, 24, 4) == 0xFFFF_FFFF ? 8 : 0) + (le(h, 20, 4) == 0xFFFF_FFFF ? 8 : 0)
                        if i + 4 + skip + 8 <= extra.count { local = le(extra, i + 4 + skip, 8) }
                    }
                    i += 4 + size
                }
            }
            guard local < fileSize else { return "an entry's local header offset \(local) is outside the \(fileSize)-byte file" }
            at += 46 + nameLength + extraLength + commentLength
        }
        return nil
    }

    private static func checkContainer(_ url: URL, _ fail: (TorchCheckpointError.Kind) -> TorchCheckpointError) throws {
        guard let handle = FileHandle(forReadingAtPath: url.path) else {
            let why = FileManager.default.fileExists(atPath: url.path) ? "permission denied" : "no such file"
            throw fail(.unreadable(why))
        }
        defer { try? handle.close() }
        let head: Data
        do { head = try handle.read(upToCount: 512) ?? Data() } catch {
            throw fail(.unreadable("\(error.localizedDescription)"))
        }
        let b = [UInt8](head)
        if b.count >= 4, b[0] == 0x50, b[1] == 0x4B, b[2] == 0x03 || b[2] == 0x05, b[3] == 0x04 || b[3] == 0x06 { return }
        if b.first == 0x80 { throw fail(.legacyFormat) }  // pickle PROTO: torch.save(_use_new_zipfile_serialization=False)
        if b.count >= 262, String(decoding: b[257..<262], as: UTF8.self) == "ustar" { throw fail(.legacyFormat) }  // torch < 0.4 tar
        if b.isEmpty { throw fail(.notACheckpoint("the file is empty")) }
        throw fail(.notACheckpoint("no zip archive signature at the start"))
    }

    // MARK: Pickle hooks

    static let hooks = PickleHooks(
        resolveGlobal: { module, name in
            switch (module, name) {
            case ("collections", "OrderedDict"),
                 ("torch._utils", "_rebuild_tensor_v2"),
                 ("torch._utils", "_rebuild_parameter"),
                 ("torch._utils", "_rebuild_parameter_with_state"):
                return .global(module: module, name: name)
            case ("torch", _) where TorchDType(storageClass: name) != nil:
                return .global(module: module, name: name)
            default:
                throw PickleError.unsupportedGlobal("\(module).\(name)", offset: -1)
            }
        },
        persistentLoad: { pid in
            // ('storage', torch.XStorage, key, location, numel)
            guard case .tuple(let t) = pid, t.count == 5, case .string("storage") = t[0],
                  case .global("torch", let storageClass) = t[1], let dtype = TorchDType(storageClass: storageClass),
                  case .string(let key) = t[2], case .int(let count) = t[4], count >= 0 else {
                throw PickleError.malformed("persistent id is not ('storage', torch.XStorage, key, location, numel)", offset: -1)
            }
            return .storage(TorchStorageReference(key: key, dtype: dtype, count: count))
        },
        reduce: { callable, args in
            guard case .global(let module, let name) = callable else {
                throw PickleError.malformed("REDUCE on a \(callable.typeName), not a class or function", offset: -1)
            }
            switch (module, name) {
            case ("collections", "OrderedDict"):
                let d = PickleDict()
                // OrderedDict() or OrderedDict([[key, value], …])
                if case .list(let pairs)? = args.first {
                    for p in pairs.items {
                        switch p {
                        case .list(let kv) where kv.items.count == 2: d.set(kv.items[0], kv.items[1])
                        case .tuple(let kv) where kv.count == 2: d.set(kv[0], kv[1])
                        default: throw PickleError.malformed("OrderedDict item is not a pair", offset: -1)
                        }
                    }
                }
                return .dict(d)
            case ("torch._utils", "_rebuild_tensor_v2"):
                // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
                guard args.count >= 4, case .storage(let storage) = args[0], case .int(let offset) = args[1],
                      let shape = intTuple(args[2]), let strides = intTuple(args[3]), shape.count == strides.count else {
                    throw PickleError.malformed("_rebuild_tensor_v2 arguments are not (storage, offset, size, stride, …)", offset: -1)
                }
                return .tensor(TorchTensorReference(storage: storage, offset: offset, shape: shape, strides: strides))
            case ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"):
                // (data, requires_grad, backward_hooks[, state])
                guard case .tensor? = args.first else {
                    throw PickleError.malformed("\(name) without a tensor as its first argument", offset: -1)
                }
                return args[0]
            default:
                throw PickleError.malformed("\(module).\(name) is not callable here", offset: -1)
            }
        })

    private static func intTuple(_ v: PickleValue) -> [Int]? {
        guard case .tuple(let items) = v else { return nil }
        var out: [Int] = []
        for item in items {
            guard case .int(let i) = item else { return nil }
            out.append(i)
        }
        return out
    }

    // MARK: Flattening

    private static func flatten(_ value: PickleValue, name: String,
                                tensors: inout [(String, TorchTensorReference)], metadata: inout [String: String]) {
        func child(_ key: String) -> String { name.isEmpty ? key : name + "." + key }
        switch value {
        case .tensor(let t): tensors.append((name, t))
        case .dict(let d):
            for (k, v) in d.items { flatten(v, name: child(keyString(k)), tensors: &tensors, metadata: &metadata) }
        case .list(let l):
            for (i, v) in l.items.enumerated() { flatten(v, name: child("\(i)"), tensors: &tensors, metadata: &metadata) }
        case .tuple(let items):
            for (i, v) in items.enumerated() { flatten(v, name: child("\(i)"), tensors: &tensors, metadata: &metadata) }
        case .none, .bool, .int, .float, .string: metadata[name] = pythonRepr(value)
        case .bytes, .global, .storage: break
        }
    }

    private static func keyString(_ key: PickleValue) -> String {
        switch key {
        case .string(let s): s
        case .none, .bool, .int, .float: pythonRepr(key)
        case .tuple(let items): items.map(keyString).joined(separator: ",")
        default: key.typeName
        }
    }

    private static func pythonRepr(_ value: PickleValue) -> String {
        switch value {
        case .none: "None"
        case .bool(let b): b ? "True" : "False"
        case .int(let i): "\(i)"
        case .float(let f): "\(f)"
        case .string(let s): s
        default: value.typeName
        }
    }

    // MARK: Decoding

    /// The tensor's values, contiguous row-major, from its strided view of `storage`'s bytes.
    static func gather(_ ref: TorchTensorReference, from storage: Data, invalid: (String) -> Error) throws -> [Float] {
        let n = ref.shape.reduce(1, *)
        guard ref.shape.allSatisfy({ $0 >= 0 }) else { throw invalid("negative size \(ref.shape)") }
        guard ref.offset >= 0, ref.strides.allSatisfy({ $0 >= 0 }) else {
            throw invalid("negative offset \(ref.offset) or stride \(ref.strides)")
        }
        var values = [Float](repeating: 0, count: n)
        if n == 0 { return values }
        var last = ref.offset  // highest element index the view touches
        for (size, stride) in zip(ref.shape, ref.strides) { last += (size - 1) * stride }
        guard last < ref.storage.count else {
            throw invalid("view (offset \(ref.offset), size \(ref.shape), stride \(ref.strides)) reaches element \(last) "
                + "of a \(ref.storage.count)-element storage")
        }
        var contiguous = true
        var expected = 1
        for d in stride(from: ref.shape.count - 1, through: 0, by: -1) where ref.shape[d] != 1 {
            if ref.strides[d] != expected { contiguous = false; break }
            expected *= ref.shape[d]
        }
        let dtype = ref.storage.dtype
        storage.withUnsafeBytes { raw in
            let base = raw.baseAddress!
            values.withUnsafeMutableBufferPointer { out in
                if contiguous {
                    decode(dtype, from: base + ref.offset * dtype.byteCount, count: n, into: out.baseAddress!)
                    return
                }
                // Odometer over the view's indices: element i of the output sits at storage index `at`.
                let rank = ref.shape.count
                var index = [Int](repeating: 0, count: rank)
                var at = ref.offset
                for i in 0..<n {
                    decode(dtype, from: base + at * dtype.byteCount, count: 1, into: out.baseAddress! + i)
                    var d = rank - 1
                    while d >= 0 {
                        index[d] += 1
                        at += ref.strides[d]
                        if index[d] < ref.shape[d] { break }
                        at -= ref.strides[d] * ref.shape[d]
                        index[d] = 0
                        d -= 1
                    }
                }
            }
        }
        return values
    }

    /// Converts `n` little-endian elements at `p` to Float32.
    static func decode(_ dtype: TorchDType, from p: UnsafeRawPointer, count n: Int, into v: UnsafeMutablePointer<Float>) {
        switch dtype {
        case .float32:
            #if _endian(little)
            UnsafeMutableRawPointer(v).copyMemory(from: p, byteCount: 4 * n)
            #else
            for i in 0..<n { v[i] = Float(bitPattern: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
            #endif
        case .float16:
            for i in 0..<n { v[i] = Float(Float16(bitPattern: UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))) }
        case .bfloat16:
            for i in 0..<n { v[i] = Float(bitPattern: UInt32(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) << 16) }
        case .float64:
            for i in 0..<n { v[i] = Float(Double(bitPattern: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self)))) }
        case .int64:
            for i in 0..<n { v[i] = Float(Int64(littleEndian: p.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self))) }
        case .int32:
            for i in 0..<n { v[i] = Float(Int32(littleEndian: p.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self))) }
        case .int16:
            for i in 0..<n { v[i] = Float(Int16(littleEndian: p.loadUnaligned(fromByteOffset: 2 * i, as: Int16.self))) }
        case .int8:
            for i in 0..<n { v[i] = Float(p.load(fromByteOffset: i, as: Int8.self)) }
        case .uint8:
            for i in 0..<n { v[i] = Float(p.load(fromByteOffset: i, as: UInt8.self)) }
        case .bool:
            for i in 0..<n { v[i] = p.load(fromByteOffset: i, as: UInt8.self) != 0 ? 1 : 0 }
        }
    }
}

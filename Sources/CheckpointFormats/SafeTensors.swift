import Foundation
import Tensor

/// The `.safetensors` format: an 8-byte little-endian header length, a JSON header mapping each
/// tensor name to `{dtype, shape, data_offsets}` (plus an optional `__metadata__` string map),
/// then the raw little-endian bytes. Used for exported weights and for the PyTorch reference dumps.
public enum SafeTensors {
    public enum DType: String, Sendable {
        case f32 = "F32", f16 = "F16", bf16 = "BF16", i64 = "I64", i32 = "I32", u8 = "U8", bool = "BOOL"
        var size: Int {
            switch self { case .f32, .i32: 4; case .f16, .bf16: 2; case .i64: 8; case .u8, .bool: 1 }
        }
    }

    public struct FormatError: Error, CustomStringConvertible {
        public let file: String
        public let reason: String
        public var description: String { "\(file): not a valid safetensors file: \(reason)" }
    }

    /// One tensor as stored: dtype, shape, and its values converted to Float32.
    public struct Entry: Sendable {
        public let dtype: DType
        public let tensor: Tensor
    }

    /// Reads every tensor (converted to Float32) and the metadata map.
    public static func read(_ url: URL) throws -> (tensors: [String: Entry], metadata: [String: String]) {
        let file = url.path
        let bytes: Data
        do { bytes = try Data(contentsOf: url, options: .mappedIfSafe) } catch {
            throw FormatError(file: file, reason: "cannot read (\(error.localizedDescription))")
        }
        guard bytes.count >= 8 else { throw FormatError(file: file, reason: "shorter than its 8-byte header length") }
        let storedLength = bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard storedLength > 0, storedLength <= UInt64(bytes.count - 8) else {
            throw FormatError(file: file, reason: "header length \(storedLength) exceeds the file size \(bytes.count)")
        }
        let headerLength = Int(storedLength)
        let headerData = bytes.subdata(in: 8..<(8 + headerLength))
        guard let header = try? JSONSerialization.jsonObject(with: headerData) as? [String: Any] else {
            throw FormatError(file: file, reason: "header is not a JSON object")
        }
        var metadata: [String: String] = [:]
        var tensors: [String: Entry] = [:]
        let dataStart = 8 + headerLength
        for (name, value) in header {
            if name == "__metadata__" {
                metadata = (value as? [String: String]) ?? [:]
                continue
            }
            guard let info = value as? [String: Any],
                  let dtypeName = info["dtype"] as? String,
                  let shape = info["shape"] as? [Int],
                  let offsets = info["data_offsets"] as? [Int], offsets.count == 2 else {
                throw FormatError(file: file, reason: "entry '\(name)' lacks dtype/shape/data_offsets")
            }
            guard let dtype = DType(rawValue: dtypeName) else {
                throw FormatError(file: file, reason: "entry '\(name)' has unsupported dtype \(dtypeName)")
            }
            // Every product and sum checked: a hostile header must not overflow into a bad range.
            let count = shape.allSatisfy { $0 >= 0 } ? checkedProduct(shape + [dtype.size]) : nil
            guard let byteCount = count, offsets[0] >= 0, offsets[1] >= offsets[0], offsets[1] - offsets[0] == byteCount,
                  offsets[1] <= bytes.count - dataStart else {
                throw FormatError(file: file, reason: "entry '\(name)' byte range \(offsets) does not fit shape \(shape) \(dtypeName)")
            }
            let n = byteCount / dtype.size
            var values = [Float](repeating: 0, count: n)
            bytes.withUnsafeBytes { raw in
                let base = raw.baseAddress! + dataStart + offsets[0]
                decode(dtype, from: base, count: n, into: &values)
            }
            tensors[name] = Entry(dtype: dtype, tensor: Tensor(shape: shape, data: values))
        }
        return (tensors, metadata)
    }

    /// The product of `factors`, nil on overflow.
    static func checkedProduct(_ factors: [Int]) -> Int? {
        var p = 1
        for f in factors {
            let (r, overflow) = p.multipliedReportingOverflow(by: f)
            if overflow { return nil }
            p = r
        }
        return p
    }

    static func decode(_ dtype: DType, from p: UnsafeRawPointer, count n: Int, into v: inout [Float]) {
        switch dtype {
        case .f32: for i in 0..<n { v[i] = Float(bitPattern: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
        case .f16: for i in 0..<n { v[i] = Float(Float16(bitPattern: UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))) }
        case .bf16: for i in 0..<n { v[i] = Float(bitPattern: UInt32(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) << 16) }
        case .i64: for i in 0..<n { v[i] = Float(Int64(littleEndian: p.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self))) }
        case .i32: for i in 0..<n { v[i] = Float(Int32(littleEndian: p.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self))) }
        case .u8, .bool: for i in 0..<n { v[i] = Float(p.load(fromByteOffset: i, as: UInt8.self)) }
        }
    }

    /// Writes tensors (sorted by name) as F32 or F16, atomically: a temp file, then a rename.
    public static func write(_ tensors: [String: Tensor], metadata: [String: String] = [:],
                             half: Bool = false, to url: URL) throws {
        let names = tensors.keys.sorted()
        var header: [String: Any] = [:]
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var offset = 0
        let dtype: DType = half ? .f16 : .f32
        for name in names {
            let t = tensors[name]!
            let size = t.count * dtype.size
            header[name] = ["dtype": dtype.rawValue, "shape": t.shape, "data_offsets": [offset, offset + size]] as [String: Any]
            offset += size
        }
        var headerData = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while (8 + headerData.count) % 8 != 0 { headerData.append(0x20) }  // pad with spaces to 8-byte alignment
        var out = Data(capacity: 8 + headerData.count + offset)
        var len = UInt64(headerData.count).littleEndian
        withUnsafeBytes(of: &len) { out.append(contentsOf: $0) }
        out.append(headerData)
        for name in names {
            let t = tensors[name]!
            if half {
                var h = t.data.map { Float16($0).bitPattern.littleEndian }
                h.withUnsafeMutableBytes { out.append(contentsOf: $0) }
            } else {
                t.data.withUnsafeBytes { out.append(contentsOf: $0) }
            }
        }
        try AtomicFile.write(out, to: url)
    }
}

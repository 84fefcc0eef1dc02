import ArgumentParser
import CheckpointFormats
import Distill
import Foundation
import HDF5
import ONNX
import SegmentAnything

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the tensors of a weights file (.pt/.pth/.safetensors), an HDF5 file (.h5) or an ONNX model (.onnx).",
        discussion: """
            Prints each tensor's name, stored dtype, shape and value count in file order, then \
            totals: tensors, values, and values per top-level prefix (image_encoder, \
            prompt_encoder, mask_decoder…). Nested checkpoints are flattened with '.' \
            ("model.image_encoder.…"). For an HDF5 file (a feature cache, by its HDF5 signature), \
            lists every group and dataset (shape, element type, chunk shape) with its attributes, \
            and for a feature cache the number of complete rows per split. For an ONNX model \
            (.onnx), lists its inputs and outputs (element type, shape, named dimensions), the IR \
            version and opsets, the initializers (count, values per element type) and the node \
            count per op type.
            """)

    @OptionGroup var runtime: RuntimeOptions

    @Argument(help: "The weights file (.pt, .pth or .safetensors).")
    var file: String

    @Flag(help: "Print one JSON object instead of the table.")
    var json = false

    func run() throws {
        let url = URL(fileURLWithPath: file)
        if Self.isHDF5(url) { return try inspectHDF5(url) }
        if url.pathExtension.lowercased() == "onnx" { return try inspectONNX(url) }
        let t0 = DispatchTime.now().uptimeNanoseconds
        let weights = try WeightsFile(contentsOf: url)
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9

        var totalValues = 0
        var prefixes: [String: (tensors: Int, values: Int)] = [:]
        var prefixOrder: [String] = []
        var rows: [[String: Any]] = []
        for name in weights.names {
            let t = weights.tensors[name]!
            totalValues += t.count
            let prefix = name.split(separator: ".", maxSplits: 1).first.map(String.init) ?? name
            if prefixes[prefix] == nil { prefixOrder.append(prefix) }
            prefixes[prefix, default: (0, 0)].tensors += 1
            prefixes[prefix, default: (0, 0)].values += t.count
            rows.append(["name": name, "dtype": weights.dtypes[name] ?? "?", "shape": t.shape, "count": t.count])
        }

        if json {
            let perPrefix = prefixOrder.map { ["prefix": $0, "tensors": prefixes[$0]!.tensors, "values": prefixes[$0]!.values] as [String: Any] }
            printJSON(["file": file, "format": weights.format.rawValue, "tensors": rows,
                       "total_tensors": weights.names.count, "total_values": totalValues,
                       "prefixes": perPrefix, "metadata": weights.metadata, "load_seconds": seconds])
            return
        }
        let nameWidth = min(72, max(4, weights.names.map(\.count).max() ?? 4))
        func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
        print(pad("name", nameWidth) + "  " + pad("dtype", 9) + "  " + pad("shape", 20) + "  count")
        for row in rows {
            let shape = "[" + (row["shape"] as! [Int]).map(String.init).joined(separator: ", ") + "]"
            print(pad(row["name"] as! String, nameWidth) + "  " + pad(row["dtype"] as! String, 9) + "  "
                  + pad(shape, 20) + "  \(row["count"] as! Int)")
        }
        print("")
        for p in prefixOrder {
            print(pad(p.isEmpty ? "(unnamed)" : p, nameWidth) + "  \(prefixes[p]!.tensors) tensors, \(grouped(prefixes[p]!.values)) values")
        }
        print("total: \(weights.names.count) tensors, \(grouped(totalValues)) values (\(weights.format.rawValue), "
              + String(format: "read in %.3f s)", seconds))
        for (k, v) in weights.metadata.sorted(by: { $0.key < $1.key }) { print("metadata \(k): \(v)") }
    }

    private func inspectONNX(_ url: URL) throws {
        let m: ONNXSummary
        do {
            m = try ONNXSummary(contentsOf: url)
        } catch {
            FileHandle.standardError.write(Data("error: \(file): not a readable ONNX model (\(error))\n".utf8))
            throw ExitCode.failure
        }
        let opsets = m.opsets.map { "\($0.domain) \($0.version)" }.joined(separator: ", ")
        if json {
            func describe(_ v: ONNXSummary.Value) -> [String: Any] {
                ["name": v.name, "type": v.type, "shape": v.shape.map { d -> Any in
                    switch d { case .size(let n): Int(n); case .named(let s): s }
                }]
            }
            printJSON(["file": file, "format": "onnx", "ir_version": Int(m.irVersion),
                       "opsets": m.opsets.map { ["domain": $0.domain, "version": Int($0.version)] as [String: Any] },
                       "producer": m.producer, "inputs": m.inputs.map(describe), "outputs": m.outputs.map(describe),
                       "nodes": m.nodes, "ops": m.ops, "initializers": m.initializers,
                       "initializer_values": m.initializerValues, "metadata": m.metadata])
            return
        }
        print("onnx    \(file): IR version \(m.irVersion), opset \(opsets), producer \(m.producer)")
        for v in m.inputs { print("input   \(v.name)  \(v.type) (\(v.shape.map(\.description).joined(separator: ", ")))") }
        for v in m.outputs { print("output  \(v.name)  \(v.type) (\(v.shape.map(\.description).joined(separator: ", ")))") }
        print("initializers: \(m.initializers) ("
              + m.initializerValues.sorted { $0.key < $1.key }.map { "\(grouped($0.value)) \($0.key) values" }.joined(separator: ", ") + ")")
        print("nodes: \(m.nodes)")
        for (op, n) in m.ops.sorted(by: { ($0.value, $1.key) > ($1.value, $0.key) }) {
            print("  " + op.padding(toLength: max(op.count, 20), withPad: " ", startingAt: 0) + " \(n)")
        }
        for (k, v) in m.metadata.sorted(by: { $0.key < $1.key }) { print("metadata \(k): \(v)") }
    }

    /// 10140231 → "10,140,231".
    private func grouped(_ n: Int) -> String {
        let s = String(n)
        var out = ""
        for (i, c) in s.enumerated() {
            if i > 0, (s.count - i) % 3 == 0 { out.append(",") }
            out.append(c)
        }
        return out
    }

    /// True when the file starts with the HDF5 signature (at offset 0; user blocks are not used here).
    static func isHDF5(_ url: URL) -> Bool {
        guard let h = FileHandle(forReadingAtPath: url.path) else { return false }
        defer { try? h.close() }
        let sig: [UInt8] = [0x89, 0x48, 0x44, 0x46, 0x0D, 0x0A, 0x1A, 0x0A]
        return (try? h.read(upToCount: 8)).map { [UInt8]($0) == sig } ?? false
    }

    private func inspectHDF5(_ url: URL) throws {
        do {
            let f = try HDF5File(url, mode: .readOnly)
            let entries = try f.walk()
            let superblock = f.superblockVersion
            var out: [[String: Any]] = []
            for e in entries {
                var attrs: [String: String] = [:]
                for (k, v) in e.attributes { attrs[k] = v.map { "\($0)" } ?? "(unreadable)" }
                out.append(["path": e.path, "kind": e.kind.rawValue, "shape": e.shape, "type": e.typeDescription,
                            "chunk": e.chunk ?? [], "checksum": e.checksum ? "fletcher32" : "none", "attributes": attrs])
            }
            f.close()
            var cacheLine: String? = nil
            var perSplit: [String: Int] = [:]
            if let reader = try? CacheReader(url) {
                for s in CacheSplit.allCases { perSplit[CacheSchema.splitNames[s.rawValue]] = reader.rows(split: s).count }
                let datasets = entries.filter { $0.kind == .dataset }
                let checked = datasets.allSatisfy(\.checksum) ? "every dataset's chunks checksummed (Fletcher-32)"
                    : datasets.contains(where: \.checksum) ? "some datasets checksummed"
                    : "no checksums (a format-1 cache: damaged rows cannot be detected)"
                cacheLine = "feature cache: \(reader.count) rows, \(reader.rows().count) complete "
                    + "(train \(perSplit["train"]!), val \(perSplit["val"]!)), teacher \(reader.teacher), "
                    + "image \(reader.imageSize)×\(reader.imageSize), embedding \(reader.embeddingShape) \(reader.embeddingDType); "
                    + checked
            }
            if json {
                var o: [String: Any] = ["file": file, "format": "hdf5", "superblock_version": superblock, "entries": out]
                if cacheLine != nil { o["complete_rows"] = perSplit }
                printJSON(o)
                return
            }
            for (e, o) in zip(entries, out) {
                switch e.kind {
                case .group: print("group   \(e.path)")
                case .dataset:
                    let shape = "(" + e.shape.map(String.init).joined(separator: ", ") + ")"
                    let chunk = e.chunk.map { " chunks (" + $0.map(String.init).joined(separator: ", ") + ")" } ?? " contiguous"
                    print("dataset \(e.path)  \(shape) \(e.typeDescription)\(chunk)\(e.checksum ? ", Fletcher-32 checksums" : "")")
                case .other: print("other   \(e.path)")
                }
                for (k, v) in (o["attributes"] as! [String: String]).sorted(by: { $0.key < $1.key }) {
                    let shown = v.count > 160 ? String(v.prefix(157)) + "..." : v
                    print("    @\(k) = \(shown)")
                }
            }
            print("file metadata: superblock version \(superblock)"
                  + (superblock >= 2 ? ", checksummed headers" : ", no header checksums (written by an older libhdf5 default or h5py)"))
            if let cacheLine { print(cacheLine) }
        } catch let e as HDF5Error {
            FileHandle.standardError.write(Data("error: \(e.description)\n".utf8))
            throw ExitCode.failure
        }
    }
}

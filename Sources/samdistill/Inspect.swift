import ArgumentParser
import Foundation
import SegmentAnything

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the tensors of a weights file (.pt/.pth checkpoint or .safetensors).",
        discussion: """
            Prints each tensor's name, stored dtype, shape and value count in file order, then \
            totals: tensors, values, and values per top-level prefix (image_encoder, \
            prompt_encoder, mask_decoder…). Nested checkpoints are flattened with '.' \
            ("model.image_encoder.…").
            """)

    @Argument(help: "The weights file (.pt, .pth or .safetensors).")
    var file: String

    @Flag(help: "Print one JSON object instead of the table.")
    var json = false

    func run() throws {
        let url = URL(fileURLWithPath: file)
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
}

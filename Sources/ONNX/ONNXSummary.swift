import Foundation

/// What `samdistill inspect model.onnx` shows: the model's interface, opsets and node counts,
/// read from any file (a damaged or hostile one gives an error or odd counts, never a trap:
/// Scripts/fuzz onnx).
public struct ONNXSummary {
    /// One graph input or output: name, element type, dimensions (a number, or the name of a
    /// dynamic dimension).
    public struct Value {
        public enum Dimension: CustomStringConvertible {
            case size(Int64)
            case named(String)
            public var description: String {
                switch self { case .size(let n): "\(n)"; case .named(let s): s }
            }
        }
        public var name: String
        public var type: String
        public var shape: [Dimension]
    }

    public var irVersion: Int64
    /// (domain, version); the default domain as "ai.onnx".
    public var opsets: [(domain: String, version: Int64)]
    public var producer: String
    public var inputs: [Value]
    public var outputs: [Value]
    public var nodes: Int
    /// Nodes per operator type.
    public var ops: [String: Int]
    public var initializers: Int
    /// Values stored per element type (saturating at Int.max: the dims are the file's claim).
    public var initializerValues: [String: Int]
    public var metadata: [String: String]

    /// Parses the model file; throws when it is not a readable ONNX protobuf.
    public init(contentsOf url: URL) throws {
        try self.init(try Onnx_ModelProto(serializedBytes: try Data(contentsOf: url)))
    }

    public init(_ m: Onnx_ModelProto) {
        func typeName(_ t: Int32) -> String {
            Onnx_TensorProto.DataType(rawValue: Int(t)).map { "\($0)" } ?? "type \(t)"
        }
        func value(_ v: Onnx_ValueInfoProto) -> Value {
            let t = v.type.tensorType
            return Value(name: v.name, type: typeName(t.elemType),
                         shape: t.shape.dim.map { $0.dimParam.isEmpty ? .size($0.dimValue) : .named($0.dimParam) })
        }
        irVersion = m.irVersion
        opsets = m.opsetImport.map { ($0.domain.isEmpty ? "ai.onnx" : $0.domain, $0.version) }
        producer = m.producerName + " " + m.producerVersion
        inputs = m.graph.input.map(value)
        outputs = m.graph.output.map(value)
        nodes = m.graph.node.count
        ops = [:]
        for n in m.graph.node { ops[n.opType, default: 0] += 1 }
        initializers = m.graph.initializer.count
        initializerValues = [:]
        for t in m.graph.initializer {
            let key = typeName(t.dataType)
            initializerValues[key] = Self.saturatingSum(initializerValues[key] ?? 0, Self.saturatingProduct(t.dims))
        }
        metadata = Dictionary(m.metadataProps.map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a })
    }

    /// Π dims, Int.max on overflow, 0 for a negative dimension.
    static func saturatingProduct(_ dims: [Int64]) -> Int {
        if dims.contains(0) { return 0 }
        var p = 1
        for d in dims {
            guard d >= 0 else { return 0 }
            let (r, overflow) = p.multipliedReportingOverflow(by: Int(d))
            if overflow { return Int.max }
            p = r
        }
        return p
    }

    static func saturatingSum(_ a: Int, _ b: Int) -> Int {
        let (r, overflow) = a.addingReportingOverflow(b)
        return overflow ? Int.max : r
    }
}

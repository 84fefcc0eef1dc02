import Foundation
import SwiftProtobuf
import Tensor

// A small builder of ONNX graphs over the types generated from onnx.proto (onnx.pb.swift,
// Scripts/gen-onnx-proto): inputs and outputs with their shapes, initializers (the weights),
// nodes. Values are named by strings, as in ONNX; every `op` returns the names of its outputs.
// Exporters write model graphs with it (Sources/Distill/ONNXEncoders.swift, ONNXDecoder.swift);
// the common layers (linear, norms, GELU, convolutions) are in GraphOps.swift.

/// The opset the exporters write: 17 (LayerNormalization's first opset), IR version 8.
public enum ONNXVersion {
    public static let opset = 17
    public static let irVersion: Int64 = 8
}

/// One attribute of a node.
public struct Attribute {
    public let proto: Onnx_AttributeProto

    public static func int(_ name: String, _ v: Int) -> Attribute {
        var a = Onnx_AttributeProto(); a.name = name; a.type = .int; a.i = Int64(v); return Attribute(proto: a)
    }
    public static func ints(_ name: String, _ v: [Int]) -> Attribute {
        var a = Onnx_AttributeProto(); a.name = name; a.type = .ints; a.ints = v.map(Int64.init); return Attribute(proto: a)
    }
    public static func float(_ name: String, _ v: Float) -> Attribute {
        var a = Onnx_AttributeProto(); a.name = name; a.type = .float; a.f = v; return Attribute(proto: a)
    }
    public static func string(_ name: String, _ v: String) -> Attribute {
        var a = Onnx_AttributeProto(); a.name = name; a.type = .string; a.s = Data(v.utf8); return Attribute(proto: a)
    }
}

/// A dimension of a graph input or output: fixed, or named (dynamic, e.g. "num_points").
public enum Dimension: ExpressibleByIntegerLiteral, ExpressibleByStringLiteral {
    case fixed(Int)
    case named(String)
    public init(integerLiteral v: Int) { self = .fixed(v) }
    public init(stringLiteral s: String) { self = .named(s) }
}

public final class GraphBuilder {
    /// With `halfWeights`, `weight` stores float16 and casts it to float32 in the graph (one Cast
    /// node per weight), so the model is half the size and still computes in float32.
    public let halfWeights: Bool
    public private(set) var graph = Onnx_GraphProto()
    private var used: [String: Int] = [:]

    public init(name: String, halfWeights: Bool = false) {
        self.halfWeights = halfWeights
        graph.name = name
    }

    /// A name not used yet: `base`, else `base_2`, `base_3`, …
    public func unique(_ base: String) -> String {
        let n = used[base, default: 0] + 1
        used[base] = n
        return n == 1 ? base : "\(base)_\(n)"
    }

    private static func valueInfo(_ name: String, _ type: Onnx_TensorProto.DataType, _ shape: [Dimension]) -> Onnx_ValueInfoProto {
        var t = Onnx_TypeProto.Tensor()
        t.elemType = Int32(type.rawValue)
        t.shape.dim = shape.map { d in
            var dim = Onnx_TensorShapeProto.Dimension()
            switch d {
            case .fixed(let v): dim.dimValue = Int64(v)
            case .named(let s): dim.dimParam = s
            }
            return dim
        }
        var v = Onnx_ValueInfoProto()
        v.name = name
        v.type.tensorType = t
        return v
    }

    /// Declares a graph input; returns its name.
    @discardableResult
    public func input(_ name: String, _ shape: [Dimension], type: Onnx_TensorProto.DataType = .float) -> String {
        _ = unique(name)
        graph.input.append(Self.valueInfo(name, type, shape))
        return name
    }

    /// Declares `value` as the graph output `name` (through an Identity node when the names differ).
    public func output(_ value: String, as name: String, _ shape: [Dimension], type: Onnx_TensorProto.DataType = .float) {
        if value != name { op("Identity", [value], name: name) }
        graph.output.append(Self.valueInfo(name, type, shape))
    }

    private func addInitializer(_ name: String, _ shape: [Int], _ type: Onnx_TensorProto.DataType, _ raw: Data) {
        var t = Onnx_TensorProto()
        t.name = name
        t.dims = shape.map(Int64.init)
        t.dataType = Int32(type.rawValue)
        t.rawData = raw
        graph.initializer.append(t)
    }

    /// A float tensor the model learns or derives from learned values, named `name` (a checkpoint
    /// key). Stored float32, or float16 with `halfWeights` (then cast back to float32 in the graph).
    public func weight(_ name: String, _ values: [Float], shape: [Int]) -> String {
        precondition(values.count == shape.reduce(1, *), "GraphBuilder.weight \(name): \(values.count) values for shape \(shape)")
        let stored = unique(name)
        if !halfWeights {
            addInitializer(stored, shape, .float, values.withUnsafeBufferPointer { Data(buffer: $0) })
            return stored
        }
        let bits = values.map { Float16($0).bitPattern }
        addInitializer(stored + "_fp16", shape, .float16, bits.withUnsafeBufferPointer { Data(buffer: $0) })
        return op("Cast", [stored + "_fp16"], [.int("to", Onnx_TensorProto.DataType.float.rawValue)], name: stored)
    }

    public func weight(_ name: String, _ t: Tensor) -> String { weight(name, t.data, shape: t.shape) }

    /// A float32 constant (never stored as float16: scalars, shapes of arithmetic).
    public func constant(_ values: [Float], shape: [Int]? = nil, name: String = "const") -> String {
        let n = unique(name)
        addInitializer(n, shape ?? [values.count], .float, values.withUnsafeBufferPointer { Data(buffer: $0) })
        return n
    }

    /// A float32 scalar constant (shape []).
    public func scalar(_ v: Float, name: String = "scalar") -> String { constant([v], shape: [], name: name) }

    /// An int64 constant: shapes, axes, indices.
    public func int64s(_ values: [Int], shape: [Int]? = nil, name: String = "ints") -> String {
        let n = unique(name)
        let v = values.map(Int64.init)
        addInitializer(n, shape ?? [values.count], .int64, v.withUnsafeBufferPointer { Data(buffer: $0) })
        return n
    }

    /// Adds a node; returns its output names (`name`, or `<op>_<k>`, with `_1`, `_2`… for further outputs).
    @discardableResult
    public func op(_ type: String, _ inputs: [String], _ attributes: [Attribute] = [], outputs: Int, name: String? = nil) -> [String] {
        let base = unique(name ?? type)
        var node = Onnx_NodeProto()
        node.opType = type
        node.name = base
        node.input = inputs
        node.output = (0..<outputs).map { $0 == 0 ? base : "\(base)_\($0)" }
        node.attribute = attributes.map(\.proto)
        graph.node.append(node)
        return node.output
    }

    /// A node with one output; returns its name.
    @discardableResult
    public func op(_ type: String, _ inputs: [String], _ attributes: [Attribute] = [], name: String? = nil) -> String {
        op(type, inputs, attributes, outputs: 1, name: name)[0]
    }

    /// The model: this graph, opset `ONNXVersion.opset` of the default domain, IR version 8.
    public func model(producer: String, version: String, docString: String = "", metadata: [String: String] = [:]) -> Onnx_ModelProto {
        var m = Onnx_ModelProto()
        m.irVersion = ONNXVersion.irVersion
        var opset = Onnx_OperatorSetIdProto()
        opset.domain = ""
        opset.version = Int64(ONNXVersion.opset)
        m.opsetImport = [opset]
        m.producerName = producer
        m.producerVersion = version
        m.docString = docString
        m.graph = graph
        m.metadataProps = metadata.sorted { $0.key < $1.key }.map { k, v in
            var p = Onnx_StringStringEntryProto(); p.key = k; p.value = v; return p
        }
        return m
    }
}

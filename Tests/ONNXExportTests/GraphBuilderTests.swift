import Foundation
import ONNX
import Tensor
import XCTest

/// The graph builder writes what onnx.proto says: a model that parses back with the same
/// inputs, outputs, initializers (float32 and float16 bit patterns) and nodes.
final class GraphBuilderTests: XCTestCase {
    func testModelRoundTripsThroughProtobuf() throws {
        let g = GraphBuilder(name: "tiny")
        let x = g.input("x", [1, "n", 4])
        let w = Tensor(shape: [3, 4], data: (0..<12).map { Float($0) * 0.25 - 1 })
        let y = g.linear(x, weight: w, bias: Tensor(shape: [3], data: [1, 2, 3]), name: "fc")
        g.output(g.relu(y, name: "act"), as: "y", [1, "n", 3])
        let data = try g.model(producer: "test", version: "0").serializedData()
        let m = try Onnx_ModelProto(serializedBytes: data)

        XCTAssertEqual(m.irVersion, 8)
        XCTAssertEqual(m.opsetImport.map(\.version), [17])
        XCTAssertEqual(m.graph.input.map(\.name), ["x"])
        XCTAssertEqual(m.graph.input[0].type.tensorType.shape.dim.map { $0.dimParam.isEmpty ? "\($0.dimValue)" : $0.dimParam },
                       ["1", "n", "4"])
        XCTAssertEqual(m.graph.output.map(\.name), ["y"])
        XCTAssertEqual(m.graph.node.map(\.opType), ["MatMul", "Add", "Relu", "Identity"])
        // The weight is stored transposed, (in, out), as MatMul takes it.
        let wt = try XCTUnwrap(m.graph.initializer.first { $0.name == "fc.weight_transposed" })
        XCTAssertEqual(wt.dims, [4, 3])
        let stored = wt.rawData.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        XCTAssertEqual(stored[1], w.data[4])  // row 0, column 1 of Wᵀ = W[1, 0]
        XCTAssertEqual(stored[3], w.data[1])  // row 1, column 0 of Wᵀ = W[0, 1]
    }

    func testHalfWeightsAreFloat16WithACast() throws {
        let g = GraphBuilder(name: "half", halfWeights: true)
        let v = g.weight("w", [1.5, -2, 65504, 1e-3], shape: [4])
        let m = g.model(producer: "test", version: "0")
        let t = try XCTUnwrap(m.graph.initializer.first)
        XCTAssertEqual(t.name, "w_fp16")
        XCTAssertEqual(t.dataType, Int32(Onnx_TensorProto.DataType.float16.rawValue))
        let bits = t.rawData.withUnsafeBytes { Array($0.bindMemory(to: UInt16.self)) }
        XCTAssertEqual(bits.map { Float(Float16(bitPattern: $0)) }, [1.5, -2, 65504, Float(Float16(Float(1e-3)))])
        XCTAssertEqual(m.graph.node.map(\.opType), ["Cast"])
        XCTAssertEqual(m.graph.node[0].output, [v])
        XCTAssertEqual(m.graph.node[0].attribute[0].i, Int64(Onnx_TensorProto.DataType.float.rawValue))
    }

    /// `inspect`'s summary: interface, opsets, node and initializer counts; sizes claimed by a
    /// hostile file (overflowing or negative dims) saturate instead of trapping.
    func testSummaryCountsAndHostileSizes() throws {
        let g = GraphBuilder(name: "tiny")
        let x = g.input("x", [1, "n", 4])
        let y = g.linear(x, weight: Tensor(zeros: [3, 4]), bias: Tensor(zeros: [3]), name: "fc")
        g.output(g.relu(y, name: "act"), as: "y", [1, "n", 3])
        var m = g.model(producer: "test", version: "0")
        var s = ONNXSummary(m)
        XCTAssertEqual(s.inputs.map(\.name), ["x"])
        XCTAssertEqual(s.inputs[0].shape.map(\.description), ["1", "n", "4"])
        XCTAssertEqual(s.outputs[0].type, "float")
        XCTAssertEqual(s.ops, ["MatMul": 1, "Add": 1, "Relu": 1, "Identity": 1])
        XCTAssertEqual(s.nodes, 4)
        XCTAssertEqual(s.initializerValues["float"], 15)
        XCTAssertEqual(s.opsets.map(\.domain), ["ai.onnx"])

        var huge = Onnx_TensorProto()
        huge.name = "huge"; huge.dataType = Int32(Onnx_TensorProto.DataType.float.rawValue)
        huge.dims = [1 << 40, 1 << 40]
        var negative = huge
        negative.name = "negative"; negative.dims = [-1, 5]
        m.graph.initializer += [huge, negative]
        s = try ONNXSummary(Onnx_ModelProto(serializedBytes: try m.serializedData() as Data))
        XCTAssertEqual(s.initializers, 4)
        XCTAssertEqual(s.initializerValues["float"], Int.max)
    }
}

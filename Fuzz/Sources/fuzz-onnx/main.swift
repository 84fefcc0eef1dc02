import FuzzSupport
import ONNX

/// An ONNX model as `samdistill inspect` reads it: protobuf decoding, then the summary (types,
/// shapes, node and initializer counts: sizes are the file's claim).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    _ = try? ONNXSummary(contentsOf: FuzzInput.file(data, size, suffix: ".onnx"))
    return 0
}

runFuzzer(fuzzOne)

import CheckpointFormats
import FuzzSupport

/// A .safetensors file: header JSON, dtypes, shapes and offsets checked before any read.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    _ = try? SafeTensors.read(FuzzInput.file(data, size, suffix: ".safetensors"))
    return 0
}

runFuzzer(fuzzOne)

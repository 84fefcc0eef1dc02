import CheckpointFormats
import FuzzSupport

/// A .pt file: any bytes end in a checkpoint or a `TorchCheckpointError`, never a trap.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    _ = try? TorchCheckpoint(contentsOf: FuzzInput.file(data, size, suffix: ".pt"))
    return 0
}

runFuzzer(fuzzOne)

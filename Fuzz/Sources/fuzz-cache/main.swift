import Distill
import Foundation
import FuzzSupport

/// An HDF5 feature cache: its attributes, shapes and complete flags are checked on open, and a
/// complete row reads back or fails with the file named.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let reader = try? CacheReader(FuzzInput.file(data, size, suffix: ".h5")) else { return 0 }
    for row in reader.rows().prefix(2) { _ = try? reader.row(row); _ = try? reader.everythingMasks(row) }
    return 0
}

runFuzzer(fuzzOne)

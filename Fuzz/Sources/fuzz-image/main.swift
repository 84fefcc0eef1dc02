import FuzzSupport
import ImageCodecs

/// PNG / JPEG bytes through libpng / libjpeg: their errors come back as Swift errors (no longjmp
/// through Swift frames).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    _ = try? ImageIO.decode(FuzzInput.data(data, size), file: "fuzz")
    return 0
}

runFuzzer(fuzzOne)

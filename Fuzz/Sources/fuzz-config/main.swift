import Distill
import FuzzSupport

/// YAML run configs: any text decodes to a config or a `ConfigError`.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let text = String(data: FuzzInput.data(data, size), encoding: .utf8) else { return 0 }
    _ = try? RunConfig.parse(text)
    return 0
}

runFuzzer(fuzzOne)

import CFuzzer
import Foundation

/// Runs libFuzzer with the process's arguments, calling `harness` on every input.
public func runFuzzer(_ harness: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> Never {
    var argc = CommandLine.argc
    var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv, harness))
}

/// The readers under test take file paths (as users give them): each input is written to one
/// file per process in /dev/shm (tmpfs; the temporary directory where there is none) and read back.
public enum FuzzInput {
    static let directory: String = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()

    /// The input as a file named with `suffix` (the readers choose their format by extension).
    public static func file(_ data: UnsafePointer<UInt8>?, _ size: Int, suffix: String) -> URL {
        let url = URL(fileURLWithPath: directory).appendingPathComponent("samdistill-fuzz-\(getpid())\(suffix)")
        FileManager.default.createFile(atPath: url.path, contents: Self.data(data, size))
        return url
    }

    public static func data(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Data {
        guard let data, size > 0 else { return Data() }
        return Data(bytes: data, count: size)
    }
}

import CheckpointFormats
import Foundation
import Layers
import Tensor

/// Reference dumps written by `Scripts/refdump/*.py` (PyTorch autograd, computed in float64 from
/// float32 inputs and stored as float32) under `Tests/Fixtures/`.
///
/// Keys follow one convention: `x`… inputs, `y`… outputs, `dy`… upstream gradients, `dx`… input
/// gradients, `param.KEY` parameter values, `grad.KEY` parameter gradients, `buffer.KEY` buffers
/// after the forward (running statistics).
public struct Fixture {
    public let name: String
    public let tensors: [String: Tensor]
    public let metadata: [String: String]

    public static var directory: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Tests/Fixtures")
    }

    public init(_ name: String) throws {
        self.name = name
        let (t, m) = try SafeTensors.read(Fixture.directory.appendingPathComponent("\(name).safetensors"))
        self.tensors = t.mapValues(\.tensor)
        self.metadata = m
    }

    /// The repository root (Tests/Fixtures/../..).
    public static var repositoryRoot: URL {
        directory.deletingLastPathComponent().deletingLastPathComponent()
    }

    /// MobileSAM's real checkpoint, which `Scripts/test` fetches (Scripts/fetch-weights) before
    /// running the tests. Missing is a failure with instructions, never a silent skip.
    public static func mobileSAMCheckpoint() throws -> URL {
        let url = repositoryRoot.appendingPathComponent("weights/mobile_sam.pt")
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw FixtureError("\(url.path) is missing: run Scripts/fetch-weights (Scripts/test does)")
        }
        return url
    }

    /// The built `samdistill` executable: `$SAMDISTILL_BIN`, or beside the test bundle
    /// (.build/<configuration>/).
    public static func samdistillExecutable() throws -> URL {
        if let p = ProcessInfo.processInfo.environment["SAMDISTILL_BIN"] { return URL(fileURLWithPath: p) }
        var dir = URL(fileURLWithPath: Bundle.main.executablePath ?? CommandLine.arguments[0]).deletingLastPathComponent()
        for _ in 0..<4 {
            let u = dir.appendingPathComponent("samdistill")
            if FileManager.default.isExecutableFile(atPath: u.path) { return u }
            dir = dir.deletingLastPathComponent()
        }
        throw FixtureError("samdistill executable not found beside the test bundle: build it (swift build --build-tests) or set SAMDISTILL_BIN")
    }

    /// Runs `executable` with `arguments` (and `environment`, else this process's); returns
    /// (status, stdout, stderr).
    @discardableResult
    public static func runProcess(_ executable: URL, _ arguments: [String], environment: [String: String]? = nil) throws
        -> (status: Int32, out: String, err: String) {
        let p = Process()
        p.executableURL = executable
        p.arguments = arguments
        if let environment { p.environment = environment }
        let o = Pipe(), e = Pipe()
        p.standardOutput = o
        p.standardError = e
        try p.run()
        // Both pipes drained at once: a child that fills stderr (64 KiB: e.g. sanitizer reports)
        // while stdout is still open would otherwise block forever.
        final class Box: @unchecked Sendable { var data = Data() }
        let errBox = Box(), group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async { errBox.data = e.fileHandleForReading.readDataToEndOfFile(); group.leave() }
        let od = o.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        let ed = errBox.data
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: od, as: UTF8.self), String(decoding: ed, as: UTF8.self))
    }

    public subscript(_ key: String) -> Tensor {
        guard let t = tensors[key] else { fatalError("fixture \(name) has no tensor '\(key)' (it has \(tensors.count) tensors)") }
        return t
    }

    /// Integer metadata written by the generator (layer configuration).
    public func int(_ key: String) -> Int {
        guard let s = metadata[key], let v = Int(s) else { fatalError("fixture \(name): metadata '\(key)' missing or not an integer") }
        return v
    }

    /// The `param.` and `buffer.` entries, keyed without their prefix, ready for `Module.load`.
    public func stateDict(prefix: String = "") -> [String: Tensor] {
        var d: [String: Tensor] = [:]
        for (k, v) in tensors {
            for p in ["param.", "buffer.initial."] where k.hasPrefix(p + prefix) {
                d[String(k.dropFirst(p.count + prefix.count))] = v
            }
        }
        return d
    }
}

/// Normalised maximum error: max |a − e| / max |e| (0 when both are zero).
public func relativeError(_ actual: Tensor, _ expected: Tensor) -> Double {
    precondition(actual.shape == expected.shape, "relativeError: shapes \(actual.shape) vs \(expected.shape)")
    var num: Double = 0, den: Double = 0
    for i in 0..<actual.count {
        num = max(num, Double(abs(actual.data[i] - expected.data[i])))
        den = max(den, Double(abs(expected.data[i])))
    }
    return den == 0 ? num : num / den
}

public struct FixtureError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

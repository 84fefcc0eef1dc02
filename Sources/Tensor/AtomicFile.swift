import Foundation

/// A file that could not be written, named by its final path (never the temporary one), with
/// the system's reason ("No space left on device").
public struct FileWriteError: Error, CustomStringConvertible, Equatable {
    public let path: String
    public let reason: String
    public init(path: String, reason: String) {
        self.path = path
        self.reason = reason
    }
    public var description: String { "\(path): cannot write the file (\(reason)); nothing was written under that name" }
}

/// Writes to `NAME.tmp-PID` beside the target, then renames over it: a crash or a full disk
/// never leaves a half-written file under the final name, and a failed write removes the
/// temporary file and throws `FileWriteError` naming the target.
public enum AtomicFile {
    public static func write(_ data: Data, to url: URL) throws {
        let tmp = url.deletingLastPathComponent()
            .appendingPathComponent(".\(url.lastPathComponent).tmp-\(ProcessInfo.processInfo.processIdentifier)")
        do {
            try data.write(to: tmp)
        } catch {
            try? FileManager.default.removeItem(at: tmp)
            throw FileWriteError(path: url.path, reason: reason(error))
        }
        if rename(tmp.path, url.path) != 0 {
            let err = String(cString: strerror(errno))
            try? FileManager.default.removeItem(at: tmp)
            throw FileWriteError(path: url.path, reason: "rename from \(tmp.lastPathComponent) failed: \(err)")
        }
    }

    /// The POSIX reason under a Foundation error ("No space left on device"), else its description.
    static func reason(_ error: Error) -> String {
        let ns = error as NSError
        if let u = ns.userInfo[NSUnderlyingErrorKey] as? NSError, u.domain == NSPOSIXErrorDomain {
            return String(cString: strerror(Int32(u.code)))
        }
        if ns.domain == NSPOSIXErrorDomain { return String(cString: strerror(Int32(ns.code))) }
        // Foundation on Linux reports ENOSPC / EDQUOT as CocoaError.fileWriteOutOfSpace, no POSIX error under it
        if ns.domain == NSCocoaErrorDomain && ns.code == CocoaError.fileWriteOutOfSpace.rawValue {
            return String(cString: strerror(ENOSPC))
        }
        return ns.localizedDescription
    }
}

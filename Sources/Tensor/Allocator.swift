#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Process-wide malloc settings for a program whose working set is a few large, short-lived
/// buffers (activations of 16–64 MB, allocated and freed every layer).
///
/// glibc serves every allocation above its mmap threshold with a fresh `mmap` and returns it with
/// `munmap` on free, so each activation costs a page fault and a kernel zero-fill per page, every
/// layer, every call. With mmap'd chunks disabled and trimming off, freed buffers stay in the heap
/// and are reused at once; the process keeps its peak heap until it exits. (Large buffers
/// allocated on other threads live in glibc's per-thread arenas, whose heaps are at most 64 MB:
/// bigger ones are still mmap'd there.) Huge pages for the heap are an environment setting that
/// `Runtime.prepareEnvironment` makes before its re-exec. Measurements:
/// Experiments/performance/results.md (sessions 2–4).
///
/// Applied once by `Runtime.configure`; `SAMDISTILL_GLIBC_MMAP=1` leaves glibc's defaults alone.
public enum Allocator {
    /// Applies the settings once; true when they are in effect (false: not glibc, or disabled).
    @discardableResult
    public static func apply() -> Bool { tuned }

    /// True once the settings were applied (false: not glibc, or disabled by the environment).
    static let tuned: Bool = {
        #if canImport(Glibc)
        if let v = getenv("SAMDISTILL_GLIBC_MMAP"), String(cString: v) == "1" { return false }
        // mallopt is declared in <malloc.h>, which the Glibc module does not export: look it up.
        typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") else { return false }
        let mallopt = unsafeBitCast(symbol, to: Mallopt.self)
        let M_TRIM_THRESHOLD: Int32 = -1, M_MMAP_MAX: Int32 = -4  // <malloc.h>
        // No mmap-backed chunks: large buffers come from the heap and are reused after free.
        _ = mallopt(M_MMAP_MAX, 0)
        // Never return the free heap top to the kernel (-1 becomes SIZE_MAX in glibc's size_t
        // threshold): a training step frees its whole working set (GBs) at the end and the next
        // step needs it again; trimming it made every step re-fault and re-zero every page.
        _ = mallopt(M_TRIM_THRESHOLD, -1)
        return true
        #else
        return false
        #endif
    }()
}

#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Process-wide malloc settings for a program whose working set is a few large, short-lived
/// buffers (activations of 16–64 MB, allocated and freed every layer).
///
/// glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh `mmap` and
/// returns it with `munmap` on free, so each such activation costs a page fault and a kernel
/// zero-fill per 4 KiB page, every layer, every call: about 20% of the encoder's CPU time (perf:
/// `clear_page_erms`, `exc_page_fault`, `unmap_page_range`). With mmap disabled and trimming
/// off, freed buffers stay in the heap and are reused at once. Peak RSS grows slightly (heap
/// fragmentation; `bench encoder` 315 → 340 MiB), and the process keeps its peak heap until it
/// exits. (A 2 GiB trim threshold was not enough: a TinyViT-5M training step frees ~4.5 GB at its
/// end, which glibc gave back and the next step faulted in again: 11 → 6.3 s per step.)
///
/// Large buffers allocated on other threads (GCD workers, the trainer's prefetch thread) live in
/// glibc's per-thread arenas, whose heaps are at most 64 MB: bigger ones are still mmap'd there.
///
/// Huge pages: Debian's kernels give transparent huge pages only to memory marked with
/// `madvise(MADV_HUGEPAGE)`, and glibc marks its heap only when the process starts with
/// `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc ≥ 2.35), which `Runtime.prepareEnvironment`
/// sets before its re-exec. Measured on the 2-core machine, A/B alternated, `bench train`
/// (TinyViT-5M, batch 2), same peak RSS: 1 thread, CPU time 12.35 / 13.00 → 12.07 / 12.62 s
/// (~3%); 2 threads within that machine's noise. Small, so it rides on the one re-exec.
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

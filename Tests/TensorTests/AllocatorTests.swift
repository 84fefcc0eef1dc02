import Foundation
import Tensor
import XCTest

/// `Allocator` and `Runtime.configure` (glibc malloc settings, OpenBLAS spin timeout).
final class AllocatorTests: XCTestCase {
    nonisolated(unsafe) static var escaped: UnsafeMutableRawPointer?

    /// On glibc `Runtime.configure` applies the settings (unless SAMDISTILL_GLIBC_MMAP=1), and
    /// large buffers still allocate, fill and free normally afterwards (heap, not mmap).
    func testTunedByConfigureAndLargeBuffersWork() {
        Runtime.configure()
        #if canImport(Glibc)
        let disabled = ProcessInfo.processInfo.environment["SAMDISTILL_GLIBC_MMAP"] == "1"
        XCTAssertEqual(Allocator.apply(), !disabled)
        #endif
        for round in 0..<3 {
            var big = Tensor.empty([40 << 20 / 4])  // 40 MB: above glibc's largest mmap threshold
            big.data.withUnsafeMutableBufferPointer { $0.update(repeating: Float(round)) }
            XCTAssertEqual(big.data[big.count - 1], Float(round))
            XCTAssertEqual(big.data[0], Float(round))
        }
    }

    /// A freed buffer bigger than 2 GiB at the top of the heap stays with the process (the trim
    /// threshold is SIZE_MAX, not 2 GiB): a training step frees GBs at its end and needs them
    /// again at once. The buffer is never touched, so it costs address space, not memory.
    func testLargeFreedHeapTopIsNotReturnedToTheKernel() throws {
        #if canImport(Glibc)
        if ProcessInfo.processInfo.environment["SAMDISTILL_GLIBC_MMAP"] == "1" {
            throw XCTSkip("SAMDISTILL_GLIBC_MMAP=1 leaves glibc's defaults alone")
        }
        // Under Scripts/sanitize the sanitizer's own allocator replaces glibc's malloc.
        for runtime in ["__asan_init", "__tsan_init"] where dlsym(UnsafeMutableRawPointer(bitPattern: 0), runtime) != nil {
            throw XCTSkip("\(runtime): a sanitizer's allocator, not glibc's, serves malloc in this process")
        }
        Runtime.configure()
        XCTAssertTrue(Allocator.apply())
        let size = 5 << 29  // 2.5 GiB
        guard let p = malloc(size) else { return XCTFail("malloc of 2.5 GiB failed") }
        Self.escaped = p  // else the optimiser drops the unused malloc/free pair
        let grown = UInt(bitPattern: sbrk(0))
        // An mmap'd block would lie far above the break (near the libraries), a heap block below it.
        XCTAssertLessThanOrEqual(UInt(bitPattern: p) + UInt(size), grown, "the buffer should come from the heap (brk), not mmap")
        free(p)
        Self.escaped = nil
        let after = UInt(bitPattern: sbrk(0))
        XCTAssertEqual(after, grown, "free gave \((grown - after) >> 20) MiB of heap top back to the kernel")
        #endif
    }

    /// OpenBLAS's idle threads sleep almost at once (spin timeout 2^4 cycles) unless the user set
    /// OPENBLAS_THREAD_TIMEOUT, and threaded GEMMs still agree with the reference afterwards.
    func testBLASSpinTimeoutIsShortAndGemmStillCorrect() {
        Runtime.configure()
        if let user = ProcessInfo.processInfo.environment["OPENBLAS_THREAD_TIMEOUT"], let v = Int(user) {
            XCTAssertEqual(BLASThreads.currentSpinTimeout, v)
        } else {
            XCTAssertEqual(BLASThreads.currentSpinTimeout, Runtime.spinTimeout)
        }
        let saved = BLASThreads.current
        BLASThreads.set(2)
        defer { BLASThreads.set(saved) }
        var rng = SeededRandom(seed: 3)
        let m = 300, n = 280, k = 260  // large enough for OpenBLAS to use its threads
        let a = Tensor.randomNormal([m, k], rng: &rng), b = Tensor.randomNormal([k, n], rng: &rng)
        var c = Tensor(zeros: [m, n]), r = Tensor(zeros: [m, n])
        a.data.withUnsafeBufferPointer { pa in b.data.withUnsafeBufferPointer { pb in
            c.data.withUnsafeMutableBufferPointer { pc in
                gemm(m: m, n: n, k: k, a: pa.baseAddress!, lda: k, b: pb.baseAddress!, ldb: n, c: pc.baseAddress!, ldc: n)
            }
            r.data.withUnsafeMutableBufferPointer { pr in
                gemmReference(m: m, n: n, k: k, a: pa.baseAddress!, lda: k, b: pb.baseAddress!, ldb: n, c: pr.baseAddress!, ldc: n)
            }
        } }
        var worst: Float = 0
        for i in 0..<c.count { worst = max(worst, abs(c.data[i] - r.data[i])) }
        XCTAssertLessThan(worst, 1e-3, "k = 260 sums of N(0,1) products: float32 rounding stays far below 1e-3")
    }
}

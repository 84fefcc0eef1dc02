import CBLAS
#if canImport(Glibc)
import Glibc
#endif

/// The one wrapper through which every matrix product goes: row-major
/// `C = alpha · op(A) · op(B) + beta · C`, op(A): (m, k), op(B): (k, n), C: (m, n).
/// `lda`, `ldb`, `ldc` are the row strides of A, B, C as stored (before transposition).
@inline(__always)
public func gemm(transA: Bool = false, transB: Bool = false,
                 m: Int, n: Int, k: Int,
                 alpha: Float = 1,
                 a: UnsafePointer<Float>, lda: Int,
                 b: UnsafePointer<Float>, ldb: Int,
                 beta: Float = 0,
                 c: UnsafeMutablePointer<Float>, ldc: Int) {
    if m == 0 || n == 0 { return }
    if k == 0 {
        // BLAS leaves C untouched only for beta == 1; follow the math (C = beta · C).
        if beta != 1 { for i in 0..<m { for j in 0..<n { c[i * ldc + j] *= beta } } }
        return
    }
    cblas_sgemm(CblasRowMajor,
                transA ? CblasTrans : CblasNoTrans,
                transB ? CblasTrans : CblasNoTrans,
                Int32(m), Int32(n), Int32(k),
                alpha, a, Int32(lda), b, Int32(ldb),
                beta, c, Int32(ldc))
}

/// Naive reference for `gemm` (tests compare the two).
public func gemmReference(transA: Bool = false, transB: Bool = false,
                          m: Int, n: Int, k: Int, alpha: Float = 1,
                          a: UnsafePointer<Float>, lda: Int,
                          b: UnsafePointer<Float>, ldb: Int,
                          beta: Float = 0,
                          c: UnsafeMutablePointer<Float>, ldc: Int) {
    for i in 0..<m {
        for j in 0..<n {
            var s: Double = 0
            for p in 0..<k {
                let av = transA ? a[p * lda + i] : a[i * lda + p]
                let bv = transB ? b[j * ldb + p] : b[p * ldb + j]
                s += Double(av) * Double(bv)
            }
            c[i * ldc + j] = alpha * Float(s) + (beta == 0 ? 0 : beta * c[i * ldc + j])
        }
    }
}

/// BLAS thread control (OpenBLAS). Our own parallel loops and OpenBLAS's threads never run
/// at the same time: kernels either call `gemm` or split work themselves. The process-wide count
/// is set by `Runtime.configure(threads:)`; kernels change it only around serial-BLAS sections.
public enum BLASThreads {
    public static func set(_ n: Int) { openblas_set_num_threads(Int32(n)) }
    public static var current: Int { Int(openblas_get_num_threads()) }

    /// The spin timeout OpenBLAS uses now (log2 of cycles; `Runtime.spinTimeout`).
    public static var currentSpinTimeout: Int { Int(openblas_thread_timeout()) }
}

/// Runs `body(range)` over `0..<n` split into contiguous chunks on the toolkit's workers with
/// OpenBLAS single-threaded meanwhile: each worker's `gemm` calls run on that worker's thread, so
/// the cores are never oversubscribed. For many small independent GEMMs (attention windows,
/// conv blocks with an in-cache epilogue). OpenBLAS's own thread count is restored afterwards.
/// (Concurrent single-threaded `cblas_sgemm` calls are supported by OpenBLAS's threaded builds,
/// whose buffer allocator is locked; `BLASTests` checks the results against serial calls.)
public func parallelChunksSerialBLAS(_ n: Int, _ body: (Range<Int>) -> Void) {
    let workers = Swift.min(Threads.count, n)
    if workers <= 1 {
        if n > 0 { body(0..<n) }
        return
    }
    let saved = BLASThreads.current
    if saved != 1 { BLASThreads.set(1) }
    defer { if saved != 1 { BLASThreads.set(saved) } }
    parallelChunks(n, minimumWork: 0, body)
}

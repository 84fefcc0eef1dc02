import Dispatch
import Foundation

/// Worker count for the toolkit's own parallel loops, set by `Runtime.configure(threads:)`.
public enum Threads {
    nonisolated(unsafe) public static var count: Int = defaultCount

    /// `SAMDISTILL_THREADS` or the core count.
    public static var defaultCount: Int {
        if let s = ProcessInfo.processInfo.environment["SAMDISTILL_THREADS"], let n = Int(s), n > 0 { return n }
        return ProcessInfo.processInfo.activeProcessorCount
    }
}

/// Runs `body(range)` over `0..<n` split into contiguous chunks, in parallel when the work
/// (`n · costPerItem`) is large enough to pay for the threads, serially otherwise.
@inline(__always)
public func parallelChunks(_ n: Int, costPerItem: Int = 1, minimumWork: Int = 1 << 15,
                           _ body: (Range<Int>) -> Void) {
    let workers = Threads.count
    if n <= 1 || workers <= 1 || n * costPerItem < minimumWork {
        if n > 0 { body(0..<n) }
        return
    }
    let chunks = Swift.min(n, workers)
    withoutActuallyEscaping(body) { body in
        DispatchQueue.concurrentPerform(iterations: chunks) { c in
            let lo = n * c / chunks, hi = n * (c + 1) / chunks
            if lo < hi { body(lo..<hi) }
        }
    }
}

/// Runs `body(i)` for each `i` in `0..<n`, spreading items across workers.
@inline(__always)
public func parallelFor(_ n: Int, costPerItem: Int = 1, minimumWork: Int = 1 << 15,
                        _ body: (Int) -> Void) {
    parallelChunks(n, costPerItem: costPerItem, minimumWork: minimumWork) { r in
        for i in r { body(i) }
    }
}

/// Elements per block of `blockedSum`.
public let sumBlock = 1 << 14

/// Σ over `0..<n` of `body(range)`, evaluated over fixed blocks of `sumBlock` elements (in
/// parallel when large) and added in block order: the same result for any thread count.
@inline(__always)
public func blockedSum(_ n: Int, costPerItem: Int = 1, _ body: (Range<Int>) -> Double) -> Double {
    let blocks = (n + sumBlock - 1) / sumBlock
    if blocks <= 1 { return n > 0 ? body(0..<n) : 0 }
    var partial = [Double](repeating: 0, count: blocks)
    partial.withUnsafeMutableBufferPointer { pb in
        let pp = pb.baseAddress!
        parallelFor(blocks, costPerItem: sumBlock * costPerItem) { b in
            pp[b] = body((b * sumBlock)..<Swift.min(n, (b + 1) * sumBlock))
        }
    }
    return partial.reduce(0, +)
}

import Foundation
import Tensor
import XCTest

/// `Allocator` (glibc malloc settings applied by the first tensor allocation).
final class AllocatorTests: XCTestCase {
    /// On glibc the settings are applied once a tensor exists (unless SAMDISTILL_GLIBC_MMAP=1),
    /// and large buffers still allocate, fill and free normally afterwards (heap, not mmap).
    func testTunedByFirstTensorAndLargeBuffersWork() {
        let t = Tensor(zeros: [4])
        XCTAssertEqual(t.count, 4)
        #if canImport(Glibc)
        let disabled = ProcessInfo.processInfo.environment["SAMDISTILL_GLIBC_MMAP"] == "1"
        XCTAssertEqual(Allocator.tuned, !disabled)
        #endif
        for round in 0..<3 {
            var big = Tensor.empty([40 << 20 / 4])  // 40 MB: above glibc's largest mmap threshold
            big.data.withUnsafeMutableBufferPointer { $0.update(repeating: Float(round)) }
            XCTAssertEqual(big.data[big.count - 1], Float(round))
            XCTAssertEqual(big.data[0], Float(round))
        }
    }
}

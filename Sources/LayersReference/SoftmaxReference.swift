import Foundation
import Layers
import Tensor

/// Plain scalar reference of `softmaxRows` (libm `expf`), in place.
public func softmaxRowsReference(_ x: UnsafeMutablePointer<Float>, rows: Int, n: Int) {
    for r in 0..<rows {
        let row = x + r * n
        var m = -Float.infinity
        for j in 0..<n { m = Swift.max(m, row[j]) }
        var s: Float = 0
        for j in 0..<n { let e = expf(row[j] - m); row[j] = e; s += e }
        let inv = 1 / s
        for j in 0..<n { row[j] *= inv }
    }
}

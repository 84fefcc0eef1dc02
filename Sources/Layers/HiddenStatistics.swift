import Tensor

/// Activation statistics of a layer's hidden units (an MLP's hidden features, an MBConv's hidden
/// channels) over calibration inputs: Σ a_j, Σ a_j² and the number of values per unit. Width
/// pruning ranks units by √E[a_j²] and folds E[a_j] of the dropped ones into what follows.
public struct HiddenStatistics: Sendable {
    public var sum: [Double], squares: [Double], count = 0

    public init(units: Int) { sum = Array(repeating: 0, count: units); squares = sum }

    /// E[a_j] and E[a_j²] of each unit.
    public var mean: [Double] { sum.map { $0 / Double(max(count, 1)) } }
    public var meanSquare: [Double] { squares.map { $0 / Double(max(count, 1)) } }

    /// a: (..., units), the unit last (tokens).
    mutating func addTokens(_ a: Tensor) {
        let H = sum.count, n = a.count / H
        precondition(a.shape.last == H, "HiddenStatistics: \(H) units, got \(a.shape)")
        for t in 0..<n {
            for j in 0..<H { let v = Double(a.data[t * H + j]); sum[j] += v; squares[j] += v * v }
        }
        count += n
    }

    /// a: (B, units, H, W), the unit second (feature maps).
    mutating func addChannels(_ a: Tensor) {
        let C = sum.count
        precondition(a.rank == 4 && a.shape[1] == C, "HiddenStatistics: \(C) channels, got \(a.shape)")
        let plane = a.shape[2] * a.shape[3]
        for b in 0..<a.shape[0] {
            for c in 0..<C {
                var s = 0.0, q = 0.0
                let base = (b * C + c) * plane
                for i in 0..<plane { let v = Double(a.data[base + i]); s += v; q += v * v }
                sum[c] += s; squares[c] += q
            }
        }
        count += a.shape[0] * plane
    }
}

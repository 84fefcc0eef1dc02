import Layers
import Tensor

/// y = x Wᵀ + b with plain loops in Double (for the naive references).
public func linearReference(_ x: Tensor, _ l: Linear) -> [Double] {
    let I = l.inputFeatures, O = l.outputFeatures, rows = x.count / I
    var y = [Double](repeating: 0, count: rows * O)
    for r in 0..<rows { for o in 0..<O {
        var s = Double(l.bias?.value.data[o] ?? 0)
        for i in 0..<I { s += Double(x.data[r * I + i]) * Double(l.weight.value.data[o * I + i]) }
        y[r * O + o] = s
    } }
    return y
}

import Foundation
import Layers
import Tensor

/// The naive reference of `TinyViTAttention` (plain loops in Double), which the tests compare
/// the fast forward and backward with.
extension TinyViTAttention {

    /// Plain-loop forward in Double from the current parameter values: x: (B', N, C) -> y: (B', N, C).
    public func forwardReference(_ x: Tensor) -> Tensor {
        checkInput(x)
        let r = referencePass(x, dy: nil)
        return Tensor(shape: x.shape, data: r.y.map(Float.init))
    }

    /// Plain-loop forward and backward in Double (recomputes the forward): returns dx and the
    /// gradient of every trainable parameter by checkpoint key. Touches no parameter gradient.
    public func backwardReference(_ x: Tensor, _ dy: Tensor) -> (dx: Tensor, gradients: [String: Tensor]) {
        checkInput(x)
        precondition(dy.shape == x.shape, "TinyViTAttention.backwardReference: dy \(dy.shape) vs x \(x.shape)")
        let r = referencePass(x, dy: dy)
        var grads: [String: Tensor] = [:]
        for (k, p) in namedParameters() { grads[k] = Tensor(shape: p.shape, data: r.grads[k]!.map(Float.init)) }
        return (Tensor(shape: x.shape, data: r.dx.map(Float.init)), grads)
    }

    func referencePass(_ x: Tensor, dy: Tensor?) -> (y: [Double], dx: [Double], grads: [String: [Double]]) {
        let Bw = x.shape[0], N = tokens, C = dim, H = heads, kd = keyDim, d = valueDim
        let hs = headStride, L = H * hs, dh = H * d, R = Bw * N, O = offsetCount
        let sc = 1 / Double(kd).squareRoot()
        func dbl(_ p: Parameter) -> [Double] { p.value.data.map(Double.init) }
        let lnW = dbl(norm.weight), lnB = dbl(norm.bias), eps = Double(norm.eps)
        let wq = dbl(qkv.weight), bq = dbl(qkv.bias!), wp = dbl(proj.weight), bp = dbl(proj.bias!)
        let table = dbl(attentionBiases)
        let xs = x.data.map(Double.init)
        // LayerNorm: xh (R, C), rstd (R), xn (R, C)
        var xh = [Double](repeating: 0, count: R * C), rstd = [Double](repeating: 0, count: R)
        var xn = [Double](repeating: 0, count: R * C)
        for r in 0..<R {
            var m = 0.0
            for c in 0..<C { m += xs[r * C + c] }
            m /= Double(C)
            var v = 0.0
            for c in 0..<C { v += (xs[r * C + c] - m) * (xs[r * C + c] - m) }
            let s = 1 / (v / Double(C) + eps).squareRoot()
            rstd[r] = s
            for c in 0..<C { xh[r * C + c] = (xs[r * C + c] - m) * s; xn[r * C + c] = xh[r * C + c] * lnW[c] + lnB[c] }
        }
        // qkv: t (R, L)
        var t = [Double](repeating: 0, count: R * L)
        for r in 0..<R { for o in 0..<L {
            var s = bq[o]
            for c in 0..<C { s += xn[r * C + c] * wq[o * C + c] }
            t[r * L + o] = s
        } }
        func q(_ b: Int, _ h: Int, _ i: Int, _ e: Int) -> Int { (b * N + i) * L + h * hs + e }
        func k(_ b: Int, _ h: Int, _ i: Int, _ e: Int) -> Int { (b * N + i) * L + h * hs + kd + e }
        func v(_ b: Int, _ h: Int, _ i: Int, _ e: Int) -> Int { (b * N + i) * L + h * hs + 2 * kd + e }
        // probabilities P (B', H, N, N); heads output o (R, dh)
        var P = [Double](repeating: 0, count: Bw * H * N * N)
        var ov = [Double](repeating: 0, count: R * dh)
        for b in 0..<Bw { for h in 0..<H { for i in 0..<N {
            var row = [Double](repeating: 0, count: N)
            for j in 0..<N {
                var s = 0.0
                for e in 0..<kd { s += t[q(b, h, i, e)] * t[k(b, h, j, e)] }
                row[j] = s * sc + table[h * O + Int(biasIndices[i * N + j])]
            }
            let m = row.max()!
            var z = 0.0
            for j in 0..<N { row[j] = exp(row[j] - m); z += row[j] }
            for j in 0..<N { P[((b * H + h) * N + i) * N + j] = row[j] / z }
            for e in 0..<d {
                var s = 0.0
                for j in 0..<N { s += P[((b * H + h) * N + i) * N + j] * t[v(b, h, j, e)] }
                ov[(b * N + i) * dh + h * d + e] = s
            }
        } } }
        // proj: y (R, C)
        var y = [Double](repeating: 0, count: R * C)
        for r in 0..<R { for c in 0..<C {
            var s = bp[c]
            for e in 0..<dh { s += ov[r * dh + e] * wp[c * dh + e] }
            y[r * C + c] = s
        } }
        guard let dy else { return (y, [], [:]) }
        let g = dy.data.map(Double.init)
        var gwp = [Double](repeating: 0, count: C * dh), gbp = [Double](repeating: 0, count: C)
        var gov = [Double](repeating: 0, count: R * dh)
        for r in 0..<R { for c in 0..<C {
            gbp[c] += g[r * C + c]
            for e in 0..<dh {
                gwp[c * dh + e] += g[r * C + c] * ov[r * dh + e]
                gov[r * dh + e] += g[r * C + c] * wp[c * dh + e]
            }
        } }
        var gt = [Double](repeating: 0, count: R * L)
        var gtable = [Double](repeating: 0, count: H * O)
        for b in 0..<Bw { for h in 0..<H { for i in 0..<N {
            let pr = ((b * H + h) * N + i) * N
            // dP_ij = Σ_e dO_ie v_je; dv_je += P_ij dO_ie
            var dP = [Double](repeating: 0, count: N)
            for j in 0..<N { for e in 0..<d {
                let go = gov[(b * N + i) * dh + h * d + e]
                dP[j] += go * t[v(b, h, j, e)]
                gt[v(b, h, j, e)] += P[pr + j] * go
            } }
            var dot = 0.0
            for j in 0..<N { dot += P[pr + j] * dP[j] }
            for j in 0..<N {
                let dS = P[pr + j] * (dP[j] - dot)
                gtable[h * O + Int(biasIndices[i * N + j])] += dS
                for e in 0..<kd {
                    gt[q(b, h, i, e)] += dS * sc * t[k(b, h, j, e)]
                    gt[k(b, h, j, e)] += dS * sc * t[q(b, h, i, e)]
                }
            }
        } } }
        var gwq = [Double](repeating: 0, count: L * C), gbq = [Double](repeating: 0, count: L)
        var gxn = [Double](repeating: 0, count: R * C)
        for r in 0..<R { for o in 0..<L {
            let go = gt[r * L + o]
            gbq[o] += go
            for c in 0..<C { gwq[o * C + c] += go * xn[r * C + c]; gxn[r * C + c] += go * wq[o * C + c] }
        } }
        var glnW = [Double](repeating: 0, count: C), glnB = [Double](repeating: 0, count: C)
        var dx = [Double](repeating: 0, count: R * C)
        for r in 0..<R {
            var m1 = 0.0, m2 = 0.0
            for c in 0..<C {
                let gh = gxn[r * C + c] * lnW[c]
                m1 += gh; m2 += gh * xh[r * C + c]
                glnW[c] += gxn[r * C + c] * xh[r * C + c]; glnB[c] += gxn[r * C + c]
            }
            m1 /= Double(C); m2 /= Double(C)
            for c in 0..<C { dx[r * C + c] = rstd[r] * (gxn[r * C + c] * lnW[c] - m1 - xh[r * C + c] * m2) }
        }
        let grads: [String: [Double]] = [
            "attention_biases": gtable, "norm.weight": glnW, "norm.bias": glnB,
            "qkv.weight": gwq, "qkv.bias": gbq, "proj.weight": gwp, "proj.bias": gbp,
        ]
        return (y, dx, grads)
    }
}

import Foundation

/// A hand-written SVG of the training loss (and validation MSE points) against the step; the
/// y axis is logarithmic when the values span more than a factor of 20.
public enum LossPlot {
    public static func svg(train: [(Int, Double)], eval: [(Int, Double)], totalSteps: Int) -> String {
        let width = 720.0, height = 400.0, left = 70.0, right = 20.0, top = 30.0, bottom = 40.0
        let values = (train.map(\.1) + eval.map(\.1)).filter { $0.isFinite && $0 > 0 }
        var lo = values.min() ?? 1e-3, hi = values.max() ?? 1
        if hi <= lo { hi = lo * 2 }
        let logScale = hi / lo > 20
        func fy(_ v: Double) -> Double {
            let f = logScale ? (log10(v) - log10(lo)) / (log10(hi) - log10(lo)) : (v - lo) / (hi - lo)
            return top + (1 - f) * (height - top - bottom)
        }
        let maxStep = Double(max(totalSteps, train.last?.0 ?? 1, 1))
        func fx(_ s: Int) -> Double { left + Double(s) / maxStep * (width - left - right) }
        if !logScale { lo = min(lo, 0) }
        var out = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" font-family="sans-serif" font-size="11">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(left)" y="18" font-size="13">training loss\(eval.isEmpty ? "" : " (blue) and validation MSE (orange)")\(logScale ? ", log scale" : "")</text>
        <line x1="\(left)" y1="\(height - bottom)" x2="\(width - right)" y2="\(height - bottom)" stroke="black"/>
        <line x1="\(left)" y1="\(top)" x2="\(left)" y2="\(height - bottom)" stroke="black"/>

        """
        for i in 0...4 {
            let v = logScale ? pow(10, log10(lo) + Double(i) / 4 * (log10(hi) - log10(lo))) : lo + Double(i) / 4 * (hi - lo)
            let y = fy(max(v, 1e-30))
            out += "<text x=\"\(left - 6)\" y=\"\(fmt(y + 4))\" text-anchor=\"end\">\(String(format: "%.3g", v))</text>\n"
            out += "<line x1=\"\(left)\" y1=\"\(fmt(y))\" x2=\"\(width - right)\" y2=\"\(fmt(y))\" stroke=\"#ddd\"/>\n"
        }
        for i in 0...4 {
            let s = Int(Double(i) / 4 * maxStep)
            out += "<text x=\"\(fmt(fx(s)))\" y=\"\(height - bottom + 16)\" text-anchor=\"middle\">\(s)</text>\n"
        }
        let pts = train.filter { $0.1.isFinite && $0.1 > 0 }.map { "\(fmt(fx($0.0))),\(fmt(fy($0.1)))" }
        if !pts.isEmpty {
            out += "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.2\" points=\"\(pts.joined(separator: " "))\"/>\n"
        }
        for (s, v) in eval where v.isFinite && v > 0 {
            out += "<circle cx=\"\(fmt(fx(s)))\" cy=\"\(fmt(fy(v)))\" r=\"3\" fill=\"#ff7f0e\"/>\n"
        }
        out += "<text x=\"\(width / 2)\" y=\"\(height - 6)\" text-anchor=\"middle\">step</text>\n</svg>\n"
        return out
    }

    static func fmt(_ v: Double) -> String { String(format: "%.1f", v) }
}

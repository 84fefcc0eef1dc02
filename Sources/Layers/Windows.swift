import Tensor

/// Window partitioning for windowed attention (TinyViT and SAM ViT): a (B, H, W, C) map is
/// padded at the bottom/right to multiples of the window size (zeros, or a given row: TinyViT's
/// qkv of a zero token) and cut into (B · nH · nW, ws·ws, C) windows in row-major window order.
///
/// The two functions are each other's adjoint, so each one's backward is the other:
/// d(partition)/dx applied to g is `windowReverse(g)` (the padding's gradients are dropped, or
/// summed by `windowPaddingSum` for a padding row), and d(reverse)/dw applied to g is
/// `windowPartition(g)` (zeros where the padding was).
public struct WindowGeometry: Equatable, Sendable {
    public let batch: Int, height: Int, width: Int, channels: Int, window: Int
    public var windowsHigh: Int { (height + window - 1) / window }
    public var windowsWide: Int { (width + window - 1) / window }
    public var paddedHeight: Int { windowsHigh * window }
    public var paddedWidth: Int { windowsWide * window }
    public var windowCount: Int { batch * windowsHigh * windowsWide }
    public var needsPadding: Bool { paddedHeight != height || paddedWidth != width }

    public init(batch: Int, height: Int, width: Int, channels: Int, window: Int) {
        self.batch = batch; self.height = height; self.width = width; self.channels = channels; self.window = window
    }

    /// Calls `body(windowRow, sourceRow)` for every window token that lies inside the image,
    /// where rows index C-wide vectors of the window tensor and of the (B, H, W, C) map.
    @inline(__always)
    func forEachToken(_ body: (Int, Int) -> Void) {
        let ws = window, nH = windowsHigh, nW = windowsWide
        for b in 0..<batch { for wh in 0..<nH { for ww in 0..<nW {
            let win = (b * nH + wh) * nW + ww
            for i in 0..<ws {
                let h = wh * ws + i
                if h >= height { break }
                for j in 0..<ws {
                    let w = ww * ws + j
                    if w >= width { break }
                    body(win * ws * ws + i * ws + j, (b * height + h) * width + w)
                }
            }
        } } }
    }

    /// Calls `body(windowRow)` for every window token outside the image (the padding).
    @inline(__always)
    func forEachPaddingToken(_ body: (Int) -> Void) {
        let ws = window, nH = windowsHigh, nW = windowsWide
        for b in 0..<batch { for wh in 0..<nH { for ww in 0..<nW {
            let win = (b * nH + wh) * nW + ww
            for i in 0..<ws {
                for j in 0..<ws where wh * ws + i >= height || ww * ws + j >= width {
                    body(win * ws * ws + i * ws + j)
                }
            }
        } } }
    }
}

/// x: (B, H, W, C) -> windows: (B·nH·nW, ws·ws, C); each token outside the image is `padding`
/// (C values), or zeros when it is nil.
public func windowPartition(_ x: Tensor, window: Int, padding: [Float]? = nil) -> Tensor {
    precondition(x.rank == 4, "windowPartition: expected (B, H, W, C), got \(x.shape)")
    let g = WindowGeometry(batch: x.shape[0], height: x.shape[1], width: x.shape[2], channels: x.shape[3], window: window)
    let C = g.channels
    precondition(padding == nil || padding!.count == C, "windowPartition: a padding row of \(padding!.count) values for \(C) channels")
    var out = padding == nil ? Tensor(zeros: [g.windowCount, window * window, C]) : Tensor.empty([g.windowCount, window * window, C])
    x.data.withUnsafeBufferPointer { xb in
        out.data.withUnsafeMutableBufferPointer { ob in
            let xp = xb.baseAddress!, op = ob.baseAddress!
            g.forEachToken { dst, src in (op + dst * C).update(from: xp + src * C, count: C) }
            if let padding {
                padding.withUnsafeBufferPointer { pb in
                    g.forEachPaddingToken { dst in (op + dst * C).update(from: pb.baseAddress!, count: C) }
                }
            }
        }
    }
    return out
}

/// windows: (B·nH·nW, ws·ws, C) -> (C): the sum of the rows outside the (B, H, W) map, in Double
/// (the gradient of a padding row that `windowPartition` copied into every padded token).
public func windowPaddingSum(_ windows: Tensor, window: Int, batch: Int, height: Int, width: Int) -> [Double] {
    let C = windows.shape[2]
    let g = WindowGeometry(batch: batch, height: height, width: width, channels: C, window: window)
    precondition(windows.shape == [g.windowCount, window * window, C],
                 "windowPaddingSum: expected \([g.windowCount, window * window, C]) for a \(batch)×\(height)×\(width) map, got \(windows.shape)")
    var sum = [Double](repeating: 0, count: C)
    windows.data.withUnsafeBufferPointer { wb in
        let wp = wb.baseAddress!
        g.forEachPaddingToken { row in
            for c in 0..<C { sum[c] += Double(wp[row * C + c]) }
        }
    }
    return sum
}

/// windows: (B·nH·nW, ws·ws, C) -> (B, H, W, C), dropping the padding.
public func windowReverse(_ windows: Tensor, window: Int, batch: Int, height: Int, width: Int) -> Tensor {
    let C = windows.shape[2]
    let g = WindowGeometry(batch: batch, height: height, width: width, channels: C, window: window)
    precondition(windows.shape == [g.windowCount, window * window, C],
                 "windowReverse: expected \([g.windowCount, window * window, C]) for a \(batch)×\(height)×\(width) map, got \(windows.shape)")
    var out = Tensor.empty([batch, height, width, C])
    windows.data.withUnsafeBufferPointer { wb in
        out.data.withUnsafeMutableBufferPointer { ob in
            let wp = wb.baseAddress!, op = ob.baseAddress!
            g.forEachToken { win, dst in (op + dst * C).update(from: wp + win * C, count: C) }
        }
    }
    return out
}

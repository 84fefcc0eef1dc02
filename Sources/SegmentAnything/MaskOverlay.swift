import ImageCodecs
/// Masks and prompts drawn on a photo: `samdistill segment` (one mask, or every generated mask)
/// and the evaluation report (teacher and student masks) use these.
public enum MaskOverlay {
    public typealias RGB = (UInt8, UInt8, UInt8)

    /// How a mask's edge pixels (mask pixels with a 4-neighbour outside the mask or on the image
    /// border) are drawn.
    public enum Edge: Sendable {
        /// In the pixel's own colour, unblended.
        case solid
        /// White.
        case white
    }

    /// `image` with `colour(pixel)` blended in at `alpha` wherever it is not nil; the edge of
    /// `outline` (H·W, row-major) drawn as `edge` says.
    public static func blend(_ image: RGBImage, outline: [Bool], alpha: Double, edge: Edge,
                             colour: (Int) -> RGB?) -> RGBImage {
        precondition(outline.count == image.width * image.height, "outline must have one value per pixel")
        var out = image
        let W = image.width, H = image.height
        for y in 0..<H {
            for x in 0..<W {
                let i = y * W + x
                guard let c = colour(i) else { continue }
                let isEdge = outline[i] && (x == 0 || y == 0 || x == W - 1 || y == H - 1
                                            || !outline[i - 1] || !outline[i + 1] || !outline[i - W] || !outline[i + W])
                let (a, target): (Double, RGB) = isEdge ? (1, edge == .white ? (255, 255, 255) : c) : (alpha, c)
                for (k, v) in [target.0, target.1, target.2].enumerated() {
                    out.pixels[3 * i + k] = UInt8((Double(out.pixels[3 * i + k]) * (1 - a) + Double(v) * a).rounded())
                }
            }
        }
        return out
    }

    /// One mask tinted in `colour` at `alpha` with a white outline.
    public static func tint(_ image: RGBImage, mask: BinaryMask, colour: RGB, alpha: Double = 0.5) -> RGBImage {
        blend(image, outline: mask.pixels, alpha: alpha, edge: .white) { mask.pixels[$0] ? colour : nil }
    }

    /// Every mask tinted in its own colour (`colour(index:)`, 55%), the largest first so that
    /// smaller masks stay visible on top, each with a white outline.
    public static func tint(_ image: RGBImage, masks: [BinaryMask]) -> RGBImage {
        var out = image
        let area = masks.map(\.area)  // each a count over the whole image: once per mask, not per comparison
        let order = masks.indices.sorted { area[$0] > area[$1] || (area[$0] == area[$1] && $0 < $1) }
        for i in order { out = tint(out, mask: masks[i], colour: colour(index: i), alpha: 0.55) }
        return out
    }

    /// A colour per mask index (golden-ratio hues, deterministic).
    public static func colour(index: Int) -> RGB {
        let h = (Double(index) * 0.618_033_988_749_895 + 0.1).truncatingRemainder(dividingBy: 1) * 6
        let s = 0.8, v = 0.95, c = v * s, x = c * (1 - abs(h.truncatingRemainder(dividingBy: 2) - 1)), m = v - c
        let (r, g, b): (Double, Double, Double) = switch Int(h) {
        case 0: (c, x, 0)
        case 1: (x, c, 0)
        case 2: (0, c, x)
        case 3: (0, x, c)
        case 4: (x, 0, c)
        default: (c, 0, x)
        }
        return (UInt8((r + m) * 255), UInt8((g + m) * 255), UInt8((b + m) * 255))
    }

    /// Point prompts as dots of `radius` pixels in a white ring (green foreground, red
    /// background) and the box as a `boxColour` outline `thickness` pixels wide; prompt
    /// coordinates are multiplied by `scale` first.
    public static func draw(points: [PromptPoint], box: PromptBox?, on image: inout RGBImage, scale: Double = 1,
                            radius: Double, thickness: Int, boxColour: RGB) {
        let W = image.width, H = image.height
        func paint(_ x: Int, _ y: Int, _ c: RGB) {
            guard x >= 0, y >= 0, x < W, y < H else { return }
            let i = 3 * (y * W + x)
            image.pixels[i] = c.0; image.pixels[i + 1] = c.1; image.pixels[i + 2] = c.2
        }
        if let b = box {
            let x0 = Int((b.x0 * scale).rounded()), y0 = Int((b.y0 * scale).rounded())
            let x1 = Int((b.x1 * scale).rounded()), y1 = Int((b.y1 * scale).rounded())
            for t in 0..<thickness {
                for x in x0...max(x0, x1) { paint(x, y0 + t, boxColour); paint(x, y1 - t, boxColour) }
                for y in y0...max(y0, y1) { paint(x0 + t, y, boxColour); paint(x1 - t, y, boxColour) }
            }
        }
        let reach = Int(radius.rounded(.up)), ring = max(1, radius / 4)
        for p in points {
            let cx = Int((p.x * scale).rounded()), cy = Int((p.y * scale).rounded())
            let fill: RGB = p.label == 1 ? (0, 200, 0) : (220, 0, 0)
            for dy in -reach...reach {
                for dx in -reach...reach {
                    let r = Double(dx * dx + dy * dy).squareRoot()
                    if r <= radius - ring { paint(cx + dx, cy + dy, fill) } else if r <= radius { paint(cx + dx, cy + dy, (255, 255, 255)) }
                }
            }
        }
    }
}

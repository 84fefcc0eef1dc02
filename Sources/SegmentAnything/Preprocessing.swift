import Foundation
import ImageCodecs
import Tensor

// SAM's image preprocessing, exactly as MobileSAM's reference does it:
//   SamPredictor.set_image → ResizeLongestSide(1024).apply_image → Sam.preprocess.
//
// Finding (the resize filter). `apply_image` is
//     np.array(torchvision.transforms.functional.resize(to_pil_image(image), target_size))
// torchvision's `resize` defaults to InterpolationMode.BILINEAR and, for a PIL image, calls
// `img.resize((w, h), Image.BILINEAR)` (antialias is always on for PIL input). So the reference
// filter is PIL's BILINEAR (triangle filter, support 1, widened by the scale factor when
// downscaling: "antialiased"), NOT `Image.resize`'s own default (BICUBIC since Pillow 7) and not
// torch's `F.interpolate`. SAM preprocesses "bilinear, antialiased like PIL". torchvision
// returns the image untouched when it already has the target size. Checked against
// Pillow 13.0 / torchvision 0.29 by Tests/SegmentAnythingTests/ImageTests (0 level difference).
// Pillow 13 chooses the order of its two 8-bit passes by size (see `PILResample.verticalPassFirst`);
// the older Resample.c we read always runs the horizontal pass first, so for tall images
// (height > 2 × width) an older Pillow can differ from this by a level here and there.

/// Pillow's separable resampling (libImaging/Resample.c) for 8-bit RGB, BILINEAR filter.
///
/// Per axis: `scale = in/out`, `filterscale = max(scale, 1)`, `support = 1 · filterscale`; output
/// pixel `i` has centre `(i + 0.5) · scale`, taps `xmin = Int(centre − support + 0.5)` …
/// `Int(centre + support + 0.5)` (clamped to the image), weights `tri((x − centre + 0.5) / filterscale)`
/// normalised to sum 1, then rounded to fixed point with 22 fraction bits (`Int(0.5 ± w · 2²²)`).
/// Each pass accumulates from `2²¹` (rounding) and clips `sum >> 22` to 0…255; the intermediate
/// image between the passes is 8-bit. An axis whose size does not change is skipped. Pass order
/// as in Pillow 13 (`verticalPassFirst`): usually horizontal first (over only the source rows the
/// vertical pass reads), vertical first when the height shrinks by more than twice as many pixels
/// as the width (e.g. a downscaled photo more than twice as tall as wide).
public enum PILResample {
    /// Fractional bits of Pillow's 8-bit fixed-point coefficients (`PRECISION_BITS = 32 − 8 − 2`).
    static let precisionBits = 22

    /// Coefficients of one axis. bounds: (out, 2) = first tap, tap count; weights: (out, taps).
    struct Axis {
        let taps: Int
        let bounds: [Int]
        let weights: [Int32]
    }

    /// Pillow's triangle filter.
    @inline(__always)
    static func triangle(_ x: Double) -> Double {
        let a = abs(x)
        return a < 1 ? 1 - a : 0
    }

    /// `precompute_coeffs` + `normalize_coeffs_8bpc` for an axis of `inSize` → `outSize` pixels.
    static func axis(inSize: Int, outSize: Int) -> Axis {
        let scale = Double(inSize) / Double(outSize)
        let filterscale = max(scale, 1)
        let support = 1.0 * filterscale
        let taps = Int(support.rounded(.up)) * 2 + 1
        let ss = 1.0 / filterscale
        var bounds = [Int](repeating: 0, count: outSize * 2)
        var weights = [Int32](repeating: 0, count: outSize * taps)
        var k = [Double](repeating: 0, count: taps)
        for xx in 0..<outSize {
            let center = (Double(xx) + 0.5) * scale
            let xmin = max(Int(center - support + 0.5), 0)
            let xmax = min(Int(center + support + 0.5), inSize) - xmin
            var ww = 0.0
            for x in 0..<xmax {
                let w = triangle((Double(x + xmin) - center + 0.5) * ss)
                k[x] = w
                ww += w
            }
            for x in 0..<xmax {
                let w = ww != 0 ? k[x] / ww : k[x]
                let fixed = w * Double(1 << precisionBits)
                weights[xx * taps + x] = Int32(w < 0 ? (-0.5 + fixed) : (0.5 + fixed))
            }
            bounds[2 * xx] = xmin
            bounds[2 * xx + 1] = xmax
        }
        return Axis(taps: taps, bounds: bounds, weights: weights)
    }

    @inline(__always)
    static func clip8(_ v: Int32) -> UInt8 {
        let s = v >> Int32(precisionBits)
        return s < 0 ? 0 : (s > 255 ? 255 : UInt8(s))
    }

    /// Pillow 13's pass order: the vertical pass runs first when the height shrinks by more
    /// than twice as many pixels as the width, `(Hᵢₙ − H) > 2·(Wᵢₙ − W)` (found by disassembling
    /// Pillow 13's `ImagingResample` and confirmed on 1,482 random resizes; the older Resample.c
    /// source always runs the horizontal pass first). The order matters because the intermediate is 8-bit.
    public static func verticalPassFirst(from source: ImageSize, to target: ImageSize) -> Bool {
        let shrinkH = source.height - target.height, shrinkW = source.width - target.width
        return target.width != source.width && shrinkH > 0 && shrinkH > 2 * shrinkW
    }

    /// PIL's `image.resize((width, height), Image.BILINEAR)` for an RGB image. Parallel over rows.
    public static func resizeBilinear(_ image: RGBImage, width: Int, height: Int) -> RGBImage {
        precondition(width > 0 && height > 0, "PILResample.resizeBilinear: bad target size \(width)×\(height)")
        let Wi = image.width, Hi = image.height
        if Wi == width && Hi == height { return image }
        let needH = width != Wi, needV = height != Hi
        if !needV {
            let h = axis(inSize: Wi, outSize: width)
            return RGBImage(width: width, height: height, pixels: horizontalPass(image.pixels, inWidth: Wi, rows: 0..<Hi, axis: h, outWidth: width))
        }
        let v = axis(inSize: Hi, outSize: height)
        if !needH {
            return RGBImage(width: width, height: height, pixels: verticalPass(image.pixels, width: Wi, firstRow: 0, axis: v, outHeight: height))
        }
        let h = axis(inSize: Wi, outSize: width)
        if verticalPassFirst(from: image.size, to: ImageSize(height: height, width: width)) {
            // temp: (H, Wᵢₙ, 3)
            let temp = verticalPass(image.pixels, width: Wi, firstRow: 0, axis: v, outHeight: height)
            return RGBImage(width: width, height: height, pixels: horizontalPass(temp, inWidth: Wi, rows: 0..<height, axis: h, outWidth: width))
        }
        // Only the source rows the vertical pass reads: [first, last).
        let first = v.bounds[0], last = v.bounds[2 * height - 2] + v.bounds[2 * height - 1]
        // temp: (last − first, W, 3)
        let temp = horizontalPass(image.pixels, inWidth: Wi, rows: first..<last, axis: h, outWidth: width)
        return RGBImage(width: width, height: height, pixels: verticalPass(temp, width: width, firstRow: first, axis: v, outHeight: height))
    }

    /// Pillow's `ImagingResampleHorizontal_8bpc` over source rows `rows` of an RGB buffer
    /// src: (·, inWidth, 3) → (rows.count, outWidth, 3). Parallel over rows.
    static func horizontalPass(_ source: [UInt8], inWidth Wi: Int, rows: Range<Int>, axis: Axis, outWidth W: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: rows.count * W * 3)
        let taps = axis.taps, first = rows.lowerBound
        out.withUnsafeMutableBufferPointer { ob in
            source.withUnsafeBufferPointer { sb in
                axis.bounds.withUnsafeBufferPointer { bb in
                    axis.weights.withUnsafeBufferPointer { kb in
                        let o = ob.baseAddress!, s = sb.baseAddress!, b = bb.baseAddress!, k = kb.baseAddress!
                        parallelFor(rows.count, costPerItem: W * taps * 3, minimumWork: 1 << 16) { r in
                            let src = s + (r + first) * Wi * 3, dst = o + r * W * 3
                            for xx in 0..<W {
                                let xmin = b[2 * xx], n = b[2 * xx + 1]
                                let kk = k + xx * taps
                                var s0: Int32 = 1 << 21, s1: Int32 = 1 << 21, s2: Int32 = 1 << 21
                                var p = src + xmin * 3
                                for x in 0..<n {
                                    let w = kk[x]
                                    s0 &+= Int32(p[0]) &* w
                                    s1 &+= Int32(p[1]) &* w
                                    s2 &+= Int32(p[2]) &* w
                                    p += 3
                                }
                                dst[3 * xx] = clip8(s0)
                                dst[3 * xx + 1] = clip8(s1)
                                dst[3 * xx + 2] = clip8(s2)
                            }
                        }
                    }
                }
            }
        }
        return out
    }

    /// Pillow's `ImagingResampleVertical_8bpc`: source: (·, width, 3) whose row 0 is source row
    /// `firstRow` of the axis → (outHeight, width, 3). Each output row is a weighted sum of whole
    /// source rows (contiguous, vectorisable). Parallel over output rows.
    static func verticalPass(_ source: [UInt8], width: Int, firstRow: Int, axis: Axis, outHeight H: Int) -> [UInt8] {
        let rowLength = width * 3
        var out = [UInt8](repeating: 0, count: H * rowLength)
        let taps = axis.taps
        out.withUnsafeMutableBufferPointer { ob in
            source.withUnsafeBufferPointer { tb in
                axis.bounds.withUnsafeBufferPointer { bb in
                    axis.weights.withUnsafeBufferPointer { kb in
                        let o = ob.baseAddress!, t = tb.baseAddress!, b = bb.baseAddress!, k = kb.baseAddress!
                        parallelChunks(H, costPerItem: rowLength * taps, minimumWork: 1 << 16) { rows in
                            // acc: (width·3) running sums of one output row
                            let acc = UnsafeMutablePointer<Int32>.allocate(capacity: rowLength)
                            defer { acc.deallocate() }
                            for yy in rows {
                                acc.update(repeating: 1 << 21, count: rowLength)
                                let ymin = b[2 * yy] - firstRow, n = b[2 * yy + 1]
                                for y in 0..<n {
                                    let w = k[yy * taps + y]
                                    let src = t + (ymin + y) * rowLength
                                    for i in 0..<rowLength { acc[i] &+= Int32(src[i]) &* w }
                                }
                                let dst = o + yy * rowLength
                                for i in 0..<rowLength { dst[i] = clip8(acc[i]) }
                            }
                        }
                    }
                }
            }
        }
        return out
    }

    /// Plain serial reference for `resizeBilinear`: Pillow's loops written out per output sample,
    /// weights computed inline (no tables, no threads). For tests.
    public static func resizeBilinearReference(_ image: RGBImage, width: Int, height: Int) -> RGBImage {
        if image.width == width && image.height == height { return image }
        // Weights of output index `i` on an axis `inSize` → `outSize`: (first tap, fixed-point weights).
        func weights(_ i: Int, inSize: Int, outSize: Int) -> (Int, [Int32]) {
            let scale = Double(inSize) / Double(outSize)
            let filterscale = max(scale, 1)
            let center = (Double(i) + 0.5) * scale
            let xmin = max(Int(center - filterscale + 0.5), 0)
            let xmax = min(Int(center + filterscale + 0.5), inSize)
            let w = (xmin..<xmax).map { triangle((Double($0) - center + 0.5) * (1.0 / filterscale)) }
            let total = w.reduce(0, +)
            return (xmin, w.map { v in
                let n = total != 0 ? v / total : v
                return Int32(n < 0 ? -0.5 + n * 4194304 : 0.5 + n * 4194304)
            })
        }
        func horizontal(_ src: RGBImage) -> RGBImage {
            var out = RGBImage(width: width, height: src.height)
            for y in 0..<src.height {
                for xx in 0..<width {
                    let (xmin, w) = weights(xx, inSize: src.width, outSize: width)
                    for c in 0..<3 {
                        var s: Int32 = 1 << 21
                        for (j, wj) in w.enumerated() { s += Int32(src.pixels[(y * src.width + xmin + j) * 3 + c]) * wj }
                        out.pixels[(y * width + xx) * 3 + c] = clip8(s)
                    }
                }
            }
            return out
        }
        func vertical(_ src: RGBImage) -> RGBImage {
            var out = RGBImage(width: src.width, height: height)
            for yy in 0..<height {
                let (ymin, w) = weights(yy, inSize: src.height, outSize: height)
                for x in 0..<src.width {
                    for c in 0..<3 {
                        var s: Int32 = 1 << 21
                        for (j, wj) in w.enumerated() { s += Int32(src.pixels[((ymin + j) * src.width + x) * 3 + c]) * wj }
                        out.pixels[(yy * src.width + x) * 3 + c] = clip8(s)
                    }
                }
            }
            return out
        }
        if width == image.width { return vertical(image) }
        if height == image.height { return horizontal(image) }
        if verticalPassFirst(from: image.size, to: ImageSize(height: height, width: width)) {
            return horizontal(vertical(image))
        }
        return vertical(horizontal(image))
    }
}

/// MobileSAM's `ResizeLongestSide` (utils/transforms.py): the longest side becomes
/// `targetLength`, images are resized with PIL's BILINEAR filter, and prompt coordinates are
/// scaled by `new/old` per axis.
public struct ResizeLongestSide: Sendable {
    public let targetLength: Int

    public init(targetLength: Int = 1024) {
        precondition(targetLength > 0, "ResizeLongestSide: targetLength must be positive, got \(targetLength)")
        self.targetLength = targetLength
    }

    /// `get_preprocess_shape`: scale = long / max(h, w); each side `Int(side · scale + 0.5)`.
    public static func preprocessShape(_ size: ImageSize, longSideLength: Int) -> ImageSize {
        let scale = Double(longSideLength) * 1.0 / Double(max(size.height, size.width))
        let newH = Double(size.height) * scale, newW = Double(size.width) * scale
        return ImageSize(height: Int(newH + 0.5), width: Int(newW + 0.5))
    }

    /// The resized size (before padding) of an image of `originalSize`.
    public func targetSize(for originalSize: ImageSize) -> ImageSize {
        Self.preprocessShape(originalSize, longSideLength: targetLength)
    }

    /// `apply_image`: PIL BILINEAR resize to `targetSize(for: image.size)` (unchanged if equal).
    /// Precondition: both target sides ≥ 1. An image more than 2·`targetLength`:1 would resize to
    /// 0 pixels (PIL raises there too), so callers facing arbitrary files check `targetSize` first.
    public func applyImage(_ image: RGBImage) -> RGBImage {
        let t = targetSize(for: image.size)
        return PILResample.resizeBilinear(image, width: t.width, height: t.height)
    }

    /// `apply_coords` (numpy, float64): interleaved (x, y) pairs in original pixels → resized
    /// pixels, `x · (newW / oldW)`, `y · (newH / oldH)`.
    public func applyCoords(_ coords: [Double], originalSize: ImageSize) -> [Double] {
        precondition(coords.count % 2 == 0, "ResizeLongestSide.applyCoords: expected (x, y) pairs, got \(coords.count) values")
        let t = targetSize(for: originalSize)
        let sx = Double(t.width) / Double(originalSize.width)
        let sy = Double(t.height) / Double(originalSize.height)
        var out = coords
        for i in stride(from: 0, to: out.count, by: 2) {
            out[i] *= sx
            out[i + 1] *= sy
        }
        return out
    }

    /// `apply_boxes`: interleaved (x0, y0, x1, y1) boxes, each corner mapped by `applyCoords`.
    public func applyBoxes(_ boxes: [Double], originalSize: ImageSize) -> [Double] {
        precondition(boxes.count % 4 == 0, "ResizeLongestSide.applyBoxes: expected 4 values per box, got \(boxes.count) values")
        return applyCoords(boxes, originalSize: originalSize)
    }
}

/// An image ready for SAM's image encoder, with the sizes the predictor needs to map prompts
/// and masks back.
public struct PreprocessedImage: Sendable {
    /// input: (1, 3, S, S), normalised, zero-padded bottom/right
    public let input: Tensor
    /// The decoded image's size (SamPredictor.original_size).
    public let originalSize: ImageSize
    /// The resized size before padding (SamPredictor.input_size).
    public let inputSize: ImageSize
}

/// `Sam.preprocess` and the whole `set_image` pipeline.
public enum SAMPreprocessing {
    /// `pixel_mean`, as PyTorch stores it (`torch.Tensor([...])`: Float64 literals → Float32).
    public static let pixelMean: [Float] = [123.675, 116.28, 103.53].map { (v: Double) in Float(v) }
    /// `pixel_std`, as PyTorch stores it.
    public static let pixelStd: [Float] = [58.395, 57.12, 57.375].map { (v: Double) in Float(v) }
    /// The encoder's input side (`image_encoder.img_size`).
    public static let imageSize = 1024

    /// The whole `set_image` preprocessing: resize the longest side to `size` (PIL BILINEAR),
    /// normalise, pad to `size`×`size`.
    public static func preprocess(_ image: RGBImage, size: Int = imageSize) -> PreprocessedImage {
        let resized = ResizeLongestSide(targetLength: size).applyImage(image)
        return PreprocessedImage(input: normaliseAndPad(resized, size: size),
                                 originalSize: image.size, inputSize: resized.size)
    }

    /// `Sam.preprocess` of an already resized image: `(x − mean) / std` per channel in Float32,
    /// then zeros bottom/right up to `size`×`size`. Returns (1, 3, size, size).
    public static func normaliseAndPad(_ resized: RGBImage, size: Int = imageSize) -> Tensor {
        var t = Tensor.empty([1, 3, size, size])
        t.data.withUnsafeMutableBufferPointer { normaliseAndPad(resized, size: size, into: $0.baseAddress!) }
        return t
    }

    /// `normaliseAndPad` writing (3, size, size) Float32 values at `out` (for building batches).
    public static func normaliseAndPad(_ resized: RGBImage, size: Int, into out: UnsafeMutablePointer<Float>) {
        let W = resized.width, H = resized.height
        precondition(W <= size && H <= size,
                     "SAMPreprocessing.normaliseAndPad: image \(W)×\(H) is larger than the \(size)×\(size) input")
        let mean = pixelMean, std = pixelStd
        resized.pixels.withUnsafeBufferPointer { pb in
            let p = pb.baseAddress!
            // One work item per (channel, row) of the padded output.
            parallelFor(3 * size, costPerItem: size, minimumWork: 1 << 15) { item in
                let c = item / size, y = item % size
                let dst = out + item * size
                guard y < H else {
                    dst.update(repeating: 0, count: size)
                    return
                }
                let m = mean[c], s = std[c]
                let src = p + y * W * 3 + c
                for x in 0..<W { dst[x] = (Float(src[3 * x]) - m) / s }
                (dst + W).update(repeating: 0, count: size - W)
            }
        }
    }

    /// Plain serial reference for `normaliseAndPad`. For tests.
    public static func normaliseAndPadReference(_ resized: RGBImage, size: Int = imageSize) -> Tensor {
        var t = Tensor(zeros: [1, 3, size, size])
        for c in 0..<3 {
            for y in 0..<resized.height {
                for x in 0..<resized.width {
                    let v = Float(resized.pixels[(y * resized.width + x) * 3 + c])
                    t.data[(c * size + y) * size + x] = (v - pixelMean[c]) / pixelStd[c]
                }
            }
        }
        return t
    }
}

import Foundation
import ImageCodecs
import SegmentAnything
import Tensor

/// Where a cached view comes from: a crop of the decoded image (original pixels), optionally
/// mirrored left–right, before SAM's resize-longest-side + pad. Stored per row as the float32
/// vector `[x, y, width, height, flipped]` (dataset `view_params`).
public struct ViewParameters: Equatable, Sendable, CustomStringConvertible {
    public var x: Int
    public var y: Int
    public var width: Int
    public var height: Int
    public var flipped: Bool

    public init(x: Int, y: Int, width: Int, height: Int, flipped: Bool) {
        self.x = x
        self.y = y
        self.width = width
        self.height = height
        self.flipped = flipped
    }

    /// The whole image, not mirrored: plain SAM preprocessing.
    public static func identity(_ size: ImageSize) -> ViewParameters {
        ViewParameters(x: 0, y: 0, width: size.width, height: size.height, flipped: false)
    }

    public var stored: [Float] { [Float(x), Float(y), Float(width), Float(height), flipped ? 1 : 0] }

    public init(stored v: [Float]) {
        precondition(v.count == 5, "ViewParameters: expected 5 stored values, got \(v.count)")
        self.init(x: Int(v[0]), y: Int(v[1]), width: Int(v[2]), height: Int(v[3]), flipped: v[4] != 0)
    }

    public var description: String { "crop (\(x), \(y)) \(width)×\(height)\(flipped ? " flipped" : "")" }
}

/// Random resized crop + horizontal flip, torchvision's `RandomResizedCrop` sampling rule (area
/// fraction uniform in `scale`, log-uniform aspect ratio in `ratio`, 10 attempts, then the
/// largest centred crop within `ratio`) followed by a flip with probability `flipProbability`.
/// The crop keeps original pixels; SAM's resize to the longest side happens afterwards, so the
/// embedding grid always sees a full-resolution input.
///
/// Seeded per (seed, source path, view): a view's parameters do not depend on which other images
/// are in the folder or on the order rows are computed in. View 0 is always the identity.
public struct Augmentation: Codable, Equatable, Sendable {
    public var scale: [Double] = [0.25, 1.0]
    public var ratio: [Double] = [3.0 / 4.0, 4.0 / 3.0]
    public var flipProbability: Double = 0.5

    enum CodingKeys: String, CodingKey {
        case scale, ratio, flipProbability = "flip_probability"
    }

    public init() {}

    /// JSON stored in the cache's `augmentation` attribute (sorted keys, stable).
    public var json: String {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return String(decoding: try! e.encode(self), as: UTF8.self)
    }

    /// The generator for one view: seed, source and view mixed (splitmix-style) into one state.
    public static func generator(seed: UInt64, source: String, view: Int) -> SeededRandom {
        var z = seed &+ 0x9E37_79B9_7F4A_7C15 &* (FNV1a.hash(source) | 1)
        z ^= UInt64(view) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 31)) &* 0x94D0_49BB_1331_11EB
        return SeededRandom(seed: z ^ (z >> 29))
    }

    /// The parameters of view `view` of the image at `source` (relative path) of `size`.
    public func parameters(for size: ImageSize, seed: UInt64, source: String, view: Int) -> ViewParameters {
        if view == 0 { return .identity(size) }
        var rng = Self.generator(seed: seed, source: source, view: view)
        func uniform(_ lo: Double, _ hi: Double) -> Double {
            lo + (hi - lo) * Double(rng.next() >> 11) * (1.0 / Double(UInt64(1) << 53))
        }
        let W = size.width, H = size.height
        let area = Double(W * H)
        var crop: ViewParameters? = nil
        for _ in 0..<10 {
            let target = area * uniform(scale[0], scale[1])
            let aspect = exp(uniform(log(ratio[0]), log(ratio[1])))
            let w = Int((target * aspect).squareRoot().rounded())
            let h = Int((target / aspect).squareRoot().rounded())
            if w > 0, h > 0, w <= W, h <= H {
                let x = Int(uniform(0, Double(W - w + 1)).rounded(.down))
                let y = Int(uniform(0, Double(H - h + 1)).rounded(.down))
                crop = ViewParameters(x: min(x, W - w), y: min(y, H - h), width: w, height: h, flipped: false)
                break
            }
        }
        if crop == nil {
            // Fallback: the largest centred crop whose aspect is within `ratio`.
            let inRatio = Double(W) / Double(H)
            var w = W, h = H
            if inRatio < ratio[0] {
                h = Int((Double(w) / ratio[0]).rounded())
            } else if inRatio > ratio[1] {
                w = Int((Double(h) * ratio[1]).rounded())
            }
            w = max(1, min(w, W)); h = max(1, min(h, H))
            crop = ViewParameters(x: (W - w) / 2, y: (H - h) / 2, width: w, height: h, flipped: false)
        }
        crop!.flipped = uniform(0, 1) < flipProbability
        return crop!
    }

    /// Crops and mirrors `image` as `p` says.
    public static func apply(_ p: ViewParameters, to image: RGBImage) -> RGBImage {
        precondition(p.x >= 0 && p.y >= 0 && p.width >= 1 && p.height >= 1
                     && p.x + p.width <= image.width && p.y + p.height <= image.height,
                     "Augmentation.apply: \(p) outside the \(image.width)×\(image.height) image")
        if p == .identity(image.size) { return image }
        var out = [UInt8](repeating: 0, count: p.width * p.height * 3)
        image.pixels.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for yy in 0..<p.height {
                    let srcRow = ((p.y + yy) * image.width + p.x) * 3
                    let dstRow = yy * p.width * 3
                    if p.flipped {
                        for xx in 0..<p.width {
                            let s = srcRow + (p.width - 1 - xx) * 3, d = dstRow + xx * 3
                            dst[d] = src[s]; dst[d + 1] = src[s + 1]; dst[d + 2] = src[s + 2]
                        }
                    } else {
                        for i in 0..<(p.width * 3) { dst[dstRow + i] = src[srcRow + i] }
                    }
                }
            }
        }
        return RGBImage(width: p.width, height: p.height, pixels: out)
    }
}

/// The cache's stored input: SAM's resize-longest-side to `size`, then zero padding
/// bottom/right, as uint8 (size, size, 3) HWC — the padded image BEFORE normalisation.
public struct PaddedImage: Sendable {
    public let size: Int
    /// (size, size, 3) uint8, row-major HWC.
    public var pixels: [UInt8]
    /// The resized image's size (the valid region, top-left).
    public let validSize: ImageSize

    public init(size: Int, pixels: [UInt8], validSize: ImageSize) {
        precondition(pixels.count == size * size * 3, "PaddedImage: \(pixels.count) bytes for \(size)×\(size)×3")
        self.size = size
        self.pixels = pixels
        self.validSize = validSize
    }

    /// Resizes `image` (longest side → `size`, PIL bilinear as SAM) and pads it.
    public init(resizing image: RGBImage, to size: Int) {
        let resized = ResizeLongestSide(targetLength: size).applyImage(image)
        var px = [UInt8](repeating: 0, count: size * size * 3)
        let W = resized.width, H = resized.height
        resized.pixels.withUnsafeBufferPointer { src in
            px.withUnsafeMutableBufferPointer { dst in
                for y in 0..<H {
                    (dst.baseAddress! + y * size * 3).update(from: src.baseAddress! + y * W * 3, count: W * 3)
                }
            }
        }
        self.init(size: size, pixels: px, validSize: resized.size)
    }

    /// `SAMPreprocessing.normaliseAndPad` of the valid region, written as (3, size, size)
    /// Float32 at `out`: `(v − mean) / std` inside, 0 in the padding (bit-identical to the
    /// inference core's preprocessing of the same resized image).
    public func normalise(into out: UnsafeMutablePointer<Float>, mean: [Float] = SAMPreprocessing.pixelMean,
                          std: [Float] = SAMPreprocessing.pixelStd) {
        let S = size, H = validSize.height, W = validSize.width
        pixels.withUnsafeBufferPointer { pb in
            let p = pb.baseAddress!
            parallelFor(3 * S, costPerItem: S, minimumWork: 1 << 15) { item in
                let c = item / S, y = item % S
                let dst = out + item * S
                guard y < H else {
                    dst.update(repeating: 0, count: S)
                    return
                }
                let m = mean[c], s = std[c]
                let src = p + y * S * 3 + c
                for x in 0..<W { dst[x] = (Float(src[3 * x]) - m) / s }
                (dst + W).update(repeating: 0, count: S - W)
            }
        }
    }

    /// (1, 3, size, size) normalised input for the encoder.
    public func normalised() -> Tensor {
        var t = Tensor(zeros: [1, 3, size, size])
        t.data.withUnsafeMutableBufferPointer { normalise(into: $0.baseAddress!) }
        return t
    }
}

import CImageIO
import Foundation
import Tensor

/// An 8-bit RGB image: `pixels` holds `height` rows of `width` interleaved (r, g, b) bytes.
public struct RGBImage: Sendable, Equatable {
    public let width: Int
    public let height: Int
    /// pixels: (height, width, 3)
    public var pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(width > 0 && height > 0 && pixels.count == width * height * 3,
                     "RGBImage: \(width)×\(height) needs \(width * height * 3) bytes, got \(pixels.count)")
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    /// A black image.
    public init(width: Int, height: Int) {
        self.init(width: width, height: height, pixels: [UInt8](repeating: 0, count: width * height * 3))
    }

    public var size: ImageSize { ImageSize(height: height, width: width) }

    /// The (r, g, b) bytes at column `x`, row `y`.
    public subscript(x: Int, y: Int) -> (r: UInt8, g: UInt8, b: UInt8) {
        let i = (y * width + x) * 3
        return (pixels[i], pixels[i + 1], pixels[i + 2])
    }
}

/// An 8-bit single-channel image (masks): `pixels` holds `height` rows of `width` bytes.
public struct GreyImage: Sendable, Equatable {
    public let width: Int
    public let height: Int
    /// pixels: (height, width)
    public var pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(width > 0 && height > 0 && pixels.count == width * height,
                     "GreyImage: \(width)×\(height) needs \(width * height) bytes, got \(pixels.count)")
        self.width = width
        self.height = height
        self.pixels = pixels
    }
}

/// An image size in SAM's (H, W) order.
public struct ImageSize: Sendable, Hashable, CustomStringConvertible {
    public let height: Int
    public let width: Int
    public init(height: Int, width: Int) {
        self.height = height
        self.width = width
    }
    public var description: String { "\(width)×\(height)" }
}

/// A failure reading or writing an image, naming the file and what went wrong.
public struct ImageIOError: Error, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable, Equatable {
        /// The file could not be opened or read.
        case unreadable
        /// The file has no bytes.
        case empty
        /// The first bytes are neither a PNG nor a JPEG signature.
        case unknownFormat
        /// The PNG/JPEG decoder rejected the data (truncated, bad checksum, bad marker, ...).
        case corrupt
        /// Valid, but a layout this reader does not convert.
        case unsupported
        /// More pixels than `ImageIO.maximumPixels`.
        case tooLarge
        /// Encoding or writing the output file failed.
        case writeFailed
    }
    public let file: String
    public let kind: Kind
    public let reason: String

    public init(file: String, kind: Kind, reason: String) {
        self.file = file
        self.kind = kind
        self.reason = reason
    }

    public var description: String { "\(file): \(reason)" }
}

/// Decoding (PNG, JPEG) to `RGBImage` exactly as PIL's `Image.open(path).convert("RGB")` does,
/// PNG encoding for masks and overlays, JPEG encoding for the report's photos.
///
/// PIL conventions reproduced (checked against Pillow 13 by Tests/SegmentAnythingTests/ImageTests):
/// - The format is sniffed from the first bytes (PNG signature, JPEG `FF D8 FF`), never the extension.
/// - Alpha is dropped, not composited: grey+alpha → grey replicated, RGBA → RGB; a palette's
///   tRNS transparency is ignored; grey of 1/2/4 bits is scaled to 0…255.
/// - 16-bit PNG: RGB, RGBA and grey+alpha keep the high byte of each sample (PIL's `;16B` unpackers);
///   16-bit grey opens in PIL as mode `I;16`, whose conversion to RGB CLAMPS the value to 255
///   (0…255 stay, everything brighter becomes 255). That quirk is reproduced so cached inputs
///   equal PIL's, although it makes most 16-bit grey photographs white.
/// - CMYK/YCCK JPEG: PIL assumes Adobe polarity (inverted CMYK) always, then converts with
///   `nk = 255 − k; channel = nk − round(c · nk / 255)`.
/// - JPEG decoding uses libjpeg-turbo's defaults (integer slow DCT, fancy upsampling), as PIL does.
/// - EXIF orientation is NOT applied: `Image.open` ignores it, and so does SAM's reference
///   pipeline, so a rotated phone photo is processed in its stored orientation.
/// - A truncated JPEG is an error (PIL: "image file is truncated"); gamma and colour-profile
///   chunks are ignored.
public enum ImageIO {
    public enum Format: String, Sendable {
        case png, jpeg
    }

    /// Images with more pixels than this are refused (`.tooLarge`) before any pixel memory is
    /// allocated (PIL's decompression-bomb limit is 2 × 89,478,485 pixels; this is similar).
    nonisolated(unsafe) public static var maximumPixels: Int = 1 << 28

    /// The format named by the signature at the start of `data`, or nil.
    public static func sniff(_ data: Data) -> Format? {
        let png: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        if data.count >= png.count && data.prefix(png.count).elementsEqual(png) { return .png }
        if data.count >= 3 && data.prefix(3).elementsEqual([0xFF, 0xD8, 0xFF]) { return .jpeg }
        return nil
    }

    /// Reads and decodes an image file; errors name `url.path`.
    public static func read(_ url: URL) throws -> RGBImage {
        let data: Data
        do {
            data = try Data(contentsOf: url, options: .mappedIfSafe)
        } catch {
            throw ImageIOError(file: url.path, kind: .unreadable, reason: "cannot read (\(error.localizedDescription))")
        }
        return try decode(data, file: url.path)
    }

    /// Decodes an in-memory PNG or JPEG; `file` names the source in errors.
    public static func decode(_ data: Data, file: String) throws -> RGBImage {
        if data.isEmpty { throw ImageIOError(file: file, kind: .empty, reason: "empty file (0 bytes)") }
        guard let format = sniff(data) else {
            let head = data.prefix(8).map { String(format: "%02x", $0) }.joined(separator: " ")
            throw ImageIOError(file: file, kind: .unknownFormat,
                               reason: "not a PNG or JPEG file (starts with \(head))")
        }
        var raw = samio_image()
        let status: Int32 = data.withUnsafeBytes { (buffer: UnsafeRawBufferPointer) in
            let base = buffer.bindMemory(to: UInt8.self).baseAddress!
            switch format {
            case .png: return samio_png_decode(base, buffer.count, Int64(maximumPixels), &raw)
            case .jpeg: return samio_jpeg_decode(base, buffer.count, Int64(maximumPixels), &raw)
            }
        }
        defer { samio_free(raw.pixels) }
        guard status == Int32(SAMIO_OK.rawValue), let samples = raw.pixels else {
            let message = withUnsafeBytes(of: raw.message) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            let kind: ImageIOError.Kind
            switch UInt32(status) {
            case SAMIO_UNSUPPORTED.rawValue: kind = .unsupported
            case SAMIO_TOO_LARGE.rawValue: kind = .tooLarge
            default: kind = .corrupt
            }
            let name = format == .png ? "PNG" : "JPEG"
            throw ImageIOError(file: file, kind: kind, reason: "invalid or unsupported \(name): \(message)")
        }
        let W = Int(raw.width), H = Int(raw.height), C = Int(raw.channels)
        let sixteen = raw.bit_depth == 16
        guard W > 0, H > 0, [1, 2, 3, 4].contains(C), !(format == .jpeg && C == 2) else {
            throw ImageIOError(file: file, kind: .unsupported, reason: "\(C)-channel \(format.rawValue) images are not supported")
        }
        let cmyk = format == .jpeg && C == 4
        var pixels = [UInt8](repeating: 0, count: W * H * 3)
        pixels.withUnsafeMutableBufferPointer { outBuffer in
            let out = outBuffer.baseAddress!
            let src = UnsafePointer(samples)
            let stride = W * C * (sixteen ? 2 : 1)
            parallelFor(H, costPerItem: W * 3) { y in
                convertRow(src + y * stride, to: out + y * W * 3, width: W, channels: C, sixteen: sixteen, cmyk: cmyk)
            }
        }
        return RGBImage(width: W, height: H, pixels: pixels)
    }

    /// One row of decoded samples → RGB bytes, with PIL's `convert("RGB")` rules.
    @inline(__always)
    static func convertRow(_ s: UnsafePointer<UInt8>, to o: UnsafeMutablePointer<UInt8>,
                           width W: Int, channels C: Int, sixteen: Bool, cmyk: Bool) {
        if cmyk {
            // s: (W, 4) CMYK as stored; PIL reads it as inverted ("CMYK;I") then cmyk2rgb.
            for x in 0..<W {
                let nk = Int(s[4 * x + 3])  // 255 − (255 − k)
                for c in 0..<3 {
                    let v = 255 - Int(s[4 * x + c])
                    let t = v * nk + 128
                    let scaled = ((t >> 8) + t) >> 8  // PIL's MULDIV255
                    o[3 * x + c] = UInt8(clamping: nk - scaled)
                }
            }
            return
        }
        if sixteen {
            // s: (W, C) big-endian 16-bit samples
            if C == 1 {
                for x in 0..<W {
                    let v = Int(s[2 * x]) << 8 | Int(s[2 * x + 1])
                    let g = UInt8(min(v, 255))  // PIL's I;16 → RGB clamps
                    o[3 * x] = g; o[3 * x + 1] = g; o[3 * x + 2] = g
                }
            } else if C == 2 {
                for x in 0..<W {
                    let g = s[4 * x]
                    o[3 * x] = g; o[3 * x + 1] = g; o[3 * x + 2] = g
                }
            } else {
                for x in 0..<W {
                    o[3 * x] = s[2 * C * x]; o[3 * x + 1] = s[2 * C * x + 2]; o[3 * x + 2] = s[2 * C * x + 4]
                }
            }
            return
        }
        switch C {
        case 1, 2:
            for x in 0..<W {
                let g = s[C * x]
                o[3 * x] = g; o[3 * x + 1] = g; o[3 * x + 2] = g
            }
        case 3:
            o.update(from: s, count: 3 * W)
        default:
            for x in 0..<W {
                o[3 * x] = s[4 * x]; o[3 * x + 1] = s[4 * x + 1]; o[3 * x + 2] = s[4 * x + 2]
            }
        }
    }

    // MARK: - Encoding

    /// PNG bytes for an RGB image (8-bit, colour type 2).
    public static func encodePNG(_ image: RGBImage) throws -> Data {
        try encodePNG(image.pixels, width: image.width, height: image.height, channels: 3, file: "<memory>")
    }

    /// PNG bytes for a grey image (8-bit, colour type 0).
    public static func encodePNG(_ image: GreyImage) throws -> Data {
        try encodePNG(image.pixels, width: image.width, height: image.height, channels: 1, file: "<memory>")
    }

    /// Writes an RGB PNG atomically (a temp file beside `url`, then a rename).
    public static func writePNG(_ image: RGBImage, to url: URL) throws {
        let data = try encodePNG(image.pixels, width: image.width, height: image.height, channels: 3, file: url.path)
        try writeAtomically(data, to: url)
    }

    /// Writes an 8-bit grey PNG (masks) atomically (a temp file beside `url`, then a rename).
    public static func writePNG(_ image: GreyImage, to url: URL) throws {
        let data = try encodePNG(image.pixels, width: image.width, height: image.height, channels: 1, file: url.path)
        try writeAtomically(data, to: url)
    }

    static func encodePNG(_ pixels: [UInt8], width: Int, height: Int, channels: Int, file: String) throws -> Data {
        try encoded("PNG", file: file) { out, size, message in
            pixels.withUnsafeBufferPointer { samio_png_encode($0.baseAddress, Int32(width), Int32(height), Int32(channels), out, size, message) }
        }
    }

    /// JPEG bytes for an RGB image: baseline, libjpeg's defaults (4:2:0 chroma), `quality` 1...100.
    public static func encodeJPEG(_ image: RGBImage, quality: Int = 85) throws -> Data {
        try encoded("JPEG", file: "<memory>") { out, size, message in
            image.pixels.withUnsafeBufferPointer {
                samio_jpeg_encode($0.baseAddress, Int32(image.width), Int32(image.height), Int32(quality), out, size, message)
            }
        }
    }

    /// Runs one of the C encoders (which malloc their output) and copies the bytes out.
    static func encoded(_ format: String, file: String,
                        _ encode: (UnsafeMutablePointer<UnsafeMutablePointer<UInt8>?>, UnsafeMutablePointer<Int>, UnsafeMutablePointer<CChar>) -> Int32) throws -> Data {
        var out: UnsafeMutablePointer<UInt8>?
        var size = 0
        var message = [CChar](repeating: 0, count: Int(SAMIO_MESSAGE_LENGTH))
        let status = message.withUnsafeMutableBufferPointer { encode(&out, &size, $0.baseAddress!) }
        defer { samio_free(out) }
        guard status == Int32(SAMIO_OK.rawValue), let out else {
            let text = String(decoding: message.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw ImageIOError(file: file, kind: .writeFailed, reason: "cannot encode \(format): \(text)")
        }
        return Data(bytes: out, count: size)
    }

    static func writeAtomically(_ data: Data, to url: URL) throws {
        do {
            try AtomicFile.write(data, to: url)
        } catch {
            throw ImageIOError(file: url.path, kind: .writeFailed, reason: "cannot write (\(error.localizedDescription))")
        }
    }
}

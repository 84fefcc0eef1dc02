import Foundation
import ImageCodecs
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// Decoding, encoding and SAM preprocessing against PIL / the MobileSAM reference
/// (Scripts/refdump/images.py: Pillow 13.0, torchvision 0.29; fixtures under Tests/Fixtures/images/).
final class ImageTests: XCTestCase {
    static let images = Fixture.directory.appendingPathComponent("images")

    static func file(_ name: String) -> URL { images.appendingPathComponent(name) }

    /// The fixture's U8 (H, W, 3) array as an RGBImage.
    static func rgb(_ t: Tensor) -> RGBImage {
        precondition(t.rank == 3 && t.shape[2] == 3, "expected (H, W, 3), got \(t.shape)")
        return RGBImage(width: t.shape[1], height: t.shape[0], pixels: t.data.map { UInt8($0) })
    }

    /// Largest absolute difference of two same-sized images, in levels.
    static func maxDifference(_ a: RGBImage, _ b: RGBImage) -> Int {
        precondition(a.width == b.width && a.height == b.height, "sizes \(a.size) vs \(b.size)")
        return zip(a.pixels, b.pixels).map { abs(Int($0) - Int($1)) }.max() ?? 0
    }

    func decodedNames(_ suffix: String) throws -> (Fixture, [String]) {
        let f = try Fixture("images_decoded")
        let names = f.tensors.keys.filter { $0.hasSuffix(suffix) }.sorted()
        return (f, names)
    }

    // MARK: - Decoding

    /// PNG: every colour type and bit depth (palette + tRNS, grey + alpha, 16-bit, interlaced)
    /// must equal PIL's `convert("RGB")` exactly (0 levels).
    func testPNGDecodingEqualsPIL() throws {
        let (f, names) = try decodedNames(".png")
        XCTAssertEqual(names.count, 19, "expected 19 PNG fixtures, found \(names)")
        for name in names {
            let image = try ImageIO.read(Self.file(name))
            let expected = Self.rgb(f[name])
            XCTAssertEqual(image.size, expected.size, name)
            XCTAssertEqual(Self.maxDifference(image, expected), 0, "\(name) differs from PIL")
        }
    }

    /// JPEG (grey, 4:2:0, 4:2:2, 4:4:4, progressive, CMYK) vs PIL. PIL's wheel bundles its own
    /// libjpeg-turbo (3.x), this build links Debian's 2.1.5; both use the integer slow DCT and
    /// fancy upsampling. Observed: 0 levels on every fixture; asserted: ≤ 1 level (the allowance
    /// for another libjpeg-turbo build), and exact on the fixtures as observed.
    func testJPEGDecodingMatchesPIL() throws {
        let (f, names) = try decodedNames(".jpg")
        XCTAssertEqual(names, ["cmyk.jpg", "grey.jpg", "progressive.jpg", "rgb420.jpg", "rgb422.jpg", "rgb444.jpg"])
        var worst = 0
        for name in names {
            let image = try ImageIO.read(Self.file(name))
            let expected = Self.rgb(f[name])
            XCTAssertEqual(image.size, expected.size, name)
            let d = Self.maxDifference(image, expected)
            XCTAssertLessThanOrEqual(d, 1, "\(name) differs from PIL by \(d) levels")
            worst = max(worst, d)
        }
        XCTAssertEqual(worst, 0, "observed JPEG difference to PIL changed (was 0 with Debian libjpeg-turbo 2.1.5)")
    }

    /// The format comes from the signature, not the name.
    func testFormatIsSniffedFromContent() throws {
        let dir = try temporaryDirectory()
        let pairs = [("rgb8.png", "really_png.jpg"), ("rgb444.jpg", "really_jpeg.png"), ("grey8.png", "no_extension")]
        for (source, disguise) in pairs {
            let copy = dir.appendingPathComponent(disguise)
            try FileManager.default.copyItem(at: Self.file(source), to: copy)
            XCTAssertEqual(try ImageIO.read(copy), try ImageIO.read(Self.file(source)), disguise)
        }
        XCTAssertEqual(ImageIO.sniff(try Data(contentsOf: Self.file("rgb8.png"))), .png)
        XCTAssertEqual(ImageIO.sniff(try Data(contentsOf: Self.file("cmyk.jpg"))), .jpeg)
        XCTAssertNil(ImageIO.sniff(Data("GIF89a".utf8)))
    }

    /// Broken files (PIL refuses each one too) throw ImageIOError naming the file; nothing crashes.
    func testBrokenFilesThrowTypedErrors() throws {
        let cases: [(String, ImageIOError.Kind, String)] = [
            ("truncated.png", .corrupt, "truncated"),
            ("bad_crc.png", .corrupt, "CRC"),
            ("truncated.jpg", .corrupt, "truncated"),
            ("truncated_progressive.jpg", .corrupt, "truncated"),
            ("text.jpg", .unknownFormat, "not a PNG or JPEG"),
            ("empty.png", .empty, "empty"),
            ("does_not_exist.png", .unreadable, "cannot read"),
        ]
        for (name, kind, phrase) in cases {
            let url = Self.file(name)
            XCTAssertThrowsError(try ImageIO.read(url), name) { error in
                guard let e = error as? ImageIOError else { return XCTFail("\(name): untyped error \(error)") }
                XCTAssertEqual(e.kind, kind, "\(name): \(e)")
                XCTAssertEqual(e.file, url.path)
                XCTAssertTrue(e.description.contains(url.path), "\(e)")
                XCTAssertTrue(e.reason.contains(phrase), "\(name): reason '\(e.reason)' lacks '\(phrase)'")
            }
        }
    }

    /// `maximumPixels` refuses an image from its header, before allocating pixels.
    func testTooLargeIsRefused() throws {
        let saved = ImageIO.maximumPixels
        defer { ImageIO.maximumPixels = saved }
        ImageIO.maximumPixels = 100  // the fixtures are 23×17 = 391 and 37×29 = 1073 pixels
        for name in ["rgb8.png", "rgb420.jpg"] {
            XCTAssertThrowsError(try ImageIO.read(Self.file(name))) { error in
                XCTAssertEqual((error as? ImageIOError)?.kind, .tooLarge, "\(name): \(error)")
            }
        }
    }

    // MARK: - Encoding

    /// RGB and grey PNGs written atomically decode back to the same bytes; no temp file is left.
    func testPNGWritingRoundTrips() throws {
        let dir = try temporaryDirectory()
        var rng = SeededRandom(seed: 11)
        let W = 29, H = 13
        let rgb = RGBImage(width: W, height: H, pixels: (0..<(W * H * 3)).map { _ in UInt8(truncatingIfNeeded: rng.next() >> 32) })
        let mask = GreyImage(width: W, height: H, pixels: (0..<(W * H)).map { _ in rng.next() & 1 == 0 ? 0 : 255 })
        let rgbURL = dir.appendingPathComponent("overlay.png"), maskURL = dir.appendingPathComponent("mask.png")
        try ImageIO.writePNG(rgb, to: rgbURL)
        try ImageIO.writePNG(mask, to: maskURL)
        XCTAssertEqual(try ImageIO.read(rgbURL), rgb)
        let back = try ImageIO.read(maskURL)
        XCTAssertEqual(back.pixels, mask.pixels.flatMap { [$0, $0, $0] })
        // Overwriting replaces the file in one step.
        try ImageIO.writePNG(RGBImage(width: 2, height: 1, pixels: [1, 2, 3, 4, 5, 6]), to: rgbURL)
        XCTAssertEqual(try ImageIO.read(rgbURL).pixels, [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted(), ["mask.png", "overlay.png"])
        XCTAssertEqual(Array(try ImageIO.encodePNG(mask).prefix(4)), [0x89, 0x50, 0x4E, 0x47])
        // A folder that does not exist: a typed write error naming the file.
        let missing = dir.appendingPathComponent("no/such/dir/mask.png")
        XCTAssertThrowsError(try ImageIO.writePNG(mask, to: missing)) { error in
            XCTAssertEqual((error as? ImageIOError)?.kind, .writeFailed)
            XCTAssertEqual((error as? ImageIOError)?.file, missing.path)
        }
    }

    // MARK: - Resize

    /// PIL BILINEAR through the reference ResizeLongestSide (61×47 → longest 32, 100, 7; one-axis
    /// cases; a tall 20×61 image whose vertical pass runs first) and straight PIL resizes to mixed
    /// sizes (both pass orders): 0 levels observed and asserted, for the fast path and the
    /// reference loop.
    func testResizeEqualsPIL() throws {
        let f = try Fixture("images_resize")
        let source = Self.rgb(f["source"])
        for target in [32, 100, 7] {
            let expected = Self.rgb(f["longest\(target)"])
            let resize = ResizeLongestSide(targetLength: target)
            XCTAssertEqual(resize.targetSize(for: source.size), expected.size)
            XCTAssertEqual(Self.maxDifference(resize.applyImage(source), expected), 0, "longest side \(target)")
            XCTAssertEqual(Self.maxDifference(PILResample.resizeBilinearReference(source, width: expected.width, height: expected.height), expected), 0, "reference, longest side \(target)")
        }
        for (src, key) in [("source_row", "row_longest32"), ("source_col", "col_longest32"), ("source_tall", "tall_longest32")] {
            let expected = Self.rgb(f[key])
            let out = ResizeLongestSide(targetLength: 32).applyImage(Self.rgb(f[src]))
            XCTAssertEqual(out.size, expected.size, key)
            XCTAssertEqual(Self.maxDifference(out, expected), 0, key)
        }
        XCTAssertTrue(PILResample.verticalPassFirst(from: ImageSize(height: 61, width: 20), to: ImageSize(height: 32, width: 10)))
        XCTAssertFalse(PILResample.verticalPassFirst(from: source.size, to: ImageSize(height: 25, width: 32)))
        for (key, w, h) in [("pil_40x17", 17, 40), ("pil_29x90", 90, 29), ("pil_10x50", 50, 10)] {
            let expected = Self.rgb(f[key])
            XCTAssertEqual(Self.maxDifference(PILResample.resizeBilinear(source, width: w, height: h), expected), 0, key)
            XCTAssertEqual(Self.maxDifference(PILResample.resizeBilinearReference(source, width: w, height: h), expected), 0, key)
        }
        // Already the target size: unchanged (torchvision returns the image itself).
        XCTAssertEqual(ResizeLongestSide(targetLength: 61).applyImage(source), source)
    }

    /// The parallel fast path equals the plain reference loop bit for bit on a bigger random image.
    func testResizeFastPathEqualsReference() {
        var rng = SeededRandom(seed: 5)
        let W = 173, H = 121
        let image = RGBImage(width: W, height: H, pixels: (0..<(W * H * 3)).map { _ in UInt8(truncatingIfNeeded: rng.next() >> 32) })
        // Both pass orders: (150, 30) and (200, 40) run the vertical pass first.
        for (w, h) in [(64, 45), (300, 210), (31, 200), (173, 60), (90, 121), (5, 3), (150, 30), (200, 40)] {
            XCTAssertEqual(PILResample.resizeBilinear(image, width: w, height: h),
                           PILResample.resizeBilinearReference(image, width: w, height: h), "\(W)×\(H) → \(w)×\(h)")
        }
    }

    /// get_preprocess_shape and apply_coords/apply_boxes, values worked out from the reference formulas.
    func testResizeLongestSideGeometry() {
        let r = ResizeLongestSide()
        XCTAssertEqual(r.targetSize(for: ImageSize(height: 3000, width: 4000)), ImageSize(height: 768, width: 1024))
        XCTAssertEqual(r.targetSize(for: ImageSize(height: 1365, width: 2048)), ImageSize(height: 683, width: 1024))  // 682.5 rounds up
        XCTAssertEqual(r.targetSize(for: ImageSize(height: 500, width: 333)), ImageSize(height: 1024, width: 682))    // 681.98
        XCTAssertEqual(r.targetSize(for: ImageSize(height: 1, width: 5000)), ImageSize(height: 0, width: 1024))       // as in the reference
        XCTAssertEqual(ResizeLongestSide.preprocessShape(ImageSize(height: 47, width: 61), longSideLength: 32),
                       ImageSize(height: 25, width: 32))
        let size = ImageSize(height: 3000, width: 4000)
        XCTAssertEqual(r.applyCoords([400, 300, 4000, 3000], originalSize: size), [102.4, 76.8, 1024, 768])
        XCTAssertEqual(r.applyBoxes([0, 0, 2000, 1500], originalSize: size), [0, 0, 512, 384])
        let odd = ImageSize(height: 47, width: 61)
        let mapped = ResizeLongestSide(targetLength: 32).applyCoords([10, 10], originalSize: odd)
        XCTAssertEqual(mapped, [10 * (32.0 / 61.0), 10 * (25.0 / 47.0)])
    }

    // MARK: - Preprocessing

    /// ResizeLongestSide(40) + the reference `Sam.preprocess` (normalise, pad) vs our pipeline:
    /// relative error ≤ 1e-6 (observed 0: the same Float32 operations), padding exactly zero.
    func testPreprocessMatchesReference() throws {
        let source = Self.rgb(try Fixture("images_resize")["source"])
        let f = try Fixture("images_preprocess")
        let size = f.int("size")
        let p = SAMPreprocessing.preprocess(source, size: size)
        XCTAssertEqual(p.originalSize, ImageSize(height: 47, width: 61))
        XCTAssertEqual(p.inputSize, ImageSize(height: f.int("resized_height"), width: f.int("resized_width")))
        XCTAssertEqual(p.input.shape, [1, 3, size, size])
        XCTAssertLessThanOrEqual(relativeError(p.input, f["y"]), 1e-6)
        let resized = ResizeLongestSide(targetLength: size).applyImage(source)
        XCTAssertEqual(resized.pixels.map(Float.init), f["resized"].data)
        XCTAssertEqual(SAMPreprocessing.normaliseAndPadReference(resized, size: size).data, p.input.data)
        for c in 0..<3 {
            for y in 0..<size {
                for x in 0..<size where y >= p.inputSize.height || x >= p.inputSize.width {
                    XCTAssertEqual(p.input.data[(c * size + y) * size + x], 0)
                }
            }
        }
    }

    /// The full-size pipeline on a 1024-wide input: fast normalisation equals the reference loop.
    func testNormaliseAndPadFullSize() {
        var rng = SeededRandom(seed: 9)
        let image = RGBImage(width: 1024, height: 37, pixels: (0..<(1024 * 37 * 3)).map { _ in UInt8(truncatingIfNeeded: rng.next() >> 32) })
        let p = SAMPreprocessing.preprocess(image)
        XCTAssertEqual(p.inputSize, ImageSize(height: 37, width: 1024))
        XCTAssertEqual(p.input.shape, [1, 3, 1024, 1024])
        XCTAssertEqual(p.input.data, SAMPreprocessing.normaliseAndPadReference(image).data)
        XCTAssertEqual(p.input.data[0], (Float(image.pixels[0]) - 123.675) / 58.395, accuracy: 1e-5)
    }

    // MARK: - Helpers

    func temporaryDirectory() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("samdistill-images-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        return dir
    }
}

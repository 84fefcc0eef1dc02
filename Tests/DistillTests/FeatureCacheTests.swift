import Distill
import Foundation
import HDF5
import ImageCodecs
import Layers
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// The HDF5 feature cache (issue 4): schema, contents vs the inference core, resume, refusal of
/// mismatched settings, bad files, sharding, prefetch, crash safety under SIGKILL, h5py and
/// PyTorch interop. Most tests use a tiny random TinyViT teacher (64×64 → 8×4×4) so they run in
/// milliseconds per image; `testRealMobileSAMTeacherMatchesInferenceCore` uses mobile_sam.pt.
final class FeatureCacheTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = try CacheTestSupport.temporaryDirectory("cache")
    }

    override func tearDownWithError() throws {
        if let dir { try? FileManager.default.removeItem(at: dir) }
    }

    func tinyTeacher(imageSize: Int = 64) throws -> TeacherEncoder {
        let (w, c) = try CacheTestSupport.writeTinyTeacher(in: dir, imageSize: imageSize)
        return try TeacherEncoder.load(weights: w, config: c)
    }

    func build(_ images: URL, _ out: URL, teacher: TeacherEncoder, configure: (inout CacheOptions) -> Void = { _ in }) throws -> CacheSummary {
        var o = CacheOptions(images: images, output: out)
        o.progress = false
        configure(&o)
        return try FeatureCacheBuilder(options: o, teacher: teacher).run()
    }

    // MARK: HDF5 wrapper

    /// float16 datasets round-trip bit-exactly, attributes of every kind round-trip, and errors
    /// name the file and the object.
    func testHDF5DatasetsAttributesAndErrors() throws {
        let url = dir.appendingPathComponent("t.h5")
        let f = try HDF5File(url, mode: .create)
        let d = try f.createDataset("half", type: .float16, rowShape: [3], rows: 2)
        let values: [Float] = [1, -2.5, 65504, 0.0001, 3.14159, -0]
        let bits = FloatConversion.toHalfBits(values)
        try bits.withUnsafeBytes { try d.writeRaw(rows: 0, count: 2, type: .float16, bytes: $0) }
        try d.setRows(3)
        XCTAssertEqual(d.shape, [3, 3])
        try f.setAttribute("name", "ünïcode")
        try f.setAttribute("n", 7)
        try f.setAttribute("xs", doubles: [1.5, 2.5])
        try f.setAttribute("list", strings: ["a", "b"])
        let s = try f.createDataset("s", type: .string(8), rowShape: [], rows: 2)
        try s.writeStrings(rows: 0, ["abc", "12345678"])
        XCTAssertThrowsError(try s.writeStrings(rows: 0, ["123456789"]))
        f.close()

        let g = try HDF5File(url, mode: .readOnly)
        let h = try g.dataset("half")
        XCTAssertEqual(h.elementType, .float16)
        var back = [UInt16](repeating: 0, count: 6)
        try back.withUnsafeMutableBytes { try h.readRaw(rows: 0, count: 2, type: .float16, into: $0) }
        XCTAssertEqual(back, bits)
        XCTAssertEqual(try h.readFloats(rows: 0, count: 2), values.map { Float(Float16($0)) }, "HDF5's own f16→f32 conversion agrees")
        XCTAssertEqual(try g.attribute("name"), .string("ünïcode"))
        XCTAssertEqual(try g.attribute("n")?.intValue, 7)
        XCTAssertEqual(try g.attribute("xs"), .doubles([1.5, 2.5]))
        XCTAssertEqual(try g.attribute("list"), .strings(["a", "b"]))
        XCTAssertEqual(try g.dataset("s").readStrings(rows: 0, count: 2), ["abc", "12345678"])
        XCTAssertThrowsError(try g.dataset("nope")) { e in
            XCTAssertTrue("\(e)".contains(url.path) && "\(e)".contains("nope"), "\(e)")
        }
        XCTAssertThrowsError(try h.readFloats(rows: 2, count: 2)) { e in XCTAssertTrue("\(e)".contains("half"), "\(e)") }
        let walk = try g.walk().map(\.path)
        XCTAssertEqual(walk, ["/", "/half", "/s"])
        g.close()

        let text = dir.appendingPathComponent("text.h5")
        try Data("not hdf5".utf8).write(to: text)
        XCTAssertThrowsError(try HDF5File(text, mode: .readOnly)) { e in
            XCTAssertTrue("\(e)".contains(text.path) && "\(e)".contains("not an HDF5 file"), "\(e)")
        }
        XCTAssertThrowsError(try HDF5File(dir.appendingPathComponent("missing.h5"), mode: .readOnly)) { e in
            XCTAssertTrue("\(e)".contains("no such file"), "\(e)")
        }
    }

    func testSHA256KnownAnswers() {
        XCTAssertEqual(Checksum.sha256(Data()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(Checksum.sha256(Data("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(Checksum.sha256(Data(String(repeating: "a", count: 1000).utf8)),
                       "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3")
    }

    // MARK: augmentation

    /// View 0 is the identity; other views are reproducible per (seed, source, view), inside the
    /// image, and vary; `apply` crops and mirrors exactly (vs a naive per-pixel loop).
    func testAugmentationIsSeededAndExact() {
        let aug = Augmentation()
        let size = ImageSize(height: 30, width: 50)
        XCTAssertEqual(aug.parameters(for: size, seed: 3, source: "a.jpg", view: 0), .identity(size))
        var seen = Set<String>()
        for v in 1..<20 {
            let p = aug.parameters(for: size, seed: 3, source: "a.jpg", view: v)
            XCTAssertEqual(p, aug.parameters(for: size, seed: 3, source: "a.jpg", view: v))
            XCTAssertTrue(p.x >= 0 && p.y >= 0 && p.width >= 1 && p.height >= 1 && p.x + p.width <= 50 && p.y + p.height <= 30, "\(p)")
            let area = Double(p.width * p.height) / 1500
            XCTAssertGreaterThan(area, 0.2, "\(p)")
            seen.insert(p.description)
        }
        XCTAssertGreaterThan(seen.count, 15)
        XCTAssertTrue(seen.contains { $0.contains("flipped") })
        XCTAssertNotEqual(aug.parameters(for: size, seed: 3, source: "a.jpg", view: 1), aug.parameters(for: size, seed: 4, source: "a.jpg", view: 1))

        var rng = SeededRandom(seed: 2)
        let img = RGBImage(width: 7, height: 5, pixels: (0..<105).map { _ in UInt8(rng.next() % 256) })
        for p in [ViewParameters(x: 1, y: 2, width: 4, height: 3, flipped: true), ViewParameters(x: 0, y: 1, width: 7, height: 2, flipped: false)] {
            let out = Augmentation.apply(p, to: img)
            XCTAssertEqual(out.size, ImageSize(height: p.height, width: p.width))
            for y in 0..<p.height {
                for x in 0..<p.width {
                    let sx = p.x + (p.flipped ? p.width - 1 - x : x)
                    XCTAssertTrue(out[x, y] == img[sx, p.y + y])
                }
            }
        }
    }

    // MARK: contents

    /// Every row of a cache built by the tiny teacher, against the inference core recomputed
    /// from the source files: the stored padded uint8 image equals the view's crop/flip + SAM
    /// resize + pad; the batch's normalised image equals `SAMPreprocessing.normaliseAndPad`
    /// bit-exactly; the embedding equals the teacher's output up to float16 rounding (float32
    /// storage: exactly); sizes, views and splits are as planned.
    func testRowsMatchInferenceCore() throws {
        let images = dir.appendingPathComponent("images")
        let names = try CacheTestSupport.writeSyntheticImages(in: images, count: 5)
        let teacher = try tinyTeacher()
        for dtype in ["float16", "float32"] {
            let out = dir.appendingPathComponent("c-\(dtype).h5")
            let summary = try build(images, out, teacher: teacher) {
                $0.views = 3; $0.seed = 11; $0.embeddingDType = dtype; $0.split = .fraction(0.4)
            }
            let reader = try CacheReader(out)
            let plan = FeatureCacheBuilder.plan(sources: names.sorted(), views: 3, split: .fraction(0.4))
            XCTAssertEqual(reader.count, plan.count)
            XCTAssertEqual(summary.rowsWritten, plan.count)
            XCTAssertTrue(summary.skipped.isEmpty)
            XCTAssertEqual(reader.rows().count, plan.count)
            let val = plan.filter { $0.split == 1 }.count
            XCTAssertGreaterThan(val, 0, "the 0.4 fraction picks at least one of 5 images")
            XCTAssertEqual(reader.rows(split: .val).count, val)
            XCTAssertEqual(reader.embeddingDType, dtype)
            XCTAssertEqual(reader.embeddingShape, [8, 4, 4])
            let batch = try reader.batch(rows: reader.rows())
            XCTAssertEqual(batch.images.shape, [plan.count, 3, 64, 64])
            XCTAssertEqual(batch.embeddings.shape, [plan.count, 8, 4, 4])
            for (i, p) in plan.enumerated() {
                let row = try reader.row(i)
                XCTAssertEqual(row.source, p.source)
                XCTAssertEqual(row.view, p.view)
                XCTAssertEqual(row.split.rawValue, p.split)
                let decoded = try ImageIO.read(images.appendingPathComponent(p.source))
                XCTAssertEqual(row.originalSize, decoded.size)
                let params = Augmentation().parameters(for: decoded.size, seed: 11, source: p.source, view: p.view)
                XCTAssertEqual(row.viewParameters, params)
                let resized = ResizeLongestSide(targetLength: 64).applyImage(Augmentation.apply(params, to: decoded))
                XCTAssertEqual(row.image.validSize, resized.size)
                XCTAssertEqual(row.image.pixels, PaddedImage(resizing: Augmentation.apply(params, to: decoded), to: 64).pixels)
                let input = SAMPreprocessing.normaliseAndPad(resized, size: 64)
                XCTAssertEqual(Array(batch.images.data[(i * 3 * 64 * 64)..<((i + 1) * 3 * 64 * 64)]), input.data, "row \(i): normalised image")
                XCTAssertEqual(batch.validSizes[i], resized.size)
                let y = teacher.encode(input)
                if dtype == "float32" {
                    XCTAssertEqual(row.embedding.data, y.data, "row \(i): float32 embedding")
                } else {
                    let (ok, worst) = withinHalfRounding(row.embedding.data, y.data)
                    XCTAssertTrue(ok, "row \(i): float16 embedding beyond rounding (worst diff/bound \(worst))")
                    XCTAssertEqual(row.embedding.data, y.data.map { Float(Float16($0)) }, "row \(i): round-to-nearest float16")
                }
                XCTAssertEqual(Array(batch.embeddings.data[(i * 128)..<((i + 1) * 128)]), row.embedding.data)
            }
            // The tiny teacher is input-sensitive (else the embedding checks would be weak).
            let e0 = try reader.row(0).embedding, e1 = try reader.row(plan.count - 1).embedding
            XCTAssertGreaterThan(relativeError(e0, e1), 0.01, "different images, different embeddings")
            if dtype == "float16" {
                XCTAssertTrue(plan.contains { $0.view > 0 } && (0..<plan.count).contains { try! reader.row($0).viewParameters.flipped })
            }
        }
    }

    /// Rerunning the same command changes nothing; rows whose complete flag is cleared (as after
    /// a crash) are recomputed and equal the first run's.
    func testResumeRecomputesOnlyIncompleteRows() throws {
        let images = dir.appendingPathComponent("images")
        try CacheTestSupport.writeSyntheticImages(in: images, count: 4)
        let teacher = try tinyTeacher()
        let out = dir.appendingPathComponent("c.h5")
        let first = try build(images, out, teacher: teacher) { $0.views = 2 }
        XCTAssertEqual(first.rowsWritten, 8)
        let reference = try CacheTestSupport.rowDump(out)
        let again = try build(images, out, teacher: teacher) { $0.views = 2 }
        XCTAssertEqual(again.rowsWritten, 0)
        XCTAssertEqual(again.rowsAlreadyComplete, 8)
        // Clear rows 1, 2 and 7 and damage their data, as a crash between data and flag would leave.
        do {
            let f = try HDF5File(out, mode: .readWrite)
            let c = try f.dataset("complete")
            for r in [1, 2, 7] {
                try c.write(rows: r, [UInt8(0)])
                try f.dataset("image").write(rows: r, [UInt8](repeating: 255, count: 64 * 64 * 3))
            }
            f.close()
        }
        XCTAssertEqual(try CacheReader(out).rows(), [0, 3, 4, 5, 6])
        let resumed = try build(images, out, teacher: teacher) { $0.views = 2 }
        XCTAssertEqual(resumed.rowsWritten, 3)
        XCTAssertEqual(resumed.rowsAlreadyComplete, 5)
        XCTAssertEqual(try CacheTestSupport.rowDump(out), reference)
    }

    /// Another teacher, dtype, view count, seed or split is refused with the attribute named;
    /// `overwrite` starts over; a file that is no cache is refused; a changed folder is refused.
    func testMismatchedSettingsAreRefused() throws {
        let images = dir.appendingPathComponent("images")
        try CacheTestSupport.writeSyntheticImages(in: images, count: 3)
        let teacher = try tinyTeacher()
        let out = dir.appendingPathComponent("c.h5")
        _ = try build(images, out, teacher: teacher) { $0.views = 2; $0.seed = 1 }
        let cases: [(String, (inout CacheOptions) -> Void)] = [
            ("views", { $0.views = 3; $0.seed = 1 }),
            ("seed", { $0.views = 2; $0.seed = 2 }),
            ("embedding_dtype", { $0.views = 2; $0.seed = 1; $0.embeddingDType = "float32" }),
            ("split", { $0.views = 2; $0.seed = 1; $0.split = .fraction(0.5) }),
        ]
        for (key, configure) in cases {
            XCTAssertThrowsError(try build(images, out, teacher: teacher, configure: configure), key) { e in
                XCTAssertTrue("\(e)".contains(key + ":") && "\(e)".contains("--overwrite"), "\(key): \(e)")
            }
        }
        let other = TeacherEncoder(id: "tinyvit", architecture: "TinyViT", configJSON: teacher.configJSON,
                                 checkpointSHA256: String(repeating: "0", count: 64), imageSize: 64,
                                 embeddingShape: teacher.embeddingShape) { teacher.encode($0) }
        XCTAssertThrowsError(try build(images, out, teacher: other) { $0.views = 2; $0.seed = 1 }) { e in
            XCTAssertTrue("\(e)".contains("teacher_sha256"), "\(e)")
        }
        try CacheTestSupport.writeSyntheticImages(in: images.appendingPathComponent("more"), count: 1, seed: 9)
        XCTAssertThrowsError(try build(images, out, teacher: teacher) { $0.views = 2; $0.seed = 1 }) { e in
            XCTAssertTrue("\(e)".contains("2 rows new"), "\(e)")
        }
        let s = try build(images, out, teacher: teacher) { $0.views = 3; $0.seed = 1; $0.overwrite = true }
        XCTAssertEqual(s.rowsWritten, 12)
        XCTAssertEqual(s.rowsAlreadyComplete, 0)

        let foreign = dir.appendingPathComponent("foreign.h5")
        try HDF5File(foreign, mode: .create).close()
        XCTAssertThrowsError(try build(images, foreign, teacher: teacher)) { e in
            XCTAssertTrue("\(e)".contains("not a samdistill feature cache"), "\(e)")
        }
        XCTAssertThrowsError(try CacheReader(foreign)) { e in XCTAssertTrue("\(e)".contains("'format'"), "\(e)") }
    }

    /// Sharded caches read as one row space, equal row by row to the unsharded cache.
    func testShardsReadAsOneCache() throws {
        let images = dir.appendingPathComponent("images")
        try CacheTestSupport.writeSyntheticImages(in: images, count: 5)
        let teacher = try tinyTeacher()
        let single = dir.appendingPathComponent("single.h5"), sharded = dir.appendingPathComponent("sharded.h5")
        _ = try build(images, single, teacher: teacher) { $0.views = 2 }
        let s = try build(images, sharded, teacher: teacher) { $0.views = 2; $0.shardSize = 4 }
        XCTAssertEqual(s.files.count, 4, "index + 3 shards of ≤ 4 rows for 10 rows")
        XCTAssertEqual(try CacheTestSupport.rowDump(sharded), try CacheTestSupport.rowDump(single))
        let resumed = try build(images, sharded, teacher: teacher) { $0.views = 2; $0.shardSize = 4 }
        XCTAssertEqual(resumed.rowsWritten, 0)
        XCTAssertEqual(resumed.rowsAlreadyComplete, 10)
    }

    /// The trainer's prefetcher delivers the same batches as direct reads, in order.
    func testPrefetchMatchesDirectBatches() throws {
        let images = dir.appendingPathComponent("images")
        try CacheTestSupport.writeSyntheticImages(in: images, count: 4)
        let out = dir.appendingPathComponent("c.h5")
        _ = try build(images, out, teacher: try tinyTeacher()) { $0.views = 2 }
        let reader = try CacheReader(out)
        let data = CacheTrainingData(readers: [reader], samples: reader.rows().map { (cache: 0, row: $0) })
        let batches = CacheReader.shuffledBatches(Array(0..<data.count), size: 3, seed: 4)
        XCTAssertEqual(batches.map(\.count), [3, 3, 2])
        XCTAssertEqual(Set(batches.flatMap { $0 }), Set(0..<data.count))
        let prefetcher = Prefetcher(data)
        defer { prefetcher.drain() }
        prefetcher.request(batches[0], seed: 0)
        var n = 0
        for rows in batches {
            let b = try prefetcher.take(rows, seed: 0)
            if n + 1 < batches.count { prefetcher.request(batches[n + 1], seed: 0) }
            let direct = try data.batch(rows, seed: 0)
            XCTAssertEqual(b.images.data, direct.images.data)
            XCTAssertEqual(b.targets.data, direct.targets.data)
            n += 1
        }
        XCTAssertEqual(n, 3)
    }

    // MARK: bad input

    /// A truncated JPEG, a zero-byte file and a text file named .jpg among real photos: the three
    /// are reported with their reasons, the photos are cached. A folder of only bad files is an
    /// error naming them.
    func testBadFilesAreSkippedAndReported() throws {
        let photos = try CacheTestSupport.realPhotos(["fruits.jpg", "butterfly.jpg"])
        let images = dir.appendingPathComponent("images")
        try FileManager.default.createDirectory(at: images, withIntermediateDirectories: true)
        for p in photos { try FileManager.default.copyItem(at: p, to: images.appendingPathComponent(p.lastPathComponent)) }
        let jpeg = try Data(contentsOf: photos[0])
        try jpeg.prefix(jpeg.count / 2).write(to: images.appendingPathComponent("half.jpg"))
        try Data().write(to: images.appendingPathComponent("empty.jpg"))
        try Data("this is not a picture\n".utf8).write(to: images.appendingPathComponent("notes.jpg"))
        let teacher = try tinyTeacher()
        let out = dir.appendingPathComponent("c.h5")
        let s = try build(images, out, teacher: teacher)
        XCTAssertEqual(Set(s.skipped.map(\.file)), ["half.jpg", "empty.jpg", "notes.jpg"])
        for (file, reason) in s.skipped { print("skipped \(file): \(reason)") }
        XCTAssertTrue(s.skipped.first { $0.file == "half.jpg" }!.reason.contains("truncated"))
        XCTAssertTrue(s.skipped.first { $0.file == "empty.jpg" }!.reason.contains("empty"))
        XCTAssertTrue(s.skipped.first { $0.file == "notes.jpg" }!.reason.contains("not a PNG or JPEG"))
        XCTAssertTrue(s.report.contains("half.jpg"))
        let reader = try CacheReader(out)
        XCTAssertEqual(Set(try reader.rows().map { try reader.row($0).source }), ["fruits.jpg", "butterfly.jpg"])

        let bad = dir.appendingPathComponent("bad")
        try FileManager.default.createDirectory(at: bad, withIntermediateDirectories: true)
        try Data().write(to: bad.appendingPathComponent("empty.png"))
        XCTAssertThrowsError(try build(bad, dir.appendingPathComponent("bad.h5"), teacher: teacher)) { e in
            XCTAssertTrue("\(e)".contains("no readable image") && "\(e)".contains("empty.png"), "\(e)")
        }
        let none = dir.appendingPathComponent("none")
        try FileManager.default.createDirectory(at: none, withIntermediateDirectories: true)
        XCTAssertThrowsError(try build(none, dir.appendingPathComponent("none.h5"), teacher: teacher)) { e in
            XCTAssertTrue("\(e)".contains("no JPEG or PNG"), "\(e)")
        }
    }

    // MARK: everything-masks

    /// A cache with everything-masks (tiny random encoder, MobileSAM's decoder, 64² input, 16²
    /// masks): each row's stored masks equal the generator run again on the row's image and
    /// float32 teacher embedding (RLE, scores, order), at most max_masks of them with the rest
    /// counted as dropped; other everything settings, or none, are refused on resume naming
    /// `everything_masks`; a resumed run keeps the rows.
    func testEverythingMasksEqualTheGeneratorAndResume() throws {
        let images = dir.appendingPathComponent("images")
        try CacheTestSupport.writeSyntheticImages(in: images, count: 3)
        let weights = try CacheTestSupport.writeTinySAM(in: dir)
        let teacher = try TeacherEncoder.load(weights: weights)
        let model = try SAMModel.load(contentsOf: weights)
        var settings = CacheTestSupport.tinyEverything
        settings.maxMasks = 6
        let out = dir.appendingPathComponent("e.h5")
        func build(_ s: EverythingMaskSettings?) throws -> CacheSummary {
            var o = CacheOptions(images: images, output: out)
            o.progress = false
            o.views = 2
            o.everythingMasks = s
            return try FeatureCacheBuilder(options: o, teacher: teacher, everything: try s.map { try EverythingMasker(settings: $0, model: model) }).run()
        }
        let summary = try build(settings)
        XCTAssertEqual(summary.rowsWritten, 6)
        XCTAssertTrue(summary.report.contains("everything masks:"), summary.report)
        let reader = try CacheReader(out)
        XCTAssertEqual(reader.everythingMaskSize, 16)
        let masker = try EverythingMasker(settings: settings, model: model)
        var stored = 0, dropped = 0
        for r in reader.rows() {
            let row = try reader.row(r)
            let expected = try masker.masks(image: row.image, embedding: teacher.encode(row.image.normalised()))
            let masks = try XCTUnwrap(try reader.everythingMasks(r))
            XCTAssertEqual(masks, expected.masks, "row \(r)")
            XCTAssertLessThanOrEqual(masks.count, 6)
            XCTAssertEqual(masks.map(\.predictedIoU), masks.map(\.predictedIoU).sorted(by: >))
            for m in masks {
                XCTAssertEqual([m.rle.height, m.rle.width], [16, 16])
                XCTAssertGreaterThan(m.rle.area, 0)
                // Inside the row's valid region (4 input pixels per mask pixel).
                let b = try XCTUnwrap(m.rle.runBox)
                XCTAssertLessThan(4 * b.x1, row.image.validSize.width + 2)
                XCTAssertLessThan(4 * b.y1, row.image.validSize.height + 2)
            }
            stored += masks.count
            dropped += expected.dropped
        }
        XCTAssertEqual(summary.everythingMasksStored, stored)
        XCTAssertEqual(summary.everythingMasksDropped, dropped)
        XCTAssertGreaterThan(stored, 12, "the tiny teacher should give several masks a row")
        XCTAssertGreaterThan(dropped, 0, "max_masks 6 should drop some")
        XCTAssertEqual(try reader.batch(rows: reader.rows()).everythingMasks?.map { $0.count },
                       try reader.rows().map { try reader.everythingMasks($0)!.count })
        reader.close()

        var other = settings
        other.maxMasks = 7
        for s in [other, nil] {
            XCTAssertThrowsError(try build(s)) { e in
                XCTAssertTrue("\(e)".contains("everything_masks: cache has {"), "\(e)")
            }
        }
        let again = try build(settings)
        XCTAssertEqual(again.rowsAlreadyComplete, 6)
        XCTAssertEqual(again.rowsWritten, 0)
    }

    /// `pack` keeps non-empty masks by predicted IoU within both capacities; `runBox` and
    /// `setPixel` read the RLE as the decoded mask says (bounding box, n-th set pixel in
    /// column-major order) on random masks.
    func testEverythingPackingAndRLEQueries() throws {
        var rng = SeededRandom(seed: 8)
        var masks: [EverythingMask] = []
        for i in 0..<12 {
            let (h, w) = (5 + i % 4, 7 + i % 3)
            let fill = i == 3 ? 0 : Float(i % 5 + 1) / 6
            let mask = BinaryMask(width: w, height: h, pixels: (0..<(h * w)).map { _ in rng.uniform() < fill })
            let rle = MaskRLE(mask)
            masks.append(EverythingMask(rle: rle, predictedIoU: Float(i % 7) / 7, stabilityScore: 1))
            guard let b = rle.runBox else { XCTAssertEqual(mask.area, 0); continue }
            let bb = try XCTUnwrap(mask.boundingBox)
            XCTAssertEqual([b.x0, b.y0, b.x1, b.y1], [bb.x0, bb.y0, bb.x1, bb.y1], "mask \(i)")
            var set: [(Int, Int)] = []
            for x in 0..<w { for y in 0..<h where mask.pixels[y * w + x] { set.append((x, y)) } }
            for (n, p) in set.enumerated() { XCTAssertTrue(rle.setPixel(n) == p, "mask \(i) pixel \(n)") }
        }
        let row = EverythingMasker.pack(masks, maxMasks: 5, maxCounts: 60)
        XCTAssertEqual(row.masks.count + row.dropped, 12)
        XCTAssertLessThanOrEqual(row.masks.count, 5)
        XCTAssertLessThanOrEqual(row.masks.reduce(0) { $0 + $1.rle.counts.count }, 60)
        XCTAssertFalse(row.masks.contains { $0.rle.area == 0 })
        XCTAssertEqual(row.masks.map(\.predictedIoU), row.masks.map(\.predictedIoU).sorted(by: >))
        // Greedy: every dropped non-empty mask scoring above the last kept one did not fit.
        let used = row.masks.reduce(0) { $0 + $1.rle.counts.count }
        for m in masks where m.rle.area > 0 && !row.masks.contains(m) && m.predictedIoU > row.masks.last!.predictedIoU {
            XCTAssertTrue(row.masks.count == 5 || used + m.rle.counts.count > 60)
        }
    }

    // MARK: crash safety

    /// `samdistill cache` killed with SIGKILL at random moments (at least 5 kills that landed
    /// while it ran): after each kill the file opens (if it was created yet), every row marked
    /// complete equals the uninterrupted run's row, and the final resumed run completes with
    /// every row equal to the uninterrupted run's. The rows hold everything-masks too (a tiny
    /// SAM teacher, 128² input, 32² masks).
    func testSIGKILLAtRandomMomentsNeverCorruptsTheCache() throws {
        let exe = try CacheTestSupport.executable()
        let images = dir.appendingPathComponent("images")
        try CacheTestSupport.writeSyntheticImages(in: images, count: 12)
        let w = try CacheTestSupport.writeTinySAM(in: dir, imageSize: 128)
        func args(_ out: URL) -> [String] {
            ["cache", "--images", images.path, "--teacher", w.path, "--out", out.path,
             "--views", "3", "--seed", "5", "--quiet", "--everything-masks", "--points-per-side", "4", "--full-grid",
             "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
        }
        let reference = dir.appendingPathComponent("reference.h5")
        let t0 = Date()
        let r = try CacheTestSupport.run(exe, args(reference))
        let duration = Date().timeIntervalSince(t0)
        XCTAssertEqual(r.status, 0, r.err)
        let expected = try CacheTestSupport.rowDump(reference)
        XCTAssertEqual(expected.count, 36)
        XCTAssertTrue(expected.allSatisfy { $0["image"] != nil && $0["everything"] != nil })
        XCTAssertGreaterThan(try CacheReader(reference).everythingMasks(0)?.count ?? 0, 0)

        let out = dir.appendingPathComponent("killed.h5")
        var rng = SeededRandom(seed: UInt64(Date().timeIntervalSince1970 * 1000))
        var kills = 0, partial = 0, attempts = 0
        while kills < 5 && attempts < 40 {
            attempts += 1
            let p = Process()
            p.executableURL = exe
            p.arguments = args(out)
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            let delay = Double(rng.uniform()) * duration
            Thread.sleep(forTimeInterval: delay)
            let wasRunning = p.isRunning
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            if wasRunning && p.terminationReason == .uncaughtSignal { kills += 1 }
            guard FileManager.default.fileExists(atPath: out.path) else { continue }
            let reader = try CacheReader(out)  // the file always opens
            let done = reader.rows()
            if !done.isEmpty && done.count < expected.count { partial += 1 }
            let dump = try CacheTestSupport.rowDump(out)
            for i in done { XCTAssertEqual(dump[i], expected[i], "after kill \(kills): row \(i) marked complete but differs") }
            if done.count == expected.count {
                // Finished before the kill: start over so later kills land mid-run again.
                try FileManager.default.removeItem(at: out)
            }
        }
        print("SIGKILL test: \(kills) kills while running in \(attempts) attempts, \(partial) left a partial cache; uninterrupted run \(String(format: "%.2f", duration)) s")
        XCTAssertGreaterThanOrEqual(kills, 5)
        let final = try CacheTestSupport.run(exe, args(out))
        XCTAssertEqual(final.status, 0, final.err)
        XCTAssertEqual(try CacheTestSupport.rowDump(out), expected)

        let inspect = try CacheTestSupport.run(exe, ["inspect", out.path])
        XCTAssertEqual(inspect.status, 0, inspect.err)
        XCTAssertTrue(inspect.out.contains("dataset /embedding  (36, 256, 8, 8) float16 chunks (1, 256, 8, 8), Fletcher-32 checksums"), inspect.out)
        XCTAssertTrue(inspect.out.contains("every dataset's chunks checksummed (Fletcher-32)"), inspect.out)
        XCTAssertTrue(inspect.out.contains("dataset /everything_rle_counts  (36, 32768) int32"), inspect.out)
        XCTAssertTrue(inspect.out.contains("@teacher_sha256"), inspect.out)
        XCTAssertTrue(inspect.out.contains("36 complete"), inspect.out)
    }

    // MARK: the real teacher

    /// MobileSAM's encoder (mobile_sam.pt) as the teacher on two real photos: each cached
    /// embedding equals the inference core's own `TinyViT.forward` on `SAMPreprocessing.preprocess`
    /// of the same file, up to float16 rounding (round-to-nearest of the float32 value, and within
    /// 2⁻¹¹ relative), and the stored image is the preprocessed image.
    func testRealMobileSAMTeacherMatchesInferenceCore() throws {
        let photos = try CacheTestSupport.realPhotos(["fruits.jpg", "messi5.jpg"])
        let images = dir.appendingPathComponent("images")
        try FileManager.default.createDirectory(at: images, withIntermediateDirectories: true)
        for p in photos { try FileManager.default.copyItem(at: p, to: images.appendingPathComponent(p.lastPathComponent)) }
        let teacher = try TeacherEncoder.load(weights: try Fixture.mobileSAMCheckpoint())
        XCTAssertEqual(teacher.id, "mobile_sam")
        XCTAssertEqual(teacher.checkpointSHA256, "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f")
        let out = dir.appendingPathComponent("c.h5")
        let s = try build(images, out, teacher: teacher)
        print("MobileSAM cache:\n" + s.report)
        let reader = try CacheReader(out)
        XCTAssertEqual(reader.rows().count, 2)
        for r in reader.rows() {
            let row = try reader.row(r)
            let pre = SAMPreprocessing.preprocess(try ImageIO.read(images.appendingPathComponent(row.source)))
            XCTAssertEqual(row.image.validSize, pre.inputSize)
            XCTAssertEqual(row.originalSize, pre.originalSize)
            XCTAssertEqual(try reader.batch(rows: [r]).images.data, pre.input.data)
            let y = teacher.encode(pre.input)
            XCTAssertEqual(row.embedding.shape, [256, 64, 64])
            let (ok, worst) = withinHalfRounding(row.embedding.data, y.data)
            print("\(row.source): worst |cached − exact| / float16 rounding bound \(worst)")
            XCTAssertTrue(ok, "\(row.source): beyond float16 rounding (\(worst))")
            XCTAssertEqual(row.embedding.data, y.data.map { Float(Float16($0)) }, row.source)
        }
    }

    // MARK: interop

    /// h5py reads every dataset of a cache; the embeddings come back as numpy float16 equal to
    /// our reader's values, and each complete row's everything-masks, decoded in numpy from the
    /// RLE (column-major, as pycocotools), equal our reader's masks. Needs a python3 with h5py and numpy: $SAMDISTILL_TEST_PYTHON, else the
    /// project's virtual environment (.venv/bin/python3, made by `Scripts/python-env test`, which
    /// Scripts/test runs), else python3 on PATH.
    func testH5pyReadsTheCache() throws {
        let images = dir.appendingPathComponent("images")
        try CacheTestSupport.writeSyntheticImages(in: images, count: 3)
        let out = dir.appendingPathComponent("c.h5")
        let weights = try CacheTestSupport.writeTinySAM(in: dir)
        var o = CacheOptions(images: images, output: out)
        o.progress = false
        o.views = 2
        o.everythingMasks = CacheTestSupport.tinyEverything
        _ = try FeatureCacheBuilder(options: o, teacher: try TeacherEncoder.load(weights: weights),
                                    everything: try EverythingMasker.load(o.everythingMasks, checkpoint: weights.path)).run()
        let reader = try CacheReader(out)
        let sums = try reader.rows().map { try reader.row($0).embedding.data.reduce(0.0) { $0 + Double($1) } }
        // Per complete row, per mask, the decoded mask's pixels (row-major, 0/1).
        let swiftMasks = try reader.rows().map { try reader.everythingMasks($0)!.map { $0.rle.decode().pixels.map { $0 ? 1 : 0 } } }
        XCTAssertGreaterThan(swiftMasks.joined().count, 3)
        let script = """
            import sys, json, h5py, numpy as np
            f = h5py.File(sys.argv[1], "r")
            out = {"attrs": {k: (v if isinstance(v, str) else np.asarray(v).tolist()) for k, v in f.attrs.items()},
                   "datasets": {}}
            for name, d in f.items():
                a = d[()]
                out["datasets"][name] = {"dtype": str(a.dtype), "shape": list(a.shape), "chunks": list(d.chunks)}
            e = f["embedding"][()]
            out["sums"] = [float(e[i].astype(np.float64).sum()) for i in range(e.shape[0]) if f["complete"][i] == 1]
            out["sources"] = [s.decode() for s in f["source"][()]]
            L = int(f.attrs["everything_mask_size"][0])
            out["masks"] = []
            for i in range(f["complete"].shape[0]):
                if f["complete"][i] != 1: continue
                lengths, counts = f["everything_rle_lengths"][i], f["everything_rle_counts"][i]
                starts = np.concatenate([[0], np.cumsum(lengths)])
                row = []
                for k in range(int(f["everything_masks"][i])):
                    flat, at, on = np.zeros(L * L, dtype=np.uint8), 0, 0
                    for c in counts[starts[k]:starts[k + 1]]:
                        flat[at:at + c] = on
                        at, on = at + int(c), 1 - on
                    row.append(flat.reshape((L, L), order="F").ravel().tolist())
                out["masks"].append(row)
            print(json.dumps(out))
            """
        let py = Process()
        py.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        py.arguments = [Self.h5pyPython, "-c", script, out.path]
        reader.close()  // h5py must be able to take HDF5's file lock: nothing of ours holds the file
        let pipe = Pipe(), err = Pipe()
        py.standardOutput = pipe
        py.standardError = err
        try py.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        let errText = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        py.waitUntilExit()
        guard py.terminationStatus == 0 else {
            return XCTFail("\(Self.h5pyPython) + h5py failed (Scripts/python-env test makes .venv with h5py): \(errText)")
        }
        let j = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        let ds = j["datasets"] as! [String: [String: Any]]
        XCTAssertEqual(Set(ds.keys), Set(CacheSchema.datasets + CacheSchema.everythingDatasets))
        XCTAssertEqual(ds["embedding"]!["dtype"] as? String, "float16")
        XCTAssertEqual(ds["embedding"]!["shape"] as? [Int], [6, 256, 4, 4])
        XCTAssertEqual(ds["embedding"]!["chunks"] as? [Int], [1, 256, 4, 4])
        XCTAssertEqual(ds["everything_rle_counts"]!["dtype"] as? String, "int32")
        XCTAssertEqual(ds["everything_rle_counts"]!["shape"] as? [Int], [6, 32768])
        XCTAssertEqual(j["masks"] as? [[[Int]]], swiftMasks)
        XCTAssertEqual(ds["image"]!["dtype"] as? String, "uint8")
        XCTAssertEqual(ds["image"]!["shape"] as? [Int], [6, 64, 64, 3])
        XCTAssertEqual(ds["complete"]!["dtype"] as? String, "uint8")
        let attrs = j["attrs"] as! [String: Any]
        XCTAssertEqual(attrs["format"] as? String, CacheSchema.format)
        XCTAssertEqual(attrs["embedding_dtype"] as? String, "float16")
        XCTAssertEqual(attrs["everything_rle"] as? String, CacheSchema.everythingRLE)
        XCTAssertEqual(attrs["everything_mask_size"] as? [Int], [16, 16])
        XCTAssertEqual((j["sources"] as! [String]).count, 6)
        let pySums = j["sums"] as! [Double]
        XCTAssertEqual(pySums.count, sums.count)
        for (a, b) in zip(pySums, sums) { XCTAssertEqual(a, b, accuracy: 1e-9 * max(1, abs(b))) }
    }

    /// The interpreter testH5pyReadsTheCache runs (see there).
    static var h5pyPython: String {
        if let p = ProcessInfo.processInfo.environment["SAMDISTILL_TEST_PYTHON"], !p.isEmpty { return p }
        let venv = Fixture.repositoryRoot.appendingPathComponent(".venv/bin/python3").path
        return FileManager.default.isExecutableFile(atPath: venv) ? venv : "python3"
    }

    /// A cache written by Scripts/cache_teacher_pytorch.py (the official PyTorch TinyViT code,
    /// committed as Tests/Fixtures/cache/pytorch_tiny.h5 by Scripts/refdump/cache.py): our reader
    /// opens it, and its embeddings equal our TinyViT's on the stored images (loaded from the
    /// same weights) within float16 rounding plus float32 differences between the two
    /// implementations: |cached − ours| ≤ 2⁻¹¹·|ours| + 1e-5·max|ours| per element.
    func testReadsPyTorchWrittenCache() throws {
        let base = Fixture.directory.appendingPathComponent("cache")
        let reader = try CacheReader(base.appendingPathComponent("pytorch_tiny.h5"))
        let teacher = try TeacherEncoder.load(weights: base.appendingPathComponent("tiny_teacher.safetensors"),
                                            config: base.appendingPathComponent("tiny_teacher.json"))
        XCTAssertEqual(reader.teacherSHA256, teacher.checkpointSHA256)
        XCTAssertEqual(reader.embeddingShape, teacher.embeddingShape)
        XCTAssertGreaterThanOrEqual(reader.rows().count, 2)
        let batch = try reader.batch(rows: reader.rows())
        let n = teacher.embeddingShape.reduce(1, *), S = reader.imageSize
        for (b, r) in reader.rows().enumerated() {
            let x = Tensor(shape: [1, 3, S, S], data: Array(batch.images.data[(b * 3 * S * S)..<((b + 1) * 3 * S * S)]))
            let y = teacher.encode(x)
            let cached = Tensor(shape: y.shape, data: Array(batch.embeddings.data[(b * n)..<((b + 1) * n)]))
            let e = relativeError(cached, y)
            let scale = Double(y.maxAbs())
            var worstExcess = 0.0
            for (a, b) in zip(cached.data, y.data) {
                let bound = Double(abs(b)) * pow(2, -11) + 1e-5 * scale
                worstExcess = max(worstExcess, Double(abs(a - b)) / bound)
            }
            print("PyTorch-written row \(r) (\(try reader.row(r).source)): relative error \(e), worst |diff| / bound \(worstExcess)")
            XCTAssertLessThanOrEqual(worstExcess, 1, "row \(r): beyond float16 rounding + 1e-5 of the max")
            XCTAssertGreaterThan(e, 0, "float16 storage rounds something")
        }
        XCTAssertEqual(reader.rows(split: .val).count + reader.rows(split: .train).count, 2)
        XCTAssertFalse(reader.isComplete(1), "the text file's row stays incomplete")
    }
}

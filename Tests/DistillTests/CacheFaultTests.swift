import CheckpointFormats
import Distill
import Foundation
import HDF5
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// Faults that lose nothing (issue 21, part 3): a damaged row of a cache is reported with its
/// file, dataset and row (HDF5's Fletcher-32 checksum on every chunk, format version 2) and is
/// never read as data, while version-1 caches (no checksums) still open.
final class CacheFaultTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = try CacheTestSupport.temporaryDirectory("faults")
    }

    override func tearDownWithError() throws {
        if let dir { try? FileManager.default.removeItem(at: dir) }
    }

    /// The crash-safety property with the checksum filter on (HDF5 1.10.8): a dataset created
    /// with early allocation, fill time never and Fletcher-32 reserves every chunk at its
    /// filtered size (data + 4 checksum bytes); unwritten chunks read as zeros (their checksum, 0,
    /// is right); writing a row and flushing changes the file's bytes only inside that row's
    /// chunk — no index or other metadata is rewritten, so a crash mid-write cannot damage
    /// another row.
    func testChecksummedRowWritesChangeOnlyTheirChunk() throws {
        let url = dir.appendingPathComponent("t.h5")
        do {
            let f = try HDF5File(url, mode: .create)
            let d = try f.createDataset("x", type: .uint8, rowShape: [1000], rows: 4, allocateEarly: true, checksum: true)
            XCTAssertTrue(d.hasChecksum)
            XCTAssertEqual(f.superblockVersion, 2, "the 1.8 format: checksummed file metadata")
            for r in 0..<4 {
                let loc = try XCTUnwrap(try d.chunkLocation(row: r), "row \(r): space reserved at creation")
                XCTAssertEqual(loc.size, 1004, "row \(r): 1000 data bytes + the 4-byte Fletcher-32")
            }
            try f.flush()
            f.close()
        }
        let before = try Data(contentsOf: url)
        let f = try HDF5File(url, mode: .readWrite)
        let d = try f.dataset("x")
        XCTAssertEqual(try d.readInts(rows: 0, count: 4), [Int](repeating: 0, count: 4000), "unwritten rows read as zeros")
        let loc = try XCTUnwrap(try d.chunkLocation(row: 2))
        try d.write(rows: 2, [UInt8](repeating: 7, count: 1000))
        try f.flush()
        f.close()
        let after = try Data(contentsOf: url)
        XCTAssertEqual(after.count, before.count, "the file does not grow")
        let changed = (0..<before.count).filter { before[$0] != after[$0] }
        XCTAssertFalse(changed.isEmpty)
        XCTAssertTrue(changed.allSatisfy { $0 >= loc.offset && $0 < loc.offset + loc.size },
                      "bytes changed outside row 2's chunk \(loc.offset)..<\(loc.offset + loc.size): \(changed.filter { $0 < loc.offset || $0 >= loc.offset + loc.size }.prefix(10))")
        XCTAssertEqual(Array(after[loc.offset..<(loc.offset + 1000)]), [UInt8](repeating: 7, count: 1000), "the chunk holds the row")
        let g = try HDF5File(url, mode: .readOnly)
        let back = try g.dataset("x").readInts(rows: 0, count: 4)
        XCTAssertEqual(Array(back[2000..<3000]), [Int](repeating: 7, count: 1000))
        XCTAssertEqual(back.filter { $0 != 0 }.count, 1000)
    }

    /// Files samdistill creates use the 1.8 format (superblock 2, version-2 object headers with
    /// checksums; not 1.10's superblock 3, whose "open for writing" flag would make a killed
    /// writer's file refuse to open): a byte flipped inside the root group's object header (its
    /// address read from the superblock) is an error on open, not a parse of damaged metadata.
    func testDamagedHeaderIsAnErrorNotAParse() throws {
        let url = dir.appendingPathComponent("h.h5")
        do {
            let f = try HDF5File(url, mode: .create)
            try f.setAttribute("format", "samdistill-feature-cache")
            XCTAssertEqual(f.superblockVersion, 2)
            f.close()
        }
        var bytes = [UInt8](try Data(contentsOf: url))
        XCTAssertEqual(Array(bytes[0..<9]), [0x89, 0x48, 0x44, 0x46, 0x0d, 0x0a, 0x1a, 0x0a, 2], "HDF5 signature, superblock 2")
        // superblock 2: signature 8, version, offset size, length size, flags, then four 8-byte
        // addresses (base, extension, end of file, root group object header), then its checksum
        let root = (0..<8).reduce(0) { $0 | Int(bytes[36 + $1]) << (8 * $1) }
        XCTAssertEqual(Array(bytes[root..<(root + 4)]), Array("OHDR".utf8), "a version-2 object header")
        bytes[root + 24] ^= 0x5a
        try Data(bytes).write(to: url)
        XCTAssertThrowsError(try HDF5File(url, mode: .readOnly)) { e in
            XCTAssertTrue("\(e)".contains(url.path), "\(e)")
        }
    }

    /// A cache of 8 rows; bytes flipped inside row 5's embedding chunk (found with
    /// `chunkLocation`, checked against the row's float16 bits on disk): reading row 5 fails
    /// with one error naming the file, the dataset and the row, a batch holding it fails the
    /// same way, and every other row reads exactly as before. A flipped byte in row 2's
    /// `complete` flag makes the cache refuse to open, naming that dataset and row. Version 1
    /// (the committed PyTorch-written cache, no checksums) still opens.
    func testDamagedRowIsReportedWithItsRow() throws {
        let images = dir.appendingPathComponent("images")
        try CacheTestSupport.writeSyntheticImages(in: images, count: 4)
        let (w, c) = try CacheTestSupport.writeTinyTeacher(in: dir)
        let out = dir.appendingPathComponent("c.h5")
        var o = CacheOptions(images: images, output: out)
        o.progress = false
        o.views = 2
        _ = try FeatureCacheBuilder(options: o, teacher: try TeacherEncoder.load(weights: w, config: c)).run()
        let reference = try CacheTestSupport.rowDump(out)
        XCTAssertEqual(reference.count, 8)

        let damagedRow = 5
        let (offset, size): (Int, Int) = try {
            let f = try HDF5File(out, mode: .readOnly)
            defer { f.close() }
            XCTAssertEqual(try f.attribute("format_version")?.intValue, 2)
            for name in CacheSchema.datasets { XCTAssertTrue(try f.dataset(name).hasChecksum, "\(name) has Fletcher-32") }
            let loc = try XCTUnwrap(try f.dataset("embedding").chunkLocation(row: damagedRow))
            var bits = [UInt8](repeating: 0, count: 8 * 4 * 4 * 2)
            try bits.withUnsafeMutableBytes { try f.dataset("embedding").readRaw(rows: damagedRow, count: 1, type: .float16, into: $0) }
            let disk = try Data(contentsOf: out)
            XCTAssertEqual(loc.size, bits.count + 4)
            XCTAssertEqual(Array(disk[loc.offset..<(loc.offset + bits.count)]), bits, "the chunk on disk holds row \(damagedRow)'s float16 bits")
            return (loc.offset, loc.size)
        }()
        var disk = try Data(contentsOf: out)
        for i in [offset + 10, offset + 11, offset + size / 2] { disk[i] ^= 0x5A }
        try disk.write(to: out)

        let reader = try CacheReader(out)
        XCTAssertEqual(reader.rows().count, 8, "the complete flags are intact")
        XCTAssertThrowsError(try reader.row(damagedRow)) { e in
            let m = "\(e)"
            XCTAssertTrue(m.contains(out.path) && m.contains("'embedding'") && m.contains("row \(damagedRow) ") && m.contains("Fletcher-32"), m)
        }
        XCTAssertThrowsError(try reader.batch(rows: [1, damagedRow, 7])) { e in
            let m = "\(e)"
            XCTAssertTrue(m.contains(out.path) && m.contains("'embedding'") && m.contains("row \(damagedRow) "), m)
        }
        for r in 0..<8 where r != damagedRow {
            let row = try reader.row(r)
            XCTAssertEqual(row.embedding.data.withUnsafeBytes { Array($0) }, reference[r]["embedding"], "row \(r)")
            XCTAssertEqual(row.image.pixels, reference[r]["image"], "row \(r)")
        }
        XCTAssertEqual(try reader.batch(rows: [0, 4, 6]).embeddings.count, 3 * 128)
        reader.close()

        // A damaged complete flag: the cache refuses to open and names the dataset and row.
        let flagRow = 2
        let flag: (offset: Int, size: Int) = try {
            let f = try HDF5File(out, mode: .readOnly)
            defer { f.close() }
            return try XCTUnwrap(try f.dataset("complete").chunkLocation(row: flagRow))
        }()
        XCTAssertEqual(flag.size, 5)
        disk = try Data(contentsOf: out)
        disk[flag.offset] ^= 0x02
        try disk.write(to: out)
        XCTAssertThrowsError(try CacheReader(out)) { e in
            let m = "\(e)"
            XCTAssertTrue(m.contains(out.path) && m.contains("complete") && m.contains("row \(flagRow)") && m.contains("Fletcher32"), m)
        }

        // Version 1: no checksums, still read.
        let v1 = Fixture.directory.appendingPathComponent("cache/pytorch_tiny.h5")
        let f1 = try HDF5File(v1, mode: .readOnly)
        XCTAssertEqual(try f1.attribute("format_version")?.intValue, 1)
        XCTAssertFalse(try f1.dataset("embedding").hasChecksum)
        f1.close()
        let old = try CacheReader(v1)
        XCTAssertGreaterThanOrEqual(old.rows().count, 2)
        XCTAssertTrue(try old.row(old.rows()[0]).embedding.data.allSatisfy(\.isFinite))
    }
}

/// A full disk mid-write (issue 21, part 3): cache rows, training checkpoints and an export
/// written by `samdistill` onto a small tmpfs that fills partway through. Each run ends with
/// one error naming the file and exit status 1; every row and checkpoint written before is
/// intact (equal to an uninterrupted run's); no temporary file is left; after the space is
/// freed, rerunning (`train --resume`) completes with the uninterrupted run's rows, losses and
/// weights.
///
/// Cache rows cannot meet a full disk mid-run: the cache writes its rows' space when it creates
/// the file (Fletcher-32 chunks are written at allocation), so the disk fills at creation, which
/// fails with one error naming the cache; a cache created before the disk filled resumes to the
/// end on a disk with no free page.
///
/// The tmpfs is mounted with mount(8), which needs root (or CAP_SYS_ADMIN): a real ENOSPC from a
/// real filesystem (RLIMIT_FSIZE, the unprivileged alternative, gives EFBIG per file, not a full
/// disk). Without the privilege the test is skipped with that reason.
final class FullDiskTests: XCTestCase {
    var dir: URL!
    var disk: URL!
    var mounted = false

    override func setUpWithError() throws {
        dir = try CacheTestSupport.temporaryDirectory("fulldisk")
        disk = dir.appendingPathComponent("disk")
        try FileManager.default.createDirectory(at: disk, withIntermediateDirectories: true)
        let m = try Fixture.runProcess(URL(fileURLWithPath: "/bin/mount"), ["-t", "tmpfs", "-o", "size=64m", "tmpfs", disk.path])
        guard m.status == 0 else { throw XCTSkip("cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): \(m.err)") }
        mounted = true
    }

    override func tearDownWithError() throws {
        if mounted { _ = try? Fixture.runProcess(URL(fileURLWithPath: "/bin/umount"), [disk.path]) }
        if let dir { try? FileManager.default.removeItem(at: dir) }
    }

    /// Free bytes on the tmpfs.
    func freeBytes() -> Int {
        var s = statvfs()
        statvfs(disk.path, &s)
        return Int(s.f_bavail) * Int(s.f_frsize)
    }

    /// Fills the tmpfs until `free` bytes are left (a filler file, removed to free the space).
    func fill(leaving free: Int) throws {
        let filler = disk.appendingPathComponent("filler")
        try? FileManager.default.removeItem(at: filler)
        let n = freeBytes() - free
        XCTAssertGreaterThan(n, 0)
        try Data(count: n).write(to: filler)
        XCTAssertEqual(Double(freeBytes()), Double(free), accuracy: 8192)
    }

    func freeSpace() throws { try FileManager.default.removeItem(at: disk.appendingPathComponent("filler")) }

    /// Bytes a file occupies on disk (sparse files: only what was written).
    func allocated(_ url: URL) -> Int {
        var st = stat()
        stat(url.path, &st)
        return Int(st.st_blocks) * 512
    }

    func leftovers(_ folder: URL) -> [String] {
        let all = (FileManager.default.enumerator(atPath: folder.path)?.allObjects as? [String]) ?? []
        return all.filter { $0.contains(".tmp-") || $0.hasSuffix(".creating") }
    }

    /// The error lines of a failed run (stderr without empty lines).
    func errorLines(_ err: String) -> [String] { err.split(separator: "\n").map(String.init).filter { !$0.isEmpty } }

    func testFullDiskMidWriteLosesNothing() throws {
        let exe = try CacheTestSupport.executable()
        let (weights, teacherConfig) = try CacheTestSupport.writeTinySAMTeacher(in: dir)
        let images = dir.appendingPathComponent("images")
        try CacheTestSupport.writeSyntheticImages(in: images, count: 6)
        func cacheArgs(_ out: URL) -> [String] {
            ["cache", "--images", images.path, "--teacher", weights.path, "--teacher-config", teacherConfig.path,
             "--out", out.path, "--views", "2", "--quiet"]
        }

        // Cache rows.
        let reference = dir.appendingPathComponent("reference.h5")
        let r0 = try CacheTestSupport.run(exe, cacheArgs(reference))
        XCTAssertEqual(r0.status, 0, r0.err)
        let expected = try CacheTestSupport.rowDump(reference)
        XCTAssertEqual(expected.count, 12)
        // The cache takes its rows' space when it creates the file (the checksummed chunks are
        // written then, CacheFileWriter.create), so a disk too small fails there, before any row,
        // with one error naming the cache and nothing left behind.
        let cache = disk.appendingPathComponent("cache.h5")
        XCTAssertGreaterThanOrEqual(allocated(reference), 12 * (64 * 64 * 3 + 256 * 16 * 2), "the file is not sparse")
        try fill(leaving: allocated(reference) / 2)
        let r1 = try CacheTestSupport.run(exe, cacheArgs(cache))
        XCTAssertEqual(r1.status, 1, "cache on a full disk: \(r1.err)")
        XCTAssertEqual(errorLines(r1.err).count, 1, "one error: \(r1.err)")
        XCTAssertTrue(r1.err.contains(cache.path + ": ") && r1.err.contains("No space left on device"), r1.err)
        XCTAssertFalse(r1.err.contains("HDF5-DIAG"), r1.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: cache.path))
        XCTAssertTrue(leftovers(disk).isEmpty, "temporary files left: \(leftovers(disk))")
        try freeSpace()
        // With room for the file: killed as soon as it exists, then the disk filled to the last
        // page; the resumed run still writes every row (their space is the file's), the rows
        // complete before the kill are intact, and the result equals the uninterrupted cache.
        let p = Process()
        p.executableURL = exe
        p.arguments = cacheArgs(cache)
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        while p.isRunning && !FileManager.default.fileExists(atPath: cache.path) { usleep(500) }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        let partial = try CacheReader(cache).rows()
        let dump = try CacheTestSupport.rowDump(cache)
        for i in partial { XCTAssertEqual(dump[i], expected[i], "row \(i), complete before the kill") }
        try fill(leaving: 0)
        let r2 = try CacheTestSupport.run(exe, cacheArgs(cache))
        XCTAssertEqual(r2.status, 0, "resumed on a full disk: \(r2.err)")
        XCTAssertLessThan(freeBytes(), 8192, "the disk is full")
        XCTAssertEqual(try CacheTestSupport.rowDump(cache), expected, "the resumed cache equals the uninterrupted one")
        print("full disk, cache: \(r1.err.trimmingCharacters(in: .newlines)); killed after creation with \(partial.count) of 12 rows complete, resumed on a full disk")
        try freeSpace()
        try FileManager.default.removeItem(at: cache)

        // Checkpoints: the uninterrupted run, then one whose disk fills writing the step-4 checkpoint.
        func trainConfig(_ run: URL) throws -> URL {
            let yaml = """
                data: {train: [\(reference.path)]}
                student: {type: tinyvit, image_size: 64, embed_dims: [8, 16, 16, 16], depths: [1, 1, 1, 1],
                          num_heads: [1, 2, 2, 2], window_sizes: [4, 4, 4, 4], merge_strides: [2, 2, 1]}
                init: {type: random}
                loss: {type: mse}
                schedule: {type: constant, lr: 1.0e-3}
                batch_size: 2
                steps: 6
                seed: 1
                checkpoint_every: 2
                keep_last: 5
                eval_every: 0
                output_dir: \(run.path)
                """
            let cfg = run.deletingLastPathComponent().appendingPathComponent(run.lastPathComponent + ".yaml")
            try yaml.write(to: cfg, atomically: true, encoding: .utf8)
            return cfg
        }
        func losses(_ run: URL) throws -> [Double] {
            try String(contentsOf: run.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n")
                .compactMap { (try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["loss"] as? Double }
        }
        func modelTensors(_ url: URL) throws -> [String: [Float]] {
            var out: [String: [Float]] = [:]
            for (k, v) in try WeightsFile(contentsOf: url).tensors { out[k] = v.data }
            return out
        }
        let refRun = dir.appendingPathComponent("ref-run")
        let t0 = try CacheTestSupport.run(exe, ["train", try trainConfig(refRun).path, "--quiet"])
        XCTAssertEqual(t0.status, 0, t0.err)
        let refLosses = try losses(refRun)
        XCTAssertEqual(refLosses.count, 6)
        let ckpt = { (run: URL, step: Int) in run.appendingPathComponent(String(format: "checkpoints/step-%08d.safetensors", step)) }
        let S = try Data(contentsOf: ckpt(refRun, 2)).count
        let run = disk.appendingPathComponent("run")
        // Room for step 2's checkpoint and best.safetensors, half of step 4's.
        try fill(leaving: 2 * S + S / 2 + 64 * 1024)
        let t1 = try CacheTestSupport.run(exe, ["train", try trainConfig(run).path, "--quiet"])
        XCTAssertEqual(t1.status, 1, "train on a full disk: \(t1.err)")
        XCTAssertEqual(errorLines(t1.err).count, 1, "one error: \(t1.err)")
        XCTAssertTrue(t1.err.contains(ckpt(run, 4).path), "the error names the checkpoint: \(t1.err)")
        XCTAssertTrue(t1.err.contains("No space left on device"), "the system's reason, not Foundation's wording: \(t1.err)")
        XCTAssertTrue(leftovers(run).isEmpty, "temporary files left: \(leftovers(run))")
        XCTAssertFalse(FileManager.default.fileExists(atPath: ckpt(run, 4).path))
        XCTAssertEqual(try modelTensors(ckpt(run, 2)), try modelTensors(ckpt(refRun, 2)), "step 2's checkpoint is intact")
        try freeSpace()
        let t2 = try CacheTestSupport.run(exe, ["train", try trainConfig(run).path, "--resume", "--quiet"])
        XCTAssertEqual(t2.status, 0, t2.err)
        let resumed = try losses(run)
        XCTAssertEqual(resumed.count, 6)
        for (a, b) in zip(resumed, refLosses) { XCTAssertEqual(a, b, accuracy: 1e-6 * abs(b)) }
        XCTAssertEqual(try modelTensors(ckpt(run, 6)), try modelTensors(ckpt(refRun, 6)), "the resumed run ends with the same weights")
        print("full disk, train: error: \(t1.err.trimmingCharacters(in: .newlines)); resumed losses bit-identical: \(resumed == refLosses)")

        // An export.
        let refExport = dir.appendingPathComponent("student.safetensors")
        let e0 = try CacheTestSupport.run(exe, ["export", ckpt(refRun, 6).path, "--out", refExport.path])
        XCTAssertEqual(e0.status, 0, e0.err)
        let export = disk.appendingPathComponent("student.safetensors")
        try fill(leaving: (try Data(contentsOf: refExport).count) / 2)
        let e1 = try CacheTestSupport.run(exe, ["export", ckpt(run, 6).path, "--out", export.path])
        XCTAssertEqual(e1.status, 1, "export on a full disk: \(e1.err)")
        XCTAssertEqual(errorLines(e1.err).count, 1, "one error: \(e1.err)")
        XCTAssertTrue(e1.err.contains(export.path) && e1.err.contains("No space left on device"), e1.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: export.path), "no half-written export")
        XCTAssertTrue(leftovers(disk).isEmpty, "temporary files left: \(leftovers(disk))")
        try freeSpace()
        let e2 = try CacheTestSupport.run(exe, ["export", ckpt(run, 6).path, "--out", export.path])
        XCTAssertEqual(e2.status, 0, e2.err)
        XCTAssertEqual(try modelTensors(export), try modelTensors(refExport))
        print("full disk, export: error: \(e1.err.trimmingCharacters(in: .newlines))")
    }
}

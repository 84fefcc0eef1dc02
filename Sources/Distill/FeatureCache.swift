import Distributed
import Foundation
import HDF5
import ImageCodecs
import SegmentAnything
import Tensor

/// The cache command's options (see `samdistill cache --help`).
public struct CacheOptions: Sendable {
    public var images: URL
    public var output: URL
    public var views = 1
    public var seed = 0
    /// "float16" or "float32".
    public var embeddingDType = "float16"
    public var limit: Int? = nil
    /// Only these images (paths relative to `images`) instead of every JPEG/PNG under it, and the
    /// list file they came from (for error messages).
    public var imageList: (file: String, entries: [String])? = nil
    public var split: SplitRule = .none
    public var shardSize: Int? = nil
    public var overwrite = false
    public var command = ""
    /// Progress lines on stderr.
    public var progress = true
    public var augmentation = Augmentation()
    /// Also store each row's teacher everything-masks (FeatureCacheBuilder's `everything`).
    public var everythingMasks: EverythingMaskSettings? = nil

    public init(images: URL, output: URL) {
        self.images = images
        self.output = output
    }
}

/// A problem that stops the cache command, with a message for the user.
public struct CacheError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// What a run did.
public struct CacheSummary: Sendable {
    public var rowsPlanned = 0
    public var rowsAlreadyComplete = 0
    public var rowsWritten = 0
    public var imagesDecoded = 0
    /// (relative path, reason) of files that could not be cached.
    public var skipped: [(file: String, reason: String)] = []
    public var files: [URL] = []
    public var apparentBytes = 0
    public var allocatedBytes = 0
    public var wallSeconds = 0.0
    /// Seconds in the teacher's forward (the critical path).
    public var teacherSeconds = 0.0
    /// Seconds decoding, augmenting, resizing, padding and normalising (producer thread).
    public var decodeSeconds = 0.0
    /// Seconds converting and writing rows to HDF5 (writer thread).
    public var writeSeconds = 0.0
    /// Seconds the teacher thread waited for the producer (decode not hidden by overlap).
    public var waitDecodeSeconds = 0.0
    /// Seconds the teacher thread waited for the writer (HDF5 not hidden by overlap).
    public var waitWriteSeconds = 0.0
    /// Seconds generating everything-masks (teacher thread, after each row's encoder pass), and
    /// the masks stored / dropped over the rows written.
    public var everythingSeconds = 0.0
    public var everythingMasksStored = 0
    public var everythingMasksDropped = 0

    public var report: String {
        var lines: [String] = []
        lines.append("rows: \(rowsWritten) written, \(rowsAlreadyComplete) already complete, \(rowsPlanned) planned "
                     + "(\(rowsAlreadyComplete + rowsWritten) complete)")
        lines.append("skipped files: \(skipped.count)")
        for s in skipped { lines.append("  \(s.file): \(s.reason)") }
        lines.append(String(format: "on disk: %.1f MiB allocated (%.1f MiB apparent) in %d file(s)",
                            Double(allocatedBytes) / 1048576, Double(apparentBytes) / 1048576, files.count))
        let rate = wallSeconds > 0 ? Double(rowsWritten) / wallSeconds : 0
        lines.append(String(format: "time: %.2f s wall, %.2f rows/s; teacher %.2f s; decode+preprocess %.2f s, HDF5 write %.2f s "
                            + "(overlapped: teacher waited %.2f s for decode, %.2f s for writes = %.1f%% of teacher time)",
                            wallSeconds, rate, teacherSeconds, decodeSeconds, writeSeconds, waitDecodeSeconds, waitWriteSeconds,
                            teacherSeconds > 0 ? 100 * (waitDecodeSeconds + waitWriteSeconds) / teacherSeconds : 0))
        if everythingSeconds > 0 {
            lines.append(String(format: "everything masks: %.2f s (%.2f s per row written), %d masks stored, %d dropped",
                                everythingSeconds, everythingSeconds / Double(max(rowsWritten, 1)), everythingMasksStored,
                                everythingMasksDropped))
        }
        return lines.joined(separator: "\n")
    }
}

/// Builds (or resumes) a feature cache: lists the images, plans the rows, creates the file(s),
/// then runs three stages in parallel — decode + preprocess (a producer thread), the teacher
/// (the calling thread), and HDF5 writes (a writer thread) — so decoding and writing hide
/// behind the teacher.
///
/// Crash safety: each file is created complete with every row planned and its space reserved
/// (at a temporary name, renamed into place), so writing a row changes no HDF5 metadata. A row's
/// data is written and flushed, then its `complete` flag is set and flushed. A process killed at
/// any moment leaves a file that opens, in which every row marked complete is whole.
///
/// Under mpirun (`communicator` with N > 1 ranks) the cache is sharded (N shards of about
/// rows / N rows each, unless --shard-size says otherwise) and rank r computes and writes the
/// shards r, r + N, …, each shard a crash-safe file of its own: rank 0 creates the shard files and
/// the index that lists them (as a one-process sharded cache), the others wait for it, then
/// every rank opens only its shards for writing. A rerun, with any rank count, resumes every
/// shard. An existing unsharded cache is resumed by rank 0 alone. The summary's counts are
/// the job's (all-reduced); rank 0 logs.
public final class FeatureCacheBuilder {
    public let options: CacheOptions
    public let teacher: TeacherEncoder
    /// Generates each row's everything-masks (required when `options.everythingMasks` is set).
    public let everything: EverythingMasker?
    /// Called with progress and report lines (stderr in the command line).
    public var log: (String) -> Void = { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }
    /// Progress line updates in place (`\r`) when true; otherwise one line per ~5% or 30 s.
    public var progressInPlace = isatty(2) != 0
    /// The ranks that split the rows (one process: rank 0 of 1).
    public var communicator: Communicator = .world

    public init(options: CacheOptions, teacher: TeacherEncoder, everything: EverythingMasker? = nil) {
        precondition(options.everythingMasks == everything?.settings,
                     "FeatureCacheBuilder: options.everythingMasks and the everything-masks generator disagree")
        self.options = options
        self.teacher = teacher
        self.everything = everything
    }

    /// Shard file names for an index at `output`: `NAME-shard-00000.h5`, …
    public static func shardURL(_ output: URL, _ i: Int) -> URL {
        let stem = output.deletingPathExtension().lastPathComponent
        return output.deletingLastPathComponent().appendingPathComponent(String(format: "%@-shard-%05d.h5", stem, i))
    }

    private func openOrCreate(settings: CacheSettings, plan: [PlannedRow]) throws -> (writers: [CacheFileWriter], files: [URL]) {
        let comm = communicator
        guard comm.isDistributed else { return try create(settings: settings, plan: plan, shardSize: options.shardSize, open: true)! }
        // Rank 0 creates (or checks) the files; the others wait, then each opens its shards.
        if comm.isRoot {
            _ = try create(settings: settings, plan: plan, shardSize: options.shardSize ?? (plan.count + comm.size - 1) / comm.size, open: false)
        }
        comm.barrier()
        let out = options.output
        let index = try HDF5File(out, mode: .readOnly)
        let names: [String], counts: [Int]
        if case .strings(let n)? = try index.attribute("shards") {
            names = n
            if case .ints(let c)? = try index.attribute("shard_rows") { counts = c } else { counts = [] }
        } else {
            names = []; counts = []
        }
        index.close()
        comm.barrier()  // nobody holds the index open any more
        guard !names.isEmpty else {
            // An unsharded cache from a one-process run: rank 0 resumes it alone.
            if comm.isRoot { return try create(settings: settings, plan: plan, shardSize: nil, open: true)! }
            return ([], [out])
        }
        guard counts.count == names.count, counts.reduce(0, +) == plan.count else {
            throw CacheError("\(out.path): its shard_rows (\(counts)) do not cover the \(plan.count) planned rows; rerun with --overwrite")
        }
        var writers: [CacheFileWriter] = [], files = [out]
        var first = 0
        for (i, n) in names.enumerated() {
            defer { first += counts[i] }
            guard i % comm.size == comm.rank else { continue }
            let u = out.deletingLastPathComponent().appendingPathComponent(n)
            let w = try CacheFileWriter(file: try HDF5File(u, mode: .readWrite), firstRow: first)
            let d = try settings.differences(from: w.file)
            if !d.isEmpty { throw CacheError("\(u.path): shard settings differ from its index:\n  " + d.joined(separator: "\n  ")) }
            guard try w.readPlan() == Array(plan[first..<(first + counts[i])]) else {
                throw CacheError("\(u.path) was planned for other rows; rerun with --overwrite to start over, or choose another --out")
            }
            writers.append(w)
            files.append(u)
        }
        return (writers, files)
    }

    /// Creates the cache when missing (sharded with `shardSize`), checks it is this run's, and
    /// with `open` returns its writers (all of them); without, closes everything (rank 0 of a
    /// distributed run, before the ranks open their shards).
    private func create(settings: CacheSettings, plan: [PlannedRow], shardSize: Int?, open: Bool) throws -> (writers: [CacheFileWriter], files: [URL])? {
        let out = options.output
        let fm = FileManager.default
        if options.overwrite, fm.fileExists(atPath: out.path) {
            if let f = try? HDF5File(out, mode: .readOnly), let shards = try? f.attribute("shards"), case .strings(let names) = shards {
                for n in names { try? fm.removeItem(at: out.deletingLastPathComponent().appendingPathComponent(n)) }
            }
            try fm.removeItem(at: out)
        }
        if !fm.fileExists(atPath: out.path) {
            if let shardSize {
                var names: [String] = [], counts: [Int] = []
                var i = 0
                for start in stride(from: 0, to: plan.count, by: shardSize) {
                    let u = Self.shardURL(out, i)
                    try CacheFileWriter.create(u, settings: settings, plan: plan[start..<min(plan.count, start + shardSize)],
                                               command: options.command) { f in
                        try f.setAttribute("shard_index", i)
                        try f.setAttribute("shard_first_row", start)
                    }
                    names.append(u.lastPathComponent)
                    counts.append(min(plan.count, start + shardSize) - start)
                    i += 1
                }
                // The index last: until it exists, a rerun starts over.
                let tmp = out.deletingLastPathComponent().appendingPathComponent(out.lastPathComponent + ".creating")
                try? fm.removeItem(at: tmp)
                let f = try HDF5File(tmp, mode: .create)
                try settings.write(to: f)
                try f.setAttribute("command", options.command)
                try f.setAttribute("created", ISO8601DateFormatter().string(from: Date()))
                try f.setAttribute("shards", strings: names)
                try f.setAttribute("shard_rows", ints: counts)
                try f.flush()
                f.close()
                try fm.moveItem(atPath: tmp.path, toPath: out.path)
            } else {
                try CacheFileWriter.create(out, settings: settings, plan: plan[...], command: options.command)
            }
        }
        // Open (fresh or existing) and check that it is this run's cache.
        let index = try HDF5File(out, mode: .readWrite)
        guard try index.attribute("format")?.stringValue == CacheSchema.format else {
            throw CacheError("\(out.path): not a samdistill feature cache (no format attribute '\(CacheSchema.format)'); "
                             + "use another --out or --overwrite")
        }
        let diffs = try settings.differences(from: index)
        if !diffs.isEmpty {
            throw CacheError("\(out.path) was made with other settings; refusing to mix them (rerun with --overwrite to start over, or choose another --out):\n  "
                             + diffs.joined(separator: "\n  "))
        }
        var writers: [CacheFileWriter] = []
        var files = [out]
        if case .strings(let names)? = try index.attribute("shards") {
            index.close()
            var first = 0
            for n in names {
                let u = out.deletingLastPathComponent().appendingPathComponent(n)
                let w = try CacheFileWriter(file: try HDF5File(u, mode: .readWrite), firstRow: first)
                let d = try settings.differences(from: w.file)
                if !d.isEmpty { throw CacheError("\(u.path): shard settings differ from its index:\n  " + d.joined(separator: "\n  ")) }
                writers.append(w)
                files.append(u)
                first += w.rows
            }
        } else {
            writers.append(try CacheFileWriter(file: index, firstRow: 0))
        }
        let existing = try writers.flatMap { try $0.readPlan() }
        if existing != plan {
            let mine = Set(plan.map { "\($0.source)#\($0.view)" }), theirs = Set(existing.map { "\($0.source)#\($0.view)" })
            let added = mine.subtracting(theirs).count, removed = theirs.subtracting(mine).count
            throw CacheError("\(out.path) was planned for another set of rows (the image folder, --limit or the split changed: "
                             + "\(added) rows new, \(removed) rows gone, \(existing.count) in the cache vs \(plan.count) now); "
                             + "rerun with --overwrite to start over, or choose another --out")
        }
        if !open {
            for w in writers { w.file.close() }
            return nil
        }
        return (writers, files)
    }

    /// Runs the whole command. Throws for unusable inputs (no images, mismatched cache, HDF5
    /// failures); undecodable files are reported in the summary, not thrown.
    public func run() throws -> CacheSummary {
        let t0 = Date()
        var summary = CacheSummary()
        var sources = try Self.listImages(options.images)
        if let (file, entries) = options.imageList {
            let present = Set(sources)
            if let missing = entries.first(where: { !present.contains($0) }) {
                throw CacheError("\(file): '\(missing)' is not a JPEG/PNG file under \(options.images.path)")
            }
            var seen = Set<String>()
            sources = entries.filter { seen.insert($0).inserted }
                .sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
        }
        if let limit = options.limit { sources = Array(sources.prefix(limit)) }
        guard !sources.isEmpty else { throw CacheError("\(options.images.path): no JPEG or PNG files found") }
        guard ["float16", "float32"].contains(options.embeddingDType) else {
            throw CacheError("--dtype must be f16 or f32, got \(options.embeddingDType)")
        }
        guard options.views >= 1 else { throw CacheError("--views must be at least 1") }
        if let s = options.shardSize, s < 1 { throw CacheError("--shard-size must be at least 1 row") }
        var settings = CacheSettings(teacher: teacher, embeddingDType: options.embeddingDType, views: options.views,
                                     seed: options.seed, augmentation: options.augmentation, split: options.split)
        if let everything {
            guard everything.maskSize * 4 == teacher.imageSize else {
                throw CacheError("everything masks: the decoder's \(everything.maskSize)² mask grid is not a quarter of the teacher's \(teacher.imageSize)² input")
            }
            settings.everything = everything.settings
            settings.everythingMaskSize = everything.maskSize
        }
        let plan = Self.plan(sources: sources, views: options.views, split: options.split)
        summary.rowsPlanned = plan.count
        let (writers, files) = try openOrCreate(settings: settings, plan: plan)
        summary.files = files
        var complete = [Bool](repeating: false, count: plan.count)
        for w in writers {
            let c = try w.complete.readInts(rows: 0, count: w.rows)
            for i in 0..<w.rows { complete[w.firstRow + i] = c[i] == 1 }
        }
        // This rank's rows (all of them in a one-process run).
        var mine = [Bool](repeating: false, count: plan.count)
        for w in writers { for i in 0..<w.rows { mine[w.firstRow + i] = true } }
        summary.rowsAlreadyComplete = zip(complete, mine).filter { $0 && $1 }.count
        // Work: groups of consecutive rows of one source with at least one row to do.
        var groups: [(source: String, rows: [Int])] = []
        for (r, p) in plan.enumerated() where !complete[r] && mine[r] {
            if let last = groups.last, last.source == p.source {
                groups[groups.count - 1].rows.append(r)
            } else {
                groups.append((p.source, [r]))
            }
        }
        let todo = groups.reduce(0) { $0 + $1.rows.count }
        if options.progress && communicator.isDistributed {
            log("cache (rank \(communicator.rank) of \(communicator.size), \(writers.count) shard(s)): \(mine.filter { $0 }.count) rows, "
                + "\(summary.rowsAlreadyComplete) already complete, \(todo) to compute")
        } else if options.progress {
            log("cache: \(sources.count) images, \(plan.count) rows planned, \(summary.rowsAlreadyComplete) already complete, \(todo) to compute "
                + "(teacher \(teacher.id), \(options.embeddingDType)) → \(options.output.path)")
        }
        try pipeline(groups: groups, plan: plan, writers: writers, todo: todo, summary: &summary)

        for w in writers { w.file.close() }
        if communicator.isDistributed {
            // The job's counts (every rank gets them); files: the index and every shard.
            var counts = [Double(summary.rowsAlreadyComplete), Double(summary.rowsWritten), Double(summary.imagesDecoded)]
            communicator.allreduceSum(&counts)
            summary.rowsAlreadyComplete = Int(counts[0]); summary.rowsWritten = Int(counts[1]); summary.imagesDecoded = Int(counts[2])
            communicator.barrier()
            if let index = try? HDF5File(options.output, mode: .readOnly) {
                if case .strings(let names)? = try? index.attribute("shards") {
                    summary.files = [options.output] + names.map { options.output.deletingLastPathComponent().appendingPathComponent($0) }
                }
                index.close()
            }
        }
        summary.wallSeconds = Date().timeIntervalSince(t0)
        for u in files {
            var st = stat()
            if stat(u.path, &st) == 0 {
                summary.apparentBytes += Int(st.st_size)
                summary.allocatedBytes += Int(st.st_blocks) * 512
            }
        }
        if summary.rowsAlreadyComplete + summary.rowsWritten == 0 {
            throw CacheError("\(options.images.path): no readable image among \(sources.count) file(s):\n  "
                             + summary.skipped.map { "\($0.file): \($0.reason)" }.joined(separator: "\n  "))
        }
        return summary
    }

    // MARK: the three-stage pipeline

    private struct Prepared {
        var row: Int
        var image: PaddedImage
        var input: Tensor
        var originalSize: ImageSize
        var params: ViewParameters
    }

    private enum Work {
        case row(Prepared)
        case skip(file: String, reason: String, rows: Int)
    }

    private struct Encoded {
        var prepared: Prepared
        var embedding: Tensor
        var everything: EverythingRow?
    }

    private enum Written {
        case row(Encoded)
        case skip(file: String, reason: String, rows: Int)
    }

    private func pipeline(groups: [(source: String, rows: [Int])], plan: [PlannedRow], writers: [CacheFileWriter],
                          todo: Int, summary: inout CacheSummary) throws {
        let produced = BoundedQueue<Work>(capacity: 2)
        let encoded = BoundedQueue<Written>(capacity: 2)
        let S = teacher.imageSize
        let aug = options.augmentation, seed = UInt64(bitPattern: Int64(options.seed))
        let base = options.images.standardizedFileURL.resolvingSymlinksInPath()
        // Each field is written by one thread and read by the caller after that thread is done.
        final class Stats {
            var decodeSeconds = 0.0, decoded = 0
            var writeError: Error? = nil
            var writeSeconds = 0.0, written = 0, masksStored = 0, masksDropped = 0
            var skipped: [(file: String, reason: String)] = []
        }
        let stats = Stats()

        let producer = Thread {
            for g in groups {
                let t = Date()
                let url = base.appendingPathComponent(g.source)
                var work: [Work] = []
                do {
                    let img = try ImageIO.read(url)
                    let target = ResizeLongestSide(targetLength: S).targetSize(for: img.size)
                    guard target.width >= 1, target.height >= 1 else {
                        throw CacheError("aspect ratio \(img.width)×\(img.height) resizes to an empty image")
                    }
                    stats.decoded += 1
                    for r in g.rows {
                        let p = aug.parameters(for: img.size, seed: seed, source: g.source, view: plan[r].view)
                        var padded = PaddedImage(resizing: Augmentation.apply(p, to: img), to: S)
                        if padded.validSize.width < 1 || padded.validSize.height < 1 {
                            padded = PaddedImage(resizing: img, to: S)
                        }
                        work.append(.row(Prepared(row: r, image: padded, input: padded.normalised(),
                                                  originalSize: img.size, params: p)))
                    }
                } catch let e as ImageIOError {
                    work = [.skip(file: g.source, reason: e.reason, rows: g.rows.count)]
                } catch {
                    work = [.skip(file: g.source, reason: "\(error)", rows: g.rows.count)]
                }
                stats.decodeSeconds += Date().timeIntervalSince(t)
                for w in work { if !produced.push(w) { return } }
            }
            produced.close()
        }

        let done = DispatchSemaphore(value: 0)
        let started = Date()
        let writer = Thread { [self] in
            defer { done.signal() }
            var finished = 0
            var lastLog = Date.distantPast, lastFraction = -1
            while let item = encoded.pop() {
                let t = Date()
                switch item {
                case .skip(let file, let reason, let rows):
                    stats.skipped.append((file, reason))
                    finished += rows
                    if options.progress { log((progressInPlace ? "\r\u{1B}[K" : "") + "cache: skipped \(file): \(reason)") }
                case .row(let e):
                    do {
                        try writeRow(e, writers: writers)
                    } catch {
                        stats.writeError = error
                        encoded.close()
                        produced.close()
                        return
                    }
                    stats.written += 1
                    stats.masksStored += e.everything?.masks.count ?? 0
                    stats.masksDropped += e.everything?.dropped ?? 0
                    finished += 1
                }
                stats.writeSeconds += Date().timeIntervalSince(t)
                if options.progress {
                    let elapsed = Date().timeIntervalSince(started)
                    let rate = Double(finished) / max(elapsed, 1e-9)
                    let eta = rate > 0 ? Double(todo - finished) / rate : 0
                    // With one view per image a row is an image: the rate reads as images/s.
                    let unit = options.views == 1 ? "images" : "rows"
                    let line = String(format: "cache: %d/%d %@ (%.0f%%), %.2f %@/s, ETA %@", finished, todo, unit,
                                      100 * Double(finished) / Double(max(todo, 1)), rate, unit, Self.clock(eta))
                    let fraction = 20 * finished / max(todo, 1)
                    if progressInPlace {
                        FileHandle.standardError.write(Data(("\r\u{1B}[K" + line).utf8))
                    } else if fraction != lastFraction || Date().timeIntervalSince(lastLog) > 30 || finished == todo {
                        log(line)
                        lastLog = Date()
                        lastFraction = fraction
                    }
                }
            }
            if options.progress && progressInPlace { FileHandle.standardError.write(Data("\n".utf8)) }
        }
        producer.start()
        writer.start()

        var teacherSeconds = 0.0, waitDecode = 0.0, waitWrite = 0.0, everythingSeconds = 0.0
        while true {
            var t = Date()
            guard let w = produced.pop() else { break }
            waitDecode += Date().timeIntervalSince(t)
            let out: Written
            switch w {
            case .skip(let file, let reason, let rows): out = .skip(file: file, reason: reason, rows: rows)
            case .row(let p):
                t = Date()
                let y = teacher.encode(p.input)
                teacherSeconds += Date().timeIntervalSince(t)
                var masks: EverythingRow?
                if let everything {
                    t = Date()
                    do { masks = try everything.masks(image: p.image, embedding: y) } catch {
                        // Stop the other two threads (rows already written stay complete), then report.
                        encoded.close()
                        done.wait()
                        produced.close()
                        throw CacheError("\(plan[p.row].source) (row \(p.row)): \(error)")
                    }
                    everythingSeconds += Date().timeIntervalSince(t)
                }
                out = .row(Encoded(prepared: Prepared(row: p.row, image: p.image, input: Tensor(zeros: [0]),
                                                      originalSize: p.originalSize, params: p.params), embedding: y,
                                   everything: masks))
            }
            t = Date()
            let accepted = encoded.push(out)
            waitWrite += Date().timeIntervalSince(t)
            if !accepted { break }
        }
        encoded.close()
        done.wait()
        produced.close()
        // The producer may be blocked on a full queue only if the writer failed; closing frees it.
        if let e = stats.writeError { throw e }
        summary.rowsWritten = stats.written
        summary.imagesDecoded = stats.decoded
        summary.skipped = stats.skipped
        summary.teacherSeconds = teacherSeconds
        summary.decodeSeconds = stats.decodeSeconds
        summary.writeSeconds = stats.writeSeconds
        summary.waitDecodeSeconds = waitDecode
        summary.waitWriteSeconds = waitWrite
        summary.everythingSeconds = everythingSeconds
        summary.everythingMasksStored = stats.masksStored
        summary.everythingMasksDropped = stats.masksDropped
    }

    static func clock(_ s: Double) -> String {
        guard s.isFinite else { return "?" }
        let t = Int(s.rounded())
        return t >= 3600 ? String(format: "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60) : String(format: "%d:%02d", t / 60, t % 60)
    }

    /// Writes one row's data, flushes, then sets and flushes its complete flag.
    private func writeRow(_ e: Encoded, writers: [CacheFileWriter]) throws {
        let r = e.prepared.row
        guard let w = writers.last(where: { $0.firstRow <= r }) else { throw CacheError("row \(r) has no file") }
        let local = r - w.firstRow
        let p = e.prepared
        try w.image.write(rows: local, p.image.pixels)
        let shape = teacher.embeddingShape
        precondition(e.embedding.shape == [1] + shape,
                     "FeatureCache: teacher gave \(e.embedding.shape), the cache stores \([1] + shape)")
        if options.embeddingDType == "float16" {
            let half = FloatConversion.toHalfBits(e.embedding.data)
            try half.withUnsafeBytes { try w.embedding.writeRaw(rows: local, count: 1, type: .float16, bytes: $0) }
        } else {
            try w.embedding.write(rows: local, e.embedding.data)
        }
        try w.originalSize.write(rows: local, [Int32(p.originalSize.height), Int32(p.originalSize.width)])
        try w.resizedSize.write(rows: local, [Int32(p.image.validSize.height), Int32(p.image.validSize.width)])
        try w.viewParams.write(rows: local, p.params.stored)
        if let row = e.everything {
            guard let d = w.everything else { throw CacheError("\(w.file.filePath): has no everything-mask datasets") }
            try Self.writeEverything(row, to: d, row: local)
        }
        try w.file.flush()
        try w.complete.write(rows: local, [UInt8(1)])
        try w.file.flush()
    }
}

extension FeatureCacheBuilder {
    /// One row of the everything-mask datasets (`CacheSchema.everythingDatasets` order), padded
    /// with zeros to the datasets' capacity.
    static func writeEverything(_ e: EverythingRow, to d: [HDF5Dataset], row: Int) throws {
        let M = d[2].rowCount, K = d[3].rowCount
        let lengths = e.masks.map { Int32($0.rle.counts.count) }, counts = e.masks.flatMap { $0.rle.counts.map(Int32.init) }
        precondition(e.masks.count <= M && counts.count <= K, "FeatureCache: \(e.masks.count) masks, \(counts.count) counts exceed \(M), \(K)")
        try d[0].write(rows: row, [Int32(e.masks.count)])
        try d[1].write(rows: row, [Int32(e.dropped)])
        try d[2].write(rows: row, lengths + [Int32](repeating: 0, count: M - lengths.count))
        try d[3].write(rows: row, counts + [Int32](repeating: 0, count: K - counts.count))
        try d[4].write(rows: row, e.masks.map(\.predictedIoU) + [Float](repeating: 0, count: M - e.masks.count))
        try d[5].write(rows: row, e.masks.map(\.stabilityScore) + [Float](repeating: 0, count: M - e.masks.count))
    }
}

import ArgumentParser
import Distill
import Foundation
import SegmentAnything

struct Cache: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Compute teacher embeddings for every image of a folder into an HDF5 feature cache.",
        discussion: """
            Every JPEG/PNG under --images (recursively, sorted by path) is decoded like PIL, \
            preprocessed like SAM (longest side → the encoder's input size, zero padding) and run \
            through the teacher. One row per view: the padded uint8 image, the embedding (float16 \
            by default), sizes, source path, view parameters, split and a complete flag written \
            last. View 0 of an image is the plain preprocessing; views 1…N−1 are random resized \
            crops + horizontal flips, seeded per (seed, path, view). Val images get view 0 only.

            Rerunning the same command resumes: complete rows are kept, the rest computed. Other \
            teacher, preprocessing, view, split or image settings are refused unless --overwrite. \
            Files that cannot be decoded are skipped and listed; a folder with no readable image \
            is an error. The file is crash-safe: a killed run leaves no row marked complete that \
            is not. Layout: Sources/Distill/CacheSchema.swift; h5py reads it.

            Teacher: a .pt/.pth/.safetensors file holding an image encoder (MobileSAM's TinyViT \
            or SAM ViT-B/L/H, keys with or without 'image_encoder.'); --teacher-config names a \
            JSON {"architecture": "tinyvit"|"vit", "config": {...}} for any other size (e.g. the \
            tiny teachers the tests use).

            Under mpirun -np N (or srun) the ranks split the rows: the cache is sharded (N shards \
            unless --shard-size), rank r writes shards r, r+N, …, each crash-safe; the --out file \
            indexes them; a rerun with any rank count resumes every shard.

            --everything-masks (or data.everything_masks in --config) also stores each row's \
            teacher everything-masks: SAM's automatic mask generator (as `segment everything`, \
            with 16 points per side and the --fast grid by default) on the row's own image, decoding its teacher embedding \
            with the teacher checkpoint's prompt encoder and mask decoder (which must be in \
            --teacher). They are kept on the 256² low-res grid of the padded 1024 input (one \
            mask pixel per 4×4 input pixels), as COCO uncompressed RLE (column-major counts), at \
            most --everything-max-masks masks and --everything-max-counts counts a row (highest \
            predicted IoU first; the rest are counted as dropped); written before the row's \
            complete flag like every field. samdistill train with loss prompt_in_the_loop then \
            samples its prompts from these masks.
            """)

    @OptionGroup var runtime: RuntimeOptions

    @Option(help: "A run config (YAML): takes the folder from data.images, the output from data.train[0], the teacher from teacher.checkpoint, views / split / dtype from data.*, the seed from seed. Explicit flags override it.")
    var config: String?

    @Option(help: "Folder of images (searched recursively).")
    var images: String?

    @Option(help: "Teacher weights (.pt, .pth or .safetensors).")
    var teacher: String?

    @Option(help: "JSON architecture of the teacher when it is not MobileSAM or SAM ViT-B/L/H.")
    var teacherConfig: String?

    @Option(help: "Output cache file (.h5); with --shard-size, the index of the shards.")
    var out: String?

    @Option(help: "Views per training image (1 = the plain SAM preprocessing).")
    var views: Int?

    @Option(help: "Seed of the augmentation.")
    var seed: Int?

    @Option(help: "Embedding storage type: f16 or f32.")
    var dtype: String?

    @Option(help: "Use only the first N images (in path order).")
    var limit: Int?

    @Option(help: "File listing validation images (relative paths or file names, one a line).")
    var valList: String?

    @Option(help: "Fraction of images for validation, chosen by a stable hash of the path.")
    var valFraction: Double?

    @Option(help: "Rows per shard file; the --out file then indexes the shards.")
    var shardSize: Int?

    @Flag(help: "Also store each row's teacher everything-masks (see below); data.everything_masks in --config does the same.")
    var everythingMasks = false

    @OptionGroup(title: "Everything-masks generator (with --everything-masks; defaults: 16 points per side, --fast)")
    var generator: MaskGeneratorArguments

    @Option(help: "--everything-masks: masks stored per row at most (default 64).")
    var everythingMaxMasks: Int?

    @Option(help: "--everything-masks: RLE counts stored per row at most, all masks together (default 32768, 4 bytes each, reserved).")
    var everythingMaxCounts: Int?

    @Flag(help: "Delete an existing cache at --out (and its shards) and start over.")
    var overwrite = false

    @Flag(help: "No progress lines.")
    var quiet = false

    func validate() throws {
        if valList != nil && valFraction != nil { throw ValidationError("--val-list and --val-fraction exclude each other") }
        if let f = valFraction, !(0...1).contains(f) { throw ValidationError("--val-fraction must be within 0…1") }
        if let dtype, !["f16", "f32", "float16", "float32"].contains(dtype) { throw ValidationError("--dtype must be f16 or f32") }
        if let views, views < 1 { throw ValidationError("--views must be at least 1") }
        if let l = limit, l < 1 { throw ValidationError("--limit must be at least 1") }
        if let s = shardSize, s < 1 { throw ValidationError("--shard-size must be at least 1") }
        if config == nil {
            for (value, flag) in [(images, "--images"), (teacher, "--teacher"), (out, "--out")] where value == nil {
                throw ValidationError("\(flag) is required (or give --config CONFIG)")
            }
        }
    }

    /// The options in effect: flags, then the config's (`CacheOptions(config:)`), then defaults,
    /// and the teacher weights. Errors name the config key.
    func resolved() throws -> (options: CacheOptions, teacher: String) {
        var o: CacheOptions
        var teacherPath = teacher
        if let config {
            var cfg = try RunConfig.load(URL(fileURLWithPath: config))
            if let out { cfg.data.train = [out] }
            if let images { cfg.data.images = images; cfg.data.imageList = nil }
            o = try CacheOptions(config: cfg, configName: config)
            teacherPath = teacher ?? cfg.teacher.checkpoint
            guard teacherPath != nil else { throw CacheError("\(config): teacher.checkpoint is not set (needed to build the cache)") }
        } else {
            o = CacheOptions(images: URL(fileURLWithPath: images!), output: URL(fileURLWithPath: out!))
        }
        if let views { o.views = views }
        if let seed { o.seed = seed }
        if let dtype { o.embeddingDType = dtype.hasSuffix("32") ? "float32" : "float16" }
        if let f = valFraction { o.split = .fraction(f) } else if let l = valList {
            o.split = try SplitRule.list(file: URL(fileURLWithPath: l))
        }
        let tunes = generator.given || everythingMaxMasks != nil || everythingMaxCounts != nil
        if everythingMasks || (tunes && o.everythingMasks == nil) {
            guard everythingMasks else {
                throw CacheError("--points-per-side, --fast/--full-grid, --*-thresh and --everything-max-* tune --everything-masks "
                                 + "(or data.everything_masks in \(config ?? "the config")): add --everything-masks")
            }
            o.everythingMasks = o.everythingMasks ?? EverythingMaskSettings()
        }
        if o.everythingMasks != nil {
            generator.apply(to: &o.everythingMasks!)
            if let v = everythingMaxMasks { o.everythingMasks!.maxMasks = v }
            if let v = everythingMaxCounts { o.everythingMasks!.maxCounts = v }
            if let p = o.everythingMasks!.problems().first { throw CacheError("--everything-masks: \(p)") }
        }
        return (o, teacherPath!)
    }

    func run() throws {
        do {
            var (o, teacherPath) = try resolved()
            let t = try TeacherEncoder.load(weights: URL(fileURLWithPath: teacherPath),
                                          config: teacherConfig.map { URL(fileURLWithPath: $0) })
            o.limit = limit
            o.shardSize = shardSize
            o.overwrite = overwrite
            o.command = CommandLine.arguments.joined(separator: " ")
            o.progress = !quiet
            let builder = FeatureCacheBuilder(options: o, teacher: t,
                                              everything: try EverythingMasker.load(o.everythingMasks, checkpoint: teacherPath))
            let comm = builder.communicator
            if comm.isDistributed {
                // Each rank's lines, marked with its rank (no in-place progress: lines interleave).
                let tag = "[rank \(comm.rank)/\(comm.size)] "
                builder.progressInPlace = false
                builder.log = { FileHandle.standardError.write(Data((tag + $0 + "\n").utf8)) }
            }
            let summary = try builder.run()
            if builder.communicator.isRoot { FileHandle.standardError.write(Data((summary.report + "\n").utf8)) }
        } catch let e as CustomStringConvertible where !(e is ValidationError) {
            FileHandle.standardError.write(Data("error: \(e.description)\n".utf8))
            throw ExitCode.failure
        }
    }
}

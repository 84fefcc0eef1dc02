import CheckpointFormats
import Distill
import Foundation
import ImageCodecs
import Layers
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// Shared helpers of the feature-cache tests: a tiny random TinyViT teacher on disk (weights +
/// config JSON, what `samdistill cache --teacher-config` takes), synthetic photos, temporary
/// folders, the built `samdistill` executable, and the real photos of Scripts/fetch-data.
enum CacheTestSupport {
    /// A small TinyViT: 64×64 inputs → (8, 4, 4) embeddings, milliseconds per image.
    static func tinyConfig(imageSize: Int = 64) -> TinyViTConfig {
        var c = TinyViTConfig()
        c.imageSize = imageSize
        c.embedDims = [8, 16, 16, 16]
        c.depths = [1, 1, 1, 1]
        c.numHeads = [1, 2, 2, 2]
        c.windowSizes = [4, 4, 4, 4]
        c.mergeStrides = [2, 2, 1]
        c.neckChannels = 8
        return c
    }

    /// Writes `teacher.safetensors` + `teacher.json` into `dir`: a tiny teacher with SAM's
    /// 256-channel embedding (64×64 input → 256×4×4), what the trainer and the decoder need.
    static func writeTinySAMTeacher(in dir: URL, seed: UInt64 = 9) throws -> (weights: URL, config: URL) {
        var config = tinyConfig()
        config.neckChannels = 256
        let teacher = TinyViT(config)
        var rng = SeededRandom(seed: seed)
        randomiseSignalPreserving(teacher, rng: &rng)
        let weights = dir.appendingPathComponent("teacher.safetensors"), json = dir.appendingPathComponent("teacher.json")
        try SafeTensors.write(teacher.stateDict(), to: weights)
        try JSONEncoder().encode(TeacherEncoder.ConfigFile(tinyvit: config)).write(to: json)
        return (weights, json)
    }

    /// Writes `tiny.safetensors` (random weights, seeded) and `tiny.json` into `dir`.
    @discardableResult
    static func writeTinyTeacher(in dir: URL, imageSize: Int = 64, seed: UInt64 = 5,
                                 neckChannels: Int = 8) throws -> (weights: URL, config: URL) {
        var config = tinyConfig(imageSize: imageSize)
        config.neckChannels = neckChannels
        let model = TinyViT(config)
        var rng = SeededRandom(seed: seed)
        randomiseSignalPreserving(model, rng: &rng)
        var tensors: [String: Tensor] = [:]
        for (k, p) in model.namedParameters() { tensors[k] = p.value }
        let w = dir.appendingPathComponent("tiny.safetensors"), c = dir.appendingPathComponent("tiny.json")
        try SafeTensors.write(tensors, to: w)
        try JSONEncoder().encode(TeacherEncoder.ConfigFile(tinyvit: config)).write(to: c)
        return (w, c)
    }

    /// Writes `tiny-sam.safetensors`: a whole SAM whose image encoder is a tiny random TinyViT
    /// with SAM's 256 channels (seeded) and whose prompt encoder and mask decoder are MobileSAM's
    /// real ones, the encoder named in the metadata: a teacher for caches with everything-masks
    /// (S = imageSize, low-res masks S/4).
    static func writeTinySAM(in dir: URL, imageSize: Int = 64, seed: UInt64 = 5) throws -> URL {
        var c = tinyConfig(imageSize: imageSize)
        c.neckChannels = 256
        let model = SAMModel(encoder: .tinyViT(c))
        var rng = SeededRandom(seed: seed)
        randomiseSignalPreserving(model.imageEncoder, rng: &rng)
        let real = try WeightsFile(contentsOf: try Fixture.mobileSAMCheckpoint())
        var tensors = model.stateDict()
        for (k, v) in real.tensors where k.hasPrefix("prompt_encoder.") || k.hasPrefix("mask_decoder.") { tensors[k] = v }
        let url = dir.appendingPathComponent("tiny-sam.safetensors")
        try SafeTensors.write(tensors, metadata: SAMEncoderConfig.tinyViT(c).metadata, to: url)
        return url
    }

    /// Everything-mask settings that keep a tiny random teacher's masks (no score filters).
    static var tinyEverything: EverythingMaskSettings {
        var e = EverythingMaskSettings()
        e.pointsPerSide = 8
        e.predIoUThresh = 0
        e.stabilityScoreThresh = 0
        return e
    }

    /// Random values that keep the input's signal through the network (N(0, 0.3²) everywhere
    /// washes it out, and every image would get the same embedding): matrices N(0, (1.5/√fan-in)²),
    /// norm scales 1 ± 0.2, biases and running means N(0, 0.05²), running variances U(0.5, 1),
    /// attention biases N(0, 0.3²).
    static func randomiseSignalPreserving(_ model: Module, rng: inout SeededRandom) {
        for (k, p) in model.namedParameters() {
            let shape = p.value.shape
            if k.hasSuffix("running_var") {
                p.value = .randomUniform(shape, 0.5, 1, rng: &rng)
            } else if k.hasSuffix("running_mean") || k.hasSuffix("bias") {
                p.value = .randomNormal(shape, std: 0.05, rng: &rng)
            } else if k.contains("attention_biases") {
                p.value = .randomNormal(shape, std: 0.3, rng: &rng)
            } else if shape.count == 1 {
                var t = Tensor.randomNormal(shape, std: 0.2, rng: &rng)
                for i in 0..<t.count { t.data[i] += 1 }
                p.value = t
            } else {
                let fanIn = p.value.count / shape[0]
                p.value = .randomNormal(shape, std: 1.5 / Float(fanIn).squareRoot(), rng: &rng)
            }
        }
    }

    /// Synthetic "photos": smooth colour gradients plus seeded noise, varied sizes and aspect
    /// ratios (landscape, portrait, square), as PNG files `img_NN.png` in `dir` (subfolders too).
    @discardableResult
    static func writeSyntheticImages(in dir: URL, count: Int, seed: UInt64 = 1) throws -> [String] {
        var rng = SeededRandom(seed: seed)
        var names: [String] = []
        for i in 0..<count {
            let w = 40 + Int(rng.next() % 120), h = 40 + Int(rng.next() % 120)
            var px = [UInt8](repeating: 0, count: w * h * 3)
            for y in 0..<h {
                for x in 0..<w {
                    let n = Int(rng.next() % 32)
                    px[(y * w + x) * 3] = UInt8((x * 255 / max(1, w - 1) + n) % 256)
                    px[(y * w + x) * 3 + 1] = UInt8((y * 255 / max(1, h - 1) + 2 * n) % 256)
                    px[(y * w + x) * 3 + 2] = UInt8(((x + y + i * 17) * 3 + n) % 256)
                }
            }
            let rel = i % 3 == 2 ? String(format: "sub/img_%02d.png", i) : String(format: "img_%02d.png", i)
            let url = dir.appendingPathComponent(rel)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try ImageIO.writePNG(RGBImage(width: w, height: h, pixels: px), to: url)
            names.append(rel)
        }
        return names
    }

    static func temporaryDirectory(_ name: String) throws -> URL {
        let u = FileManager.default.temporaryDirectory
            .appendingPathComponent("samdistill-\(name)-\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: u, withIntermediateDirectories: true)
        return u
    }

    /// The built `samdistill` executable: `$SAMDISTILL_BIN`, or beside the test bundle
    /// (.build/<configuration>/).
    static func executable() throws -> URL { try Fixture.samdistillExecutable() }

    /// The natural photos of `Scripts/fetch-data` (which `Scripts/test` runs): missing is a
    /// failure with instructions, never a silent skip.
    static func realPhotos(_ names: [String]) throws -> [URL] {
        let dir = Fixture.repositoryRoot.appendingPathComponent("data/opencv-doc/usr/share/doc/opencv-doc/examples/data")
        let urls = names.map { dir.appendingPathComponent($0) }
        for u in urls where !FileManager.default.fileExists(atPath: u.path) {
            throw FixtureError("\(u.path) is missing: run Scripts/fetch-data (Scripts/test does)")
        }
        return urls
    }

    /// Runs the executable; returns (status, stdout, stderr).
    @discardableResult
    static func run(_ exe: URL, _ args: [String]) throws -> (status: Int32, out: String, err: String) {
        try Fixture.runProcess(exe, args)
    }

    /// Every dataset's bytes of every row, complete flags included, for row-by-row comparisons.
    static func rowDump(_ url: URL) throws -> [[String: [UInt8]]] {
        let r = try CacheReader(url)
        return try (0..<r.count).map { i in
            guard r.isComplete(i) else { return ["complete": [0]] }
            let row = try r.row(i)
            var d: [String: [UInt8]] = [:]
            d["image"] = row.image.pixels
            d["embedding"] = row.embedding.data.withUnsafeBytes { Array($0) }
            d["meta"] = Array("\(row.source)|\(row.view)|\(row.split)|\(row.originalSize)|\(row.image.validSize)|\(row.viewParameters.stored)".utf8)
            if let m = try r.everythingMasks(i) { d["everything"] = Array("\(m)".utf8) }
            return d
        }
    }
}

/// Float16 rounding bound: |a − b| ≤ 2⁻¹¹·|b| + 2⁻²⁵ (half an ulp at b's magnitude; subnormals).
/// Returns whether every element is within it and the worst |a − b| / bound.
func withinHalfRounding(_ cached: [Float], _ exact: [Float]) -> (ok: Bool, worst: Double) {
    var worst = 0.0
    for (a, b) in zip(cached, exact) {
        let bound = Double(abs(b)) * pow(2, -11) + pow(2, -25)
        worst = max(worst, Double(abs(a - b)) / bound)
    }
    return (worst <= 1.0000001, worst)
}

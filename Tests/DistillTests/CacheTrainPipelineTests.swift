import CheckpointFormats
import Distill
import Foundation
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// The two commands chained as a user runs them from one config: `samdistill cache --config`
/// (folder from data.images, output data.train[0], teacher.checkpoint, validation split from
/// data.val_fraction) with a tiny teacher, then `samdistill train` on that cache (the trainer
/// reads it through `CacheTrainingData`).
final class CacheTrainPipelineTests: XCTestCase {
    func testCacheThenTrainFromTheCommandLine() throws {
        let dir = try CacheTestSupport.temporaryDirectory("pipeline")
        defer { try? FileManager.default.removeItem(at: dir) }
        let (weights, teacherConfig) = try CacheTestSupport.writeTinySAMTeacher(in: dir)
        let images = dir.appendingPathComponent("images")
        try CacheTestSupport.writeSyntheticImages(in: images, count: 8)
        let exe = try CacheTestSupport.executable()
        let cache = dir.appendingPathComponent("cache.h5")
        let run = dir.appendingPathComponent("run")
        let yaml = """
            data: {train: [\(cache.path)], val_fraction: 0.3, images: \(images.path), views: 1}
            teacher: {checkpoint: \(weights.path)}
            student: {type: tinyvit, image_size: 64, embed_dims: [8, 16, 16, 16], depths: [1, 1, 1, 1],
                      num_heads: [1, 2, 2, 2], window_sizes: [4, 4, 4, 4], merge_strides: [2, 2, 1]}
            init: {type: random}
            loss: {type: mse}
            schedule: {type: constant, lr: 1.0e-3}
            batch_size: 2
            steps: 6
            seed: 1
            checkpoint_every: 3
            keep_last: 2
            eval_every: 3
            output_dir: \(run.path)
            """
        let cfg = dir.appendingPathComponent("run.yaml")
        try yaml.write(to: cfg, atomically: true, encoding: .utf8)
        let c = try CacheTestSupport.run(exe, ["cache", "--config", cfg.path, "--teacher-config", teacherConfig.path, "--quiet"])
        XCTAssertEqual(c.status, 0, c.err)
        XCTAssertFalse(c.err.contains("HDF5-DIAG"), "no HDF5 error stack on a clean run: \(c.err)")
        let reader = try CacheReader(cache)
        XCTAssertGreaterThan(reader.rows(split: .val).count, 0, "data.val_fraction held images out at cache time")
        XCTAssertEqual(reader.rows().count, 8)
        let t = try CacheTestSupport.run(exe, ["train", cfg.path, "--quiet"])
        XCTAssertEqual(t.status, 0, t.err)

        // The trainer saw the cache's rows: 6 steps logged with finite losses, validation ran.
        let lines = try String(contentsOf: run.appendingPathComponent("metrics.jsonl"), encoding: .utf8)
            .split(separator: "\n").compactMap { try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        let losses = lines.compactMap { $0["loss"] as? Double }
        XCTAssertEqual(losses.count, 6, "\(lines)")
        XCTAssertTrue(losses.allSatisfy(\.isFinite))
        XCTAssertLessThan(losses.last!, losses.first!, "training on the cache lowers the loss")
        let evals = lines.compactMap { $0["eval"] as? [String: Double] }
        XCTAssertEqual(evals.count, 2, "evaluation on the held-out rows at steps 3 and 6: \(lines)")
        XCTAssertTrue(evals.allSatisfy { ($0["val_mse"] ?? .nan).isFinite && ($0["val_cosine"] ?? .nan).isFinite })

        // The split: every complete row lands on exactly one side, both sides non-empty.
        var data = DataConfig()
        data.train = [cache.path]
        data.valFraction = 0.3
        let (train, validation) = try CacheTrainingData.open(data)
        XCTAssertEqual(train.count + (validation?.count ?? 0), reader.rows().count)
        XCTAssertGreaterThan(validation?.count ?? 0, 0)
        let batch = try train.batch([0, 1], seed: 0)
        XCTAssertEqual(batch.targets.shape, [2, 256, 4, 4])
        XCTAssertEqual(batch.images.shape, [2, 3, 64, 64])

        // A config without data.images: the cache command names the key.
        let bare = dir.appendingPathComponent("bare.yaml")
        try yaml.replacingOccurrences(of: ", images: \(images.path)", with: "").write(to: bare, atomically: true, encoding: .utf8)
        let e = try CacheTestSupport.run(exe, ["cache", "--config", bare.path, "--quiet"])
        XCTAssertNotEqual(e.status, 0)
        XCTAssertTrue(e.err.contains("data.images"), e.err)
    }
}

import CheckpointFormats
import Distill
import Foundation
import ImageCodecs
import Layers
import Optim
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// A RepViT student end to end through the CLI: trained two steps (a narrow RepViT at SAM's 1024
/// input, so its embedding is 256×64×64), its training checkpoint exported (fused), and the
/// fused export run by `segment`, `segment everything`, `cache --teacher` and `bench encoder`;
/// `eval` reads the training checkpoint itself.
final class RepViTEndToEndTests: XCTestCase {
    static let student: RepViTConfig = {
        var c = RepViTConfig()
        c.embedDims = [8, 8, 16, 16]; c.depths = [1, 2, 1, 1]; c.seBlocks = [1, 3]
        c.fusionChannels = 8
        return c
    }()

    func testTrainExportSegmentEvalCacheAndBenchWithARepViTStudent() throws {
        let dir = try CacheTestSupport.temporaryDirectory("repvit-e2e")
        defer { try? FileManager.default.removeItem(at: dir) }
        var c = RunConfig()
        c.student = .repViT(Self.student, preset: nil)
        c.teacher.checkpoint = try Fixture.mobileSAMCheckpoint().path
        c.batchSize = 2; c.steps = 2; c.checkpointEvery = 2; c.seed = 2
        c.schedule = .constant(ConstantSchedule(lr: 1e-3))
        c.outputDir = dir.appendingPathComponent("run").path
        var rng = SeededRandom(seed: 4)
        let data = InMemoryTrainingData(images: .randomNormal([2, 3, 1024, 1024], rng: &rng),
                                        targets: .randomNormal([2, 256, 64, 64], std: 0.1, rng: &rng))
        let trainer = try Trainer(config: c, student: try Student.make(c), train: data)
        trainer.showsProgress = false
        _ = try trainer.run()
        let checkpoint = trainer.checkpointDirectory.appendingPathComponent("step-00000002.safetensors")
        let exe = try CacheTestSupport.executable()

        // export --full writes the fused network, equal to the trained one in eval mode.
        let full = dir.appendingPathComponent("student.safetensors")
        let e = try CacheTestSupport.run(exe, ["export", checkpoint.path, "--out", full.path, "--full"])
        XCTAssertEqual(e.status, 0, e.err)
        XCTAssertEqual(try SafeTensors.read(full).metadata["image_encoder"], "repvit")
        let model = try SAMModel.load(contentsOf: full)
        var fusedConfig = Self.student
        fusedConfig.fused = true
        XCTAssertEqual(model.encoderConfig, .repViT(fusedConfig))
        XCTAssertFalse(model.imageEncoder.namedParameters().contains { $0.0.contains(".bn.") }, "no BatchNorm in the export")
        let x = Tensor.randomNormal([1, 3, 1024, 1024], rng: &rng)
        let trained = trainer.student.forward(x, mode: .evaluationWithGradients)
        XCTAssertLessThanOrEqual(relativeError(model.imageEncoder.forward(x, mode: .inference), trained), 1e-5)

        // segment, segment everything and eval through the CLI (StudentCLIChecks).
        try StudentCLIChecks.segmentEverythingAndEval(exe: exe, full: full, checkpoint: checkpoint, model: model,
                                                                  encoderPrefix: "RepViT", in: dir)
        let images = dir.appendingPathComponent("images")

        // cache --teacher with the fused export: its embeddings within float16 rounding.
        let cache = dir.appendingPathComponent("c.h5")
        let ct = try CacheTestSupport.run(exe, ["cache", "--images", images.path, "--teacher", full.path, "--out", cache.path, "--quiet"])
        XCTAssertEqual(ct.status, 0, ct.err)
        let reader = try CacheReader(cache)
        XCTAssertEqual(reader.teacher, "repvit")
        let batch = try reader.batch(rows: reader.rows())
        XCTAssertLessThan(relativeError(batch.embeddings, model.imageEncoder.forward(batch.images, mode: .inference)), 1e-3)

        // bench encoder runs the fused export.
        let b = try CacheTestSupport.run(exe, ["bench", "encoder", "--checkpoint", full.path, "--repeats", "1", "--json"])
        XCTAssertEqual(b.status, 0, b.err)
        XCTAssertTrue(b.out.contains("\"median_ms\""), b.out)
    }
}

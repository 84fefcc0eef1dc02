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

/// The conv student is a SAM image encoder like TinyViT: trained two steps (a tiny-width network
/// at SAM's 1024 input, so its embedding is 256×64×64), its training checkpoint is exported and
/// the export runs `segment`, `segment everything` and `cache --teacher`; `eval` reads the
/// checkpoint itself. The loader keeps TinyViT's head rule away from it.
final class ConvStudentEndToEndTests: XCTestCase {
    /// ResNet-style trunk of width 4 (stride 4 · 8 = 32, one ×2 transposed conv back to 64×64).
    static let student: ConvStudentConfig = {
        var c = ConvStudentConfig()
        c.stemChannels = 4; c.stemStride = 4
        c.channels = [4, 4, 4, 4]; c.blocks = [1, 1, 1, 1]; c.strides = [1, 2, 2, 2]
        c.upsampleChannels = 4; c.outChannels = 256
        return c
    }()

    /// Two training steps on one random image; returns the trainer (its student) and the checkpoint.
    func train(in dir: URL) throws -> (Trainer, URL) {
        var c = RunConfig()
        c.student = .conv(Self.student)
        c.teacher.checkpoint = try Fixture.mobileSAMCheckpoint().path
        c.batchSize = 1; c.steps = 2; c.checkpointEvery = 2; c.seed = 2
        c.schedule = .constant(ConstantSchedule(lr: 1e-3))
        c.outputDir = dir.appendingPathComponent("run").path
        var rng = SeededRandom(seed: 4)
        let data = InMemoryTrainingData(images: .randomNormal([1, 3, 1024, 1024], rng: &rng),
                                        targets: .randomNormal([1, 256, 64, 64], std: 0.1, rng: &rng))
        let trainer = try Trainer(config: c, student: try Student.make(c), train: data)
        trainer.showsProgress = false
        _ = try trainer.run()
        return (trainer, trainer.checkpointDirectory.appendingPathComponent("step-00000002.safetensors"))
    }

    func testTrainExportSegmentEvalAndCacheWithAConvStudent() throws {
        let dir = try CacheTestSupport.temporaryDirectory("conv-e2e")
        defer { try? FileManager.default.removeItem(at: dir) }
        let (trainer, checkpoint) = try train(in: dir)
        let exe = try CacheTestSupport.executable()

        // export --full: the decoder from the run config's teacher; the encoder unchanged.
        let full = dir.appendingPathComponent("student.safetensors")
        let e = try CacheTestSupport.run(exe, ["export", checkpoint.path, "--out", full.path, "--full"])
        XCTAssertEqual(e.status, 0, e.err)
        XCTAssertEqual(try SafeTensors.read(full).metadata["image_encoder"], "conv_student")
        let model = try SAMModel.load(contentsOf: full)
        XCTAssertEqual(model.encoderConfig, .conv(Self.student))
        let exported = model.imageEncoder.stateDict(), trained = trainer.student.stateDict()
        XCTAssertEqual(Set(exported.keys), Set(trained.keys))
        XCTAssertTrue(exported.keys.contains("head.weight"), "the conv student's own head is exported")
        for (k, v) in trained { XCTAssertTrue(exported[k]!.data == v.data, k) }

        // segment, segment everything and eval through the CLI (StudentCLIChecks).
        let evaluation = try StudentCLIChecks.segmentEverythingAndEval(exe: exe, full: full, checkpoint: checkpoint, model: model,
                                                                  encoderPrefix: "ConvStudent", in: dir)
        let images = dir.appendingPathComponent("images")
        XCTAssertTrue(evaluation.summary.allSatisfy { $0.miou >= 0 && $0.miou <= 1 }, "\(evaluation.summary)")

        // cache --teacher: the conv student's embeddings, within float16 rounding of its forward.
        let cache = dir.appendingPathComponent("c.h5")
        let c = try CacheTestSupport.run(exe, ["cache", "--images", images.path, "--teacher", full.path, "--out", cache.path, "--quiet"])
        XCTAssertEqual(c.status, 0, c.err)
        let reader = try CacheReader(cache)
        XCTAssertEqual(reader.teacher, "conv_student")
        XCTAssertEqual(reader.embeddingShape, [256, 64, 64])
        let batch = try reader.batch(rows: reader.rows())
        let y = model.imageEncoder.forward(batch.images, mode: .inference)
        XCTAssertLessThan(relativeError(batch.embeddings, y), 1e-3)
        XCTAssertGreaterThan(y.maxAbs(), 0)
    }

    /// TinyViT's ignored classification-head keys are TinyViT's only: a conv student's file with
    /// `norm_head.*` is refused, and one without its `head.*` is missing keys, named as the file
    /// names them, with the file.
    func testConvStudentKeysAreStrict() throws {
        let dir = try CacheTestSupport.temporaryDirectory("conv-keys")
        defer { try? FileManager.default.removeItem(at: dir) }
        let config = SAMEncoderConfig.conv(Self.student)
        var tensors: [String: Tensor] = [:]
        for (k, v) in ConvStudent(Self.student).stateDict() { tensors["image_encoder." + k] = v }
        let good = dir.appendingPathComponent("good.safetensors")
        try SafeTensors.write(tensors, metadata: config.metadata, to: good)
        XCTAssertEqual(try SAMWeights.read(good).architecture, config)

        var extra = tensors
        extra["image_encoder.norm_head.weight"] = Tensor(zeros: [4])
        let withHead = dir.appendingPathComponent("extra.safetensors")
        try SafeTensors.write(extra, metadata: config.metadata, to: withHead)
        XCTAssertThrowsError(try SAMWeights.read(withHead)) { error in
            guard let e = error as? WeightLoadingError else { return XCTFail("\(error)") }
            XCTAssertEqual(e.unexpected, ["image_encoder.norm_head.weight"])
            XCTAssertEqual(e.source, withHead.path)
        }

        var headless = tensors
        headless["image_encoder.head.weight"] = nil
        headless["image_encoder.head.bias"] = nil
        let missing = dir.appendingPathComponent("headless.safetensors")
        try SafeTensors.write(headless, metadata: config.metadata, to: missing)
        XCTAssertThrowsError(try SAMWeights.read(missing)) { error in
            guard let e = error as? WeightLoadingError else { return XCTFail("\(error)") }
            XCTAssertEqual(Set(e.missing), ["image_encoder.head.weight", "image_encoder.head.bias"])
            XCTAssertTrue(e.description.contains(missing.path), e.description)
        }
    }
}

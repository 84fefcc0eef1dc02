import Distill
import Foundation
import Layers
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// `freeze:` — leading TinyViT units run as in inference, get no backward and are not optimised.
final class FreezeTests: XCTestCase {
    static func config() -> TinyViTConfig {
        var c = CacheTestSupport.tinyConfig()
        c.neckChannels = 16
        return c
    }

    /// frozenUnits = 2 (patch_embed, layers.0) against the same computation written out by hand:
    /// those units in inference mode (BatchNorm running statistics), the rest in training mode,
    /// backward through the rest only. Output and every gradient equal (same code, same order:
    /// tolerance 0); the frozen units' gradients stay zero and the returned input gradient is empty.
    func testFrozenPrefixEqualsInferencePrefixPlusTrainedRest() {
        var rng = SeededRandom(seed: 11)
        let a = TinyViT(Self.config()), b = TinyViT(Self.config())
        randomiseParameters(a, rng: &rng)
        for (k, v) in a.stateDict() { _ = b.namedParameters().first { $0.0 == k }.map { $0.1.value = v } }
        // Running statistics unlike the batch's, so that a train-mode prefix would differ.
        for (k, p) in a.namedParameters() where k.hasSuffix("running_var") { p.value = Tensor(repeating: 2.5, shape: p.shape) }
        for (k, p) in b.namedParameters() where k.hasSuffix("running_var") { p.value = Tensor(repeating: 2.5, shape: p.shape) }
        let x = Tensor.randomNormal([2, 3, 64, 64], rng: &rng)
        let dy = Tensor.randomNormal([2, 16, 4, 4], rng: &rng)

        a.frozenUnits = 2
        let ya = a.forward(x, mode: .training)
        let dxa = a.backward(dy)
        XCTAssertEqual(dxa.shape, [0])

        // By hand on b.
        var h = b.patchEmbed.forward(x, mode: .inference)
        for blk in b.convStage.blocks { h = blk.forward(h, mode: .inference) }
        h = b.convStage.downsample!.forward(h, mode: .inference)
        for s in b.stages {
            for blk in s.blocks { h = blk.forward(h, mode: .training) }
            if let d = s.downsample { h = d.forward(h, mode: .training) }
        }
        let yb = b.neck.forward(ConvLayout.tokensToMap(h, height: 4, width: 4), mode: .training)
        var g = ConvLayout.mapToTokens(b.neck.backward(dy))
        for s in b.stages.reversed() {
            if let d = s.downsample { g = d.backward(g) }
            for blk in s.blocks.reversed() { g = blk.backward(g) }
        }
        XCTAssertEqual(ya.data, yb.data)
        let gb = Dictionary(uniqueKeysWithValues: b.namedParameters().map { ($0.0, $0.1) })
        for (k, p) in a.namedParameters() where p.isTrainable {
            if k.hasPrefix("patch_embed.") || k.hasPrefix("layers.0.") {
                XCTAssertTrue(p.grad.data.allSatisfy { $0 == 0 }, "frozen \(k) got a gradient")
            } else {
                XCTAssertEqual(p.grad.data, gb[k]!.grad.data, k)
            }
        }
        // Frozen BatchNorms keep their running statistics (inference mode does not update them).
        for (k, p) in a.namedParameters() where k.hasPrefix("layers.0.") && k.hasSuffix("running_var") {
            XCTAssertTrue(p.value.data.allSatisfy { $0 == 2.5 }, k)
        }
    }

    /// Config: freeze must be a prefix of the units from the input; the trainer leaves frozen
    /// parameters out of AdamW, so weight decay does not touch them either.
    func testFreezeConfigAndTrainer() throws {
        let base = """
            student: {type: tinyvit, image_size: 64, embed_dims: [8, 16, 16, 16], depths: [1, 1, 1, 1],
                      num_heads: [1, 2, 2, 2], window_sizes: [4, 4, 4, 4], merge_strides: [2, 2, 1], neck_channels: 256}
            optimizer: {weight_decay: 0.5}
            schedule: {type: constant, lr: 1.0e-2}
            batch_size: 2
            steps: 2
            checkpoint_every: 10
            """
        XCTAssertEqual(try RunConfig.parse(base, overrides: ["freeze=[patch_embed, layers.0]"]).freeze, ["patch_embed", "layers.0"])
        for bad in ["freeze=[layers.0]", "freeze=[patch_embed, layers.1]", "freeze=[neck]"] {
            XCTAssertThrowsError(try RunConfig.parse(base, overrides: [bad])) { e in
                XCTAssertTrue("\(e)".contains("freeze: must be the first units"), "\(bad): \(e)")
            }
        }
        XCTAssertThrowsError(try RunConfig.parse("student: {type: conv}\nfreeze: [stem]")) { e in
            XCTAssertTrue("\(e)".contains("freeze: freezing is implemented for tinyvit students only"), "\(e)")
        }
        var cfg = try RunConfig.parse(base, overrides: ["freeze=[patch_embed]"])
        let dir = try CacheTestSupport.temporaryDirectory("freeze")
        defer { try? FileManager.default.removeItem(at: dir) }
        cfg.outputDir = dir.path
        let student = try Student.make(cfg)
        XCTAssertTrue(student.isFrozen("patch_embed.seq.0.c.weight"))
        XCTAssertFalse(student.isFrozen("layers.0.blocks.0.conv1.c.weight"))
        let before = student.stateDict()
        var rng = SeededRandom(seed: 2)
        let data = InMemoryTrainingData(images: .randomNormal([4, 3, 64, 64], rng: &rng), targets: .randomNormal([4, 256, 4, 4], rng: &rng))
        let trainer = try Trainer(config: cfg, student: student, train: data)
        trainer.showsProgress = false
        try trainer.run()
        for (k, v) in student.stateDict() where !k.contains("running_") {
            if k.hasPrefix("patch_embed.") { XCTAssertEqual(v.data, before[k]!.data, "frozen \(k) changed") } else if k.hasSuffix("weight") && v.rank > 1 {
                XCTAssertNotEqual(v.data, before[k]!.data, "trainable \(k) did not change")
            }
        }
        // The resolved config keeps the key.
        XCTAssertEqual(try RunConfig.parse(try cfg.yaml()).freeze, ["patch_embed"])
    }
}

import Distill
import Foundation
import Layers
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// `stage_loss`: TinyViT's stage taps (outputs recorded by forward, gradients added by backward)
/// and the config key.
final class StageLossTests: XCTestCase {
    /// L = ⟨dy, embedding⟩ + Σ_k ⟨r_k, stage output k⟩. The gradient backward gives with
    /// `stageGradients = r` against central differences (Double sums of the Float forward,
    /// ε = 1e-2): relative error ≤ 2e-2 on 12 parameter entries spread over the stages, and the
    /// stage gradients change the result (the check is not of the embedding term alone).
    func testStageGradientsMatchFiniteDifferences() {
        var rng = SeededRandom(seed: 21)
        var c = CacheTestSupport.tinyConfig()
        c.depths = [1, 1, 2, 1]
        let m = TinyViT(c)
        randomiseParameters(m, std: 0.3, rng: &rng)
        m.recordsStageOutputs = true
        let x = Tensor.randomNormal([2, 3, 64, 64], rng: &rng)
        let y0 = m.forward(x, mode: .training)
        XCTAssertEqual(m.stageOutputs.count, 4)
        let dy = Tensor.randomNormal(y0.shape, rng: &rng)
        let r = m.stageOutputs.map { Tensor.randomNormal($0.shape, rng: &rng) }

        func objective() -> Double {
            let y = m.forward(x, mode: .training)
            var v = zip(y.data, dy.data).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
            for (o, rk) in zip(m.stageOutputs, r) { v += zip(o.data, rk.data).reduce(0.0) { $0 + Double($1.0) * Double($1.1) } }
            return v
        }
        m.zeroGradients()
        _ = m.forward(x, mode: .training)
        m.stageGradients = r
        m.backward(dy)
        XCTAssertTrue(m.stageGradients.isEmpty, "backward clears the stage gradients")
        let withStages = m.namedParameters().map { ($0.0, $0.1.grad) }
        m.zeroGradients()
        _ = m.forward(x, mode: .training)
        m.backward(dy)
        let embeddingOnly = Dictionary(uniqueKeysWithValues: m.namedParameters().map { ($0.0, $0.1.grad) })

        let probes = withStages.filter { k, g in
            g.rank >= 2 && (k.hasPrefix("layers.0.blocks.0.conv1") || k.hasPrefix("layers.1.blocks.0.mlp.fc1")
                            || k.hasPrefix("layers.2.blocks.1.attn.qkv") || k.hasPrefix("layers.3.blocks.0.mlp.fc2"))
        }
        XCTAssertEqual(probes.count, 4, "\(probes.map(\.0))")
        let params = Dictionary(uniqueKeysWithValues: m.namedParameters().map { ($0.0, $0.1) })
        var differs = false
        for (k, g) in probes {
            for i in [0, g.count / 3, g.count - 1] {
                let p = params[k]!, eps: Float = 1e-2, v = p.value.data[i]
                p.value.data[i] = v + eps; let up = objective()
                p.value.data[i] = v - eps; let down = objective()
                p.value.data[i] = v
                let fd = (up - down) / (2 * Double(eps)), an = Double(g.data[i])
                XCTAssertLessThanOrEqual(abs(fd - an), 2e-2 * max(abs(fd), 1e-1), "\(k)[\(i)]: finite difference \(fd), backward \(an)")
                if abs(an - Double(embeddingOnly[k]!.data[i])) > 1e-3 * max(abs(an), 1) { differs = true }
            }
        }
        XCTAssertTrue(differs, "the stage gradients did not change any probed gradient")
    }

    /// The config key: weight read and written back; refused for conv students and without a teacher.
    func testStageLossConfig() throws {
        let base = """
            teacher: {checkpoint: t.pt}
            student: {type: tinyvit, preset: tinyvit_5m, depths: [1, 1, 2, 1]}
            steps: 2
            """
        let c = try RunConfig.parse(base, overrides: ["stage_loss.weight=0.5"])
        XCTAssertEqual(c.stageLossWeight, 0.5)
        XCTAssertEqual(try RunConfig.parse(try c.yaml()).stageLossWeight, 0.5)
        XCTAssertEqual(try RunConfig.parse(base).stageLossWeight, 0)
        XCTAssertThrowsError(try RunConfig.parse(base, overrides: ["stage_loss.weight=-1"]))
        XCTAssertThrowsError(try RunConfig.parse(base, overrides: ["stage_loss.weight=1", "teacher.checkpoint=null"]))
    }
}

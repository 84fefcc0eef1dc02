import Foundation
import Optim
import Tensor
import TestSupport
import XCTest

final class ScheduleTests: XCTestCase {
    /// Each schedule, decoded from the JSON the generator wrote, against the learning rates
    /// PyTorch's scheduler produced step by step (Scripts/refdump/optim.py): every step within
    /// 1e-6 relative (the fixture stores Float32, the schedule returns Float32: ≤ 2 roundings).
    func testMatchPyTorchSchedulers() throws {
        let f = try Fixture("schedules")
        for name in ["constant", "warmup_cosine", "one_cycle", "one_cycle_custom"] {
            let schedule = try JSONDecoder().decode(LearningRateSchedule.self, from: Data(f.metadata[name]!.utf8))
            let expected = f[name + ".lr"]
            XCTAssertGreaterThanOrEqual(expected.count, 20)
            var worst: Double = 0
            for s in 0..<expected.count {
                let a = Double(schedule.lr(at: s)), e = Double(expected.data[s])
                worst = max(worst, abs(a - e) / e)
            }
            XCTAssertLessThanOrEqual(worst, 1e-6, "\(name): worst relative error \(worst)")
        }
    }

    func testWarmupCosineShape() {
        let s = WarmupCosineSchedule(peakLR: 1e-3, minLR: 1e-5, warmupSteps: 4, totalSteps: 20)
        XCTAssertEqual(s.lr(at: 0), Float(2.5e-4))
        XCTAssertEqual(s.lr(at: 3), Float(1e-3))
        XCTAssertEqual(s.lr(at: 4), Float(1e-3))
        XCTAssertEqual(s.lr(at: 12), Float(1e-5 + (1e-3 - 1e-5) * 0.5), accuracy: 1e-9)
        for step in [20, 21, 1000] { XCTAssertEqual(s.lr(at: step), Float(1e-5)) }
        for step in 4..<19 { XCTAssertGreaterThan(s.lr(at: step), s.lr(at: step + 1)) }
        let noWarmup = WarmupCosineSchedule(peakLR: 0.1, totalSteps: 10)
        XCTAssertEqual(noWarmup.lr(at: 0), 0.1)
    }

    func testOneCycleEndsAndClamps() {
        let s = OneCycleSchedule(maxLR: 0.01, totalSteps: 50)
        XCTAssertEqual(Double(s.lr(at: 0)), 0.01 / 25, accuracy: 1e-6 * 0.01 / 25)
        XCTAssertEqual(s.lr(at: 14), 0.01)  // pct_start·T − 1
        XCTAssertEqual(Double(s.lr(at: 49)), 0.01 / 25 / 1e4, accuracy: 1e-6 * 0.01 / 25 / 1e4)
        XCTAssertEqual(s.lr(at: 60), s.lr(at: 49))
    }

    /// JSON with snake_case keys round-trips; missing optional keys take their defaults.
    func testCodable() throws {
        let schedules: [LearningRateSchedule] = [
            .constant(ConstantSchedule(lr: 3e-4)),
            .warmupCosine(WarmupCosineSchedule(peakLR: 1e-3, minLR: 1e-6, warmupSteps: 100, totalSteps: 1000)),
            .oneCycle(OneCycleSchedule(maxLR: 5e-3, totalSteps: 300, pctStart: 0.2, divFactor: 10, finalDivFactor: 100)),
        ]
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        for s in schedules {
            let data = try encoder.encode(s)
            XCTAssertEqual(try JSONDecoder().decode(LearningRateSchedule.self, from: data), s)
        }
        let json = String(decoding: try encoder.encode(schedules[1]), as: UTF8.self)
        XCTAssertEqual(json, #"{"min_lr":1e-06,"peak_lr":0.001,"total_steps":1000,"type":"warmup_cosine","warmup_steps":100}"#)
        let oneCycle = try JSONDecoder().decode(LearningRateSchedule.self,
                                                from: Data(#"{"type": "one_cycle", "max_lr": 0.01, "total_steps": 50}"#.utf8))
        XCTAssertEqual(oneCycle, .oneCycle(OneCycleSchedule(maxLR: 0.01, totalSteps: 50, pctStart: 0.3, divFactor: 25, finalDivFactor: 1e4)))
        let adamw = try JSONDecoder().decode(AdamW.Configuration.self, from: Data(#"{"weight_decay": 0.05, "beta2": 0.95}"#.utf8))
        XCTAssertEqual(adamw, AdamW.Configuration(beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.05))
    }

    /// Unknown keys, unknown types and impossible values are errors that name the key.
    func testDecodingErrorsNameTheKey() {
        func error(_ json: String, _ type: any Decodable.Type = LearningRateSchedule.self) -> String {
            do {
                _ = try JSONDecoder().decode(type, from: Data(json.utf8))
                return "no error"
            } catch { return "\(error)" }
        }
        XCTAssert(error(#"{"type": "warmup_cosine", "peak_lr": 1e-3, "total_steps": 10, "warmup": 2}"#).contains("unknown key 'warmup'"))
        XCTAssert(error(#"{"type": "cosine", "lr": 1}"#).contains("unknown schedule type 'cosine'"))
        XCTAssert(error(#"{"type": "warmup_cosine", "peak_lr": 1e-3, "warmup_steps": 10, "total_steps": 10}"#).contains("total_steps"))
        XCTAssert(error(#"{"type": "one_cycle", "max_lr": 1e-3, "total_steps": 10, "pct_start": 0.05}"#).contains("pct_start"))
        XCTAssert(error(#"{"type": "constant"}"#).contains("lr"))
        XCTAssert(error(#"{"weight_decay": 0.1, "betas": [0.9, 0.99]}"#, AdamW.Configuration.self).contains("unknown key 'betas'"))
        XCTAssert(error(#"{"beta2": 1.0}"#, AdamW.Configuration.self).contains("beta2"))
    }
}

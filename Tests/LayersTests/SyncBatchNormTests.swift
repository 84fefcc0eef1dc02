import Foundation
import Layers
import Tensor
import XCTest

/// Synchronised BatchNorm (`ForwardMode.crossReplica`) without MPI: two threads stand for two
/// ranks, each with its own copy of the layer and half the batch, summing through an in-process
/// `CrossReplicaSum`. Their outputs, input gradients and running statistics must equal one layer
/// on the whole batch, and their parameter gradients must add up to its (the data-parallel
/// average of the ranks' losses is what the gradient average combines). Tolerance: 2e-6 relative
/// to the largest magnitude (Float rounding of the same Double sums, added in another order).
final class SyncBatchNormTests: XCTestCase {
    /// values ← Σ over `parties` threads calling at once (a reusable rendezvous).
    final class InProcessSum: CrossReplicaSum, @unchecked Sendable {
        let parties: Int
        private let condition = NSCondition()
        private var arrived = 0, generation = 0
        private var accumulator: [Double] = [], result: [Double] = []
        private(set) var calls = 0

        init(parties: Int) { self.parties = parties }

        func sum(_ values: inout [Double]) {
            condition.lock()
            defer { condition.unlock() }
            let g = generation
            if arrived == 0 { accumulator = values } else { for i in values.indices { accumulator[i] += values[i] } }
            arrived += 1
            if arrived == parties {
                result = accumulator; arrived = 0; generation += 1; calls += 1
                condition.broadcast()
            } else {
                while generation == g { condition.wait() }
            }
            values = result
        }
    }

    static func copy(_ bn: BatchNorm2d) -> BatchNorm2d {
        let c = BatchNorm2d(bn.channels)
        // Own storage (not a copy-on-write share): the replicas run on two threads, and two
        // threads mutating one shared buffer through CoW is a race (ThreadSanitizer reports it).
        for ((_, a), (_, b)) in zip(c.namedParameters(), bn.namedParameters()) {
            a.value = Tensor(shape: b.value.shape, data: b.value.data.map { $0 })
        }
        return c
    }

    static func rows(_ t: Tensor, _ range: Range<Int>) -> Tensor {
        let per = t.count / t.shape[0]
        return Tensor(shape: [range.count] + t.shape.dropFirst(), data: Array(t.data[(range.lowerBound * per)..<(range.upperBound * per)]))
    }

    func check(_ a: [Float], _ b: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        let scale = max(b.map { abs($0) }.max() ?? 0, 1e-6)
        let worst = zip(a, b).map { abs($0 - $1) }.max() ?? 0
        XCTAssertLessThanOrEqual(worst / scale, 2e-6, "\(what): worst |Δ| \(worst) at scale \(scale)", file: file, line: line)
    }

    func testTwoReplicasEqualOneBatch() {
        for activation in [nil, Activation.gelu] {
            var rng = SeededRandom(seed: 41)
            let B = 4, C = 5, H = 3, W = 4
            let x = Tensor.randomNormal([B, C, H, W], std: 2, rng: &rng)
            let dy = Tensor.randomNormal([B, C, H, W], rng: &rng)
            let whole = BatchNorm2d(C)
            whole.weight.value = .randomUniform([C], 0.5, 1.5, rng: &rng)
            whole.bias.value = .randomNormal([C], std: 0.3, rng: &rng)
            let replicas = [Self.copy(whole), Self.copy(whole)]
            // One layer, the whole batch.
            let y = whole.forward(x, mode: .training, activation: activation)
            let dx = whole.backward(dy)
            // Two replicas, half each, on two threads.
            let sum = InProcessSum(parties: 2)
            let mode = ForwardMode.training.synchronised(by: sum)
            var ys = [Tensor?](repeating: nil, count: 2), dxs = [Tensor?](repeating: nil, count: 2)
            let lock = NSLock()
            let group = DispatchGroup()
            for r in 0..<2 {
                group.enter()
                Thread.detachNewThread {
                    let half = (r * B / 2)..<((r + 1) * B / 2)
                    let yr = replicas[r].forward(Self.rows(x, half), mode: mode, activation: activation)
                    let dxr = replicas[r].backward(Self.rows(dy, half))
                    lock.lock(); ys[r] = yr; dxs[r] = dxr; lock.unlock()
                    group.leave()
                }
            }
            group.wait()
            XCTAssertEqual(sum.calls, 3, "forward: Σx with the count, then Σ(x − mean)²; backward: Σdy and Σdy·x̂")
            let label = activation.map { "\($0)" } ?? "plain"
            check(ys[0]!.data + ys[1]!.data, y.data, "\(label) output")
            check(dxs[0]!.data + dxs[1]!.data, dx.data, "\(label) input gradient")
            for r in 0..<2 {
                check(replicas[r].runningMean.value.data, whole.runningMean.value.data, "\(label) running mean")
                check(replicas[r].runningVar.value.data, whole.runningVar.value.data, "\(label) running var")
            }
            check(zip(replicas[0].weight.grad.data, replicas[1].weight.grad.data).map(+), whole.weight.grad.data, "\(label) Σ weight grads")
            check(zip(replicas[0].bias.grad.data, replicas[1].bias.grad.data).map(+), whole.bias.grad.data, "\(label) Σ bias grads")
            // Without the hook each replica normalises by its own half: different outputs.
            let alone = Self.copy(whole).forward(Self.rows(x, 0..<(B / 2)), mode: .training, activation: activation)
            XCTAssertGreaterThan(zip(alone.data, ys[0]!.data).map { abs($0 - $1) }.max()!, 1e-3)
        }
    }
}

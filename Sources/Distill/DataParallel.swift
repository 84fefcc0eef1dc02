import Distributed
import Foundation
import Layers
import Tensor

/// Data-parallel training over the ranks of a `Communicator` (one process per rank, `mpirun` /
/// `srun`): the trainer's helpers for what crosses ranks.
///
/// - Sample order: the single-process `BatchOrder` stream; each global micro-batch is `size ×
///   batch_size` consecutive samples, rank r taking the r-th `batch_size` of them (`rows`), so N
///   ranks × batch b replay 1 rank × batch N·b.
/// - Gradients: averaged over ranks with one MPI_Allreduce per flat bucket of
///   `bucketFloats` floats (gradients copied in parameter order, summed in place, scaled by
///   1/size, copied back), not one call per tensor; every rank then applies the same AdamW step.
/// - Buffers (BatchNorm's running statistics): averaged the same way after each step when the
///   statistics are per rank, so every rank (and rank 0's checkpoint) holds the same values.
/// - Parameters and buffers are broadcast from rank 0 once at the start (identical start even
///   when an initialisation differs by a rounding between machines).
public struct DataParallel {
    public let communicator: Communicator
    /// Floats per all-reduce call (16 MiB buckets).
    public var bucketFloats = 1 << 22

    public init(_ communicator: Communicator) { self.communicator = communicator }

    public var rank: Int { communicator.rank }
    public var size: Int { communicator.size }

    /// The rows rank `rank` trains on in the global micro-batch starting at `cursor` (global
    /// micro-batch: `size · batchSize` samples of `order`).
    public func rows(_ order: inout BatchOrder, cursor: Int, batchSize: Int) -> [Int] {
        order.rows(cursor: cursor + rank * batchSize, n: batchSize)
    }

    /// The global stream positions of this rank's rows in the micro-batch at `cursor`.
    public func positions(cursor: Int, batchSize: Int) -> [Int] {
        Array((cursor + rank * batchSize)..<(cursor + (rank + 1) * batchSize))
    }

    /// grads ← mean over ranks of grads (trainable parameters with gradients), bucketed.
    public func averageGradients(_ params: [Parameter]) {
        guard communicator.isDistributed else { return }
        allreduceMean(params.filter { $0.isTrainable && $0.grad.count == $0.value.count }.map { p in
            (get: { p.grad }, set: { p.grad = $0 })
        })
    }

    /// values ← mean over ranks (buffers), bucketed.
    public func averageValues(_ params: [Parameter]) {
        guard communicator.isDistributed else { return }
        allreduceMean(params.map { p in (get: { p.value }, set: { p.value = $0 }) })
    }

    /// Every rank's parameter and buffer values become rank 0's.
    public func broadcastValues(_ params: [Parameter]) {
        guard communicator.isDistributed else { return }
        forEachBucket(params.map { p in (get: { p.value }, set: { p.value = $0 }) }) { bucket in
            communicator.broadcast(&bucket, root: 0)
        }
    }

    /// The mean over ranks of each value (the logged loss, validation sums).
    public func mean(_ values: [Double]) -> [Double] {
        guard communicator.isDistributed else { return values }
        var v = values
        communicator.allreduceSum(&v)
        return v.map { $0 / Double(size) }
    }

    /// The items of every rank, interleaved back into one list on every rank: rank r holds the
    /// items at positions r, r + N, r + 2N, … of the whole (`shard`), as JSON through one
    /// broadcast per rank (evaluation results: small next to a training step's all-reduce).
    public func gatherInterleaved<T: Codable>(_ mine: [T]) throws -> [T] {
        guard communicator.isDistributed else { return mine }
        var parts: [[T]] = []
        for r in 0..<size {
            let data = communicator.broadcast(r == rank ? try JSONEncoder().encode(mine) : Data(), root: r)
            parts.append(try JSONDecoder().decode([T].self, from: data))
        }
        var out: [T] = []
        out.reserveCapacity(parts.reduce(0) { $0 + $1.count })
        var i = 0
        while true {
            let (r, k) = (i % size, i / size)
            guard k < parts[r].count else { break }
            out.append(parts[r][k])
            i += 1
        }
        return out
    }

    /// The elements of `all` at positions rank, rank + N, … (this rank's share, see `gatherInterleaved`).
    public func shard<T>(_ all: [T]) -> [T] {
        guard communicator.isDistributed else { return all }
        return Array(stride(from: rank, to: all.count, by: size).map { all[$0] })
    }

    private func allreduceMean(_ tensors: [(get: () -> Tensor, set: (Tensor) -> Void)]) {
        let scale = 1 / Float(size)
        forEachBucket(tensors) { bucket in
            communicator.allreduceSum(&bucket)
            for i in bucket.indices { bucket[i] *= scale }
        }
    }

    /// Packs the tensors in order into buckets of at most `bucketFloats` (a larger tensor is a
    /// bucket of its own), runs `body` on each bucket and unpacks the result.
    private func forEachBucket(_ tensors: [(get: () -> Tensor, set: (Tensor) -> Void)], _ body: (inout [Float]) -> Void) {
        var i = 0
        while i < tensors.count {
            var j = i, floats = 0
            repeat { floats += tensors[j].get().count; j += 1 } while j < tensors.count && floats + tensors[j].get().count <= bucketFloats
            // bucket: (floats) the tensors i..<j flattened in order
            var bucket = [Float]()
            bucket.reserveCapacity(floats)
            for k in i..<j { bucket += tensors[k].get().data }
            body(&bucket)
            var offset = 0
            for k in i..<j {
                var t = tensors[k].get()
                let n = t.count
                t.data.withUnsafeMutableBufferPointer { d in
                    bucket.withUnsafeBufferPointer { b in d.baseAddress!.update(from: b.baseAddress! + offset, count: n) }
                }
                tensors[k].set(t)
                offset += n
            }
            i = j
        }
    }
}

/// `sync_batchnorm`: BatchNorm's per-channel sums all-reduced over the ranks (`CrossReplicaSum`).
public final class MPIStatisticsSum: CrossReplicaSum, @unchecked Sendable {
    public let communicator: Communicator
    public init(_ communicator: Communicator) { self.communicator = communicator }
    public func sum(_ values: inout [Double]) { communicator.allreduceSum(&values) }
}

import CMPI
import Foundation

/// The processes of a data-parallel job (MPI's world communicator), or this process alone.
///
/// `Communicator.world` looks at the environment once: a process started by `mpirun` (Open MPI:
/// `OMPI_COMM_WORLD_SIZE`) or by Slurm's `srun` / another PMI launcher (`PMIX_RANK`, `PMI_SIZE`)
/// initialises MPI (`MPI_Init_thread`, serialized: one thread at a time calls MPI, in practice
/// the main thread) and takes its rank and size from it; any other process is rank 0 of 1 and
/// makes no MPI call at all (the collectives below are then the identity). libmpi is linked but
/// not initialised, so a plain run needs no launcher.
///
/// Errors: MPI calls return their error codes (`MPI_ERRORS_RETURN`); a failing collective ends
/// the job through `abort`, which names the rank and the call. A rank that dies outright (signal,
/// exit without finalize) is noticed by the launcher, which ends the others.
///
/// Not thread-safe: call the collectives from one thread (the trainer's loop runs on the main
/// thread; its prefetcher never calls MPI).
public final class Communicator: @unchecked Sendable {
    /// This process's rank, `0..<size`.
    public let rank: Int
    /// Ranks in the job (1 without a launcher).
    public let size: Int
    /// Ranks on this machine (for the default thread count: cores / local ranks).
    public let localSize: Int
    /// Whether MPI was initialised (launched by mpirun / srun), even with one rank.
    public let usesMPI: Bool
    /// Seconds spent in collectives so far (allreduce, broadcast, barrier), for the step phases.
    public private(set) var seconds: Double = 0
    private var finalized = false

    /// Rank 0: the one that writes checkpoints, metrics, reports and progress.
    public var isRoot: Bool { rank == 0 }
    /// More than one rank.
    public var isDistributed: Bool { size > 1 }

    /// This process alone: rank 0 of 1, no MPI.
    public static let single = Communicator(rank: 0, size: 1, localSize: 1, usesMPI: false)

    /// The job this process belongs to (see the type's comment); MPI is initialised on first use.
    public static let world: Communicator = launchedByMPI(ProcessInfo.processInfo.environment) ? initialiseMPI() : single

    /// Whether the environment shows an MPI launcher started this process.
    public static func launchedByMPI(_ env: [String: String]) -> Bool {
        env["OMPI_COMM_WORLD_SIZE"] != nil || env["PMIX_RANK"] != nil || env["PMI_SIZE"] != nil || env["PMI_RANK"] != nil
    }

    init(rank: Int, size: Int, localSize: Int, usesMPI: Bool) {
        self.rank = rank; self.size = size; self.localSize = localSize; self.usesMPI = usesMPI
    }

    private static func initialiseMPI() -> Communicator {
        var provided: Int32 = 0
        check(cmpi_init(&provided), "MPI_Init_thread", rank: nil)
        var r: Int32 = 0, s: Int32 = 0, l: Int32 = 0
        check(cmpi_rank(&r), "MPI_Comm_rank", rank: nil)
        check(cmpi_size(&s), "MPI_Comm_size", rank: Int(r))
        check(cmpi_local_size(&l), "MPI_Comm_split_type", rank: Int(r))
        if provided < cmpi_thread_serialized() {
            fail("rank \(r): this MPI library offers thread level \(provided), samdistill needs MPI_THREAD_SERIALIZED", aborting: true)
        }
        let c = Communicator(rank: Int(r), size: Int(s), localSize: max(1, Int(l)), usesMPI: true)
        // Every normal exit finalises (a launcher treats an exit without MPI_Finalize as a failure).
        atexit { Communicator.world.finalize() }
        return c
    }

    // MARK: Collectives

    /// buffer ← Σ over ranks of buffer (element-wise, in place; every rank gets the sum).
    public func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) {
        guard usesMPI, size > 1, let base = buffer.baseAddress else { return }
        timed {
            var done = 0
            while done < buffer.count {
                let n = min(buffer.count - done, Int(Int32.max))
                check(cmpi_allreduce_sum_float(base + done, Int32(n)), "MPI_Allreduce (\(n) floats)")
                done += n
            }
        }
    }

    public func allreduceSum(_ values: inout [Float]) {
        values.withUnsafeMutableBufferPointer { allreduceSum($0) }
    }

    /// values ← Σ over ranks (Double: statistics, losses, counts).
    public func allreduceSum(_ values: inout [Double]) {
        guard usesMPI, size > 1, !values.isEmpty else { return }
        timed {
            values.withUnsafeMutableBufferPointer { b in
                check(cmpi_allreduce_sum_double(b.baseAddress!, Int32(b.count)), "MPI_Allreduce (\(b.count) doubles)")
            }
        }
    }

    /// values ← max over ranks.
    public func allreduceMax(_ values: inout [Double]) {
        guard usesMPI, size > 1, !values.isEmpty else { return }
        timed {
            values.withUnsafeMutableBufferPointer { b in
                check(cmpi_allreduce_max_double(b.baseAddress!, Int32(b.count)), "MPI_Allreduce max (\(b.count) doubles)")
            }
        }
    }

    /// Every rank's `values` become rank `root`'s (the same count on every rank).
    public func broadcast(_ values: inout [Float], root: Int = 0) {
        guard usesMPI, size > 1, !values.isEmpty else { return }
        timed {
            values.withUnsafeMutableBytes { b in
                var done = 0
                while done < b.count {
                    let n = min(b.count - done, Int(Int32.max))
                    check(cmpi_bcast_bytes(b.baseAddress! + done, Int32(n), Int32(root)), "MPI_Bcast (\(n) bytes)")
                    done += n
                }
            }
        }
    }

    /// Rank `root`'s bytes on every rank (any length: the count goes first).
    public func broadcast(_ data: Data, root: Int = 0) -> Data {
        guard usesMPI, size > 1 else { return data }
        var count = Int64(rank == root ? data.count : 0)
        timed {
            withUnsafeMutableBytes(of: &count) { b in
                check(cmpi_bcast_bytes(b.baseAddress!, Int32(b.count), Int32(root)), "MPI_Bcast (length)")
            }
        }
        let n = Int(count)
        var bytes = rank == root ? [UInt8](data) : [UInt8](repeating: 0, count: n)
        guard n > 0 else { return Data() }
        timed {
            bytes.withUnsafeMutableBytes { b in
                check(cmpi_bcast_bytes(b.baseAddress!, Int32(n), Int32(root)), "MPI_Bcast (\(n) bytes)")
            }
        }
        return Data(bytes)
    }

    /// Waits until every rank has reached this call.
    public func barrier() {
        guard usesMPI, size > 1 else { return }
        timed { check(cmpi_barrier(), "MPI_Barrier") }
    }

    /// Ends the whole job: prints `message` (naming this rank) and calls MPI_Abort; without MPI,
    /// prints and exits with `code`.
    public func abort(_ message: String, code: Int32 = 1) -> Never {
        Self.fail(usesMPI ? "rank \(rank) of \(size): \(message); ending the job" : message, aborting: usesMPI, code: code)
    }

    /// MPI_Finalize, once (normal exit; `world` registers it with atexit).
    public func finalize() {
        guard usesMPI, !finalized else { return }
        finalized = true
        var flag: Int32 = 0
        _ = cmpi_finalized(&flag)
        if flag == 0 { _ = cmpi_finalize() }
    }

    // MARK: Helpers

    private func timed(_ body: () -> Void) {
        let t0 = DispatchTime.now().uptimeNanoseconds
        body()
        seconds += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    }

    private func check(_ rc: Int32, _ call: String) { Self.check(rc, call, rank: rank) }

    private static func check(_ rc: Int32, _ call: String, rank: Int?) {
        guard rc != cmpi_success() else { return }
        var text = [CChar](repeating: 0, count: Int(cmpi_max_error_string()) + 1)
        var length: Int32 = 0
        _ = cmpi_error_string(rc, &text, &length)
        let who = rank.map { "rank \($0)" } ?? "MPI"
        fail("\(who): \(call) failed: \(String(cString: text)) (a rank may have died); ending the job", aborting: true)
    }

    private static func fail(_ message: String, aborting: Bool, code: Int32 = 1) -> Never {
        FileHandle.standardError.write(Data("samdistill: \(message)\n".utf8))
        if aborting { _ = cmpi_abort(code) }
        exit(code)
    }
}

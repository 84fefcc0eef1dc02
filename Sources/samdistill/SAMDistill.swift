import ArgumentParser
import Distributed
import Foundation
import Tensor

@main
struct SAMDistill: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "samdistill",
        abstract: "Distil SAM's image encoder into small, fast students on the CPU.",
        discussion: """
            Pipeline: cache teacher embeddings (HDF5) → train a student → evaluate masks against \
            the teacher → export weights. Every layer has a hand-written backward pass; every \
            matrix product goes through OpenBLAS.
            """,
        subcommands: [Run.self, Segment.self, Cache.self, Train.self, Eval.self, Export.self, Inspect.self, Bench.self, RuntimeInfo.self])

    /// The runtime first: the environment OpenBLAS and glibc read at load (kernel, spin, huge
    /// pages; one re-exec), then threads and allocator from the subcommand's options, once.
    ///
    /// Under an MPI launcher (`mpirun -np N`, `srun`; `Communicator.world`) MPI is initialised
    /// after parsing, for the commands that split their work over ranks (`DataParallelCommand`:
    /// train, run, cache, eval); any other command refuses more than one rank. Threads per rank
    /// default to cores / ranks on this machine. A rank whose command fails prints its error
    /// (naming the rank) and ends the whole job (MPI_Abort), so no rank waits for it forever.
    static func main() {
        Runtime.prepareEnvironment()
        var world: Communicator?
        do {
            var command = try parseAsRoot()
            // Only commands that compute (help and command groups print nothing else).
            if let computing = command as? RuntimeConfigured {
                if Communicator.launchedByMPI(ProcessInfo.processInfo.environment) {
                    let w = Communicator.world
                    world = w
                    if w.isDistributed && !(command is DataParallelCommand) {
                        w.abort("this subcommand runs in one process: launch it without mpirun/srun (train, run, cache and eval split over ranks)")
                    }
                }
                Runtime.configure(threads: computing.runtime.threads ?? threadsPerRank(world))
            }
            try command.run()
        } catch {
            if let world, world.isDistributed {
                let message: String
                if let e = error as? ExitCode { message = "failed with exit status \(e.rawValue) (its error is above)" }
                else { message = SAMDistill.fullMessage(for: error) }
                world.abort(message, code: 1)
            }
            if SAMDistill.exitCode(for: error) == .validationFailure {
                // Bad input found while parsing or by a command's validate() (a config key, a file,
                // a value): its message and usage, and status 1 like every other bad-input error
                // (not ArgumentParser's EX_USAGE, 64).
                FileHandle.standardError.write(Data((SAMDistill.fullMessage(for: error) + "\n").utf8))
                Foundation.exit(1)
            }
            exit(withError: error)
        }
    }

    /// nil (the runtime's default: SAMDISTILL_THREADS, else every core) in a one-process run;
    /// with ranks: SAMDISTILL_THREADS, else cores / ranks on this machine (at least 1).
    static func threadsPerRank(_ world: Communicator?) -> Int? {
        guard let world, world.localSize > 1, ProcessInfo.processInfo.environment["SAMDISTILL_THREADS"] == nil else { return nil }
        return max(1, ProcessInfo.processInfo.activeProcessorCount / world.localSize)
    }
}

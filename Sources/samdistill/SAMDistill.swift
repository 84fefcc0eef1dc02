import ArgumentParser
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
    static func main() {
        Runtime.prepareEnvironment()
        do {
            var command = try parseAsRoot()
            // Only commands that compute (help and command groups print nothing else).
            if let computing = command as? RuntimeConfigured { Runtime.configure(threads: computing.runtime.threads) }
            try command.run()
        } catch {
            exit(withError: error)
        }
    }
}

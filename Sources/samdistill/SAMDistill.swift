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
        subcommands: [Run.self, Segment.self, Cache.self, Train.self, Eval.self, Export.self, Inspect.self, Bench.self])

    /// Heap on transparent huge pages first (one re-exec; see `Allocator.reexecuteWithHugePages`).
    static func main() {
        Allocator.reexecuteWithHugePages()
        main(nil)
    }
}

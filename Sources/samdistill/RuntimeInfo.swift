import ArgumentParser
import Tensor

/// `samdistill runtime`: what this machine runs with — the CPU, the OpenBLAS kernel and where
/// the choice came from, the thread count.
struct RuntimeInfo: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "runtime",
        abstract: "Show the CPU, the OpenBLAS kernel in use (and who chose it) and the thread count.",
        discussion: """
            When the installed OpenBLAS does not know this CPU and falls back to kernels that leave \
            its vector units idle, samdistill measures the kernels the CPU can run once (cached in \
            ~/.cache/samdistill/blas-kernel.json) and runs the fastest; OPENBLAS_CORETYPE set by \
            you always wins.
            """)

    @OptionGroup var runtime: RuntimeOptions

    @Flag(help: "Print one JSON object instead.")
    var json = false

    func run() throws {
        if json { return printJSON(["command": "runtime"]) }
        print(Runtime.summary)
        if let choice = Runtime.kernelChoice {
            print("measured (sgemm GFLOP/s, 1 thread): " + choice.measured.map { "\($0.0) \(String(format: "%.1f", $0.1))" }.joined(separator: ", "))
        }
        print(BLASKernel.libraryConfig)
    }
}

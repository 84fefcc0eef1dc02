import ArgumentParser
import Tensor

/// Options every subcommand takes: the process's runtime (`Runtime` in Tensor), applied once by
/// `main` before the subcommand runs.
struct RuntimeOptions: ParsableArguments {
    @Option(help: "Worker threads for OpenBLAS and the toolkit's own loops, per rank under mpirun (default: SAMDISTILL_THREADS, else all cores, divided by the ranks on this machine).")
    var threads: Int?

    func validate() throws {
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
    }
}

/// A subcommand with runtime options (every one that computes).
protocol RuntimeConfigured {
    var runtime: RuntimeOptions { get }
}

/// A subcommand that splits its work over the ranks of an MPI job (`mpirun -np N samdistill …`);
/// any other refuses more than one rank.
protocol DataParallelCommand {}

extension Train: DataParallelCommand {}
extension Run: DataParallelCommand {}
extension Cache: DataParallelCommand {}
extension Eval: DataParallelCommand {}

extension Run: RuntimeConfigured {}
extension SegmentPrompt: RuntimeConfigured {}
extension SegmentEverything: RuntimeConfigured {}
extension Cache: RuntimeConfigured {}
extension Train: RuntimeConfigured {}
extension Eval: RuntimeConfigured {}
extension Export: RuntimeConfigured {}
extension Inspect: RuntimeConfigured {}
extension RuntimeInfo: RuntimeConfigured {}
extension BenchGemm: RuntimeConfigured { var runtime: RuntimeOptions { options.runtime } }
extension BenchLayers: RuntimeConfigured { var runtime: RuntimeOptions { options.runtime } }
extension BenchEncoder: RuntimeConfigured { var runtime: RuntimeOptions { options.runtime } }
extension BenchDecoder: RuntimeConfigured { var runtime: RuntimeOptions { options.runtime } }
extension BenchTrain: RuntimeConfigured { var runtime: RuntimeOptions { options.runtime } }

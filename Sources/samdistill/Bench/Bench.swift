import ArgumentParser
import Foundation
import Tensor

/// Options every benchmark takes.
struct BenchOptions: ParsableArguments {
    @Flag(help: "Also print one JSON object with every figure on the last line.")
    var json = false

    @Option(help: "Threads for OpenBLAS and the toolkit's own loops (default: all cores).")
    var threads: Int?

    @Option(help: "Timed repetitions per measurement (the median is reported).")
    var repeats = 5

    func validate() throws {
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
        if repeats < 1 { throw ValidationError("--repeats must be at least 1") }
    }

    func apply() {
        if let threads {
            Threads.count = threads
            BLASThreads.set(threads)
        }
    }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure speed: GEMM throughput, per-layer forward/backward times.",
        discussion: "Benchmarks are commands, never tests. Compare with Scripts/bench_pytorch.py on the same machine.",
        subcommands: [BenchGemm.self, BenchLayers.self, BenchEncoder.self, BenchDecoder.self])
}

/// Median wall time in seconds of `body` over `repeats` runs, after one warm-up run.
func medianSeconds(repeats: Int, _ body: () -> Void) -> Double {
    body()
    var times: [Double] = []
    for _ in 0..<repeats {
        let t0 = DispatchTime.now().uptimeNanoseconds
        body()
        times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
    }
    times.sort()
    return times[times.count / 2]
}

/// Prints `object` as one JSON line.
func printJSON(_ object: [String: Any]) {
    if let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]),
       let s = String(data: data, encoding: .utf8) {
        print(s)
    }
}

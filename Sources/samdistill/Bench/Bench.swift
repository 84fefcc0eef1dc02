import ArgumentParser
import Foundation
import Tensor

/// Options every benchmark takes.
struct BenchOptions: ParsableArguments {
    @Flag(help: "Also print one JSON object with every figure on the last line.")
    var json = false

    @OptionGroup var runtime: RuntimeOptions

    @Option(help: "Timed repetitions per measurement (the median is reported).")
    var repeats = 5

    @Flag(help: "Time with the process's CPU time (all threads) instead of wall time: steadier on a loaded machine, best with --threads 1.")
    var cpuTime = false

    func validate() throws {
        if repeats < 1 { throw ValidationError("--repeats must be at least 1") }
    }

    /// The clock, and the runtime line every benchmark prints first (CPU, OpenBLAS kernel, threads).
    func apply() {
        BenchClock.usesCPUTime = cpuTime
        print("runtime: \(Runtime.summary)")
    }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure speed: GEMM throughput, per-layer forward/backward times.",
        discussion: "Benchmarks are commands, never tests. Compare with Scripts/bench_pytorch.py on the same machine.",
        subcommands: [BenchGemm.self, BenchLayers.self, BenchEncoder.self, BenchTrain.self, BenchDecoder.self])
}

/// The benchmarks' clock: wall time, or the process's CPU time (`--cpu-time`).
enum BenchClock {
    nonisolated(unsafe) static var usesCPUTime = false

    /// Seconds on the chosen clock.
    static func now() -> Double {
        if usesCPUTime {
            var t = timespec()
            clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t)
            return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
        }
        return Double(DispatchTime.now().uptimeNanoseconds) / 1e9
    }
}

/// Median time in seconds (wall, or CPU with --cpu-time) of `body` over `repeats` runs, after one warm-up run.
func medianSeconds(repeats: Int, _ body: () -> Void) -> Double {
    body()
    var times: [Double] = []
    for _ in 0..<repeats {
        let t0 = BenchClock.now()
        body()
        times.append(BenchClock.now() - t0)
    }
    times.sort()
    return times[times.count / 2]
}

/// Prints `object` as one JSON line, with the runtime's fields (kernel, CPU) added.
func printJSON(_ object: [String: Any]) {
    let object = object.merging(Runtime.fields) { mine, _ in mine }
    if let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]),
       let s = String(data: data, encoding: .utf8) {
        print(s)
    }
}

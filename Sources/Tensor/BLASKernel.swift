import CBLAS
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Which OpenBLAS kernel family ("core") runs, and choosing a better one when OpenBLAS's own
/// detection falls short.
///
/// Debian's OpenBLAS is a DYNAMIC_ARCH build: at load it maps the CPU to a core by its cpuid
/// family/model. A CPU newer than the library (Debian 12's 0.3.21 on an Intel Xeon of family 6,
/// model 207) maps to nothing and gets the generic SSE3 "Prescott" kernels: sgemm 7.9 instead of
/// 149 GFLOP/s on one core there, the MobileSAM encoder 2.7 s instead of 0.84. OpenBLAS takes
/// `OPENBLAS_CORETYPE` only from the environment at load, so the choice is made before that, in
/// `Runtime.prepareEnvironment` (one re-exec), and only when
///   - the user has not set `OPENBLAS_CORETYPE` (theirs always wins), and
///   - the detected core uses fewer of the vector units than the CPU has (SSE-only core on an
///     AVX/AVX2/AVX-512 CPU, an AVX2 core on an AVX-512 CPU).
/// Then every core the CPU can run (cpuid feature bits and the OS's saved register state) is
/// measured in a child process, which also checks its gemm against the reference, and the fastest
/// correct one wins. The result is kept in `~/.cache/samdistill/blas-kernel.json`, keyed by the CPU
/// and the library, so the measurement (~1–2 s) happens once per machine.
public enum BLASKernel {
    /// The core OpenBLAS runs in this process (e.g. "Haswell", "SkylakeX", "Prescott").
    public static var current: String { String(cString: openblas_get_corename()) }
    /// OpenBLAS's build line, e.g. "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH NO_AFFINITY Prescott MAX_THREADS=64".
    public static var libraryConfig: String { String(cString: openblas_get_config()) }

    /// A core and what it needs from the CPU.
    public struct Core: Equatable, Sendable {
        public let name: String
        /// 1 SSE only, 2 AVX, 3 AVX2 + FMA, 4 AVX-512.
        public let vectorLevel: Int
        public let requires: UInt32
    }

    static let avx = UInt32(SAMDISTILL_CPU_AVX), avx2 = UInt32(SAMDISTILL_CPU_AVX2), fma = UInt32(SAMDISTILL_CPU_FMA)
    static let avx512 = UInt32(SAMDISTILL_CPU_AVX512F | SAMDISTILL_CPU_AVX512DQ | SAMDISTILL_CPU_AVX512BW | SAMDISTILL_CPU_AVX512VL)
    static let bf16 = UInt32(SAMDISTILL_CPU_AVX512BF16), fp16 = UInt32(SAMDISTILL_CPU_AVX512FP16), amx = UInt32(SAMDISTILL_CPU_AMX)

    /// The x86-64 cores a DYNAMIC_ARCH OpenBLAS may report, with their vector level; the ones with
    /// `requires` non-zero are the candidates samdistill may force (a library that does not know
    /// a name reports another core, and the probe then drops it).
    public static let cores: [Core] = {
        let sse = ["Katmai", "Coppermine", "Northwood", "Prescott", "Banias", "Atom", "Core2", "Penryn",
                   "Dunnington", "Nehalem", "Athlon", "Opteron", "Opteron_SSE3", "Barcelona", "Nano", "Bobcat"]
        return sse.map { Core(name: $0, vectorLevel: 1, requires: 0) } + [
            Core(name: "Sandybridge", vectorLevel: 2, requires: avx),
            Core(name: "Bulldozer", vectorLevel: 2, requires: 0),
            Core(name: "Piledriver", vectorLevel: 2, requires: 0),
            Core(name: "Haswell", vectorLevel: 3, requires: avx | avx2 | fma),
            Core(name: "Zen", vectorLevel: 3, requires: avx | avx2 | fma),
            Core(name: "Steamroller", vectorLevel: 3, requires: 0),
            Core(name: "Excavator", vectorLevel: 3, requires: 0),
            Core(name: "SkylakeX", vectorLevel: 4, requires: avx | avx2 | fma | avx512),
            Core(name: "Cooperlake", vectorLevel: 4, requires: avx | avx2 | fma | avx512 | bf16),
            Core(name: "SapphireRapids", vectorLevel: 4, requires: avx | avx2 | fma | avx512 | bf16 | fp16 | amx),
        ]
    }()

    /// The highest vector level the CPU and OS support (0 on non-x86 or without AVX state).
    public static func vectorLevel(features: UInt32) -> Int {
        if features & (avx | avx2 | fma | avx512) == (avx | avx2 | fma | avx512) { return 4 }
        if features & (avx | avx2 | fma) == (avx | avx2 | fma) { return 3 }
        if features & avx != 0 { return 2 }
        return features == 0 ? 0 : 1
    }

    /// The cores worth measuring when OpenBLAS detected `detected` on a CPU with `features`: empty
    /// when the detection already uses the CPU's widest vectors or names a core this table does
    /// not know; otherwise every forcible core the CPU can run above the detected level, after
    /// the detected core itself (the baseline).
    public static func candidates(detected: String, features: UInt32) -> [String] {
        guard let known = cores.first(where: { $0.name.lowercased() == detected.lowercased() }) else { return [] }
        guard known.vectorLevel < vectorLevel(features: features) else { return [] }
        let better = cores.filter { $0.requires != 0 && $0.requires & features == $0.requires && $0.vectorLevel > known.vectorLevel }
        return [known.name] + better.map(\.name)
    }

    /// This CPU, as cpuid reports it.
    public struct CPU: Sendable {
        public let brand: String
        public let family: Int, model: Int, stepping: Int
        public let features: UInt32

        public static let current: CPU = {
            var buffer = [CChar](repeating: 0, count: 49)
            samdistill_cpu_brand(&buffer)
            let signature = samdistill_cpu_signature()
            let base = Int((signature >> 8) & 0xF), extended = Int((signature >> 20) & 0xFF)
            let family = base == 0xF ? base + extended : base
            var model = Int((signature >> 4) & 0xF)
            if base == 0x6 || base == 0xF { model += Int((signature >> 16) & 0xF) << 4 }
            return CPU(brand: String(cString: buffer).trimmingCharacters(in: .whitespaces),
                       family: family, model: model, stepping: Int(signature & 0xF),
                       features: samdistill_cpu_features())
        }()

        /// The vector extensions found, e.g. "AVX2 FMA AVX-512 BF16".
        public var featureSummary: String {
            var names: [String] = []
            if features & BLASKernel.avx != 0 { names.append("AVX") }
            if features & BLASKernel.avx2 != 0 { names.append("AVX2") }
            if features & BLASKernel.fma != 0 { names.append("FMA") }
            if features & BLASKernel.avx512 == BLASKernel.avx512 { names.append("AVX-512") }
            if features & BLASKernel.bf16 != 0 { names.append("AVX512-BF16") }
            if features & BLASKernel.fp16 != 0 { names.append("AVX512-FP16") }
            if features & BLASKernel.amx != 0 { names.append("AMX") }
            return names.isEmpty ? "none" : names.joined(separator: " ")
        }

        public var description: String {
            "\(brand.isEmpty ? "unknown CPU" : brand) (family \(family), model \(model); \(featureSummary))"
        }
    }

    // MARK: - Choosing (parent side)

    /// A measured choice: the winner, what OpenBLAS detected, and each candidate's sgemm GFLOP/s
    /// (one thread), in the order measured.
    public struct Choice: Equatable, Sendable {
        public let kernel: String
        public let detected: String
        public let measured: [(String, Double)]

        public static func == (a: Choice, b: Choice) -> Bool {
            a.kernel == b.kernel && a.detected == b.detected && a.measured.map(\.0) == b.measured.map(\.0)
                && zip(a.measured, b.measured).allSatisfy { $0.1 == $1.1 }
        }

        /// "Prescott>Cooperlake;Prescott=7.9,Haswell=31.2": what the re-executed process is told.
        public var encoded: String {
            "\(detected)>\(kernel);" + measured.map { "\($0.0)=\(String(format: "%.1f", $0.1))" }.joined(separator: ",")
        }

        public init(kernel: String, detected: String, measured: [(String, Double)]) {
            self.kernel = kernel; self.detected = detected; self.measured = measured
        }

        public init?(encoded: String) {
            let halves = encoded.split(separator: ";", maxSplits: 1).map(String.init)
            let pair = halves.first?.split(separator: ">").map(String.init) ?? []
            guard pair.count == 2 else { return nil }
            var measured: [(String, Double)] = []
            for item in (halves.count > 1 ? halves[1] : "").split(separator: ",") {
                let kv = item.split(separator: "=")
                guard kv.count == 2, let v = Double(kv[1]) else { return nil }
                measured.append((String(kv[0]), v))
            }
            self.init(kernel: pair[1], detected: pair[0], measured: measured)
        }

        /// The one-line notice printed when samdistill overrode OpenBLAS's detection.
        public var notice: String {
            let figures = measured.map { "\($0.0) \(String(format: "%.0f", $0.1))" }.joined(separator: ", ")
            return "samdistill: OpenBLAS chose its \(detected) kernels for this CPU (\(CPU.current.featureSummary)); "
                + "running \(kernel) instead, the fastest measured (sgemm GFLOP/s, 1 thread: \(figures)). "
                + "Set OPENBLAS_CORETYPE to choose yourself."
        }
    }

    /// The kernel to force for this process, or nil to keep OpenBLAS's choice. Reads the cached
    /// measurement when it matches this CPU and library, else measures and caches it.
    static func choose(executable: String) -> Choice? {
        let detected = current
        let cpu = CPU.current
        let names = candidates(detected: detected, features: cpu.features)
        guard names.count > 1 else { return nil }
        let key = "v1|\(cpu.brand)|\(cpu.family).\(cpu.model).\(cpu.stepping)|\(String(cpu.features, radix: 16))|\(libraryConfig)"
        if let cached = readCache(key: key) { return cached.kernel == detected ? nil : cached }
        var measured: [(String, Double)] = []
        for name in names {
            guard let result = probe(executable: executable, kernel: name),
                  result.kernel.lowercased() == name.lowercased(), result.correct else { continue }
            measured.append((name, result.gflops))
        }
        guard let best = measured.max(by: { $0.1 < $1.1 }) else { return nil }
        let choice = Choice(kernel: best.0, detected: detected, measured: measured)
        writeCache(key: key, choice: choice)
        return best.0 == detected ? nil : choice
    }

    /// What one child process reported for a forced kernel.
    public struct ProbeResult: Sendable {
        public let kernel: String
        public let gflops: Double
        public let correct: Bool
        public let worstError: Double
    }

    /// Runs `executable` with `OPENBLAS_CORETYPE=kernel` in probe mode (`SAMDISTILL_BLAS_PROBE=1`,
    /// one OpenBLAS thread, stderr discarded) and parses its one line. Nil when the child fails,
    /// crashes (an instruction the CPU lacks) or takes longer than 60 s.
    public static func probe(executable: String, kernel: String) -> ProbeResult? {
        var environment = ProcessInfo.processInfo.environment
        environment["OPENBLAS_CORETYPE"] = kernel
        environment["OPENBLAS_NUM_THREADS"] = "1"
        environment[probeVariable] = "1"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = []
        process.environment = environment
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        do { try process.run() } catch { return nil }
        let timer = DispatchWorkItem { if process.isRunning { process.terminate() } }
        DispatchQueue.global().asyncAfter(deadline: .now() + 60, execute: timer)
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        timer.cancel()
        guard process.terminationReason == .exit, process.terminationStatus == 0 else { return nil }
        return parseProbe(String(decoding: data, as: UTF8.self))
    }

    static func parseProbe(_ text: String) -> ProbeResult? {
        var fields: [String: String] = [:]
        for token in text.split(whereSeparator: { $0 == " " || $0 == "\n" }) {
            let kv = token.split(separator: "=", maxSplits: 1)
            if kv.count == 2 { fields[String(kv[0])] = String(kv[1]) }
        }
        guard let kernel = fields["kernel"], let g = fields["gflops"].flatMap(Double.init),
              let ok = fields["correct"], let e = fields["worst_error"].flatMap(Double.init) else { return nil }
        return ProbeResult(kernel: kernel, gflops: g, correct: ok == "1", worstError: e)
    }

    // MARK: - Probe (child side)

    /// The environment variable that puts the executable into probe mode.
    public static let probeVariable = "SAMDISTILL_BLAS_PROBE"

    /// The child's work: gemm against the reference for every transpose pair with padded leading
    /// dimensions and alpha/beta ≠ 0/1 (correct: worst |Δ| ≤ 1e-4 · (1 + |reference|)), then
    /// single-threaded sgemm GFLOP/s (on the process's CPU clock, so other processes' load on a
    /// shared machine does not decide the choice) over two shapes, a square 512³ and an im2col-like
    /// 128 × 4096 × 288 (total flop / total of each shape's best-of-3 time). Prints one line:
    /// `kernel=NAME gflops=G correct=0|1 worst_error=E`.
    public static func runProbe() -> String {
        openblas_set_num_threads(1)
        let worst = worstGemmError()
        var flop = 0.0, seconds = 0.0
        for (m, n, k) in [(512, 512, 512), (128, 4096, 288)] {
            let a = [Float](repeating: 0.5, count: m * k), b = [Float](repeating: 0.25, count: k * n)
            var c = [Float](repeating: 0, count: m * n)
            var best = Double.infinity
            for _ in 0..<4 {
                let t0 = processCPUSeconds()
                arrayGemm(m: m, n: n, k: k, a: a, lda: k, b: b, ldb: n, c: &c, ldc: n)
                best = min(best, processCPUSeconds() - t0)
            }
            flop += 2 * Double(m * n * k)
            seconds += best
        }
        return "kernel=\(current) gflops=\(String(format: "%.2f", flop / seconds / 1e9)) correct=\(worst <= 1e-4 ? 1 : 0) worst_error=\(String(format: "%.3g", worst))"
    }

    static func processCPUSeconds() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }

    /// The worst relative difference between `gemm` and `gemmReference` over every transpose pair,
    /// padded leading dimensions, odd sizes around OpenBLAS's blocking, alpha 0.75 and beta 0 / 1.5.
    public static func worstGemmError() -> Double {
        var rng = SeededRandom(seed: 11)
        var worst = 0.0
        for (m, n, k) in [(1, 1, 1), (7, 5, 3), (33, 17, 65), (96, 130, 70), (129, 255, 257)] {
            for transA in [false, true] {
                for transB in [false, true] {
                    for beta: Float in [0, 1.5] {
                        let lda = (transA ? m : k) + 3, ldb = (transB ? k : n) + 2, ldc = n + 5
                        let a = (0..<((transA ? k : m) * lda)).map { _ in rng.normal() }
                        let b = (0..<((transB ? n : k) * ldb)).map { _ in rng.normal() }
                        let c0 = (0..<(m * ldc)).map { _ in rng.normal() }
                        var c = c0, r = c0
                        arrayGemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 0.75,
                                  a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: &c, ldc: ldc)
                        arrayGemm(reference: true, transA: transA, transB: transB, m: m, n: n, k: k, alpha: 0.75,
                                  a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: &r, ldc: ldc)
                        for i in 0..<m {
                            for j in 0..<ldc {
                                // Outside the n columns C must stay as it was.
                                let e = j < n ? Double(abs(c[i * ldc + j] - r[i * ldc + j])) / (1 + Double(abs(r[i * ldc + j])))
                                              : Double(abs(c[i * ldc + j] - c0[i * ldc + j]))
                                worst = max(worst, e)
                            }
                        }
                    }
                }
            }
        }
        return worst
    }

    // MARK: - Cache file

    static var cacheURL: URL? {
        let env = ProcessInfo.processInfo.environment
        if let dir = env["XDG_CACHE_HOME"], !dir.isEmpty {
            return URL(fileURLWithPath: dir).appendingPathComponent("samdistill/blas-kernel.json")
        }
        guard let home = env["HOME"], !home.isEmpty else { return nil }
        return URL(fileURLWithPath: home).appendingPathComponent(".cache/samdistill/blas-kernel.json")
    }

    static func readCache(key: String) -> Choice? {
        guard let url = cacheURL, let data = try? Data(contentsOf: url),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              object["key"] as? String == key, let encoded = object["choice"] as? String else { return nil }
        return Choice(encoded: encoded)
    }

    /// Best effort (a read-only home just means measuring again next time); temp name, then rename.
    static func writeCache(key: String, choice: Choice) {
        guard let url = cacheURL else { return }
        let object: [String: Any] = ["key": key, "choice": choice.encoded, "cpu": CPU.current.description]
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return }
        let dir = url.deletingLastPathComponent()
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let temp = dir.appendingPathComponent(".blas-kernel.\(getpid()).tmp")
        guard (try? data.write(to: temp)) != nil else { return }
        if rename(temp.path, url.path) != 0 { try? FileManager.default.removeItem(at: temp) }
    }
}

/// `gemm` (or, with `reference`, `gemmReference`) on arrays, for the probe.
func arrayGemm(reference: Bool = false, transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
               alpha: Float = 1, a: [Float], lda: Int, b: [Float], ldb: Int, beta: Float = 0,
               c: inout [Float], ldc: Int) {
    let product = reference ? gemmReference : gemm
    a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in c.withUnsafeMutableBufferPointer { pc in
        product(transA, transB, m, n, k, alpha, pa.baseAddress!, lda, pb.baseAddress!, ldb, beta, pc.baseAddress!, ldc)
    } } }
}

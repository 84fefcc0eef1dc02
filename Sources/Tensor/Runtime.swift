import CBLAS
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The process's settings, in one place: worker threads, the OpenBLAS kernel and its idle spin,
/// glibc's allocator and huge pages. Two calls, both from the command-line tool's `main`:
///
/// 1. `prepareEnvironment()`, first thing. OpenBLAS (kernel, spin timeout) and glibc (huge-page
///    heap) read their settings from the environment when the process loads, before `main`, so
///    the wanted ones go into the environment and the process re-executes itself once
///    (`/proc/self/exe`, same arguments). What it sets, each only when the user has not:
///    - `OPENBLAS_CORETYPE`: a better kernel when OpenBLAS's detection falls short (`BLASKernel`);
///    - `OPENBLAS_THREAD_TIMEOUT=4`: idle OpenBLAS threads sleep at once instead of spinning 2^28
///      cycles and taking turns with the toolkit's own parallel loops;
///    - `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`: glibc madvises its heap for transparent huge
///      pages (Debian's kernels are madvise-only; `Allocator`). `SAMDISTILL_HUGE_PAGES=0` leaves it out.
///    The measurements behind each: Experiments/performance/results.md.
/// 2. `configure(threads:)`, once the subcommand's options are parsed: the thread count of OpenBLAS
///    and of the toolkit's loops, and the malloc settings (`Allocator.apply`); the one-line notice
///    when samdistill overrode OpenBLAS's kernel detection goes to stderr here (not for `--help`).
///
/// A library user (and the tests) call `configure` alone and get OpenBLAS's own kernel choice;
/// `configure` then sets the spin timeout in-process (re-read environment, pool restarted).
public enum Runtime {
    /// log2 of the cycles an idle OpenBLAS thread spins before it sleeps (the smallest it accepts).
    public static let spinTimeout = 4

    /// Set in the re-executed process (so it does not re-execute again), with the kernel choice.
    static let preparedVariable = "SAMDISTILL_RUNTIME_PREPARED"
    static let choiceVariable = "SAMDISTILL_BLAS_CHOICE"

    /// The kernel samdistill forced in this process, or nil (OpenBLAS's own or the user's choice).
    nonisolated(unsafe) public private(set) static var kernelChoice: BLASKernel.Choice?

    /// Step 1 (see above). In probe mode (`BLASKernel.probeVariable`) runs the kernel probe,
    /// prints its line and exits.
    public static func prepareEnvironment() {
        #if canImport(Glibc)
        let env = ProcessInfo.processInfo.environment
        if env[BLASKernel.probeVariable] == "1" {
            print(BLASKernel.runProbe())
            exit(0)
        }
        if env[preparedVariable] == "1" {
            unsetenv(preparedVariable)
            if let choice = env[choiceVariable].flatMap(BLASKernel.Choice.init(encoded:)),
               choice.kernel.lowercased() == BLASKernel.current.lowercased() {
                kernelChoice = choice
            }
            return
        }
        var changed = false
        if env["OPENBLAS_THREAD_TIMEOUT"] == nil {
            setenv("OPENBLAS_THREAD_TIMEOUT", String(spinTimeout), 1)
            changed = true
        }
        let tunables = env["GLIBC_TUNABLES"] ?? ""
        if env["SAMDISTILL_HUGE_PAGES"] != "0", env["SAMDISTILL_GLIBC_MMAP"] != "1", !tunables.contains("glibc.malloc.hugetlb") {
            setenv("GLIBC_TUNABLES", tunables.isEmpty ? "glibc.malloc.hugetlb=1" : tunables + ":glibc.malloc.hugetlb=1", 1)
            changed = true
        }
        if env["OPENBLAS_CORETYPE"] == nil, let executable = executablePath,
           let choice = BLASKernel.choose(executable: executable) {
            setenv("OPENBLAS_CORETYPE", choice.kernel, 1)
            setenv(choiceVariable, choice.encoded, 1)
            changed = true
        }
        guard changed, let executable = executablePath else { return }
        setenv(preparedVariable, "1", 1)
        execv(executable, CommandLine.unsafeArgv)
        // exec failed: carry on as loaded; `configure` still applies the spin timeout.
        unsetenv(preparedVariable)
        #endif
    }

    /// This executable's path (nil where /proc is missing).
    static var executablePath: String? {
        #if canImport(Glibc)
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        return n > 0 ? String(cString: buffer) : nil
        #else
        return nil
        #endif
    }

    /// Step 2: `threads` workers for OpenBLAS and the toolkit's loops (nil: `SAMDISTILL_THREADS`
    /// or every core), the spin timeout if the environment did not carry it, the malloc settings.
    public static func configure(threads: Int? = nil) {
        Threads.count = threads ?? Threads.defaultCount
        if getenv("OPENBLAS_THREAD_TIMEOUT") == nil {
            setenv("OPENBLAS_THREAD_TIMEOUT", String(spinTimeout), 1)
            openblas_read_env()
            _ = blas_thread_shutdown_()  // the pool restarts with the new timeout on the next call
        }
        BLASThreads.set(Threads.count)
        _ = Allocator.apply()
        if let choice = kernelChoice, !noticePrinted {
            noticePrinted = true
            FileHandle.standardError.write(Data((choice.notice + "\n").utf8))
        }
    }

    nonisolated(unsafe) static var noticePrinted = false

    /// Where the kernel came from: "samdistill" (forced after measuring), "OPENBLAS_CORETYPE"
    /// (the user's) or "OpenBLAS" (its own detection).
    public static var kernelSource: String {
        if kernelChoice != nil { return "samdistill" }
        return ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] != nil ? "OPENBLAS_CORETYPE" : "OpenBLAS"
    }

    /// One line for benchmark output: CPU, library, kernel and where it came from, threads.
    public static var summary: String {
        var kernel = "\(BLASKernel.current) kernels (\(kernelSource)"
        if let choice = kernelChoice { kernel += "; OpenBLAS detected \(choice.detected)" }
        kernel += ")"
        let version = BLASKernel.libraryConfig.split(separator: " ").prefix(2).joined(separator: " ")
        return "\(BLASKernel.CPU.current.description); \(version), \(kernel); \(Threads.count) threads"
    }

    /// The same as fields of a benchmark's JSON line.
    public static var fields: [String: Any] {
        var f: [String: Any] = ["blas_kernel": BLASKernel.current, "blas_kernel_source": kernelSource,
                                "blas_config": BLASKernel.libraryConfig, "cpu": BLASKernel.CPU.current.description,
                                "threads": Threads.count]
        if let choice = kernelChoice {
            f["blas_kernel_detected"] = choice.detected
            f["blas_kernel_measured_gflops"] = Dictionary(choice.measured, uniquingKeysWith: { a, _ in a })
        }
        return f
    }
}

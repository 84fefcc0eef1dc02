import Foundation
import Tensor
import TestSupport
import XCTest

/// `BLASKernel`: which OpenBLAS cores are offered on which CPU, the choice's round trip to the
/// re-executed process, and gemm against the reference under every core this CPU can run, each
/// forced in its own child process (OpenBLAS reads `OPENBLAS_CORETYPE` only at load).
final class BLASKernelTests: XCTestCase {
    static let avx: UInt32 = 1, avx2: UInt32 = 2, fma: UInt32 = 4
    static let avx512: UInt32 = 8 | 16 | 32 | 64, bf16: UInt32 = 128

    func testCandidatesOnlyWhenTheDetectedCoreUsesFewerVectorUnits() {
        let avx2CPU = Self.avx | Self.avx2 | Self.fma
        let avx512CPU = avx2CPU | Self.avx512
        // Debian 12's OpenBLAS on a newer Intel CPU: the SSE3 fallback, every AVX core measured.
        XCTAssertEqual(BLASKernel.candidates(detected: "Prescott", features: avx512CPU | Self.bf16),
                       ["Prescott", "Sandybridge", "Haswell", "Zen", "SkylakeX", "Cooperlake"])
        XCTAssertEqual(BLASKernel.candidates(detected: "Prescott", features: avx512CPU),
                       ["Prescott", "Sandybridge", "Haswell", "Zen", "SkylakeX"])
        // An AVX2 core on an AVX-512 CPU (e.g. Zen 4 seen as Zen): the AVX-512 cores are measured.
        XCTAssertEqual(BLASKernel.candidates(detected: "Zen", features: avx512CPU), ["Zen", "SkylakeX"])
        // Detection matches the CPU's widest vectors: nothing to do.
        XCTAssertEqual(BLASKernel.candidates(detected: "Haswell", features: avx2CPU), [])
        XCTAssertEqual(BLASKernel.candidates(detected: "SkylakeX", features: avx512CPU), [])
        XCTAssertEqual(BLASKernel.candidates(detected: "Nehalem", features: 0), [])
        // A name the table does not know is left alone; names compare case-insensitively.
        XCTAssertEqual(BLASKernel.candidates(detected: "FutureCore", features: avx512CPU), [])
        XCTAssertEqual(BLASKernel.candidates(detected: "PRESCOTT", features: Self.avx), ["Prescott", "Sandybridge"])
        // AVX-512 without the OS's zmm state (the shim then reports no AVX-512 bits) stays at AVX2.
        XCTAssertEqual(BLASKernel.vectorLevel(features: avx2CPU | 8), 3)
    }

    func testChoiceRoundTripsThroughItsEncoding() throws {
        let choice = BLASKernel.Choice(kernel: "Cooperlake", detected: "Prescott",
                                       measured: [("Prescott", 7.9), ("Haswell", 31.2), ("Cooperlake", 148.9)])
        XCTAssertEqual(choice.encoded, "Prescott>Cooperlake;Prescott=7.9,Haswell=31.2,Cooperlake=148.9")
        XCTAssertEqual(BLASKernel.Choice(encoded: choice.encoded), choice)
        XCTAssertNil(BLASKernel.Choice(encoded: "garbage"))
        XCTAssertNil(BLASKernel.Choice(encoded: "A>B;C=x"))
        XCTAssertTrue(choice.notice.contains("running Cooperlake instead"), choice.notice)
        XCTAssertTrue(choice.notice.contains("OPENBLAS_CORETYPE"), choice.notice)
    }

    /// In this process (whatever core OpenBLAS runs here): the probe's gemm check is tight.
    func testGemmMatchesTheReferenceInProcess() {
        XCTAssertLessThanOrEqual(BLASKernel.worstGemmError(), 1e-4)
    }

    /// Every core this CPU can run, forced one after another in a child `samdistill` (probe mode):
    /// the child must report the core it was given (or another one when this OpenBLAS does not
    /// know the name: then it is not runnable here and is skipped, reported in the log), and its
    /// gemm must agree with the reference over all transposes, padded leading dimensions and
    /// alpha/beta (worst |Δ| ≤ 1e-4 · (1 + |reference|)).
    func testGemmUnderEveryKernelThisCPUCanRun() throws {
        let exe = try Fixture.samdistillExecutable().path
        let features = BLASKernel.CPU.current.features
        let runnable = [BLASKernel.current] + BLASKernel.cores.filter { $0.requires != 0 && $0.requires & features == $0.requires }.map(\.name)
        var checked: [String] = []
        for name in runnable {
            let result = try XCTUnwrap(BLASKernel.probe(executable: exe, kernel: name), "\(name): the probe child failed or crashed")
            guard result.kernel.lowercased() == name.lowercased() else {
                print("BLASKernelTests: \(name) is not known to this OpenBLAS (it ran \(result.kernel)); skipped")
                continue
            }
            XCTAssertTrue(result.correct, "\(name): worst gemm error \(result.worstError)")
            XCTAssertLessThanOrEqual(result.worstError, 1e-4, name)
            XCTAssertGreaterThan(result.gflops, 0, name)
            checked.append("\(name) \(String(format: "%.1f", result.gflops)) GFLOP/s")
        }
        print("BLASKernelTests: \(BLASKernel.CPU.current.description): \(checked.joined(separator: ", "))")
        XCTAssertFalse(checked.isEmpty)
    }

    /// The executable run plainly on this machine: when OpenBLAS's own detection falls short it
    /// runs the measured best core and says so once on stderr; a user's OPENBLAS_CORETYPE wins.
    func testExecutableChoosesTheKernelAndTheUserWins() throws {
        if ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] != nil {
            throw XCTSkip("OPENBLAS_CORETYPE is set for this test process: OpenBLAS's own detection is not visible here")
        }
        let exe = try Fixture.samdistillExecutable()
        let cache = FileManager.default.temporaryDirectory.appendingPathComponent("blaskernel-\(getpid())")
        defer { try? FileManager.default.removeItem(at: cache) }
        func runtime(_ extra: [String: String]) throws -> (out: String, err: String) {
            var env = ProcessInfo.processInfo.environment
            env["XDG_CACHE_HOME"] = cache.path
            env.removeValue(forKey: "OPENBLAS_CORETYPE")
            for (k, v) in extra { env[k] = v }
            let r = try Fixture.runProcess(exe, ["runtime", "--threads", "1", "--json"], environment: env)
            XCTAssertEqual(r.status, 0, r.err)
            return (r.out, r.err)
        }
        func fields(_ out: String) throws -> [String: Any] {
            let last = try XCTUnwrap(out.split(separator: "\n").last)
            return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any])
        }
        let plain = try runtime([:])
        let f = try fields(plain.out)
        let kernel = try XCTUnwrap(f["blas_kernel"] as? String)
        let detectedHere = BLASKernel.candidates(detected: BLASKernel.current, features: BLASKernel.CPU.current.features)
        if detectedHere.isEmpty {
            XCTAssertEqual(f["blas_kernel_source"] as? String, "OpenBLAS")
            XCTAssertEqual(kernel.lowercased(), BLASKernel.current.lowercased())
            XCTAssertFalse(plain.err.contains("running"), plain.err)
        } else {
            XCTAssertEqual(f["blas_kernel_source"] as? String, "samdistill")
            XCTAssertEqual((f["blas_kernel_detected"] as? String)?.lowercased(), BLASKernel.current.lowercased())
            XCTAssertNotEqual(kernel.lowercased(), BLASKernel.current.lowercased())
            XCTAssertEqual(plain.err.components(separatedBy: "samdistill: OpenBLAS chose").count, 2, "one notice: \(plain.err)")
            XCTAssertTrue(FileManager.default.fileExists(atPath: cache.appendingPathComponent("samdistill/blas-kernel.json").path))
            // The second run reads the cached choice: same kernel.
            XCTAssertEqual(try fields(runtime([:]).out)["blas_kernel"] as? String, kernel)
        }
        let user = try runtime(["OPENBLAS_CORETYPE": BLASKernel.current])
        let u = try fields(user.out)
        XCTAssertEqual(u["blas_kernel_source"] as? String, "OPENBLAS_CORETYPE")
        XCTAssertEqual((u["blas_kernel"] as? String)?.lowercased(), BLASKernel.current.lowercased())
        XCTAssertFalse(user.err.contains("samdistill: OpenBLAS chose"), user.err)
    }
}

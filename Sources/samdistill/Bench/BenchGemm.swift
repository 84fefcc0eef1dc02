import ArgumentParser
import CBLAS
import Foundation
import Tensor

struct BenchGemm: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gemm",
        abstract: "GFLOP/s of the gemm wrapper vs a raw cblas_sgemm call at MobileSAM's shapes.")

    @OptionGroup var options: BenchOptions

    func run() throws {
        options.apply()
        // (m, n, k): MobileSAM TinyViT shapes at 1024×1024, batch 1, plus a square reference.
        let shapes: [(String, Int, Int, Int)] = [
            ("square 1024", 1024, 1024, 1024),
            ("stage1 qkv (16384 tok, 128→384)", 16384, 384, 128),
            ("stage1 mlp fc1 (16384, 128→512)", 16384, 512, 128),
            ("stage2 mlp fc2 (4096, 640→160)", 4096, 160, 640),
            ("stage3 mlp fc1 (4096, 320→1280)", 4096, 1280, 320),
            ("neck 3×3 conv im2col (256, 4096, 2304)", 256, 4096, 2304),
            ("window attn scores (49×49×32)", 49, 49, 32),
        ]
        var rows: [[String: Any]] = []
        print("threads: \(BLASThreads.current) (OpenBLAS)")
        print("shape".padding(toLength: 42, withPad: " ", startingAt: 0) + "  wrapper GFLOP/s   raw GFLOP/s   ratio")
        for (name, m, n, k) in shapes {
            var rng = SeededRandom(seed: 1)
            let a = Tensor.randomNormal([m * k], rng: &rng), b = Tensor.randomNormal([k * n], rng: &rng)
            var c = Tensor(zeros: [m * n])
            let flops = 2.0 * Double(m) * Double(n) * Double(k)
            let reps = max(options.repeats, Int(min(200.0, 2e10 / flops)))
            let wrapped = medianSeconds(repeats: reps) {
                a.data.withUnsafeBufferPointer { ap in b.data.withUnsafeBufferPointer { bp in
                    c.data.withUnsafeMutableBufferPointer { cp in
                        gemm(m: m, n: n, k: k, a: ap.baseAddress!, lda: k, b: bp.baseAddress!, ldb: n,
                             c: cp.baseAddress!, ldc: n)
                    } } }
            }
            let raw = medianSeconds(repeats: reps) {
                a.data.withUnsafeBufferPointer { ap in b.data.withUnsafeBufferPointer { bp in
                    c.data.withUnsafeMutableBufferPointer { cp in
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k),
                                    1, ap.baseAddress!, Int32(k), bp.baseAddress!, Int32(n), 0, cp.baseAddress!, Int32(n))
                    } } }
            }
            let gw = flops / wrapped / 1e9, gr = flops / raw / 1e9
            print(name.padding(toLength: 42, withPad: " ", startingAt: 0)
                  + String(format: "  %15.1f  %12.1f  %6.3f", gw, gr, gw / gr))
            rows.append(["shape": name, "m": m, "n": n, "k": k, "wrapper_gflops": gw, "raw_gflops": gr])
        }
        if options.json { printJSON(["bench": "gemm", "threads": BLASThreads.current, "results": rows]) }
    }
}

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
        let attention = attentionScores()
        if options.json {
            printJSON(["bench": "gemm", "threads": BLASThreads.current, "results": rows, "attention_scores": attention])
        }
    }

    /// TinyViTAttention's score product S (N, N) = q (N, 32) · kᵀ as the layer calls it: one thread
    /// (windows run in parallel), B transposed, back to back. OpenBLAS's beta-0 path against copying
    /// the bias into S and accumulating with beta 1 (what the layer does); the two alternate, medians.
    private func attentionScores() -> [[String: Any]] {
        let saved = BLASThreads.current
        BLASThreads.set(1)
        defer { BLASThreads.set(saved) }
        print("\nattention scores, 1 thread (q·kᵀ, k 32)        beta 0 GFLOP/s   bias + beta 1   ratio")
        var rows: [[String: Any]] = []
        for N in [49, 196] {
            let d = 32
            var rng = SeededRandom(seed: 2)
            let q = Tensor.randomNormal([N * d], rng: &rng), k = Tensor.randomNormal([N * d], rng: &rng)
            let bias = Tensor.randomNormal([N * N], rng: &rng)
            var S = Tensor(zeros: [N * N])
            let flops = 2.0 * Double(N * N * d), calls = max(1, Int(5e8 / flops))
            var zero: [Double] = [], filled: [Double] = []
            q.data.withUnsafeBufferPointer { qb in k.data.withUnsafeBufferPointer { kb in
                bias.data.withUnsafeBufferPointer { bb in S.data.withUnsafeMutableBufferPointer { sb in
                    let qp = qb.baseAddress!, kp = kb.baseAddress!, bp = bb.baseAddress!, sp = sb.baseAddress!
                    for _ in 0..<max(3, options.repeats) {
                        var t0 = BenchClock.now()
                        for _ in 0..<calls {
                            gemm(transB: true, m: N, n: N, k: d, a: qp, lda: d, b: kp, ldb: d, c: sp, ldc: N)
                        }
                        zero.append(BenchClock.now() - t0)
                        t0 = BenchClock.now()
                        for _ in 0..<calls {
                            sp.update(from: bp, count: N * N)
                            gemm(transB: true, m: N, n: N, k: d, a: qp, lda: d, b: kp, ldb: d, beta: 1, c: sp, ldc: N)
                        }
                        filled.append(BenchClock.now() - t0)
                    }
                } }
            } }
            let g0 = flops * Double(calls) / zero.sorted()[zero.count / 2] / 1e9
            let g1 = flops * Double(calls) / filled.sorted()[filled.count / 2] / 1e9
            let name = "\(N)×\(N)×\(d)"
            print(name.padding(toLength: 42, withPad: " ", startingAt: 0) + String(format: "  %14.1f  %14.1f  %6.3f", g0, g1, g1 / g0))
            rows.append(["shape": name, "beta0_gflops": g0, "bias_beta1_gflops": g1])
        }
        return rows
    }
}

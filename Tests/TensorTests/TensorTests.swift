import CheckpointFormats
import Foundation
import Tensor
import TestSupport
import XCTest

final class TensorTests: XCTestCase {
    /// The BLAS wrapper against the naive loop, for all four transpose combinations and
    /// leading dimensions wider than the matrices. Tolerance 1e-5 relative (float32 sums of ≤ 37 terms).
    func testGemmMatchesReferenceLoop() {
        var rng = SeededRandom(seed: 7)
        let (m, n, k) = (13, 9, 37)
        for transA in [false, true] {
            for transB in [false, true] {
                let lda = (transA ? m : k) + 3, ldb = (transB ? k : n) + 2, ldc = n + 5
                let a = Tensor.randomNormal([(transA ? k : m) * lda], rng: &rng)
                let b = Tensor.randomNormal([(transB ? n : k) * ldb], rng: &rng)
                let c0 = Tensor.randomNormal([m * ldc], rng: &rng)
                var c1 = c0, c2 = c0
                a.data.withUnsafeBufferPointer { ap in
                    b.data.withUnsafeBufferPointer { bp in
                        c1.data.withUnsafeMutableBufferPointer { cp in
                            gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 0.5,
                                 a: ap.baseAddress!, lda: lda, b: bp.baseAddress!, ldb: ldb,
                                 beta: 0.25, c: cp.baseAddress!, ldc: ldc)
                        }
                        c2.data.withUnsafeMutableBufferPointer { cp in
                            gemmReference(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 0.5,
                                          a: ap.baseAddress!, lda: lda, b: bp.baseAddress!, ldb: ldb,
                                          beta: 0.25, c: cp.baseAddress!, ldc: ldc)
                        }
                    }
                }
                XCTAssertLessThan(relativeError(c1, c2), 1e-5, "transA \(transA) transB \(transB)")
                // Padding columns beyond n are untouched.
                for i in 0..<m { for j in n..<ldc { XCTAssertEqual(c1.data[i * ldc + j], c0.data[i * ldc + j]) } }
            }
        }
    }

    func testSeededRandomIsReproducible() {
        var a = SeededRandom(seed: 42), b = SeededRandom(seed: 42), c = SeededRandom(seed: 43)
        let xa = (0..<100).map { _ in a.normal() }
        let xb = (0..<100).map { _ in b.normal() }
        let xc = (0..<100).map { _ in c.normal() }
        XCTAssertEqual(xa, xb)
        XCTAssertNotEqual(xa, xc)
        // Moments of 100k normals: mean within 0.02, variance within 0.02 of 1.
        var r = SeededRandom(seed: 1)
        let t = Tensor.randomNormal([100_000], rng: &r)
        XCTAssertEqual(t.mean(), 0, accuracy: 0.02)
        XCTAssertEqual(t.squaredNorm() / 100_000, 1, accuracy: 0.02)
    }

    func testParallelReductionsMatchSerial() {
        var rng = SeededRandom(seed: 3)
        var x = Tensor.randomNormal([300_001], rng: &rng)
        let serial = x.data.reduce(0.0) { $0 + Double($1) }
        XCTAssertEqual(x.sum(), serial, accuracy: 1e-6 * Double(x.count))
        let y = x
        x.add(y, scaledBy: 2)
        for i in stride(from: 0, to: x.count, by: 997) { XCTAssertEqual(x.data[i], 3 * y.data[i], accuracy: 1e-6) }
        x.zero()
        XCTAssertEqual(x.maxAbs(), 0)
    }

    func testPermute() {
        let t = Tensor(shape: [2, 3, 4], data: (0..<24).map(Float.init))
        let p = t.permuted([2, 0, 1])
        XCTAssertEqual(p.shape, [4, 2, 3])
        for a in 0..<2 { for b in 0..<3 { for c in 0..<4 {
            XCTAssertEqual(p.data[(c * 2 + a) * 3 + b], t.data[(a * 3 + b) * 4 + c])
        } } }
    }

    func testSafeTensorsRoundTrip() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("st-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        var rng = SeededRandom(seed: 5)
        let a = Tensor.randomNormal([3, 4, 5], rng: &rng), b = Tensor.randomNormal([7], rng: &rng)
        let url = dir.appendingPathComponent("w.safetensors")
        try SafeTensors.write(["a": a, "b.c": b], metadata: ["config": "{}"], to: url)
        let (t, m) = try SafeTensors.read(url)
        XCTAssertEqual(t["a"]?.tensor.data, a.data)
        XCTAssertEqual(t["a"]?.tensor.shape, [3, 4, 5])
        XCTAssertEqual(t["b.c"]?.dtype, .f32)
        XCTAssertEqual(m["config"], "{}")
        // float16 storage: values within half precision (2^-11 relative).
        try SafeTensors.write(["a": a], half: true, to: url)
        let h = try SafeTensors.read(url).tensors["a"]!
        XCTAssertEqual(h.dtype, .f16)
        for i in 0..<a.count { XCTAssertEqual(h.tensor.data[i], a.data[i], accuracy: abs(a.data[i]) * 1e-3 + 1e-4) }
        // No temp files left behind.
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["w.safetensors"])
    }

    func testSafeTensorsRejectsTruncatedFile() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("bad-\(UUID()).safetensors")
        defer { try? FileManager.default.removeItem(at: url) }
        try SafeTensors.write(["a": Tensor(zeros: [100])], to: url)
        let data = try Data(contentsOf: url)
        try data.prefix(data.count - 10).write(to: url)
        XCTAssertThrowsError(try SafeTensors.read(url)) { error in
            XCTAssertTrue("\(error)".contains(url.path), "error names the file: \(error)")
            XCTAssertTrue("\(error)".contains("'a'"), "error names the entry: \(error)")
        }
    }

    /// Headers that lie: offsets that do not match the shape, a range past the end of the file,
    /// a header length larger than the file, a non-JSON header. Each is a typed error naming the
    /// file, never a crash.
    func testSafeTensorsRejectsLyingHeaders() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lie-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        func file(_ header: String, payload: Int, headerLength: UInt64? = nil) throws -> URL {
            let url = dir.appendingPathComponent("\(UUID()).safetensors")
            var d = Data()
            var n = (headerLength ?? UInt64(header.utf8.count)).littleEndian
            withUnsafeBytes(of: &n) { d.append(contentsOf: $0) }
            d.append(Data(header.utf8))
            d.append(Data(repeating: 0, count: payload))
            try d.write(to: url)
            return url
        }
        let cases: [(String, URL)] = [
            ("shape/offset mismatch", try file(#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#, payload: 16)),
            ("range past the end", try file(#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, payload: 8)),
            ("negative offset", try file(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}"#, payload: 8)),
            ("header length beyond the file", try file(#"{}"#, payload: 0, headerLength: 1 << 40)),
            ("not JSON", try file("not json at all", payload: 0)),
            ("unknown dtype", try file(#"{"a":{"dtype":"Q7","shape":[1],"data_offsets":[0,1]}}"#, payload: 1)),
        ]
        for (name, url) in cases {
            XCTAssertThrowsError(try SafeTensors.read(url), name) { error in
                XCTAssertTrue(error is SafeTensors.FormatError, "\(name): \(error)")
                XCTAssertTrue("\(error)".contains(url.path), "\(name): error names the file: \(error)")
            }
        }
    }
}

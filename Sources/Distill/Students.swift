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
/// incompatible key. The one exception is width pruning: a block's MLP (`mlp_ratios`) or MBConv
/// (`mbconv_expand_ratio`) may be narrower than its teacher block's; it then keeps the teacher's
/// most important hidden units (`WidthPruning`).
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
                                  widthStatistics mlpStatistics: [String: HiddenStatistics] = [:]) throws -> [String: String] {
        let map = try keyMap(student: student, teacherKeys: Array(teacher.keys), blockMap: blockMap)
        var problems: [String] = []
        var values: [String: Tensor] = [:]
        // the unit sets the student narrows: student prefix → (teacher prefix, plan)
        var plans: [String: (teacher: String, plan: WidthPruning.Plan)] = [:]
        let params = student.namedParameters()
        for (prefix, h) in WidthPruning.hiddenWidths(student) {
            guard let probe = params.first(where: { $0.0.hasPrefix(prefix) })?.0,
                  let tk = map[probe] else { continue }
            let tp = String(tk.prefix(tk.count - (probe.count - prefix.count)))
            if let plan = WidthPruning.plan(prefix: tp, hidden: h, teacher: teacher, statistics: mlpStatistics[tp]) {
                plans[prefix] = (tp, plan)
            }
        }
        for (k, p) in params {
            let tk = map[k]!
            guard let t = teacher[tk] else { problems.append("\(k): teacher has no \(tk)"); continue }
            if let (prefix, pl) = plans.first(where: { k.hasPrefix($0.key) }).map({ ($0.value.teacher, $0.value.plan) }),
               let narrowed = WidthPruning.narrowed(key: tk, prefix: prefix, plan: pl, teacher: teacher),
               narrowed.shape == p.value.shape {
                values[k] = narrowed
            } else if t.shape == p.value.shape {
                values[k] = t
            } else {
                problems.append("\(k) \(p.value.shape) ← teacher \(tk) \(t.shape): shapes differ")
            }
        }
        if !problems.isEmpty { throw IncompatibleError(problems: problems) }
        for (k, p) in params { p.value = values[k]! }
        return map
    }
}

/// Width pruning: a student TinyViT MLP (LayerNorm → fc1 (H, C) → GELU → fc2 (C, H)) or MBConv
/// (conv1 1×1 + BN + GELU → conv2 3×3 depthwise + BN + GELU → conv3 1×1 + BN) with fewer hidden
/// units than its teacher block keeps the teacher's most important units, in their original
/// order: rows of fc1 / conv1 / conv2 and their biases and BatchNorms, columns of fc2 / conv3.
/// With activation statistics of the teacher on calibration images (a_j: the unit's value
/// entering fc2 / conv3, `HiddenStatistics`), a unit's importance is the RMS of its contribution
/// to the block's output, and the mean contribution of the dropped units is folded in after, so
/// the block's output keeps its mean on those images:
///
///     s_j = √E[a_j²] · ‖W_out[:, j]‖₂        (MBConv: W_out's rows scaled by conv3's BN, γ/√(σ²+ε))
///     MLP:    fc2.bias          += Σ_{j dropped} E[a_j] · fc2.weight[:, j]
///     MBConv: conv3.bn.running_mean −= Σ_{j dropped} E[a_j] · conv3.weight[:, j]
///
/// Without statistics, the weights alone stand in for √E[a_j²]: ‖fc1.weight[j, :] ⊙ norm.weight‖₂
/// (MLP), ‖conv2.weight[j]‖₂ · |γ_j|/√(σ_j²+ε) of conv2's BN (MBConv); nothing is folded.
public enum WidthPruning {
    static let batchNormEpsilon: Float = 1e-5  // TinyViT's Conv2d_BN (PyTorch's default)

    /// One prunable unit set: its hidden width in the teacher, the keys sliced along the units and
    /// how, and the importance of each unit.
    struct Plan {
        var kept: [Int]
        var rows: [String]           // dim 0 is the unit
        var columns: [String]        // dim 1 is the unit
        var outputWeight: String     // (Cout, H, …): the dropped units' mean contribution goes through it
        var compensated: String      // fc2.bias (added) or conv3.bn.running_mean (subtracted)
        var compensationSign: Float
        var mean: [Double]?
    }

    /// The unit indices of the `keep` largest scores (ties by index), in increasing order.
    static func topUnits(_ score: [Double], keep: Int) -> [Int] {
        let ranked = score.indices.sorted { score[$0] != score[$1] ? score[$0] > score[$1] : $0 < $1 }
        return ranked.prefix(keep).sorted()
    }

    /// ‖scale ⊙ W[:, j]‖₂ for each column j of W (Cout, H, 1, 1 …) flattened as (Cout, H).
    static func columnNorms(_ w: Tensor, scale: [Float]? = nil) -> [Double] {
        let C = w.shape[0], H = w.shape[1]
        precondition(w.count == C * H, "WidthPruning: \(w.shape) is not a 1×1 weight")
        var n = [Double](repeating: 0, count: H)
        for c in 0..<C {
            let g = Double(scale?[c] ?? 1)
            for j in 0..<H { let v = g * Double(w.data[c * H + j]); n[j] += v * v }
        }
        return n.map { $0.squareRoot() }
    }

    /// ‖W[j]‖₂ of each row (dim 0) of W, each entry multiplied by `scale` along its last dimension (the MLP's norm scale).
    static func rowNorms(_ w: Tensor, scale: [Float]? = nil) -> [Double] {
        let H = w.shape[0], n = w.count / H
        return (0..<H).map { j in
            var a = 0.0
            for i in 0..<n { let v = Double(w.data[j * n + i] * (scale?[i] ?? 1)); a += v * v }
            return a.squareRoot()
        }
    }

    /// The plan for the MLP or MBConv at `prefix` (teacher keys) narrowed to `hidden` units.
    static func plan(prefix: String, hidden: Int, teacher t: [String: Tensor], statistics: HiddenStatistics?) -> Plan? {
        if prefix.hasSuffix(".mlp.") {
            guard let w1 = t[prefix + "fc1.weight"], let w2 = t[prefix + "fc2.weight"], let g = t[prefix + "norm.weight"],
                  w1.rank == 2, w2.rank == 2, hidden < w1.shape[0], w2.shape == [w1.shape[1], w1.shape[0]] else { return nil }
            let st = statistics.flatMap { $0.sum.count == w1.shape[0] ? $0 : nil }
            let gain = st.map { $0.meanSquare.map { $0.squareRoot() } } ?? rowNorms(w1, scale: g.data)
            let score = zip(gain, columnNorms(w2)).map { $0 * $1 }
            return Plan(kept: topUnits(score, keep: hidden), rows: ["fc1.weight", "fc1.bias"], columns: ["fc2.weight"],
                        outputWeight: "fc2.weight", compensated: "fc2.bias", compensationSign: 1, mean: st?.mean)
        }
        guard let w2 = t[prefix + "conv2.c.weight"], let w3 = t[prefix + "conv3.c.weight"], w3.rank == 4,
              hidden < w2.shape[0], w3.shape[1] == w2.shape[0],
              let g2 = t[prefix + "conv2.bn.weight"], let v2 = t[prefix + "conv2.bn.running_var"],
              let g3 = t[prefix + "conv3.bn.weight"], let v3 = t[prefix + "conv3.bn.running_var"] else { return nil }
        let H = w2.shape[0]
        let st = statistics.flatMap { $0.sum.count == H ? $0 : nil }
        let s3 = (0..<g3.count).map { g3.data[$0] / (v3.data[$0] + batchNormEpsilon).squareRoot() }
        let gain = st.map { $0.meanSquare.map { $0.squareRoot() } }
            ?? zip(rowNorms(w2), (0..<H).map { Double(abs(g2.data[$0]) / (v2.data[$0] + batchNormEpsilon).squareRoot()) }).map { $0 * $1 }
        let score = zip(gain, columnNorms(w3, scale: s3)).map { $0 * $1 }
        let bn = ["weight", "bias", "running_mean", "running_var"]
        return Plan(kept: topUnits(score, keep: hidden),
                    rows: ["conv1.c.weight", "conv2.c.weight"] + bn.map { "conv1.bn." + $0 } + bn.map { "conv2.bn." + $0 },
                    columns: ["conv3.c.weight"], outputWeight: "conv3.c.weight", compensated: "conv3.bn.running_mean",
                    compensationSign: -1, mean: st?.mean)
    }

    /// `t` with only the `kept` entries along dimension `dim` (0 or 1).
    static func select(_ t: Tensor, dim: Int, _ kept: [Int]) -> Tensor {
        var shape = t.shape
        let outer = dim == 0 ? 1 : shape[0], H = shape[dim]
        let inner = t.count / (outer * H)
        shape[dim] = kept.count
        var out = Tensor(zeros: shape)
        for o in 0..<outer {
            for (i, j) in kept.enumerated() {
                for k in 0..<inner { out.data[(o * kept.count + i) * inner + k] = t.data[(o * H + j) * inner + k] }
            }
        }
        return out
    }

    /// The narrowed teacher tensor for `key` (teacher name) of the unit set at `prefix`, or nil
    /// when the plan does not touch `key` (then it is copied whole).
    static func narrowed(key: String, prefix: String, plan: Plan, teacher t: [String: Tensor]) -> Tensor? {
        let local = String(key.dropFirst(prefix.count))
        guard let v = t[key] else { return nil }
        if plan.rows.contains(local) { return select(v, dim: 0, plan.kept) }
        if plan.columns.contains(local) { return select(v, dim: 1, plan.kept) }
        guard local == plan.compensated, let mean = plan.mean, let w = t[prefix + plan.outputWeight] else { return nil }
        var out = v
        let C = w.shape[0], H = w.shape[1]
        let keep = Set(plan.kept)
        for j in 0..<H where !keep.contains(j) {
            for c in 0..<C { out.data[c] += plan.compensationSign * Float(mean[j] * Double(w.data[c * H + j])) }
        }
        return out
    }

    /// Runs `teacher` (inference) on `images` (each (1, 3, S, S)) recording the hidden statistics
    /// of every MBConv (keyed `layers.0.blocks.N.`) and MLP (`layers.S.blocks.N.mlp.`).
    public static func calibrate(_ teacher: TinyViT, images: [Tensor]) -> [String: HiddenStatistics] {
        for b in teacher.convStage.blocks { b.hiddenStatistics = .init(units: b.hiddenChannels) }
        for s in teacher.stages { for b in s.blocks { b.mlp.hiddenStatistics = .init(units: b.mlp.hiddenFeatures) } }
        for image in images { _ = teacher.forward(image, mode: .inference) }
        var result: [String: HiddenStatistics] = [:]
        for (i, b) in teacher.convStage.blocks.enumerated() { result["layers.0.blocks.\(i)."] = b.hiddenStatistics; b.hiddenStatistics = nil }
        for (i, s) in teacher.stages.enumerated() {
            for (n, b) in s.blocks.enumerated() { result["layers.\(i + 1).blocks.\(n).mlp."] = b.mlp.hiddenStatistics; b.mlp.hiddenStatistics = nil }
        }
        return result
    }

    /// Hidden width of each prunable unit set of `model`, keyed as `calibrate` keys them.
    static func hiddenWidths(_ model: TinyViT) -> [String: Int] {
        var h: [String: Int] = [:]
        for (i, b) in model.convStage.blocks.enumerated() { h["layers.0.blocks.\(i)."] = b.hiddenChannels }
        for (i, s) in model.stages.enumerated() {
            for (n, b) in s.blocks.enumerated() { h["layers.\(i + 1).blocks.\(n).mlp."] = b.mlp.hiddenFeatures }
        }
        return h
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
            var statistics: [String: HiddenStatistics] = [:]
            if let t = teacher.encoder as? TinyViT, narrows(net, teacher: t), let cache = config.data.train.first {
                statistics = WidthPruning.calibrate(t, images: try calibrationImages(cache, count: 8))
            }
            try DepthPruning.initialise(net, fromTeacher: teacher.encoder.stateDict(), blockMap: blockMap,
                                        widthStatistics: statistics)
        case .checkpoint(let path):
            // Read as this student's architecture: the file's keys must be exactly its keys.
            let w = try SAMWeights.read(URL(fileURLWithPath: path), architecture: config.student.encoderConfig)
            try student.load(w.encoder.stateDict())
        }
        if let net = student.network as? TinyViT { net.frozenUnits = config.freeze.count }
        return student
    }

    /// Whether any student MLP or MBConv is narrower than the teacher's (width pruning).
    static func narrows(_ student: TinyViT, teacher: TinyViT) -> Bool {
        let t = WidthPruning.hiddenWidths(teacher)
        return WidthPruning.hiddenWidths(student).contains { k, h in h < (t[k] ?? 0) }
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

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
/// windows, MLP and MBConv ratios); otherwise nothing is changed and the error lists every
/// incompatible key.
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
                                  blockMap: [[Int]]? = nil) throws -> [String: String] {
        let map = try keyMap(student: student, teacherKeys: Array(teacher.keys), blockMap: blockMap)
        var problems: [String] = []
        for (k, p) in student.namedParameters() {
            let tk = map[k]!
            guard let t = teacher[tk] else { problems.append("\(k): teacher has no \(tk)"); continue }
            if t.shape != p.value.shape {
                problems.append("\(k) \(p.value.shape) ← teacher \(tk) \(t.shape): shapes differ")
            }
        }
        if !problems.isEmpty { throw IncompatibleError(problems: problems) }
        for (k, p) in student.namedParameters() { p.value = teacher[map[k]!]! }
        return map
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
            try DepthPruning.initialise(net, fromTeacher: teacher.encoder.stateDict(), blockMap: blockMap)
        case .checkpoint(let path):
            // Read as this student's architecture: the file's keys must be exactly its keys.
            let w = try SAMWeights.read(URL(fileURLWithPath: path), architecture: config.student.encoderConfig)
            try student.load(w.encoder.stateDict())
        }
        if let net = student.network as? TinyViT { net.frozenUnits = config.freeze.count }
        return student
    }

    /// Whether the parameter `key` belongs to a frozen unit (`RunConfig.freeze`).
    public func isFrozen(_ key: String) -> Bool {
        guard let net = network as? TinyViT else { return false }
        return net.unitPrefixes.prefix(net.frozenUnits).contains { key.hasPrefix($0) }
    }
}

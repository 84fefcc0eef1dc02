import Foundation
import Layers
import SegmentAnything
import Tensor

// Students: the encoders a run trains. Either a TinyViT of any configuration (the same type the
// inference core runs; MobileSAM's TinyViT-5M is the `tinyvit_5m` preset) or a conv-only
// NanoSAM-style network (`ConvStudent`). Both map a normalised, padded (B, 3, S, S) image to a
// (B, 256, S/16, S/16) embedding (256×64×64 for S = 1024).

// MARK: - Conv student

/// A ResNet basic block (torchvision's `BasicBlock`): conv1 3×3 (stride s) → bn1 → ReLU →
/// conv2 3×3 → bn2, plus the identity or, when the stride or width changes, a projection
/// shortcut `downsample` = 1×1 conv (stride s) → BN; then ReLU.
/// Keys: `conv1.weight`, `bn1.*`, `conv2.weight`, `bn2.*`, `downsample.0.weight`, `downsample.1.*`.
public final class BasicBlock: Module {
    public let inputChannels: Int
    public let outputChannels: Int
    public let stride: Int
    public let conv1: Conv2d
    public let bn1: BatchNorm2d
    public let conv2: Conv2d
    public let bn2: BatchNorm2d
    /// `downsample.0` (1×1 conv, stride s) and `downsample.1` (BN), when the shape changes.
    public let downsample: (conv: Conv2d, bn: BatchNorm2d)?

    // h1: (B, O, Ho, Wo) bn1 output (pre-ReLU); s: (B, O, Ho, Wo) the residual sum (pre-ReLU)
    private var h1: Tensor?, sum: Tensor?

    public init(inputChannels: Int, outputChannels: Int, stride: Int) {
        self.inputChannels = inputChannels
        self.outputChannels = outputChannels
        self.stride = stride
        conv1 = Conv2d(inputChannels: inputChannels, outputChannels: outputChannels, kernelSize: 3, stride: stride,
                       padding: 1, bias: false)
        bn1 = BatchNorm2d(outputChannels)
        conv2 = Conv2d(inputChannels: outputChannels, outputChannels: outputChannels, kernelSize: 3, stride: 1,
                       padding: 1, bias: false)
        bn2 = BatchNorm2d(outputChannels)
        if stride != 1 || inputChannels != outputChannels {
            downsample = (Conv2d(inputChannels: inputChannels, outputChannels: outputChannels, kernelSize: 1,
                                 stride: stride, bias: false), BatchNorm2d(outputChannels))
        } else {
            downsample = nil
        }
    }

    public func namedParameters() -> [(String, Parameter)] {
        var p = prefixed("conv1.", conv1) + prefixed("bn1.", bn1) + prefixed("conv2.", conv2) + prefixed("bn2.", bn2)
        if let d = downsample { p += prefixed("downsample.0.", d.conv) + prefixed("downsample.1.", d.bn) }
        return p
    }

    /// x: (B, I, H, W) -> (B, O, ⌈H/s⌉, ⌈W/s⌉)
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        precondition(x.rank == 4 && x.shape[1] == inputChannels,
                     "BasicBlock(\(inputChannels)→\(outputChannels), stride \(stride)): expected (B, \(inputChannels), H, W), got \(x.shape)")
        let a = bn1.forward(conv1.forward(x, mode: mode), mode: mode)
        var s = bn2.forward(conv2.forward(Activation.relu.forward(a), mode: mode), mode: mode)
        if let d = downsample {
            s.add(d.bn.forward(d.conv.forward(x, mode: mode), mode: mode))
        } else {
            s.add(x)
        }
        if mode.keepsActivations { h1 = a; sum = s } else { h1 = nil; sum = nil }
        return Activation.relu.forward(s)
    }

    /// dy: (B, O, Ho, Wo) -> dx: (B, I, H, W)
    public func backward(_ dy: Tensor) -> Tensor {
        guard let a = h1, let s = sum else { preconditionFailure("BasicBlock.backward without a training-mode forward") }
        h1 = nil; sum = nil
        let ds = Activation.relu.backward(dy, input: s)  // gradient at the residual sum
        let da = Activation.relu.backward(conv2.backward(bn2.backward(ds)), input: a)
        var dx = conv1.backward(bn1.backward(da))
        if let d = downsample { dx.add(d.conv.backward(d.bn.backward(ds))) } else { dx.add(ds) }
        return dx
    }
}

/// The conv-only NanoSAM-style student (`ConvStudentConfig`):
///
///     stem    Conv2d(in, stem, k, stride stem_stride, pad k/2, no bias) → BN → ReLU
///             (k = 3 for stride ≤ 2, 2·stride − 1 above)
///     layers  per stage i: blocks[i] BasicBlocks, the first with stride strides[i]
///     up      per ×2 step back to S/16: ConvTranspose2d(c, upsample_channels, 2, stride 2) → ReLU
///     head    Conv2d(c, out_channels, 1) with bias
///
/// Keys (as the PyTorch module in Scripts/refdump/students.py names them): `stem.0.weight`,
/// `stem.1.*`, `layers.I.J.*` (BasicBlock keys), `up.{2k}.weight`, `up.{2k}.bias`, `head.weight`,
/// `head.bias`.
public final class ConvStudent: Module {
    public let config: ConvStudentConfig
    public let stemConv: Conv2d
    public let stemBN: BatchNorm2d
    public let stages: [[BasicBlock]]
    public let upsample: [ConvTranspose2d]
    public let head: Conv2d

    // Pre-ReLU activations for backward: stem BN output and each upsampling output
    private var stemOut: Tensor?
    private var upOut: [Tensor] = []

    public init(_ config: ConvStudentConfig) {
        let problems = config.problems()
        precondition(problems.isEmpty, "ConvStudent config: " + problems.joined(separator: "; "))
        self.config = config
        let k = config.stemStride <= 2 ? 3 : 2 * config.stemStride - 1
        stemConv = Conv2d(inputChannels: config.inputChannels, outputChannels: config.stemChannels, kernelSize: k,
                          stride: config.stemStride, padding: k / 2, bias: false)
        stemBN = BatchNorm2d(config.stemChannels)
        var c = config.stemChannels
        var stages: [[BasicBlock]] = []
        for (i, width) in config.channels.enumerated() {
            var blocks: [BasicBlock] = []
            for j in 0..<config.blocks[i] {
                blocks.append(BasicBlock(inputChannels: c, outputChannels: width, stride: j == 0 ? config.strides[i] : 1))
                c = width
            }
            stages.append(blocks)
        }
        self.stages = stages
        var up: [ConvTranspose2d] = []
        for _ in 0..<config.upsampleSteps {
            up.append(ConvTranspose2d(inputChannels: c, outputChannels: config.upsampleChannels, kernelSize: 2, stride: 2))
            c = config.upsampleChannels
        }
        upsample = up
        head = Conv2d(inputChannels: c, outputChannels: config.outChannels, kernelSize: 1, bias: true)
    }

    public func namedParameters() -> [(String, Parameter)] {
        var p = prefixed("stem.0.", stemConv) + prefixed("stem.1.", stemBN)
        for (i, s) in stages.enumerated() {
            for (j, b) in s.enumerated() { p += prefixed("layers.\(i).\(j).", b) }
        }
        for (k, u) in upsample.enumerated() { p += prefixed("up.\(2 * k).", u) }
        return p + prefixed("head.", head)
    }

    /// image: (B, in, S, S) -> embedding (B, out, S/16, S/16)
    public func forward(_ image: Tensor, mode: ForwardMode) -> Tensor {
        let S = config.imageSize
        precondition(image.rank == 4 && image.shape[1] == config.inputChannels && image.shape[2] == S && image.shape[3] == S,
                     "ConvStudent: expected (B, \(config.inputChannels), \(S), \(S)), got \(image.shape)")
        let s0 = stemBN.forward(stemConv.forward(image, mode: mode), mode: mode)
        var x = Activation.relu.forward(s0)
        for s in stages { for b in s { x = b.forward(x, mode: mode) } }
        var ups: [Tensor] = []
        for u in upsample {
            let y = u.forward(x, mode: mode)
            if mode.keepsActivations { ups.append(y) }
            x = Activation.relu.forward(y)
        }
        stemOut = mode.keepsActivations ? s0 : nil
        upOut = ups
        return head.forward(x, mode: mode)
    }

    /// dEmbedding: (B, out, S/16, S/16) -> dImage: (B, in, S, S), or an empty tensor (shape [0])
    /// with `imageGradient: false`.
    @discardableResult
    public func backward(_ dy: Tensor, imageGradient: Bool = true) -> Tensor {
        guard let s0 = stemOut, upOut.count == upsample.count else {
            preconditionFailure("ConvStudent.backward without a training-mode forward")
        }
        var g = head.backward(dy)
        for (k, u) in upsample.enumerated().reversed() { g = u.backward(Activation.relu.backward(g, input: upOut[k])) }
        for s in stages.reversed() { for b in s.reversed() { g = b.backward(g) } }
        g = stemConv.backward(stemBN.backward(Activation.relu.backward(g, input: s0)), inputGradient: imageGradient)
        stemOut = nil; upOut = []
        return g
    }

    /// Multiply-accumulates of one image's forward pass (convolutions and transposed
    /// convolutions; norms and activations excluded).
    public var multiplyAccumulates: Int {
        var macs = 0
        var side = config.imageSize
        func conv(_ c: Conv2d) { side = c.outputSize(height: side, width: side).height
                                 macs += side * side * c.outputChannels * (c.inputChannels / c.groups) * c.kernelSize * c.kernelSize }
        conv(stemConv)
        for s in stages {
            for b in s {
                let inSide = side
                conv(b.conv1); conv(b.conv2)
                if let d = b.downsample {
                    let o = d.conv.outputSize(height: inSide, width: inSide).height
                    macs += o * o * d.conv.outputChannels * d.conv.inputChannels
                }
            }
        }
        for u in upsample {
            macs += side * side * u.inputChannels * u.outputChannels * 4
            side *= 2
        }
        conv(head)
        return macs
    }
}

// MARK: - Student wrapper

/// The student of a run: a TinyViT or a ConvStudent behind one interface.
public final class Student: Module {
    public enum Network {
        case tinyViT(TinyViT)
        case conv(ConvStudent)
    }

    public let config: StudentConfig
    public let network: Network

    /// Builds the architecture with every parameter as its constructor leaves it (zeros for
    /// convolutions and linears): call `initialiseRandomly`, `DepthPruning.initialise` or
    /// `load` next.
    public init(_ config: StudentConfig) {
        self.config = config
        switch config {
        case .tinyViT(let c, _): network = .tinyViT(TinyViT(c))
        case .conv(let c): network = .conv(ConvStudent(c))
        }
    }

    public var module: Module {
        switch network { case .tinyViT(let m): m; case .conv(let m): m }
    }

    public func namedParameters() -> [(String, Parameter)] { module.namedParameters() }

    public var imageSize: Int { config.imageSize }
    /// (channels, side) of the embedding.
    public var outputShape: (channels: Int, side: Int) { config.outputShape }

    /// image: (B, 3, S, S) -> embedding (B, 256, S/16, S/16)
    public func forward(_ image: Tensor, mode: ForwardMode) -> Tensor {
        switch network {
        case .tinyViT(let m): m.forward(image, mode: mode)
        case .conv(let m): m.forward(image, mode: mode)
        }
    }

    /// dEmbedding -> dImage (an empty tensor with `imageGradient: false`, as training uses it);
    /// accumulates every parameter gradient.
    @discardableResult
    public func backward(_ dy: Tensor, imageGradient: Bool = true) -> Tensor {
        switch network {
        case .tinyViT(let m): m.backward(dy, imageGradient: imageGradient)
        case .conv(let m): m.backward(dy, imageGradient: imageGradient)
        }
    }

    /// Floating-point operations of one image's forward pass: 2 × multiply-accumulates of the
    /// convolutions, linears and attention products (norms, activations, softmax excluded).
    public var forwardFLOPs: Int {
        switch network {
        case .tinyViT(let m): 2 * tinyViTMultiplyAccumulates(m)
        case .conv(let m): 2 * m.multiplyAccumulates
        }
    }

    /// PyTorch's initialisation of the same modules, drawn from `rng`:
    /// - TinyViT (MobileSAM's `TinyViT._init_weights`): Linear weights trunc_normal(std 0.02,
    ///   cut at ±2), biases 0; LayerNorm 1/0; Conv2d PyTorch's default kaiming_uniform(a = √5),
    ///   i.e. U(±1/√fan_in); BatchNorm weight 1 (MBConv's conv3: 0, `bn_weight_init`), bias 0;
    ///   attention_biases 0; running stats 0/1.
    /// - ConvStudent (plain nn modules): Conv2d / ConvTranspose2d weights and biases U(±1/√fan_in)
    ///   (fan_in = weight.size(1)·k·k for both), BatchNorm 1/0.
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

/// Multiply-accumulates of one image through a TinyViT encoder.
func tinyViTMultiplyAccumulates(_ m: TinyViT) -> Int {
    let c = m.config
    var macs = 0
    func conv(_ layer: Conv2d, outputSide: Int) {
        macs += outputSide * outputSide * layer.outputChannels * (layer.inputChannels / layer.groups) * layer.kernelSize * layer.kernelSize
    }
    var side = c.imageSize
    side = m.patchEmbed.conv1.conv.outputSize(height: side, width: side).height
    conv(m.patchEmbed.conv1.conv, outputSide: side)
    side = m.patchEmbed.conv2.conv.outputSize(height: side, width: side).height
    conv(m.patchEmbed.conv2.conv, outputSide: side)
    for b in m.convStage.blocks {
        conv(b.conv1.conv, outputSide: side); conv(b.conv2.conv, outputSide: side); conv(b.conv3.conv, outputSide: side)
    }
    func merge(_ d: PatchMerging) {
        conv(d.conv1.conv, outputSide: side)
        side = d.outputResolution.height
        conv(d.conv2.conv, outputSide: side); conv(d.conv3.conv, outputSide: side)
    }
    if let d = m.convStage.downsample { merge(d) }
    for s in m.stages {
        for b in s.blocks {
            let L = side * side, C = b.dim, a = b.attn
            let w = b.windowSize
            let windows = ((side + w - 1) / w) * ((side + w - 1) / w)
            let N = a.tokens
            macs += L * C * a.qkv.outputFeatures + L * a.proj.inputFeatures * C         // qkv, proj (per real token)
            macs += windows * a.heads * N * N * (a.keyDim + a.valueDim)                 // q·kᵀ, p·v (padded windows)
            conv(b.localConv.conv, outputSide: side)
            macs += L * C * b.mlp.fc1.outputFeatures * 2                                // fc1, fc2
        }
        if let d = s.downsample { merge(d) }
    }
    conv(m.neck.conv1, outputSide: side); conv(m.neck.conv2, outputSide: side)
    return macs
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

    /// Teacher weights keyed like the encoder (`image_encoder.` prefixes removed).
    public static func encoderWeights(_ tensors: [String: Tensor]) -> [String: Tensor] {
        let prefix = "image_encoder."
        if tensors.keys.contains(where: { $0.hasPrefix(prefix) }) {
            var d: [String: Tensor] = [:]
            for (k, v) in tensors where k.hasPrefix(prefix) { d[String(k.dropFirst(prefix.count))] = v }
            return d
        }
        return tensors
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

    /// Copies the teacher's tensors into `student` (all or nothing). Returns the key map used.
    @discardableResult
    public static func initialise(_ student: TinyViT, fromTeacher teacherTensors: [String: Tensor],
                                  blockMap: [[Int]]? = nil) throws -> [String: String] {
        let teacher = encoderWeights(teacherTensors)
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
            guard case .tinyViT(let net) = student.network else {
                throw DepthPruning.IncompatibleError(problems: ["init.type: teacher_blocks needs a tinyvit student"])
            }
            guard let path = config.teacher.checkpoint else {
                throw ConfigError(["teacher.checkpoint: required by init type teacher_blocks"])
            }
            let w = try loadWeights(URL(fileURLWithPath: path))
            try DepthPruning.initialise(net, fromTeacher: w.tensors, blockMap: blockMap)
        case .checkpoint(let path):
            let w = try loadWeights(URL(fileURLWithPath: path))
            try student.load(studentWeights(w.tensors), ignoring: TinyViT.ignoredKeys)
        }
        if case .tinyViT(let net) = student.network { net.frozenUnits = config.freeze.count }
        return student
    }

    /// Whether the parameter `key` belongs to a frozen unit (`RunConfig.freeze`).
    public func isFrozen(_ key: String) -> Bool {
        guard case .tinyViT(let net) = network else { return false }
        return net.unitPrefixes.prefix(net.frozenUnits).contains { key.hasPrefix($0) }
    }

    /// The student's tensors in a weights file: `model.*` of a run checkpoint, `image_encoder.*`
    /// of a SAM checkpoint, or the file's keys as they are.
    public static func studentWeights(_ tensors: [String: Tensor]) -> [String: Tensor] {
        for prefix in ["model.", "image_encoder."] where tensors.keys.contains(where: { $0.hasPrefix(prefix) }) {
            var d: [String: Tensor] = [:]
            for (k, v) in tensors where k.hasPrefix(prefix) { d[String(k.dropFirst(prefix.count))] = v }
            return d
        }
        return tensors
    }
}

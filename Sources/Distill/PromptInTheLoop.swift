import Foundation
import Layers
import SegmentAnything
import Tensor

/// `loss: {type: prompt_in_the_loop, …}`: EdgeSAM's prompt-in-the-loop distillation. The student's
/// embedding goes through SAM's frozen prompt encoder and mask decoder (the teacher's), and its
/// masks learn the teacher's masks for the same prompts.
public struct PromptInTheLoopConfig: Equatable, Sendable {
    /// K: prompts sampled per image (one decoder batch per image and round).
    public var promptsPerImage = 16
    /// Probability that a prompt is a box (else a point).
    public var boxFraction = 0.5
    /// Correction rounds after the first decode: 0 or 1.
    public var correctionRounds = 1
    /// Weights of BCE-with-logits and Dice on the 256² low-res logits (each round's terms add).
    public var bceWeight = 1.0
    public var diceWeight = 1.0
    /// Weight of the embedding MSE mixed in (0: none).
    public var embeddingWeight = 0.0
    /// Which output a point prompt of the first round learns: the teacher's multimask output of
    /// highest predicted IoU (EdgeSAM, SAM's training) or the single-mask output (what
    /// `samdistill eval` scores and `segment` returns by default).
    public var pointOutput: PointOutput = .best
    /// The correction round decodes with the previous round's logits as mask input (EdgeSAM); off:
    /// the prompt's points alone, as a user's second click without a mask.
    public var correctionMaskInput = true
    /// Probability that an image's first round is two-point prompts (MobileSAM's protocol, as
    /// `samdistill eval` scores it): all K prompts of that image are then a random foreground point
    /// of a teacher mask plus a second one of the same mask `twoPointDistance` input-frame pixels
    /// away, single output. 0: never (points and boxes only; no random draw is spent on it).
    public var twoPointFraction = 0.0
    /// Distance in input-frame pixels between the two points (`samdistill eval`'s default).
    public var twoPointDistance = 200.0
    /// Weight of a second BCE + Dice term over all of the decoder's mask outputs (the single mask
    /// and the three multimask ones) of every prompt, each against the teacher's same output; 0:
    /// only the chosen output learns. The outputs a prompt does not use still carry the part /
    /// object granularity the teacher would pick from.
    public var allOutputsWeight = 0.0
    /// Targets σ(teacher logits) (the teacher's confidence) instead of teacher logits > 0.
    public var softTargets = false
    public init() {}

    public enum PointOutput: String, CaseIterable, Sendable { case best, single }
}

/// One prompt of the loop: points (input-frame pixels, labels 1 foreground / 0 background), an
/// optional box (x0, y0, x1, y1), and which of the decoder's mask outputs is used (0: the single
/// mask; 1…3: a multimask output).
public struct LoopPrompt: Equatable, Sendable {
    public var points: [Float]
    public var labels: [Int]
    public var box: [Float]?
    public var output: Int

    public init(points: [Float], labels: [Int], box: [Float]?, output: Int) {
        self.points = points; self.labels = labels; self.box = box; self.output = output
    }
}

/// Prompt-in-the-loop loss (EdgeSAM), per image of a batch:
///
/// 1. K prompts from the teacher. With the image's cached everything-masks (the teacher's automatic
///    mask generator, `samdistill cache --everything-masks`), each prompt picks one of them
///    uniformly, then is, with probability `boxFraction`, its bounding box (single output), else a
///    point drawn uniformly from its pixels (the low-res pixel's centre; multimask, the output with
///    the highest predicted IoU). Without them: K random points in the image's unpadded region
///    are decoded from the teacher's embedding (multimask, best predicted IoU); each prompt is a
///    point (that point, that output) or, with probability `boxFraction`, a box: the bounding box
///    of that point's teacher mask (a point prompt when the mask is empty), single output.
///    With `pointOutput: single`, point prompts learn the single-mask output instead.
///    Targets: the teacher's low-res mask for the same prompt, logits > 0 (σ(logits) with
///    `softTargets`).
/// 2. The student's embedding is decoded with the same prompts (one batch); loss
///    bce_weight · BCE + dice_weight · Dice of the chosen outputs against the targets (plus
///    `allOutputsWeight` × the same over all four outputs against the teacher's four); its
///    gradient goes back through the frozen decoder to the embedding (summed over the prompts).
/// 3. Correction round: per prompt a new point where student and teacher masks disagree
///    (positive in a false negative, negative in a false positive; a pixel drawn uniformly from
///    both; where they agree, a positive point in the teacher mask, else a negative one), added to
///    the prompt and decoded again, single output, with the previous logits as mask input (the
///    teacher's own for its target, the student's, not differentiated, for the student; none
///    with `correctionMaskInput` off); the same loss again.
///
/// The value is the mean over images of the rounds' sum, plus embedding_weight · MSE(student,
/// teacher embeddings). Randomness comes from (seed, image index) only: same inputs, same seed,
/// same loss. The decoder's weights are frozen (no parameter gradients are formed).
public final class PromptInTheLoop {
    public let config: PromptInTheLoopConfig
    public let promptEncoder: PromptEncoder
    /// Inference only (folded attention).
    public let teacherDecoder: MaskDecoder
    /// The same weights, run in training mode and backpropagated through; frozen.
    public let studentDecoder: MaskDecoder
    /// The teacher decoder's image side for the image being decoded (its prompts without mask
    /// inputs share it: `MaskDecoder.sharedImage`), made on its first such decode.
    private var teacherImage: (embedding: Tensor, side: TwoWayTransformer.SharedImage)?

    /// Seconds spent in one `evaluate`, by phase.
    public struct Timing: Equatable, Sendable {
        public var teacherDecode = 0.0
        public var studentDecodeForward = 0.0
        public var decoderBackward = 0.0
        public init() {}

        /// By the names of the trainer's `phase_s`.
        public var phases: [String: Double] {
            ["teacher_decode": teacherDecode, "student_decode_forward": studentDecodeForward, "decoder_backward": decoderBackward]
        }
    }

    /// What a call sampled and what the student's correction round took from its first round:
    /// given back to `evaluate`, it holds them fixed, so the loss becomes a smooth function of
    /// the student's embedding (the finite-difference tests).
    public struct Plan: Equatable {
        /// Per image, per round, the prompts.
        public var prompts: [[[LoopPrompt]]]
        /// Per image, per correction round, the student's mask inputs (K, 1, 4h, 4w) (its
        /// previous round's logits, not differentiated).
        public var studentMaskInputs: [[Tensor]]

        public static func == (a: Plan, b: Plan) -> Bool {
            a.prompts == b.prompts && a.studentMaskInputs.map { $0.map(\.shape) } == b.studentMaskInputs.map { $0.map(\.shape) }
                && a.studentMaskInputs.map { $0.map(\.data) } == b.studentMaskInputs.map { $0.map(\.data) }
        }
    }

    public struct Result {
        /// The value and its gradient with respect to the student's embeddings (B, C, h, w).
        public var loss: LossResult
        public var plan: Plan
        /// Per round, the mean over images of its mask loss.
        public var roundLosses: [Double]
        public var timing: Timing
    }

    /// The teacher's prompt encoder and mask decoder (its weights are shared with a second,
    /// training-mode copy for the student; both are frozen).
    public init(config: PromptInTheLoopConfig, promptEncoder: PromptEncoder, maskDecoder: MaskDecoder) {
        precondition(config.promptsPerImage > 0 && (0...1).contains(config.correctionRounds),
                     "PromptInTheLoop: prompts_per_image must be positive and correction_rounds 0 or 1")
        self.config = config
        self.promptEncoder = promptEncoder
        teacherDecoder = maskDecoder
        studentDecoder = maskDecoder.copy()
        promptEncoder.freezeParameters()
        teacherDecoder.freezeParameters()
        studentDecoder.freezeParameters()
    }

    /// Loads the prompt encoder and mask decoder of a SAM checkpoint (`.pt` or `.safetensors`), for
    /// a student of input `imageSize`² and embedding grid `embeddingSize`² (SAM: 1024, 64; the
    /// weights do not depend on them).
    public convenience init(config: PromptInTheLoopConfig, teacherCheckpoint url: URL, imageSize: Int = 1024,
                            embeddingSize: Int = 64) throws {
        let tensors = try SAMWeights.readDecoder(url)
        func under(_ prefix: String) -> [String: Tensor] {
            var d: [String: Tensor] = [:]
            for (k, v) in tensors where k.hasPrefix(prefix) { d[String(k.dropFirst(prefix.count))] = v }
            return d
        }
        let pe = PromptEncoder(imageEmbeddingSize: (embeddingSize, embeddingSize), inputImageSize: (imageSize, imageSize))
        let md = MaskDecoder()
        do {
            try pe.load(under("prompt_encoder."))
            try md.load(under("mask_decoder."))
        } catch var e as WeightLoadingError {
            e.source = url.path
            throw e
        }
        self.init(config: config, promptEncoder: pe, maskDecoder: md)
    }

    var lowResSize: (height: Int, width: Int) { promptEncoder.maskInputSize }

    /// student, teacher: (B, C, h, w) embeddings; regions: each image's unpadded grid cells;
    /// `plan` (from an earlier result) replaces the sampling and the student's mask inputs;
    /// `everythingMasks`: per image, the teacher's everything-masks on the low-res grid (an
    /// image with none samples from random points). `sampleSeeds`: one seed per image (the
    /// trainer's, keyed by the sample's place in the global sample stream, so a data-parallel run
    /// samples the same prompts for it on whichever rank); nil: image b's from `seed` and b.
    public func evaluate(student: Tensor, teacher: Tensor, regions: [ValidRegion], seed: UInt64,
                         plan given: Plan? = nil, everythingMasks: [[MaskRLE]]? = nil, sampleSeeds: [UInt64]? = nil) -> Result {
        let B = student.shape[0], C = student.shape[1], h = student.shape[2], w = student.shape[3]
        precondition(student.shape == teacher.shape && regions.count == B,
                     "PromptInTheLoop: student \(student.shape), teacher \(teacher.shape), \(regions.count) regions")
        precondition(C == promptEncoder.embedDim && h == promptEncoder.imageEmbeddingSize.height
                     && w == promptEncoder.imageEmbeddingSize.width,
                     "PromptInTheLoop: embeddings \(student.shape) do not fit the prompt encoder's (\(promptEncoder.embedDim), \(promptEncoder.imageEmbeddingSize))")
        precondition(sampleSeeds.map { $0.count == B } ?? true, "PromptInTheLoop: \(sampleSeeds?.count ?? 0) sample seeds for a batch of \(B)")
        precondition(given == nil || given!.prompts.count == B, "PromptInTheLoop: a plan for \(given!.prompts.count) images, batch of \(B)")
        precondition(everythingMasks.map { $0.count == B && $0.joined().allSatisfy { $0.height == lowResSize.height && $0.width == lowResSize.width } } ?? true,
                     "PromptInTheLoop: everything-masks must be one list per image, of \(lowResSize) masks")
        let per = C * h * w
        var gradient = Tensor(zeros: student.shape)
        var value = 0.0
        var roundLosses = [Double](repeating: 0, count: 1 + config.correctionRounds)
        var plan = Plan(prompts: [], studentMaskInputs: [])
        var timing = Timing()
        for b in 0..<B {
            var rng = SeededRandom(seed: sampleSeeds?[b] ?? seed ^ (UInt64(b + 1) &* 0x9E37_79B9_7F4A_7C15))
            let s = Tensor(shape: [1, C, h, w], data: Array(student.data[(b * per)..<((b + 1) * per)]))
            let t = Tensor(shape: [1, C, h, w], data: Array(teacher.data[(b * per)..<((b + 1) * per)]))
            let r = image(student: s, teacher: t, region: regions[b], masks: everythingMasks?[b] ?? [], rng: &rng,
                          plan: given.map { ($0.prompts[b], $0.studentMaskInputs[b]) }, timing: &timing)
            gradient.data.withUnsafeMutableBufferPointer { g in
                for i in 0..<per { g[b * per + i] = r.gradient.data[i] / Float(B) }
            }
            for (i, l) in r.rounds.enumerated() { roundLosses[i] += l / Double(B); value += l / Double(B) }
            plan.prompts.append(r.prompts)
            plan.studentMaskInputs.append(r.maskInputs)
        }
        if config.embeddingWeight > 0 {
            let m = mseLoss(student, teacher)
            value += config.embeddingWeight * m.value
            gradient.add(m.gradient, scaledBy: Float(config.embeddingWeight))
        }
        return Result(loss: LossResult(value: value, gradient: gradient), plan: plan, roundLosses: roundLosses, timing: timing)
    }

    /// One image: the rounds' mask losses, their gradient (1, C, h, w), the prompts and the
    /// student's mask inputs used.
    func image(student s: Tensor, teacher t: Tensor, region: ValidRegion, masks: [MaskRLE], rng: inout SeededRandom,
               plan given: (prompts: [[LoopPrompt]], maskInputs: [Tensor])?, timing: inout Timing)
        -> (rounds: [Double], gradient: Tensor, prompts: [[LoopPrompt]], maskInputs: [Tensor]) {
        let (lh, lw) = lowResSize
        let cell = promptEncoder.inputImageSize.width / promptEncoder.imageEmbeddingSize.width
        let low = lh / promptEncoder.imageEmbeddingSize.height
        // The unpadded part of the input frame and of the low-res masks.
        let frameH = max(1, region.height * cell), frameW = max(1, region.width * cell)
        let validH = min(lh, max(1, region.height * low)), validW = min(lw, max(1, region.width * low))
        var clock = Date()
        func lap(_ phase: WritableKeyPath<Timing, Double>) {
            let now = Date()
            timing[keyPath: phase] += now.timeIntervalSince(clock)
            clock = now
        }

        // Round 1: prompts and the teacher's targets (teacher logits of the chosen output).
        var prompts: [LoopPrompt]
        var teacherLogits: Tensor  // (K, 1, lh, lw)
        if let given {
            prompts = given.prompts[0]
            teacherLogits = select(decode(teacherDecoder, t, prompts, masks: nil, mode: .inference), prompts)
        } else {
            (prompts, teacherLogits) = sampleFirstRound(t, frameH: frameH, frameW: frameW, validH: validH, validW: validW,
                                                        masks: masks, rng: &rng)
        }
        lap(\.teacherDecode)
        // All of the teacher's outputs (K, M, lh, lw) when they learn too: one more decode here.
        let allOutputs = config.allOutputsWeight > 0 ? 0..<teacherDecoder.numMaskTokens : nil
        var teacherAll = allOutputs.map { decode(teacherDecoder, t, prompts, masks: nil, mode: .inference, outputs: $0).masks }
        lap(\.teacherDecode)
        var rounds: [Double] = []
        var gradient = Tensor(zeros: s.shape)
        var used = [prompts]
        var maskInputs: [Tensor] = []
        var studentLogits = Tensor(zeros: [0])
        for round in 0...config.correctionRounds {
            if round > 0 {
                // The correction round: a point from the disagreement, previous logits as mask input.
                prompts = given.map { $0.prompts[round] } ?? zip(prompts.indices, prompts).map { k, p in
                    correct(p, student: studentLogits, teacher: teacherLogits, index: k, validH: validH, validW: validW, rng: &rng)
                }
                used.append(prompts)
                if let given { studentLogits = given.maskInputs[round - 1] }
                maskInputs.append(studentLogits)
                let teacherMask = config.correctionMaskInput ? teacherLogits : nil
                let d = decode(teacherDecoder, t, prompts, masks: teacherMask, mode: .inference, outputs: allOutputs)
                teacherLogits = select(d, prompts)
                if allOutputs != nil { teacherAll = d.masks }
                lap(\.teacherDecode)
            }
            let studentMask = round > 0 && config.correctionMaskInput ? studentLogits : nil
            let decoded = decode(studentDecoder, s, prompts, masks: studentMask, mode: .training, outputs: allOutputs)
            studentLogits = select(decoded, prompts)
            var (value, g) = maskLoss(studentLogits, teacherLogits)
            g = scatter(g, into: decoded, prompts)
            if let teacherAll {
                let all = maskLoss(decoded.masks, teacherAll)
                value += config.allOutputsWeight * all.value
                g.add(all.gradient, scaledBy: Float(config.allOutputsWeight))
            }
            rounds.append(value)
            lap(\.studentDecodeForward)
            gradient.add(studentDecoder.backward(masks: g))
            lap(\.decoderBackward)
        }
        return (rounds, gradient, used, maskInputs)
    }

    /// bce_weight · BCE + dice_weight · Dice of student logits against the teacher's (same shape,
    /// each slice over the last two dimensions one mask): value and gradient.
    func maskLoss(_ student: Tensor, _ teacher: Tensor) -> (value: Double, gradient: Tensor) {
        let target = config.softTargets ? teacher.map { 1 / (1 + exp(-$0)) } : teacher.map { $0 > 0 ? 1 : 0 }
        let bce = bceWithLogitsLoss(student, target), dice = diceLoss(student, target)
        var g = bce.gradient
        g.scale(by: Float(config.bceWeight))
        g.add(dice.gradient, scaledBy: Float(config.diceWeight))
        return (config.bceWeight * bce.value + config.diceWeight * dice.value, g)
    }

    /// The first round's prompts (from `masks`, the image's everything-masks, when it has any
    /// non-empty one; else from random points, see the type's comment) and the teacher's logits
    /// for them (K, 1, lh, lw). Point prompts decode multimask (best predicted IoU), boxes single.
    func sampleFirstRound(_ t: Tensor, frameH: Int, frameW: Int, validH: Int, validW: Int, masks: [MaskRLE],
                          rng: inout SeededRandom) -> ([LoopPrompt], Tensor) {
        let K = config.promptsPerImage, (lh, lw) = lowResSize, P = lh * lw
        let usable = masks.filter { $0.area > 0 }
        if config.twoPointFraction > 0, Double(rng.uniform()) < config.twoPointFraction {
            return sampleTwoPoints(t, frameH: frameH, frameW: frameW, validH: validH, validW: validW, masks: usable, rng: &rng)
        }
        var prompts: [LoopPrompt] = []
        // Random-point seeds that become the box of their point's teacher mask.
        var wantsBox = [Bool](repeating: false, count: K)
        for k in 0..<K {
            if usable.isEmpty {
                let x = Float(rng.next() % UInt64(frameW)), y = Float(rng.next() % UInt64(frameH))
                prompts.append(LoopPrompt(points: [x, y], labels: [1], box: nil, output: 1))
                wantsBox[k] = Double(rng.uniform()) < config.boxFraction
                continue
            }
            let m = usable[Int(rng.next() % UInt64(usable.count))]
            if Double(rng.uniform()) < config.boxFraction, let b = m.runBox {
                prompts.append(LoopPrompt(points: [], labels: [], box: frameBox(b), output: 0))
            } else {
                let p = m.setPixel(Int(rng.next() % UInt64(m.area)))
                prompts.append(LoopPrompt(points: [frameCentre(p.x), frameCentre(p.y)], labels: [1], box: nil, output: 1))
            }
        }
        var logits = Tensor(zeros: [K, 1, lh, lw])
        let pointed = prompts.indices.filter { prompts[$0].box == nil }
        if !pointed.isEmpty {
            // outputs: the multimask ones, and the single one when points learn it
            let M = teacherDecoder.numMaskTokens, first = config.pointOutput == .single ? 0 : 1, R = M - first
            let decoded = decode(teacherDecoder, t, pointed.map { prompts[$0] }, masks: nil, mode: .inference,
                                 outputs: first..<M)
            for (j, k) in pointed.enumerated() {
                var best = 1
                for i in 1..<M where decoded.iou.data[j * M + i] > decoded.iou.data[j * M + best] { best = i }
                prompts[k].output = config.pointOutput == .single ? 0 : best
                let target = (j * R + prompts[k].output - first) * P
                logits.data.replaceSubrange((k * P)..<((k + 1) * P), with: decoded.masks.data[target..<(target + P)])
                let o = (j * R + best - first) * P  // the best multimask output: the box's mask
                guard wantsBox[k] else { continue }
                // The bounding box of the mask inside the unpadded region.
                var x0 = lw, y0 = lh, x1 = -1, y1 = -1
                for y in 0..<validH { for x in 0..<validW where decoded.masks.data[o + y * lw + x] > 0 {
                    x0 = min(x0, x); x1 = max(x1, x); y0 = min(y0, y); y1 = max(y1, y)
                } }
                guard x1 >= 0 else { continue }  // empty mask: stays a point prompt
                prompts[k] = LoopPrompt(points: [], labels: [], box: frameBox((x0, y0, x1, y1)), output: 0)
            }
        }
        let boxes = prompts.indices.filter { prompts[$0].box != nil }
        if !boxes.isEmpty {
            let boxLogits = select(decode(teacherDecoder, t, boxes.map { prompts[$0] }, masks: nil, mode: .inference), boxes.map { prompts[$0] })
            for (j, k) in boxes.enumerated() {
                logits.data.replaceSubrange((k * P)..<((k + 1) * P), with: boxLogits.data[(j * P)..<((j + 1) * P)])
            }
        }
        return (prompts, logits)
    }

    /// K two-point prompts, as `samdistill eval`'s two-point protocol draws them (`Evaluator`), on
    /// the low-res grid: a seed mask (one of the image's everything-masks; without them, the
    /// teacher's best multimask output for a random point, the unpadded region when that is
    /// empty), a pixel of it uniformly, a second pixel of it `twoPointDistance` away (frame
    /// pixels; the closest distance the mask offers). Both positive, single output; targets: the
    /// teacher's logits for the pair (K, 1, lh, lw).
    func sampleTwoPoints(_ t: Tensor, frameH: Int, frameW: Int, validH: Int, validW: Int, masks: [MaskRLE],
                         rng: inout SeededRandom) -> ([LoopPrompt], Tensor) {
        let K = config.promptsPerImage, (lh, lw) = lowResSize, P = lh * lw
        // seeds: K low-res masks (lh, lw), restricted to the unpadded region.
        var seeds: [BinaryMask]
        if !masks.isEmpty {
            seeds = (0..<K).map { _ in masks[Int(rng.next() % UInt64(masks.count))].decode() }
        } else {
            let points = (0..<K).map { _ in
                LoopPrompt(points: [Float(rng.next() % UInt64(frameW)), Float(rng.next() % UInt64(frameH))],
                           labels: [1], box: nil, output: 1)
            }
            let M = teacherDecoder.numMaskTokens, R = M - 1
            let d = decode(teacherDecoder, t, points, masks: nil, mode: .inference, outputs: 1..<M)
            seeds = (0..<K).map { k in
                var best = 1
                for i in 1..<M where d.iou.data[k * M + i] > d.iou.data[k * M + best] { best = i }
                let o = (k * R + best - 1) * P
                return BinaryMask(width: lw, height: lh, pixels: (0..<P).map { d.masks.data[o + $0] > 0 })
            }
        }
        let prompts = seeds.map { seed -> LoopPrompt in
            var m = seed
            for i in 0..<P where i / lw >= validH || i % lw >= validW { m.pixels[i] = false }
            if m.area == 0 { for i in 0..<P { m.pixels[i] = i / lw < validH && i % lw < validW } }
            let a = Evaluator.randomPixel(in: m, rng: &rng)
            let b = Evaluator.pointAtDistance(config.twoPointDistance / Double(lowResScale), from: a, in: m, rng: &rng)
            return LoopPrompt(points: [a, b].flatMap { [frameCentre(Int($0.x)), frameCentre(Int($0.y))] },
                              labels: [1, 1], box: nil, output: 0)
        }
        return (prompts, select(decode(teacherDecoder, t, prompts, masks: nil, mode: .inference), prompts))
    }

    /// Input-frame pixels per low-res pixel (4 for SAM).
    var lowResScale: Float { Float(promptEncoder.inputImageSize.width / lowResSize.width) }

    /// An inclusive low-res box as an input-frame box (x0, y0, x1, y1): the outer pixels it covers.
    func frameBox(_ b: (x0: Int, y0: Int, x1: Int, y1: Int)) -> [Float] {
        let s = lowResScale
        return [Float(b.x0) * s, Float(b.y0) * s, Float(b.x1 + 1) * s - 1, Float(b.y1 + 1) * s - 1]
    }

    /// The centre of low-res pixel column (or row) `i` in input-frame pixels.
    func frameCentre(_ i: Int) -> Float { Float(i) * lowResScale + (lowResScale - 1) / 2 }

    /// Prompt `p` plus one correction point: a pixel drawn uniformly from where student and teacher
    /// masks (logits > 0, image region) disagree, positive where the teacher's mask is, negative
    /// elsewhere; with no disagreement a positive point in the teacher's mask, else a negative one.
    func correct(_ p: LoopPrompt, student: Tensor, teacher: Tensor, index k: Int, validH: Int, validW: Int,
                 rng: inout SeededRandom) -> LoopPrompt {
        let (lh, lw) = lowResSize, o = k * lh * lw
        func pixels(_ keep: (Bool, Bool) -> Bool) -> [Int] {
            var out: [Int] = []
            for y in 0..<validH { for x in 0..<validW {
                let i = y * lw + x
                if keep(student.data[o + i] > 0, teacher.data[o + i] > 0) { out.append(i) }
            } }
            return out
        }
        var candidates = pixels { s, t in s != t }
        if candidates.isEmpty { candidates = pixels { _, t in t } }
        if candidates.isEmpty { candidates = pixels { _, _ in true } }
        let i = candidates[Int(rng.next() % UInt64(candidates.count))]
        let label = teacher.data[o + i] > 0 ? 1 : 0
        var q = p
        q.points += [frameCentre(i % lw), frameCentre(i / lw)]
        q.labels.append(label)
        q.output = 0
        return q
    }

    /// The decoder on one embedding (1, C, h, w) for prompts of equal token count, one batch;
    /// `masks`: (K, 1, lh, lw) mask inputs. Computes the outputs the prompts use (or `outputs`).
    func decode(_ decoder: MaskDecoder, _ embedding: Tensor, _ prompts: [LoopPrompt], masks: Tensor?, mode: ForwardMode,
                outputs: Range<Int>? = nil) -> (masks: Tensor, iou: Tensor, outputs: Range<Int>) {
        let K = prompts.count, C = promptEncoder.embedDim
        var sparse: Tensor?
        for (k, p) in prompts.enumerated() {
            let points = p.points.isEmpty ? nil
                : PromptPoints(coords: Tensor(shape: [1, p.labels.count, 2], data: p.points), labels: p.labels)
            let e = promptEncoder.forward(points: points, boxes: p.box.map { Tensor(shape: [1, 4], data: $0) }, masks: nil,
                                          mode: .inference).sparse  // (1, T, C)
            if sparse == nil { sparse = Tensor(zeros: [K, e.shape[1], C]) }
            precondition(e.shape[1] == sparse!.shape[1], "PromptInTheLoop: prompts of one batch give different token counts")
            sparse!.data.replaceSubrange((k * e.count)..<((k + 1) * e.count), with: e.data)
        }
        let range = outputs ?? (prompts.map(\.output).min()!..<(prompts.map(\.output).max()! + 1))
        if decoder === teacherDecoder && masks == nil && !mode.keepsActivations {
            // One image side for all of this image's teacher decodes without mask inputs.
            if teacherImage?.embedding.shape != embedding.shape || teacherImage?.embedding.data != embedding.data {
                teacherImage = (embedding, decoder.sharedImage(imageEmbedding: embedding, promptEncoder: promptEncoder))
            }
            let (m, iou) = decoder.predictMasks(sharedImage: teacherImage!.side, sparsePromptEmbeddings: sparse!, outputs: range)
            return (m, iou, range)
        }
        let dense = masks.map { promptEncoder.embedMasks($0, mode: .inference) } ?? promptEncoder.noMaskDenseEmbedding(batch: 1)
        let (m, iou) = decoder.predictMasks(imageEmbeddings: embedding, imagePE: promptEncoder.densePositionalEncoding(),
                                            sparsePromptEmbeddings: sparse!, densePromptEmbeddings: dense,
                                            outputs: range, mode: mode)
        return (m, iou, range)
    }

    /// Each prompt's chosen output of a decode: (K, 1, lh, lw).
    func select(_ d: (masks: Tensor, iou: Tensor, outputs: Range<Int>), _ prompts: [LoopPrompt]) -> Tensor {
        let K = prompts.count, R = d.outputs.count, P = d.masks.shape[2] * d.masks.shape[3]
        var out = Tensor.empty([K, 1, d.masks.shape[2], d.masks.shape[3]])
        for (k, p) in prompts.enumerated() {
            let o = (k * R + p.output - d.outputs.lowerBound) * P
            out.data.replaceSubrange((k * P)..<((k + 1) * P), with: d.masks.data[o..<(o + P)])
        }
        return out
    }

    /// The gradient (K, 1, lh, lw) of the chosen outputs placed into the decode's (K, R, lh, lw).
    func scatter(_ g: Tensor, into d: (masks: Tensor, iou: Tensor, outputs: Range<Int>), _ prompts: [LoopPrompt]) -> Tensor {
        let R = d.outputs.count, P = d.masks.shape[2] * d.masks.shape[3]
        var out = Tensor(zeros: d.masks.shape)
        for (k, p) in prompts.enumerated() {
            let o = (k * R + p.output - d.outputs.lowerBound) * P
            out.data.replaceSubrange(o..<(o + P), with: g.data[(k * P)..<((k + 1) * P)])
        }
        return out
    }
}

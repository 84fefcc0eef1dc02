import Distill
import Layers
import Optim
import SegmentAnything
import TestSupport
import XCTest

/// Config decoding: every error names its full key path.
final class ConfigTests: XCTestCase {
    let base = """
        data: {train: [a.h5, b.h5], val_fraction: 0.1}
        teacher: {checkpoint: weights/mobile_sam.pt}
        student: {type: tinyvit, preset: tinyvit_5m, depths: [1, 1, 2, 1]}
        init: {type: teacher_blocks}
        loss: {type: masked_mse, normalization: per_sample}
        optimizer: {weight_decay: 0.05, max_grad_norm: 1.0}
        schedule: {type: warmup_cosine, peak_lr: 1.0e-3, warmup_steps: 10}
        batch_size: 4
        grad_accumulation: 2
        steps: 100
        seed: 3
        checkpoint_every: 20
        keep_last: 2
        eval_every: 50
        eval: {prompts: {types: [point, box], count: 4}}
        output_dir: runs/test
        """

    private func problems(_ yaml: String, _ overrides: [String] = [], file: StaticString = #filePath, line: UInt = #line) -> [String] {
        do {
            _ = try RunConfig.parse(yaml, overrides: overrides)
            XCTFail("expected a config error", file: file, line: line)
            return []
        } catch let e as ConfigError {
            return e.problems
        } catch {
            XCTFail("unexpected error \(error)", file: file, line: line)
            return []
        }
    }

    func testValidConfigDecodes() throws {
        let c = try RunConfig.parse(base)
        XCTAssertEqual(c.data.train, ["a.h5", "b.h5"])
        XCTAssertEqual(c.data.valFraction, 0.1)
        guard case .tinyViT(let s, let preset) = c.student else { return XCTFail("student type") }
        XCTAssertEqual(preset, "tinyvit_5m")
        XCTAssertEqual(s.depths, [1, 1, 2, 1])
        XCTAssertEqual(s.embedDims, [64, 128, 160, 320])
        XCTAssertEqual(c.initialisation, .teacherBlocks(blockMap: nil))
        XCTAssertEqual(c.loss, .maskedMSE(.perSample))
        XCTAssertEqual(c.optimizer.adamW.weightDecay, 0.05)
        XCTAssertEqual(c.optimizer.maxGradNorm, 1.0)
        // total_steps defaults to the run's steps
        XCTAssertEqual(c.schedule, .warmupCosine(WarmupCosineSchedule(peakLR: 1e-3, warmupSteps: 10, totalSteps: 100)))
        XCTAssertEqual(c.batchSize, 4); XCTAssertEqual(c.gradAccumulation, 2); XCTAssertEqual(c.steps, 100)
        XCTAssertEqual(c.seed, 3); XCTAssertEqual(c.keepLast, 2); XCTAssertEqual(c.evalEvery, 50)
        XCTAssertEqual(c.eval.prompts.count, 4)
        XCTAssertEqual(c.outputDir, "runs/test")
    }

    func testResolvedYAMLRoundTrips() throws {
        let c = try RunConfig.parse(base)
        let again = try RunConfig.parse(c.yaml())
        XCTAssertEqual(again, c)
        let conv = try RunConfig.parse("student: {type: conv, channels: [16, 32], blocks: [1, 1], strides: [2, 2], stem_stride: 4}\nloss: {type: huber, delta: 0.5}")
        XCTAssertEqual(try RunConfig.parse(conv.yaml()), conv)
        let normalized = try RunConfig.parse("loss: {type: normalized_mse}")
        XCTAssertEqual(normalized.loss, .normalizedMSE)
        XCTAssertEqual(try RunConfig.parse(normalized.yaml()).loss, .normalizedMSE)
    }

    /// data.everything_masks: absent → none, {} → the defaults, keys read, bad values and
    /// unknown keys named with their path; the resolved YAML round-trips; CacheOptions carries it.
    func testEverythingMasksKey() throws {
        XCTAssertNil(try RunConfig.parse(base).data.everythingMasks)
        XCTAssertEqual(try RunConfig.parse("data: {everything_masks: {}}").data.everythingMasks, EverythingMaskSettings())
        let c = try RunConfig.parse("data: {images: imgs, train: [c.h5], everything_masks: {points_per_side: 8, fast: false, max_masks: 5, pred_iou_thresh: 0.5}}")
        var e = EverythingMaskSettings()
        e.pointsPerSide = 8; e.fast = false; e.maxMasks = 5; e.predIoUThresh = 0.5
        XCTAssertEqual(c.data.everythingMasks, e)
        XCTAssertEqual(try RunConfig.parse(c.yaml()).data, c.data)
        XCTAssertEqual(try CacheOptions(config: c, configName: "c.yaml").everythingMasks, e)
        XCTAssertEqual(Set(problems("data: {everything_masks: {max_masks: 0, box_nms_thresh: 2, point_per_side: 4}}")),
                       ["data.everything_masks.max_masks: must be at least 1, got 0",
                        "data.everything_masks.box_nms_thresh: must be in [0, 1], got 2.0",
                        "data.everything_masks.point_per_side: unknown key"])
    }

    /// Each key is spelled once (its section's field list): a config that sets every key to a
    /// non-default value reads as written and its resolved YAML reads back equal.
    func testEveryKeyRoundTrips() throws {
        let yaml = """
            data: {train: [a.h5], train_split: val, val_split: null, val_fraction: 0.2, val_list: l.txt, images: img,
                   image_list: il.txt, views: 3, cache_dtype: f32, everything_masks: {points_per_side: 8, max_counts: 100}}
            teacher: {checkpoint: t.pt}
            student: {type: tinyvit, preset: tinyvit_5m, depths: [1, 1, 2, 1], mlp_ratio: 3.0, mlp_ratios: [4, 1.5, 1, 0.5],
                      local_conv_size: 5, input_resize: 672}
            init: {type: checkpoint, path: c.safetensors}
            loss: {type: prompt_in_the_loop, prompts_per_image: 4, box_fraction: 0.25, correction_rounds: 0,
                   bce_weight: 2.0, dice_weight: 0.5, embedding_weight: 0.1}
            optimizer: {beta1: 0.8, beta2: 0.95, eps: 1.0e-6, weight_decay: 0.1, max_grad_norm: 2.0}
            schedule: {type: constant, lr: 0.01}
            batch_size: 3
            grad_accumulation: 2
            epochs: 2.5
            seed: 7
            checkpoint_every: 9
            keep_last: 4
            eval_every: 5
            log_every: 2
            eval: {prompts: {types: [box], count: 2}, max_images: 3, split: all, multimask: true, before: false, seed: 5,
                   during_training: true}
            export: {path: s.safetensors, half: true, full: false}
            output_dir: runs/x
            freeze: [patch_embed]
            stage_loss: {weight: 0.5}
            """
        let c = try RunConfig.parse(yaml)
        XCTAssertEqual(c.data.trainSplit, .val); XCTAssertNil(c.data.valSplit); XCTAssertEqual(c.data.views, 3)
        XCTAssertEqual(c.data.everythingMasks?.pointsPerSide, 8); XCTAssertEqual(c.data.everythingMasks?.maxCounts, 100)
        guard case .tinyViT(let s, _) = c.student, case .promptInTheLoop(let p) = c.loss else { return XCTFail("student / loss") }
        XCTAssertEqual(s.mlpRatio, 3); XCTAssertEqual(s.localConvSize, 5); XCTAssertEqual(s.mlpRatios, [4, 1.5, 1, 0.5])
        XCTAssertEqual(s.mlpHidden(stage: 1), 192); XCTAssertEqual(s.mlpHidden(stage: 3), 160)
        XCTAssertEqual(s.inputResize, 672); XCTAssertEqual(s.stageResolutions, [168, 84, 42, 42]); XCTAssertEqual(s.outputResolution, 64)
        XCTAssertEqual(p.boxFraction, 0.25); XCTAssertEqual(p.embeddingWeight, 0.1); XCTAssertEqual(p.correctionRounds, 0)
        XCTAssertEqual(c.optimizer.adamW.beta2, 0.95); XCTAssertEqual(c.optimizer.maxGradNorm, 2)
        XCTAssertNil(c.steps); XCTAssertEqual(c.epochs, 2.5); XCTAssertEqual(c.seed, 7); XCTAssertEqual(c.logEvery, 2)
        XCTAssertEqual(c.eval.split, .all); XCTAssertEqual(c.eval.maxImages, 3); XCTAssertTrue(c.eval.duringTraining)
        XCTAssertEqual(c.export.half, true); XCTAssertEqual(c.freeze, ["patch_embed"]); XCTAssertEqual(c.stageLossWeight, 0.5)
        XCTAssertEqual(try RunConfig.parse(c.yaml()), c)
        // The defaults written out read back to the same resolved YAML.
        XCTAssertEqual(try RunConfig.parse(RunConfig().yaml()).yaml(), try RunConfig().yaml())
    }

    /// Named choices list what is allowed.
    func testChoicesAreListed() {
        XCTAssertEqual(problems("data: {train_split: test}"), ["data.train_split: must be 'train' or 'val', got 'test'"])
        XCTAssertEqual(problems("eval: {split: holdout}"), ["eval.split: must be 'train', 'val' or 'all', got 'holdout'"])
        XCTAssertEqual(problems("data: {views: 0}"), ["data.views: must be ≥ 1, got 0"])
        XCTAssertEqual(problems("seed: -1"), ["seed: must be ≥ 0, got -1"])
    }

    func testUnknownKeysAreNamed() {
        XCTAssertEqual(problems(base + "\noptimizer_x: 1"), ["optimizer_x: unknown key"])
        XCTAssertEqual(problems(base.replacingOccurrences(of: "weight_decay:", with: "weight_decayy:")),
                       ["optimizer.weight_decayy: unknown key"])
        XCTAssertEqual(problems(base.replacingOccurrences(of: "count: 4", with: "count: 4, colour: red")),
                       ["eval.prompts.colour: unknown key"])
        XCTAssertEqual(problems(base.replacingOccurrences(of: "warmup_steps: 10", with: "warmup_stepz: 10")).first?
                        .hasPrefix("schedule.warmup_stepz: unknown key"), true)
    }

    func testWrongTypesAreNamed() {
        XCTAssertEqual(problems(base.replacingOccurrences(of: "batch_size: 4", with: "batch_size: four")),
                       ["batch_size: expected an integer, found 'four'"])
        XCTAssertEqual(problems(base.replacingOccurrences(of: "batch_size: 4", with: "batch_size: '4'")),
                       ["batch_size: expected an integer, found '4'"])
        XCTAssertEqual(problems(base.replacingOccurrences(of: "depths: [1, 1, 2, 1]", with: "depths: [1, x, 2, 1]")),
                       ["student.depths[1]: expected an integer, found 'x'"])
        XCTAssertEqual(problems(base.replacingOccurrences(of: "peak_lr: 1.0e-3", with: "peak_lr: fast")),
                       ["schedule.peak_lr: expected a number"])
        XCTAssertEqual(problems(base.replacingOccurrences(of: "data: {train: [a.h5, b.h5], val_fraction: 0.1}", with: "data: 5")),
                       ["data: expected a mapping"])
        XCTAssertEqual(problems(base + "\nepochs: 2"), ["steps: give either steps or epochs, not both"])
    }

    func testImpossibleShapesAreNamed() {
        let heads = problems(base.replacingOccurrences(of: "depths: [1, 1, 2, 1]", with: "num_heads: [2, 3, 5, 10]"))
        XCTAssertEqual(heads, ["student.num_heads[1]: embed_dims[1] = 128 is not divisible by 3 heads"])
        let neck = problems(base.replacingOccurrences(of: "depths: [1, 1, 2, 1]", with: "neck_channels: 128"))
        XCTAssertEqual(neck.count, 1)
        XCTAssertTrue(neck[0].hasPrefix("student.neck_channels: "), neck[0])
        let grid = problems(base.replacingOccurrences(of: "depths: [1, 1, 2, 1]", with: "merge_strides: [2, 2, 2]"))
        XCTAssertEqual(grid.count, 1)
        XCTAssertTrue(grid[0].hasPrefix("student.merge_strides: the student's output grid is 32×32 for a 1024 input"), grid[0])
        let conv = problems("student: {type: conv, channels: [8, 16], blocks: [1, 1], strides: [2, 2]}")
        XCTAssertEqual(conv.count, 1)
        XCTAssertTrue(conv[0].hasPrefix("student.strides: total stride"), conv[0])
        XCTAssertEqual(problems(base.replacingOccurrences(of: "depths: [1, 1, 2, 1]", with: "input_resize: 30")),
                       ["student.input_resize: 30 must be a multiple of 4 in 32...image_size (1024)"])
        let lists = problems(base.replacingOccurrences(of: "depths: [1, 1, 2, 1]", with: "depths: [1, 1, 2]"))
        XCTAssertEqual(lists, ["student.depths: 3 entries for 4 stages"])
        XCTAssertEqual(problems(base.replacingOccurrences(of: "init: {type: teacher_blocks}",
                                                          with: "init: {type: teacher_blocks, block_map: [[0], [0], [0], [1]]}")),
                       ["init.block_map: stage 2 lists 1 teacher blocks for 2 student blocks"])
    }

    func testSetOverrides() throws {
        let c = try RunConfig.parse(base, overrides: ["optimizer.weight_decay=0.2", "student.depths=[2, 2, 6, 2]",
                                                      "loss.normalization=valid_elements", "output_dir=runs/other",
                                                      "schedule.total_steps=50"])
        XCTAssertEqual(c.optimizer.adamW.weightDecay, 0.2)
        guard case .tinyViT(let s, _) = c.student else { return XCTFail("student type") }
        XCTAssertEqual(s.depths, [2, 2, 6, 2])
        XCTAssertEqual(c.outputDir, "runs/other")
        XCTAssertEqual(c.loss, .maskedMSE(.validElements))
        XCTAssertEqual(c.schedule.lr(at: 50), 0)
        XCTAssertEqual(problems(base, ["optimizer.bogus=1"]), ["optimizer.bogus: unknown key"])
        XCTAssertEqual(problems(base, ["batch_size=big"]), ["batch_size: expected an integer, found 'big'"])
        XCTAssertEqual(problems(base, ["batch_size"]), ["--set batch_size: expected key.path=value"])
        XCTAssertEqual(problems(base, ["steps.x=1"]), ["--set steps.x: steps is not a mapping"])
    }

    /// `student: {type: repvit}`: the preset, overrides, round trip, and refusals naming the key.
    func testRepViTStudentConfig() throws {
        let c = try RunConfig.parse("student: {type: repvit, preset: repvit_m1}")
        XCTAssertEqual(c.student, .repViT(.m1, preset: "repvit_m1"))
        XCTAssertEqual(try RunConfig.parse(c.yaml()), c)
        let small = try RunConfig.parse("student: {type: repvit, image_size: 512, depths: [1, 2, 2, 1], se_blocks: [0, 2]}")
        guard case .repViT(let r, nil) = small.student else { return XCTFail("student type") }
        XCTAssertEqual(r.depths, [1, 2, 2, 1]); XCTAssertEqual(r.seBlocks, [0, 2]); XCTAssertEqual(r.embedDims, [48, 96, 192, 384])
        XCTAssertEqual(try RunConfig.parse(small.yaml()), small)
        XCTAssertEqual(problems("student: {type: repvit, preset: repvit_m9}"),
                       ["student.preset: unknown preset 'repvit_m9' (known: repvit_m1)"])
        XCTAssertEqual(problems("student: {type: repvit, fused: true}"),
                       ["student.fused: a student trains in the multi-branch form; `samdistill export` writes the fused one"])
        XCTAssertEqual(problems("student: {type: repvit, depths: [3, 4, 16, 3], se_blocks: [26]}"),
                       ["student.se_blocks: 26 is not a block index (0..<26)"])
        XCTAssertEqual(problems("student: {type: repvit, neck_channels: 128}"),
                       ["student.neck_channels: the student's embedding has 128 channels; SAM's mask decoder needs 256"])
        XCTAssertEqual(problems("student: {type: repvit}\ninit: {type: teacher_blocks}\nteacher: {checkpoint: t.pt}"),
                       ["init.type: teacher_blocks needs a tinyvit student (the teacher is a TinyViT)"])
    }

    /// Every config under Configs/ is valid; the quickstart's student is TinyViT-5M at 672 px
    /// (under half the FLOPs, every weight kept) and the long recipes' are at most half the
    /// teacher's FLOPs, as their configs and the README say (FLOPs printed for the record).
    func testShippedConfigsAreValid() throws {
        let dir = Fixture.repositoryRoot.appendingPathComponent("Configs")
        let names = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".yaml") }
        XCTAssertFalse(names.isEmpty)
        for n in names { XCTAssertNoThrow(try RunConfig.load(dir.appendingPathComponent(n)), n) }
        let q = try RunConfig.load(dir.appendingPathComponent("quickstart.yaml"))
        let quick = Student(q.student), full = Student(.tinyViT(.mobileSAM, preset: "tinyvit_5m"))
        print("FLOPs per 1024² image: TinyViT-5M \(full.forwardFLOPs), quickstart student \(quick.forwardFLOPs); parameters \(full.parameterCount) / \(quick.parameterCount)")
        XCTAssertLessThanOrEqual(Double(quick.forwardFLOPs), 0.5 * Double(full.forwardFLOPs))
        XCTAssertEqual(quick.parameterCount, full.parameterCount)
        guard case .tinyViT(let qc, _) = q.student else { return XCTFail("the quickstart's student") }
        XCTAssertEqual(qc.inputResize, 672)
        let resolution = try RunConfig.load(dir.appendingPathComponent("long_resolution.yaml"))
        XCTAssertEqual(resolution.stages.map(\.name), ["mse", "pitl"])
        XCTAssertEqual(resolution.stages.map(\.config.steps), [400, 400])
        XCTAssertEqual(resolution.stages[1].config.initialisation, .checkpoint(path: resolution.stages[0].finalCheckpoint))
        let resized = Student(resolution.student)
        print("reduced-resolution recipe student: \(resized.forwardFLOPs) FLOPs (\(Double(resized.forwardFLOPs) / Double(full.forwardFLOPs)) of the teacher's)")
        XCTAssertLessThanOrEqual(Double(resized.forwardFLOPs), 0.5 * Double(full.forwardFLOPs))
        let longConfig = try RunConfig.load(dir.appendingPathComponent("long_width_pruned.yaml"))
        let long = Student(longConfig.student)
        // MSE, a second MSE cycle (its own sample order), then prompt-in-the-loop, each stage from
        // the previous one's last checkpoint
        XCTAssertEqual(longConfig.stages.map(\.name), ["mse", "mse_restart", "pitl"])
        XCTAssertEqual(longConfig.stages.map(\.config.steps), [1200, 600, 400])
        XCTAssertEqual(longConfig.stages.map(\.config.seed), [0, 1, 0])
        for i in 1..<3 {
            XCTAssertEqual(longConfig.stages[i].config.initialisation, .checkpoint(path: longConfig.stages[i - 1].finalCheckpoint))
        }
        XCTAssertEqual(longConfig.stages[1].config.loss, .mse)
        guard case .promptInTheLoop(let loop) = longConfig.stages[2].config.loss else { return XCTFail("stage 3's loss") }
        XCTAssertEqual(loop.pointOutput, .single)
        XCTAssertFalse(loop.correctionMaskInput)
        XCTAssertEqual(loop.boxFraction, 0.2, "the loop's prompts are mostly points (session 12)")
        print("long recipe student: \(long.forwardFLOPs) FLOPs (\(Double(long.forwardFLOPs) / Double(full.forwardFLOPs)) of the teacher's)")
        XCTAssertLessThanOrEqual(Double(long.forwardFLOPs), 0.5 * Double(full.forwardFLOPs))
    }
}

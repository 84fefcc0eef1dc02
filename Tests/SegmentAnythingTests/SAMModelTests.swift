import CheckpointFormats
import Foundation
import ImageCodecs
import Layers
import SegmentAnything
import Tensor
import TestSupport
import XCTest

/// SAMModel (encoder detection, strict loading from files), `postprocess_masks` and the
/// predictor's API (batching, precomputed embeddings, errors).
final class SAMModelTests: XCTestCase {
    static func smallViT() -> ViTConfig {
        var c = ViTConfig()
        c.imageSize = 128; c.patchSize = 16; c.embedDim = 32; c.depth = 4; c.numHeads = 4
        c.windowSize = 3; c.globalAttentionIndexes = [1, 3]; c.mlpRatio = 2
        return c
    }

    static func smallTinyViT() -> TinyViTConfig {
        var c = TinyViTConfig()
        c.embedDims = [16, 32, 48, 64]; c.depths = [1, 2, 1, 1]; c.numHeads = [2, 2, 3, 4]
        c.windowSizes = [7, 5, 7, 3]; c.mlpRatio = 2; c.mbconvExpandRatio = 3; c.localConvSize = 5
        return c
    }

    func temporaryDirectory() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("samdistill-sam-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        return dir
    }

    // MARK: Encoder detection

    func testDetectsMobileSAM() throws {
        XCTAssertEqual(try SAMWeights.read(try Fixture.mobileSAMCheckpoint()).architecture, .tinyViT(.mobileSAM))
    }

    /// Detection from keys and shapes gives back the configuration a model was built with:
    /// TinyViT with non-default widths, depths, heads, windows and ratios; a ViT with its global
    /// blocks, window, head count (from rel_pos widths) and image size (from pos_embed).
    func testDetectsConfigurationsFromShapes() throws {
        let tiny = Self.smallTinyViT()
        XCTAssertEqual(try SAMEncoderConfig.detect(TinyViT(tiny).stateDict(), file: "t"), .tinyViT(tiny))
        let vit = Self.smallViT()
        XCTAssertEqual(try SAMEncoderConfig.detect(ImageEncoderViT(vit).stateDict(), file: "t"), .vit(vit))
    }

    /// Metadata wins over shapes (it can say what shapes cannot, e.g. merge strides).
    func testMetadataConfiguration() throws {
        var tiny = Self.smallTinyViT()
        tiny.mergeStrides = [2, 2, 2]
        let config = SAMEncoderConfig.tinyViT(tiny)
        XCTAssertEqual(try SAMEncoderConfig(metadata: config.metadata, file: "t"), config)
        XCTAssertNotEqual(try SAMEncoderConfig.detect(TinyViT(tiny).stateDict(), file: "t"), config, "shapes alone cannot tell merge strides")
        XCTAssertThrowsError(try SAMEncoderConfig(metadata: ["image_encoder": "resnet", "image_encoder_config": "{}"], file: "t"))
    }

    // MARK: Loading files

    /// A .safetensors file with one missing, one unexpected and one mis-shaped key fails with one
    /// WeightLoadingError that lists all three and names the file; the intact file loads; a
    /// state dict nested under "model." loads; a file without SAM keys says so.
    func testStrictLoadingFromFiles() throws {
        let dir = try temporaryDirectory()
        let config = SAMEncoderConfig.tinyViT(Self.smallTinyViT())
        var rng = SeededRandom(seed: 5)
        let source = SAMModel(encoder: config)
        randomiseParameters(source, std: 0.1, rng: &rng)
        let good = dir.appendingPathComponent("good.safetensors")
        var dict = source.stateDict()
        dict["image_encoder.head.weight"] = Tensor(zeros: [10, 64])  // a classification head: ignored
        try SafeTensors.write(dict, to: good)
        let loaded = try SAMModel.load(contentsOf: good)
        XCTAssertEqual(loaded.encoderConfig, config)
        XCTAssertEqual(loaded.maskDecoder.iouToken.value.data, source.maskDecoder.iouToken.value.data)

        var nested: [String: Tensor] = [:]
        for (k, v) in source.stateDict() { nested["model." + k] = v }
        let nestedURL = dir.appendingPathComponent("nested.safetensors")
        try SafeTensors.write(nested, to: nestedURL)
        XCTAssertEqual(try SAMModel.load(contentsOf: nestedURL).promptEncoder.noMaskEmbed.value.data,
                       source.promptEncoder.noMaskEmbed.value.data)

        var broken = source.stateDict()
        broken["mask_decoder.iou_token.weight"] = nil
        broken["mask_decoder.extra.weight"] = Tensor(zeros: [3])
        broken["prompt_encoder.no_mask_embed.weight"] = Tensor(zeros: [1, 128])
        let bad = dir.appendingPathComponent("bad.safetensors")
        try SafeTensors.write(broken, to: bad)
        XCTAssertThrowsError(try SAMModel.load(contentsOf: bad)) { error in
            guard let e = error as? WeightLoadingError else { return XCTFail("\(error)") }
            XCTAssertEqual(e.missing, ["mask_decoder.iou_token.weight"])
            XCTAssertEqual(e.unexpected, ["mask_decoder.extra.weight"])
            XCTAssertEqual(e.misshaped.map(\.key), ["prompt_encoder.no_mask_embed.weight"])
            XCTAssertEqual(e.source, bad.path)
            XCTAssertTrue(e.description.contains(bad.path), e.description)
        }

        let foreign = dir.appendingPathComponent("foreign.safetensors")
        try SafeTensors.write(["weight": Tensor(zeros: [2])], to: foreign)
        XCTAssertThrowsError(try SAMModel.load(contentsOf: foreign)) { error in
            XCTAssertTrue("\(error)".contains(foreign.path) && "\(error)".contains("not a SAM checkpoint"), "\(error)")
        }
    }

    /// An encoder-only file (an exported student) takes the prompt encoder and mask decoder from
    /// `decoderWeights` (here MobileSAM's checkpoint).
    func testEncoderOnlyFileWithDecoderWeights() throws {
        let dir = try temporaryDirectory()
        let config = SAMEncoderConfig.tinyViT(Self.smallTinyViT())
        var encoderOnly: [String: Tensor] = [:]
        for (k, v) in SAMModel(encoder: config).stateDict() where k.hasPrefix("image_encoder.") { encoderOnly[k] = v }
        let url = dir.appendingPathComponent("student.safetensors")
        try SafeTensors.write(encoderOnly, metadata: config.metadata, to: url)
        XCTAssertThrowsError(try SAMModel.load(contentsOf: url)) { error in
            XCTAssertTrue((error as? WeightLoadingError)?.missing.contains("mask_decoder.iou_token.weight") == true, "\(error)")
        }
        let mobile = try Fixture.mobileSAMCheckpoint()
        let model = try SAMModel.load(contentsOf: url, decoderWeights: mobile)
        XCTAssertEqual(model.encoderConfig, config)
        let reference = try WeightsFile(contentsOf: mobile)
        XCTAssertEqual(model.maskDecoder.maskTokens.value.data, reference.tensors["mask_decoder.mask_tokens.weight"]!.data)
    }

    // MARK: postprocess_masks

    /// Against `Sam.postprocess_masks` (PyTorch, float64) for a landscape and a portrait
    /// original size, every 7th pixel: relative error ≤ 1e-5.
    func testPostprocessMatchesPyTorch() throws {
        let f = try Fixture("postprocess_masks")
        let low = TestData.syntheticMasks(2) * 0.25
        for name in ["landscape", "portrait"] {
            let s = f["\(name).sizes"].data.map { Int($0) }
            let y = SAMModel.postprocessMasks(low, inputSize: ImageSize(height: s[2], width: s[3]),
                                              originalSize: ImageSize(height: s[0], width: s[1]))
            XCTAssertEqual(y.shape, [2, 1, s[0], s[1]])
            let sub = subsample(y, rowOffset: 0, rowStride: 7, columnOffset: 0, columnStride: 7)
            let e = relativeError(sub, f["\(name).y_sub"])
            print("postprocess \(name): relative error \(e)")
            XCTAssertLessThanOrEqual(e, 1e-5, name)
        }
    }

    /// The cropped fast path equals the literal full-size resize, crop, resize (plain loops), for
    /// up- and downscaling and odd sizes.
    func testPostprocessEqualsReference() {
        var rng = SeededRandom(seed: 9)
        let low = Tensor.randomNormal([2, 3, 16, 16], std: 3, rng: &rng)
        for (input, original) in [((64, 41), (130, 83)), ((37, 64), (20, 35)), ((64, 64), (64, 64)), ((50, 64), (500, 640))] {
            let i = ImageSize(height: input.0, width: input.1), o = ImageSize(height: original.0, width: original.1)
            let fast = SAMModel.postprocessMasks(low, inputSize: i, originalSize: o, imageSize: 64)
            let reference = SAMModel.postprocessMasksReference(low, inputSize: i, originalSize: o, imageSize: 64)
            XCTAssertLessThanOrEqual(relativeError(fast, reference), 1e-6, "\(i) → \(o)")
        }
    }

    // MARK: Predictor

    func predictorWithSyntheticEmbedding() throws -> SAMPredictor {
        let model = SAMModel(encoder: .tinyViT(Self.smallTinyViT()))
        let weights = try WeightsFile(contentsOf: try Fixture.mobileSAMCheckpoint()).tensors
        var decoder: [String: Tensor] = [:]
        for (k, v) in weights where !k.hasPrefix("image_encoder.") { decoder[k] = v }
        for (k, v) in model.imageEncoder.namedParameters() { decoder["image_encoder." + k] = v.value }
        try model.load(decoder, source: "test")
        let predictor = SAMPredictor(model: model)
        try predictor.setEmbedding(TestData.syntheticEmbedding(), originalSize: ImageSize(height: 300, width: 400))
        return predictor
    }

    /// Prompts of different structures in one call come back in order and equal each prompt
    /// predicted alone; logits and 0/1 masks agree; the low-res logits work as a mask input.
    func testPredictorBatchesMixedPrompts() throws {
        let predictor = try predictorWithSyntheticEmbedding()
        XCTAssertEqual(predictor.inputSize, ImageSize(height: 768, width: 1024))
        let prompts = [
            SAMPrompt(points: [PromptPoint(x: 100, y: 80)]),
            SAMPrompt(box: PromptBox(x0: 50, y0: 40, x1: 300, y1: 250)),
            SAMPrompt(points: [PromptPoint(x: 310, y: 200)]),
            SAMPrompt(points: [PromptPoint(x: 20, y: 30), PromptPoint(x: 200, y: 100, label: 0)], box: PromptBox(x0: 0, y0: 0, x1: 399, y1: 299)),
        ]
        let all = try predictor.predict(prompts, multimaskOutput: true, returnLogits: true)
        XCTAssertEqual(all.masks.shape, [4, 3, 300, 400])
        XCTAssertEqual(all.iouPredictions.shape, [4, 3])
        XCTAssertEqual(all.lowResLogits.shape, [4, 3, 256, 256])
        let n = 3 * 300 * 400
        for (b, p) in prompts.enumerated() {
            let alone = try predictor.predict(points: p.points, box: p.box, multimaskOutput: true, returnLogits: true)
            let slice = Tensor(shape: [1, 3, 300, 400], data: Array(all.masks.data[(b * n)..<((b + 1) * n)]))
            XCTAssertLessThanOrEqual(relativeError(alone.masks, slice), 1e-5, "prompt \(b)")
            for k in 0..<3 { XCTAssertEqual(alone.iou(prompt: 0, index: k), all.iou(prompt: b, index: k), accuracy: 1e-5) }
        }
        let binary = try predictor.predict(prompts, multimaskOutput: true, returnLogits: false)
        XCTAssertFalse(binary.areLogits)
        for b in 0..<4 { for k in 0..<3 { XCTAssertEqual(binary.mask(prompt: b, index: k), all.mask(prompt: b, index: k)) } }
        XCTAssertTrue(Set(binary.masks.data).isSubset(of: [0, 1]))

        let single = try predictor.predict(points: [PromptPoint(x: 100, y: 80)], multimaskOutput: false)
        XCTAssertEqual(single.masks.shape, [1, 1, 300, 400])
        let refined = try predictor.predict(points: [PromptPoint(x: 100, y: 80)],
                                            maskInput: all.lowResLogits(prompt: 0, index: all.bestIndex(prompt: 0)),
                                            multimaskOutput: false)
        XCTAssertEqual(refined.masks.shape, [1, 1, 300, 400])
    }

    func testPredictorErrors() throws {
        let predictor = try predictorWithSyntheticEmbedding()
        XCTAssertThrowsError(try predictor.setEmbedding(Tensor(zeros: [1, 256, 32, 32]), originalSize: ImageSize(height: 10, width: 10))) {
            guard case .invalidEmbedding? = $0 as? SAMPredictorError else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try predictor.predict(points: [PromptPoint(x: 1, y: 1)], maskInput: Tensor(zeros: [1, 64, 64]))) {
            guard case .invalidPrompt? = $0 as? SAMPredictorError else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try predictor.predict(points: [PromptPoint(x: .nan, y: 1)])) {
            guard case .invalidPrompt? = $0 as? SAMPredictorError else { return XCTFail("\($0)") }
        }
        predictor.resetImage()
        XCTAssertFalse(predictor.isImageSet)
        XCTAssertThrowsError(try predictor.predict(points: [PromptPoint(x: 1, y: 1)])) {
            XCTAssertEqual($0 as? SAMPredictorError, .imageNotSet)
        }
    }

    func testBinaryMask() throws {
        var pixels = [Bool](repeating: false, count: 5 * 4)
        for (x, y) in [(1, 1), (3, 1), (2, 2)] { pixels[y * 5 + x] = true }
        let m = BinaryMask(width: 5, height: 4, pixels: pixels)
        XCTAssertEqual(m.area, 3)
        XCTAssertEqual(m.boundingBox.map { [$0.x0, $0.y0, $0.x1, $0.y1] }, [1, 1, 3, 2])
        XCTAssertNil(BinaryMask(width: 2, height: 2, pixels: [false, false, false, false]).boundingBox)
        var other = pixels
        other[2 * 5 + 2] = false
        other[0] = true
        XCTAssertEqual(m.iou(BinaryMask(width: 5, height: 4, pixels: other)), 2.0 / 4.0)
        let png = try ImageIO.encodePNG(m.greyImage)
        let back = try ImageIO.decode(png, file: "mask.png")
        XCTAssertEqual(BinaryMask(width: 5, height: 4, pixels: (0..<20).map { back.pixels[3 * $0] >= 128 }), m)
    }
}

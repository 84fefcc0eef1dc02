import ArgumentParser
import CheckpointFormats
import Foundation
import ImageCodecs
import SegmentAnything
import Tensor

/// `samdistill segment [prompt]`: one mask from point and box prompts.
struct SegmentPrompt: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prompt",
        abstract: "Segment an object from point and box prompts (the default mode of segment).",
        discussion: """
            Loads a SAM checkpoint (.pt/.pth or .safetensors; MobileSAM's TinyViT, SAM's ViT or \
            an exported student's encoder, detected from the file), encodes the image once, and \
            predicts a mask for the prompts. Coordinates are pixels of the original image. \
            Without --multimask the model's single-mask output is used; with it, the best of its \
            three masks (highest predicted IoU). Writes an overlay of the mask and the prompts \
            (--out), optionally the mask as an 8-bit 0/255 PNG at the image's size (--mask-out) \
            and a JSON summary (--json: score, bbox, area, prompts, timings). Prints the load, \
            encode and decode times. --mask-input takes a previous run's low-resolution logits \
            (SAM's mask_input). --tensors-out writes the numbers behind the masks as safetensors: \
            image (1, 3, S, S, the preprocessed input), image_embeddings, masks (1, K, H, W \
            logits), iou_predictions (1, K), low_res_masks (1, K, 256, 256), best_low_res_mask \
            (1, 256, 256: the chosen mask's, for a next --mask-input); Scripts/check-onnx compares \
            ONNX Runtime with them.

            Example: samdistill segment --checkpoint weights/mobile_sam.pt --image photo.jpg \
            --point 420,300 --out overlay.png
            """)

    @OptionGroup var io: SegmentArguments

    @Option(name: .customLong("point"), parsing: .singleValue,
            help: ArgumentHelp("A point prompt X,Y[,LABEL] (label 1 foreground, the default, or 0 background). Repeatable.",
                               valueName: "x,y[,label]"))
    var points: [PointArgument] = []

    @Option(help: ArgumentHelp("A box prompt X0,Y0,X1,Y1.", valueName: "x0,y0,x1,y1"))
    var box: BoxArgument?

    @Flag(help: "Predict three masks and keep the one with the highest predicted IoU.")
    var multimask = false

    @Option(help: "A mask input: a .safetensors file with a tensor mask_input or best_low_res_mask of shape (1, 256, 256) or (1, 1, 256, 256) (e.g. a previous --tensors-out).")
    var maskInput: String?

    @Option(help: "Also write the input, embedding, mask logits and IoU predictions as a .safetensors file.")
    var tensorsOut: String?

    @OptionGroup var runtime: RuntimeOptions

    func validate() throws {
        if let m = maskInput, !FileManager.default.fileExists(atPath: m) { throw ValidationError("--mask-input: no such file: \(m)") }
        if let t = tensorsOut, URL(fileURLWithPath: t).pathExtension.lowercased() != "safetensors" {
            throw ValidationError("--tensors-out: \(t) must be a .safetensors file")
        }
        if points.isEmpty && box == nil {
            throw ValidationError("give at least one prompt: --point X,Y[,LABEL] or --box X0,Y0,X1,Y1 "
                                  + "(or segment everything for the automatic mask generator)")
        }
    }

    func run() throws {
        let clock = { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
        let picture = try io.readImage()
        for p in points where p.point.x < 0 || p.point.y < 0 || p.point.x >= Double(picture.width) || p.point.y >= Double(picture.height) {
            throw SegmentError(description: "\(io.image): --point \(p.point.x),\(p.point.y) is outside the \(picture.width)×\(picture.height) image")
        }
        let maskInputTensor: Tensor? = try maskInput.map(Self.readMaskInput)
        let (model, loadSeconds) = try io.loadModel()
        var t = clock()
        let predictor = SAMPredictor(model: model)
        let preprocessed = SAMPreprocessing.preprocess(picture, size: model.imageSize)
        predictor.setImage(preprocessed)
        let encodeSeconds = clock() - t
        print(String(format: "encode  %7.3f s  %@ %d×%d", encodeSeconds, io.image, picture.width, picture.height))

        t = clock()
        let prediction = try predictor.predict(points: points.map(\.point), box: box?.box, maskInput: maskInputTensor,
                                               multimaskOutput: multimask, returnLogits: tensorsOut != nil)
        let decodeSeconds = clock() - t
        let chosen = prediction.bestIndex(prompt: 0)
        let mask = prediction.mask(prompt: 0, index: chosen)
        let score = prediction.iou(prompt: 0, index: chosen)
        print(String(format: "decode  %7.3f s  (prompt encoder, mask decoder, postprocess)", decodeSeconds))

        try ImageIO.writePNG(Self.overlay(picture, mask: mask, points: points.map(\.point), box: box?.box),
                             to: URL(fileURLWithPath: io.out))
        if let maskOut = io.maskOut { try ImageIO.writePNG(mask.greyImage, to: URL(fileURLWithPath: maskOut)) }
        if let tensorsOut {
            let tensors = ["image": preprocessed.input, "image_embeddings": predictor.features!, "masks": prediction.masks,
                           "iou_predictions": prediction.iouPredictions, "low_res_masks": prediction.lowResLogits,
                           "best_low_res_mask": prediction.lowResLogits(prompt: 0, index: chosen)]
            try SafeTensors.write(tensors, metadata: ["image": io.image, "checkpoint": io.checkpoint, "multimask": "\(multimask)"],
                                  to: URL(fileURLWithPath: tensorsOut))
        }

        let bbox = mask.boundingBox.map { [$0.x0, $0.y0, $0.x1, $0.y1] }
        let bboxText = bbox.map { "[\($0.map(String.init).joined(separator: ", "))]" } ?? "none"
        print(String(format: "mask    score %.4f, area %d px (%.1f%%), bbox %@", score, mask.area,
                     100 * Double(mask.area) / Double(picture.width * picture.height), bboxText)
              + (multimask ? " (best of \(prediction.masksPerPrompt))" : ""))
        print("wrote   \(io.out)" + (io.maskOut.map { ", \($0)" } ?? "") + (io.json.map { ", \($0)" } ?? "")
              + (tensorsOut.map { ", \($0)" } ?? ""))

        if let json = io.json {
            var candidates: [[String: Any]] = []
            for k in 0..<prediction.masksPerPrompt {
                let m = prediction.mask(prompt: 0, index: k)
                candidates.append(["score": Double(prediction.iou(prompt: 0, index: k)), "area": m.area,
                                   "bbox": m.boundingBox.map { [$0.x0, $0.y0, $0.x1, $0.y1] } as Any? ?? NSNull()])
            }
            var prompts: [String: Any] = ["points": points.map { [$0.point.x, $0.point.y, Double($0.point.label)] }]
            prompts["box"] = box.map { [$0.box.x0, $0.box.y0, $0.box.x1, $0.box.y1] } as Any? ?? NSNull()
            let object: [String: Any] = [
                "image": io.image, "checkpoint": io.checkpoint, "encoder": model.encoderConfig.description,
                "width": picture.width, "height": picture.height, "multimask": multimask,
                "prompts": prompts, "chosen": chosen, "score": Double(score), "area": mask.area,
                "bbox": bbox as Any? ?? NSNull(), "candidates": candidates,
                "seconds": ["load": loadSeconds, "encode": encodeSeconds, "decode": decodeSeconds],
            ]
            let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
            try AtomicFile.write(data + Data("\n".utf8), to: URL(fileURLWithPath: json))
        }
    }

    /// `--mask-input`: the tensor `mask_input` or `best_low_res_mask` of a safetensors file, as (1, 256, 256).
    static func readMaskInput(_ path: String) throws -> Tensor {
        let file = try WeightsFile(contentsOf: URL(fileURLWithPath: path))
        guard let t = file.tensors["mask_input"] ?? file.tensors["best_low_res_mask"] else {
            throw SegmentError(description: "\(path): --mask-input needs a tensor named mask_input or best_low_res_mask")
        }
        guard t.count == 256 * 256 else {
            throw SegmentError(description: "\(path): --mask-input tensor of shape \(t.shape), expected (1, 256, 256)")
        }
        return t.reshaped([1, 256, 256])
    }

    /// The image with the mask tinted magenta (50%) and outlined, the box (yellow) and the points
    /// drawn on it, sized to the image.
    static func overlay(_ image: RGBImage, mask: BinaryMask, points: [PromptPoint], box: PromptBox?) -> RGBImage {
        var out = MaskOverlay.tint(image, mask: mask, colour: (255, 0, 200))
        let side = min(image.width, image.height)
        MaskOverlay.draw(points: points, box: box, on: &out, radius: Double(max(5, side / 60)),
                         thickness: max(2, side / 250), boxColour: (255, 215, 0))
        return out
    }
}

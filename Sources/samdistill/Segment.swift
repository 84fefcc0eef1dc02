import ArgumentParser
import Foundation
import ImageCodecs
import SegmentAnything
import Tensor

/// `--point X,Y[,LABEL]`: a point prompt in image pixels, label 1 (foreground, default) or 0.
struct PointArgument: ExpressibleByArgument {
    let point: PromptPoint

    init?(argument: String) {
        let parts = argument.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        guard parts.count == 2 || parts.count == 3, let x = Double(parts[0]), let y = Double(parts[1]),
              x.isFinite, y.isFinite else { return nil }
        var label = 1
        if parts.count == 3 {
            guard let l = Int(parts[2]), l == 0 || l == 1 else { return nil }
            label = l
        }
        point = PromptPoint(x: x, y: y, label: label)
    }

    static var defaultCompletionKind: CompletionKind { .default }
}

/// `--box X0,Y0,X1,Y1`: a box prompt in image pixels.
struct BoxArgument: ExpressibleByArgument {
    let box: PromptBox

    init?(argument: String) {
        let v = argument.split(separator: ",", omittingEmptySubsequences: false).compactMap {
            Double($0.trimmingCharacters(in: .whitespaces))
        }
        guard v.count == 4, v.allSatisfy(\.isFinite), v[2] >= v[0], v[3] >= v[1] else { return nil }
        box = PromptBox(x0: v[0], y0: v[1], x1: v[2], y1: v[3])
    }
}

/// A problem found while running (after argument validation), naming the file.
struct SegmentError: Error, CustomStringConvertible {
    let description: String
}

/// `samdistill segment`: masks from prompts (`segment prompt`, the default) or everything in an
/// image (`segment everything`).
struct Segment: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Segment an object from point and box prompts, or everything in an image (SAM / MobileSAM).",
        subcommands: [SegmentPrompt.self, SegmentEverything.self],
        defaultSubcommand: SegmentPrompt.self)
}

/// The model, the image and the outputs, as every `segment` mode takes them.
struct SegmentArguments: ParsableArguments {
    @Option(help: "The SAM weights (.pt, .pth or .safetensors): MobileSAM's, SAM's, or a student exported with --full.")
    var checkpoint: String

    @Option(help: "Prompt encoder and mask decoder weights, for a checkpoint that holds an image encoder alone (an exported student).")
    var decoderCheckpoint: String?

    @Option(help: "The image (JPEG or PNG).")
    var image: String

    @Option(help: "The overlay PNG to write (masks and prompts drawn on the image).")
    var out: String

    @Option(help: "Also write the mask as an 8-bit PNG (0/255) at the image's size.")
    var maskOut: String?

    @Option(help: "Also write a JSON summary.")
    var json: String?

    func validate() throws {
        for (flag, path) in [("--checkpoint", checkpoint), ("--image", image)] + (decoderCheckpoint.map { [("--decoder-checkpoint", $0)] } ?? []) {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue else {
                throw ValidationError("\(flag): no such file: \(path)")
            }
        }
        for (flag, path) in [("--out", out), ("--mask-out", maskOut)] {
            if let path, URL(fileURLWithPath: path).pathExtension.lowercased() != "png" {
                throw ValidationError("\(flag): \(path) must be a .png file")
            }
        }
    }

    /// The image, decoded like PIL.
    func readImage() throws -> RGBImage { try ImageIO.read(URL(fileURLWithPath: image)) }

    /// The model, with its load time printed and returned.
    func loadModel() throws -> (model: SAMModel, seconds: Double) {
        let start = DispatchTime.now().uptimeNanoseconds
        let model = try SAMModel.load(contentsOf: URL(fileURLWithPath: checkpoint),
                                      decoderWeights: decoderCheckpoint.map { URL(fileURLWithPath: $0) })
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        print(String(format: "load    %7.3f s  %@ (%@)", seconds, checkpoint, model.encoderConfig.description))
        return (model, seconds)
    }
}

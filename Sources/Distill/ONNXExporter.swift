import Foundation
import ONNX
import SegmentAnything
import SwiftProtobuf
import Tensor

// `samdistill export --format onnx`: the image encoder of any model the inference core loads
// (ONNXEncoders.swift), or with `decoder` SAM's prompt encoder + mask decoder with the interface
// of the reference's SamOnnxModel (ONNXDecoder.swift), as one ONNX file (opset 17, IR version 8;
// ONNXVersion). Weights float32, or float16 with `half` (cast to float32 in the graph).

extension Exporter {
    /// What an ONNX export wrote.
    public struct ONNXSummary: Sendable {
        public let output: URL
        /// "encoder TinyViT(…)" or "prompt encoder + mask decoder".
        public let content: String
        public let nodes: Int
        public let initializers: Int
        public let parameters: Int
        public let half: Bool
        public let bytes: Int
    }

    /// The encoder's input, as SAM preprocesses an image (Preprocessing.swift): RGB resized so its
    /// longest side is S, normalised per channel, zero-padded at the bottom and right to S×S.
    public static let onnxInputDescription =
        "image (1, 3, S, S) float32: RGB resized to longest side S, (x - [123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375], zero-padded bottom-right"

    /// Largest model protobuf can hold in one file (2 GiB); bigger ones (ViT-H in float32) need --half.
    static let protobufLimit = Int(Int32.max)

    @discardableResult
    public static func exportONNX(checkpoint: URL, to output: URL, half: Bool = false, decoder: Bool = false,
                                  promptDecoderFrom: URL? = nil) throws -> ONNXSummary {
        let g = GraphBuilder(name: decoder ? "sam_prompt_encoder_mask_decoder" : "sam_image_encoder", halfWeights: half)
        var meta = ["source": checkpoint.lastPathComponent, "format": "samdistill-onnx-1", "opset": "\(ONNXVersion.opset)",
                    "weights": half ? "float16" : "float32"]
        let content: String
        if decoder {
            if promptDecoderFrom == nil, try SAMWeights.read(checkpoint).decoder.isEmpty {
                throw ExportError(file: checkpoint.path, reason: "--decoder: no prompt_encoder.* / mask_decoder.* tensors here: give --prompt-decoder-from W (e.g. the teacher checkpoint)")
            }
            let model = try SAMModel.load(contentsOf: checkpoint, decoderWeights: promptDecoderFrom)
            ONNXDecoder.build(model, g)
            content = "prompt encoder + mask decoder (SamOnnxModel interface)"
            meta["interface"] = "SamOnnxModel (segment_anything/utils/onnx.py), return_single_mask=False"
        } else {
            let (weights, _) = try SAMWeights.readStudent(checkpoint)
            let S = weights.encoder.imageSize, C = weights.architecture.outputChannels
            let image = g.input("image", [1, 3, .fixed(S), .fixed(S)])
            let embedding = try ONNXEncoders.build(weights.encoder, g, image: image)
            g.output(embedding, as: "image_embeddings", [1, .fixed(C), .fixed(S / 16), .fixed(S / 16)])
            content = "encoder \(weights.architecture.description)"
            for (k, v) in weights.architecture.metadata { meta[k] = v }
            meta["input"] = onnxInputDescription
        }
        let graph = g.graph
        let bytes = graph.initializer.reduce(0) { $0 + $1.rawData.count }
        guard bytes < protobufLimit - (64 << 20) else {
            throw ExportError(file: checkpoint.path, reason: "the weights take \(bytes) bytes, more than one ONNX protobuf file holds (2 GiB): export with --half")
        }
        let model = g.model(producer: "samdistill", version: "1", docString: content, metadata: meta)
        let data: Data = try model.serializedData()
        try FileManager.default.createDirectory(at: output.deletingLastPathComponent(), withIntermediateDirectories: true)
        try AtomicFile.write(data, to: output)
        let floatTypes: Set<Int32> = [Int32(Onnx_TensorProto.DataType.float.rawValue), Int32(Onnx_TensorProto.DataType.float16.rawValue)]
        let parameters = graph.initializer.filter { floatTypes.contains($0.dataType) }.reduce(0) { $0 + Int($1.dims.reduce(1, *)) }
        return ONNXSummary(output: output, content: content, nodes: graph.node.count, initializers: graph.initializer.count,
                           parameters: parameters, half: half, bytes: data.count)
    }
}

import Foundation
import SwiftProtobuf
import Tensor

/// Writing a model to disk: one protobuf file, or (`externalData`) the protobuf plus the
/// initializers' bytes in a file beside it, `<model file name>.data`, as ONNX's external-data
/// convention has it (each initializer of 1 KiB or more: data_location EXTERNAL, location /
/// offset / length; offsets aligned to 4 KiB). A protobuf file holds at most 2 GiB, so bigger
/// models (ViT-H in float32) need external data. Both files are written atomically.
public enum ONNXFile {
    /// Initializers smaller than this stay inside the model file (shapes, indices, scalars).
    public static let externalThreshold = 1024

    /// Writes `model`; returns the bytes written (model file + data file).
    @discardableResult
    public static func write(_ model: Onnx_ModelProto, to url: URL, externalData: Bool) throws -> Int {
        guard externalData else {
            let data: Data = try model.serializedData()
            try AtomicFile.write(data, to: url)
            return data.count
        }
        var m = model
        let location = url.lastPathComponent + ".data"
        var blob = Data()
        for i in m.graph.initializer.indices where m.graph.initializer[i].rawData.count >= externalThreshold {
            let raw = m.graph.initializer[i].rawData
            if blob.count % 4096 != 0 { blob.append(Data(count: 4096 - blob.count % 4096)) }
            let offset = blob.count
            blob.append(raw)
            var t = m.graph.initializer[i]
            t.clearRawData()
            t.dataLocation = .external
            t.externalData = [("location", location), ("offset", "\(offset)"), ("length", "\(raw.count)")].map { k, v in
                var e = Onnx_StringStringEntryProto(); e.key = k; e.value = v; return e
            }
            m.graph.initializer[i] = t
        }
        let data: Data = try m.serializedData()
        try AtomicFile.write(blob, to: url.deletingLastPathComponent().appendingPathComponent(location))
        try AtomicFile.write(data, to: url)
        return data.count + blob.count
    }
}

import Foundation
import Tensor

/// A weights file of either kind the toolkit reads, chosen by extension:
/// `.pt` / `.pth` (PyTorch zip checkpoints, `TorchCheckpoint`) or `.safetensors` (`SafeTensors`).
///
/// Values are Float32; `dtypes` keeps each tensor's stored type with PyTorch's names
/// ("float32", "float16", "bfloat16", "int64"…) for both formats. Nested `.pt` checkpoints are
/// flattened as `TorchCheckpoint` documents ("model.image_encoder.…").
public struct WeightsFile: Sendable {
    public enum Format: String, Sendable {
        case torch, safetensors
    }

    /// Why a weights file could not be read. Wraps `TorchCheckpointError` and
    /// `SafeTensors.FormatError` (both already name the file), or says the extension is unknown.
    public enum LoadError: Error, CustomStringConvertible {
        case unsupportedExtension(file: String)
        case torch(TorchCheckpointError)
        case safetensors(SafeTensors.FormatError)

        public var description: String {
            switch self {
            case .unsupportedExtension(let file):
                let ext = URL(fileURLWithPath: file).pathExtension
                return "\(file): unsupported weights format '\(ext.isEmpty ? "(no extension)" : "." + ext)' "
                    + "(expected .pt, .pth or .safetensors)"
            case .torch(let e): return e.description
            case .safetensors(let e): return e.description
            }
        }
    }

    public let url: URL
    public let format: Format
    /// Tensor names: checkpoint order for `.pt`, sorted for `.safetensors`.
    public let names: [String]
    public let tensors: [String: Tensor]
    public let dtypes: [String: String]
    public let metadata: [String: String]

    /// The format an extension selects, or nil for anything else.
    public static func format(of url: URL) -> Format? {
        switch url.pathExtension.lowercased() {
        case "pt", "pth": .torch
        case "safetensors": .safetensors
        default: nil
        }
    }

    /// Reads every tensor. Throws `WeightsFile.LoadError`.
    public init(contentsOf url: URL) throws {
        guard let format = WeightsFile.format(of: url) else { throw LoadError.unsupportedExtension(file: url.path) }
        self.url = url
        self.format = format
        switch format {
        case .torch:
            let checkpoint: TorchCheckpoint
            do { checkpoint = try TorchCheckpoint(contentsOf: url) } catch let e as TorchCheckpointError {
                throw LoadError.torch(e)
            }
            names = checkpoint.names
            tensors = checkpoint.tensors.mapValues(\.tensor)
            dtypes = checkpoint.tensors.mapValues(\.dtype.rawValue)
            metadata = checkpoint.metadata
        case .safetensors:
            let file: (tensors: [String: SafeTensors.Entry], metadata: [String: String])
            do { file = try SafeTensors.read(url) } catch let e as SafeTensors.FormatError {
                throw LoadError.safetensors(e)
            }
            names = file.tensors.keys.sorted()
            tensors = file.tensors.mapValues(\.tensor)
            dtypes = file.tensors.mapValues { WeightsFile.torchName($0.dtype) }
            metadata = file.metadata
        }
    }

    /// PyTorch's name for a safetensors dtype.
    static func torchName(_ d: SafeTensors.DType) -> String {
        switch d {
        case .f32: TorchDType.float32.rawValue
        case .f16: TorchDType.float16.rawValue
        case .bf16: TorchDType.bfloat16.rawValue
        case .i64: TorchDType.int64.rawValue
        case .i32: TorchDType.int32.rawValue
        case .u8: TorchDType.uint8.rawValue
        case .bool: TorchDType.bool.rawValue
        }
    }
}

/// Reads a `.pt`/`.pth` or `.safetensors` file: Float32 tensors, their stored dtypes (PyTorch
/// names), and the metadata (safetensors `__metadata__`, or a checkpoint's non-tensor leaves).
/// Throws `WeightsFile.LoadError`, whose description names the file.
public func loadWeights(_ url: URL) throws
    -> (tensors: [String: Tensor], dtypes: [String: String], metadata: [String: String]) {
    let w = try WeightsFile(contentsOf: url)
    return (w.tensors, w.dtypes, w.metadata)
}

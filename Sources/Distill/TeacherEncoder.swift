import Foundation
import Crypto
import Layers
import SegmentAnything
import Tensor

/// A teacher image encoder, the model whose embeddings the feature cache stores: any encoder
/// `SAMWeights` reads (MobileSAM's TinyViT, SAM ViT-B/L/H, an exported student, TinyViT, conv or RepViT),
/// identified in the cache by `id`, its architecture config (JSON) and the checkpoint's sha256.
public final class TeacherEncoder {
    /// "mobile_sam", "sam_vit_b", "sam_vit_l", "sam_vit_h", or "tinyvit" / "vit" / "conv_student" /
    /// "repvit" for other configs.
    public let id: String
    /// "TinyViT", "ImageEncoderViT", "ConvStudent" or "RepViT".
    public let architecture: String
    /// The architecture config as JSON (sorted keys).
    public let configJSON: String
    public let checkpointSHA256: String
    /// The encoder's input side (1024 for SAM).
    public let imageSize: Int
    /// (C, G, G) of one embedding: (256, 64, 64) for SAM.
    public let embeddingShape: [Int]
    private let forward: (Tensor) -> Tensor

    /// A teacher from an encoder already built and loaded (tests, in-process use).
    public init(id: String, architecture: String, configJSON: String, checkpointSHA256: String,
                imageSize: Int, embeddingShape: [Int], forward: @escaping (Tensor) -> Tensor) {
        self.id = id
        self.architecture = architecture
        self.configJSON = configJSON
        self.checkpointSHA256 = checkpointSHA256
        self.imageSize = imageSize
        self.embeddingShape = embeddingShape
        self.forward = forward
    }

    /// image: (B, 3, S, S) normalised + padded -> (B, C, G, G), inference mode.
    public func encode(_ image: Tensor) -> Tensor { forward(image) }

    public struct LoadError: Error, CustomStringConvertible {
        public let file: String
        public let reason: String
        public var description: String { "\(file): \(reason)" }
    }

    /// A teacher config file: `{"architecture": "tinyvit" | "vit" | "conv" | "repvit", "config": {…}}`
    /// with the keys of `TinyViTConfig` / `ViTConfig` / `ConvStudentConfig` / `RepViTConfig` (snake_case, all present).
    public struct ConfigFile: Codable {
        public var encoder: SAMEncoderConfig

        public init(tinyvit: TinyViTConfig) { encoder = .tinyViT(tinyvit) }
        public init(vit: ViTConfig) { encoder = .vit(vit) }
        public init(conv: ConvStudentConfig) { encoder = .conv(conv) }

        enum CodingKeys: String, CodingKey { case architecture, config }

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let architecture = try c.decode(String.self, forKey: .architecture)
            switch architecture {
            case "tinyvit": encoder = .tinyViT(try c.decode(TinyViTConfig.self, forKey: .config))
            case "vit": encoder = .vit(try c.decode(ViTConfig.self, forKey: .config))
            case "conv": encoder = .conv(try c.decode(ConvStudentConfig.self, forKey: .config))
            case "repvit": encoder = .repViT(try c.decode(RepViTConfig.self, forKey: .config))
            default:
                throw DecodingError.dataCorruptedError(forKey: .architecture, in: c,
                                                       debugDescription: "architecture must be \"tinyvit\", \"vit\", \"conv\" or \"repvit\", found \"\(architecture)\"")
            }
        }

        public func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            switch self.encoder {
            case .tinyViT(let v): try c.encode("tinyvit", forKey: .architecture); try c.encode(v, forKey: .config)
            case .vit(let v): try c.encode("vit", forKey: .architecture); try c.encode(v, forKey: .config)
            case .conv(let v): try c.encode("conv", forKey: .architecture); try c.encode(v, forKey: .config)
            case .repViT(let v): try c.encode("repvit", forKey: .architecture); try c.encode(v, forKey: .config)
            }
        }
    }

    static func json<T: Encodable>(_ v: T) -> String {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return String(decoding: try! e.encode(v), as: UTF8.self)
    }

    /// Loads a teacher from a weights file with `SAMWeights.read` (strict). The architecture
    /// comes from `config` when given, else from the file (its metadata, or its keys and shapes).
    public static func load(weights url: URL, config: URL? = nil) throws -> TeacherEncoder {
        var architecture: SAMEncoderConfig?
        if let config {
            let spec: ConfigFile
            do {
                spec = try JSONDecoder().decode(ConfigFile.self, from: Data(contentsOf: config))
            } catch {
                throw LoadError(file: config.path, reason: "not a teacher config (\(error))")
            }
            guard spec.encoder.problems.isEmpty else { throw LoadError(file: config.path, reason: spec.encoder.problems.joined(separator: "; ")) }
            architecture = spec.encoder
        }
        let weights = try SAMWeights.read(url, architecture: architecture)
        let encoder = weights.encoder, c = weights.architecture
        let id: String, name: String, json: String
        switch c {
        case .tinyViT(let v): (id, name, json) = (v == .mobileSAM ? "mobile_sam" : "tinyvit", "TinyViT", Self.json(v))
        case .vit(let v):
            (id, name, json) = (v == .vitB ? "sam_vit_b" : v == .vitL ? "sam_vit_l" : v == .vitH ? "sam_vit_h" : "vit", "ImageEncoderViT", Self.json(v))
        case .conv(let v): (id, name, json) = ("conv_student", "ConvStudent", Self.json(v))
        case .repViT(let v): (id, name, json) = ("repvit", "RepViT", Self.json(v))
        }
        return TeacherEncoder(id: id, architecture: name, configJSON: json, checkpointSHA256: try Checksum.sha256(ofFile: url),
                            imageSize: c.imageSize, embeddingShape: [c.outputChannels, c.outputResolution, c.outputResolution]) {
            encoder.forward($0, mode: .inference)
        }
    }
}

/// SHA-256 hex digests (swift-crypto), for checkpoint identities in the cache and the run
/// pipeline's step digests.
public enum Checksum {
    /// Hex digest of `data`.
    public static func sha256(_ data: Data) -> String {
        Crypto.SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
    }

    public static func sha256(ofFile url: URL) throws -> String {
        sha256(try Data(contentsOf: url, options: .mappedIfSafe))
    }
}

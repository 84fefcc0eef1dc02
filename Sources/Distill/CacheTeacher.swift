import Foundation
import Layers
import SegmentAnything
import Tensor

/// A teacher image encoder for the feature cache: any encoder `SAMWeights` reads (MobileSAM's
/// TinyViT, SAM ViT-B/L/H, an exported student, TinyViT or conv), identified in the cache by `id`,
/// its architecture config (JSON) and the checkpoint's sha256.
public final class CacheTeacher {
    /// "mobile_sam", "sam_vit_b", "sam_vit_l", "sam_vit_h", or "tinyvit" / "vit" / "conv_student"
    /// for other configs.
    public let id: String
    /// "TinyViT", "ImageEncoderViT" or "ConvStudent".
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

    /// A teacher config file: `{"architecture": "tinyvit" | "vit" | "conv", "config": {…}}` with
    /// the keys of `TinyViTConfig` / `ViTConfig` / `ConvStudentConfig` (snake_case, all present).
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
            default:
                throw DecodingError.dataCorruptedError(forKey: .architecture, in: c,
                                                       debugDescription: "architecture must be \"tinyvit\", \"vit\" or \"conv\", found \"\(architecture)\"")
            }
        }

        public func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            switch self.encoder {
            case .tinyViT(let v): try c.encode("tinyvit", forKey: .architecture); try c.encode(v, forKey: .config)
            case .vit(let v): try c.encode("vit", forKey: .architecture); try c.encode(v, forKey: .config)
            case .conv(let v): try c.encode("conv", forKey: .architecture); try c.encode(v, forKey: .config)
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
    public static func load(weights url: URL, config: URL? = nil) throws -> CacheTeacher {
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
        }
        return CacheTeacher(id: id, architecture: name, configJSON: json, checkpointSHA256: try SHA256.hex(ofFile: url),
                            imageSize: c.imageSize, embeddingShape: [c.outputChannels, c.outputResolution, c.outputResolution]) {
            encoder.forward($0, mode: .inference)
        }
    }
}

/// SHA-256 (FIPS 180-4), for checkpoint identities in the cache. Foundation on Linux has none.
public enum SHA256 {
    private static let k: [UInt32] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ]

    /// Hex digest of `data`.
    public static func hex(_ data: Data) -> String {
        var h: [UInt32] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]
        var msg = [UInt8](data)
        let bitLength = UInt64(msg.count) * 8
        msg.append(0x80)
        while msg.count % 64 != 56 { msg.append(0) }
        for i in (0..<8).reversed() { msg.append(UInt8(truncatingIfNeeded: bitLength >> (8 * UInt64(i)))) }
        var w = [UInt32](repeating: 0, count: 64)
        msg.withUnsafeBufferPointer { m in
            for block in stride(from: 0, to: m.count, by: 64) {
                for t in 0..<16 {
                    let b = block + 4 * t
                    w[t] = UInt32(m[b]) << 24 | UInt32(m[b + 1]) << 16 | UInt32(m[b + 2]) << 8 | UInt32(m[b + 3])
                }
                for t in 16..<64 {
                    let s0 = w[t - 15].rotatedRight(7) ^ w[t - 15].rotatedRight(18) ^ (w[t - 15] >> 3)
                    let s1 = w[t - 2].rotatedRight(17) ^ w[t - 2].rotatedRight(19) ^ (w[t - 2] >> 10)
                    w[t] = w[t - 16] &+ s0 &+ w[t - 7] &+ s1
                }
                var a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7]
                for t in 0..<64 {
                    let s1 = e.rotatedRight(6) ^ e.rotatedRight(11) ^ e.rotatedRight(25)
                    let ch = (e & f) ^ (~e & g)
                    let t1 = hh &+ s1 &+ ch &+ k[t] &+ w[t]
                    let s0 = a.rotatedRight(2) ^ a.rotatedRight(13) ^ a.rotatedRight(22)
                    let maj = (a & b) ^ (a & c) ^ (b & c)
                    let t2 = s0 &+ maj
                    hh = g; g = f; f = e; e = d &+ t1; d = c; c = b; b = a; a = t1 &+ t2
                }
                h[0] = h[0] &+ a; h[1] = h[1] &+ b; h[2] = h[2] &+ c; h[3] = h[3] &+ d
                h[4] = h[4] &+ e; h[5] = h[5] &+ f; h[6] = h[6] &+ g; h[7] = h[7] &+ hh
            }
        }
        return h.map { String(format: "%08x", $0) }.joined()
    }

    public static func hex(ofFile url: URL) throws -> String {
        hex(try Data(contentsOf: url, options: .mappedIfSafe))
    }
}

extension UInt32 {
    @inline(__always) fileprivate func rotatedRight(_ n: UInt32) -> UInt32 { (self >> n) | (self << (32 - n)) }
}

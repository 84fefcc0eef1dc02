import Foundation
import Layers
import Tensor

// The image encoders SAM runs and the trainer trains: TinyViT, ViT (inference), the conv
// student and RepViT. A new student family conforms to `TrainableImageEncoder`.

/// An image encoder SAM can run: (B, 3, S, S) normalised, padded images → (B, C, S/16, S/16)
/// (C = 256 for SAM's decoder).
public protocol SAMImageEncoder: Module {
    /// The architecture, as weights files name it (`SAMEncoderConfig.metadata`).
    var encoderConfig: SAMEncoderConfig { get }
    func forward(_ image: Tensor, mode: ForwardMode) -> Tensor
}

extension SAMImageEncoder {
    /// S, the padded input side (`img_size`, 1024).
    public var imageSize: Int { encoderConfig.imageSize }
}

/// An image encoder the distiller trains: a backward pass beside the forward, and its cost.
public protocol TrainableImageEncoder: SAMImageEncoder {
    /// dEmbedding → dImage (an empty tensor with `imageGradient: false`); accumulates every
    /// parameter gradient after a forward that kept its activations.
    @discardableResult
    func backward(_ dy: Tensor, imageGradient: Bool) -> Tensor
    /// Multiply-accumulates of one image's forward pass (norms and activations excluded).
    var multiplyAccumulates: Int { get }
}

extension TinyViT: TrainableImageEncoder {
    public var encoderConfig: SAMEncoderConfig { .tinyViT(config) }
}

extension ConvStudent: TrainableImageEncoder {
    public var encoderConfig: SAMEncoderConfig { .conv(config) }
}

extension RepViT: TrainableImageEncoder {
    public var encoderConfig: SAMEncoderConfig { .repViT(config) }
}

extension ImageEncoderViT: SAMImageEncoder {
    public var encoderConfig: SAMEncoderConfig { .vit(config) }
}

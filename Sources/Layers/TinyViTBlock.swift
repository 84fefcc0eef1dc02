import Tensor

/// TinyViT's transformer block (tiny_vit_sam.py `TinyViTBlock`), on tokens (B, L = H·W, C):
///   x = x + attn(windows(x))            (windowed attention with the learned offset-bias table;
///                                        zero padding to whole windows, cropped afterwards:
///                                        `TinyViTAttention.forward(map:window:mode:)`)
///   x = local_conv(x as (B, C, H, W))   (3×3 depthwise Conv2d + BatchNorm)
///   x = x + mlp(x)                      (pre-LayerNorm MLP)
/// Checkpoint keys: `attn.*`, `local_conv.c.weight`, `local_conv.bn.*`, `mlp.*`.
public final class TinyViTBlock: Module {
    public let dim: Int
    public let height: Int
    public let width: Int
    public let heads: Int
    public let windowSize: Int
    public let attn: TinyViTAttention
    public let localConv: Conv2dBN
    public let mlp: TinyViTMlp

    public init(dim: Int, resolution: (height: Int, width: Int), heads: Int, windowSize: Int,
                mlpRatio: Float = 4, mlpHidden: Int? = nil, localConvSize: Int = 3) {
        precondition(dim % heads == 0, "TinyViTBlock: dim \(dim) is not divisible by heads \(heads)")
        precondition(windowSize > 0, "TinyViTBlock: window size must be positive")
        self.dim = dim
        self.height = resolution.height
        self.width = resolution.width
        self.heads = heads
        self.windowSize = windowSize
        attn = TinyViTAttention(dim: dim, keyDim: dim / heads, heads: heads, attentionRatio: 1,
                                resolution: (windowSize, windowSize))
        localConv = Conv2dBN(inputChannels: dim, outputChannels: dim, kernelSize: localConvSize,
                             stride: 1, padding: localConvSize / 2, groups: dim)
        // hidden width: explicit (a width-pruned student), else the reference's Int(dim · ratio)
        mlp = TinyViTMlp(inputFeatures: dim, hiddenFeatures: mlpHidden ?? Int(Float(dim) * mlpRatio))
    }

    public func namedParameters() -> [(String, Parameter)] {
        prefixed("attn.", attn) + prefixed("local_conv.", localConv) + prefixed("mlp.", mlp)
    }

    private var windowed: Bool { !(height == windowSize && width == windowSize) }

    /// x: (B, L, C) -> (B, L, C)
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        let H = height, W = width, C = dim
        precondition(x.rank == 3 && x.shape[1] == H * W && x.shape[2] == C,
                     "TinyViTBlock(dim \(C), \(H)×\(W)): expected (B, \(H * W), \(C)), got \(x.shape)")
        let B = x.shape[0]
        // attention: (B, L, C) -> windows (B·nW, ws², C) -> back
        var h: Tensor
        if windowed {
            h = attn.forward(map: x.reshaped([B, H, W, C]), window: windowSize, mode: mode).reshaped([B, H * W, C])
        } else {
            h = attn.forward(x, mode: mode)
        }
        h.add(x)
        // local conv on (B, C, H, W)
        let c = localConv.forward(ConvLayout.tokensToMap(h, height: H, width: W), mode: mode)
        var y = ConvLayout.mapToTokens(c)
        y.add(mlp.forward(y, mode: mode))
        return y
    }

    /// dy: (B, L, C) -> dx: (B, L, C)
    public func backward(_ dy: Tensor) -> Tensor {
        let H = height, W = width, C = dim, B = dy.shape[0]
        var g = dy
        g.add(mlp.backward(dy))
        let gh = ConvLayout.mapToTokens(localConv.backward(ConvLayout.tokensToMap(g, height: H, width: W)))
        var dx: Tensor
        if windowed {
            dx = attn.backward(gh.reshaped([B, H, W, C])).reshaped([B, H * W, C])
        } else {
            dx = attn.backward(gh)
        }
        dx.add(gh)
        return dx
    }
}

import Foundation
import Tensor

/// SAM ViT image-encoder block (`image_encoder.py` `Block`), on (B, H, W, C) token maps:
///
///     a = attn(norm1(x))           windowed: norm1(x) is zero-padded to multiples of the window,
///                                  cut into (ws, ws) windows, attended per window, then
///                                  stitched back with the padding dropped (window_size > 0);
///                                  global attention over the whole grid when window_size == 0
///     x1 = x + a
///     y  = x1 + mlp(norm2(x1))     MLPBlock(C, Int(C · mlpRatio)), GELU
///
/// The padding tokens are zeros after `norm1` and take part in the window's attention as keys
/// (no masking), exactly as in the reference.
///
/// Norms: `nn.LayerNorm` with eps 1e-6 (SAM's `build_sam.py` passes
/// `partial(torch.nn.LayerNorm, eps=1e-6)`; the `Block` default would be 1e-5).
/// The attention's relative tables are sized for the window (window_size > 0) or for `inputSize`
/// (global attention).
///
/// Checkpoint keys: `norm1.weight`, `norm1.bias`, `attn.qkv.*`, `attn.proj.*`, `attn.rel_pos_h`,
/// `attn.rel_pos_w` (with `useRelPos`), `norm2.*`, `mlp.lin1.*`, `mlp.lin2.*`.
public final class ViTBlock: Module {
    public let dim: Int
    public let heads: Int
    /// 0: global attention; otherwise the attention window's side.
    public let windowSize: Int
    public let norm1: LayerNorm
    public let attn: ViTAttention
    public let norm2: LayerNorm
    public let mlp: MLPBlock

    // Geometry (B, H, W) of the training-mode forward, kept for backward.
    private var geometry: (batch: Int, height: Int, width: Int)?

    /// - inputSize: the token grid the global attention's relative tables are built for (needed
    ///   with `useRelPos` and `windowSize == 0`; SAM passes img_size / patch_size for every block).
    public init(dim: Int, heads: Int, mlpRatio: Double = 4, qkvBias: Bool = true, useRelPos: Bool = false,
                windowSize: Int = 0, inputSize: (height: Int, width: Int)? = nil, eps: Float = 1e-6) {
        precondition(windowSize >= 0, "ViTBlock: windowSize must be ≥ 0, got \(windowSize)")
        self.dim = dim
        self.heads = heads
        self.windowSize = windowSize
        norm1 = LayerNorm(dim, eps: eps)
        attn = ViTAttention(dim: dim, heads: heads, qkvBias: qkvBias, useRelPos: useRelPos,
                            inputSize: windowSize == 0 ? inputSize : (windowSize, windowSize))
        norm2 = LayerNorm(dim, eps: eps)
        mlp = MLPBlock(embeddingDim: dim, mlpDim: Int(Double(dim) * mlpRatio))
    }

    public func namedParameters() -> [(String, Parameter)] {
        prefixed("norm1.", norm1) + prefixed("attn.", attn) + prefixed("norm2.", norm2) + prefixed("mlp.", mlp)
    }

    /// x: (B, H, W, C) -> y: (B, H, W, C)
    public func forward(_ x: Tensor, mode: ForwardMode) -> Tensor {
        precondition(x.rank == 4 && x.shape[3] == dim,
                     "ViTBlock(\(dim), heads \(heads), window \(windowSize)): expected (B, H, W, \(dim)), got \(x.shape)")
        let B = x.shape[0], H = x.shape[1], W = x.shape[2], C = dim, ws = windowSize
        let xn = norm1.forward(x, mode: mode)  // (B, H, W, C)
        var x1: Tensor                          // (B, H, W, C)
        if ws > 0 {
            // windows: (B·nH·nW, ws, ws, C)
            let windows = windowPartition(xn, window: ws)
            let a = attn.forward(windows.reshaped([windows.shape[0], ws, ws, C]), mode: mode)
            x1 = windowReverse(a.reshaped([a.shape[0], ws * ws, C]), window: ws, batch: B, height: H, width: W)
        } else {
            x1 = attn.forward(xn, mode: mode)
        }
        x1.add(x)
        var y = mlp.forward(norm2.forward(x1, mode: mode), mode: mode)
        y.add(x1)
        geometry = mode.keepsActivations ? (B, H, W) : nil
        return y
    }

    /// dy: (B, H, W, C) -> dx: (B, H, W, C)
    public func backward(_ dy: Tensor) -> Tensor {
        guard let (B, H, W) = geometry else { preconditionFailure("ViTBlock.backward without a training-mode forward") }
        let C = dim, ws = windowSize
        precondition(dy.shape == [B, H, W, C], "ViTBlock.backward: expected dy of shape \([B, H, W, C]), got \(dy.shape)")
        var dx1 = norm2.backward(mlp.backward(dy))  // (B, H, W, C)
        dx1.add(dy)
        let dxn: Tensor
        if ws > 0 {
            // windowPartition is windowReverse's adjoint and vice versa (Windows.swift).
            let da = windowPartition(dx1, window: ws)  // (B·nH·nW, ws·ws, C)
            let dw = attn.backward(da.reshaped([da.shape[0], ws, ws, C]))
            dxn = windowReverse(dw.reshaped([dw.shape[0], ws * ws, C]), window: ws, batch: B, height: H, width: W)
        } else {
            dxn = attn.backward(dx1)
        }
        var dx = norm1.backward(dxn)
        dx.add(dx1)
        geometry = nil
        return dx
    }
}

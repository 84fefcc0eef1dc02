"""SAM attention layers, MLPs and the SAM ViT block: reference dumps built from MobileSAM's own
classes (mobile_sam.modeling: transformer.Attention, image_encoder.Attention / Block,
common.MLPBlock, mask_decoder.MLP), every parameter randomised (rel_pos tables included)."""
import functools

import torch
from common import randn, reference, round_module, run_layer, seed


def randomise(m, scale=0.3):
    """Linear weights and biases, rel_pos tables: N(0, scale²) (rel_pos: N(0, 0.5²));
    LayerNorm weights 1 + N(0, scale²), biases N(0, scale²)."""
    with torch.no_grad():
        for name, mod in m.named_modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(1 + torch.randn_like(mod.weight) * scale)
                mod.bias.copy_(torch.randn_like(mod.bias) * scale)
            elif isinstance(mod, torch.nn.Linear):
                mod.weight.copy_(torch.randn_like(mod.weight) * scale)
                if mod.bias is not None:
                    mod.bias.copy_(torch.randn_like(mod.bias) * scale)
        for name, p in m.named_parameters():
            if "rel_pos" in name:
                p.copy_(torch.randn_like(p) * 0.5)
    return m


def generate():
    reference()  # puts mobile_sam on sys.path
    from mobile_sam.modeling import common, image_encoder, mask_decoder, transformer

    # transformer.Attention(embedding_dim, num_heads, downsample_rate): three inputs q, k, v.
    seed(21)
    m = round_module(randomise(transformer.Attention(8, 2, downsample_rate=1)))
    run_layer("sam_attention_ds1", m, [randn(2, 3, 8), randn(2, 5, 8), randn(2, 5, 8)],
              {"embedding": 8, "heads": 2, "downsample": 1})
    m = round_module(randomise(transformer.Attention(8, 2, downsample_rate=2)))
    run_layer("sam_attention_ds2", m, [randn(2, 4, 8), randn(2, 6, 8), randn(2, 6, 8)],
              {"embedding": 8, "heads": 2, "downsample": 2})

    # image_encoder.Attention with decomposed relative positions on a non-square 3×4 grid.
    seed(22)
    m = round_module(randomise(image_encoder.Attention(8, num_heads=2, qkv_bias=True, use_rel_pos=True,
                                                       input_size=(3, 4))))
    run_layer("vit_attention_relpos", m, randn(2, 3, 4, 8),
              {"dim": 8, "heads": 2, "qkv_bias": 1, "rel_pos": 1, "height": 3, "width": 4})
    # ... and without relative positions or qkv bias, on a 2×3 grid.
    m = round_module(randomise(image_encoder.Attention(8, num_heads=4, qkv_bias=False, use_rel_pos=False)))
    run_layer("vit_attention_plain", m, randn(1, 2, 3, 8),
              {"dim": 8, "heads": 4, "qkv_bias": 0, "rel_pos": 0, "height": 2, "width": 3})

    # image_encoder.Block as SAM builds it (LayerNorm eps 1e-6, GELU, qkv bias, rel pos):
    # windowed with padding (5×6 grid, window 4 -> 8×8 padded), and global on a 3×4 grid.
    seed(23)
    norm = functools.partial(torch.nn.LayerNorm, eps=1e-6)
    m = round_module(randomise(image_encoder.Block(8, num_heads=2, mlp_ratio=2.0, qkv_bias=True,
                                                   norm_layer=norm, use_rel_pos=True, window_size=4,
                                                   input_size=(5, 6))))
    run_layer("vit_block_window", m, randn(2, 5, 6, 8),
              {"dim": 8, "heads": 2, "mlp_ratio": 2, "window": 4, "height": 5, "width": 6})
    m = round_module(randomise(image_encoder.Block(8, num_heads=2, mlp_ratio=2.0, qkv_bias=True,
                                                   norm_layer=norm, use_rel_pos=True, window_size=0,
                                                   input_size=(3, 4))))
    run_layer("vit_block_global", m, randn(2, 3, 4, 8),
              {"dim": 8, "heads": 2, "mlp_ratio": 2, "window": 0, "height": 3, "width": 4})

    # common.MLPBlock (GELU) and mask_decoder.MLP (3 layers, ReLU, sigmoid output).
    seed(24)
    m = round_module(randomise(common.MLPBlock(8, 16), scale=0.5))
    run_layer("mlp_block", m, randn(2, 3, 8), {"embedding": 8, "mlp": 16})
    m = round_module(randomise(mask_decoder.MLP(6, 10, 5, 3, sigmoid_output=True), scale=0.5))
    run_layer("mlp3_sigmoid", m, randn(2, 3, 6),
              {"in": 6, "hidden": 10, "out": 5, "layers": 3, "sigmoid": 1})

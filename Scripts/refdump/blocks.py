"""TinyViTBlock and the encoder neck, from the reference classes, randomised, train mode
(BatchNorm batch statistics)."""
import torch
from common import randn, reference, run_layer, seed
from models import randomise, to_f64


def generate():
    seed(31)
    tv = reference().tiny_vit_sam
    # 5×6 grid in 4×4 windows: padding on both axes, 4 windows per image.
    blk = to_f64(randomise(tv.TinyViTBlock(dim=8, input_resolution=(5, 6), num_heads=2, window_size=4,
                                           mlp_ratio=4.0, local_conv_size=3)))
    blk.train()
    run_layer("tinyvit_block_windowed", blk, randn(2, 30, 8), {"dim": 8, "height": 5, "width": 6, "heads": 2, "window": 4})
    # 4×4 grid with window 4: the unpartitioned path.
    blk = to_f64(randomise(tv.TinyViTBlock(dim=6, input_resolution=(4, 4), num_heads=3, window_size=4)))
    blk.train()
    run_layer("tinyvit_block_direct", blk, randn(2, 16, 6), {"dim": 6, "height": 4, "width": 4, "heads": 3, "window": 4})
    neck = torch.nn.Sequential(torch.nn.Conv2d(10, 12, 1, bias=False), tv.LayerNorm2d(12),
                               torch.nn.Conv2d(12, 12, 3, padding=1, bias=False), tv.LayerNorm2d(12))
    run_layer("encoder_neck", to_f64(randomise(neck)), randn(2, 10, 5, 4), {"in": 10, "out": 12})

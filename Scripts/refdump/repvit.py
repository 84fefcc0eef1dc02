"""Reference dumps for the RepViT family (Sources/Layers/RepViT.swift, Sources/SegmentAnything/RepViT.swift):
EdgeSAM's RepViT encoder (edge_sam/modeling/rep_vit.py, `RepViT(arch, fuse=True)`) written here from
its published architecture with the same state-dict keys, timm's SqueezeExcite as EdgeSAM imports it,
randomised, float64.

repvit_block_{s1,s2}: a stride-1 block (RepVGGDW + SE) on (2, 8, 6, 5) and a stride-2 downsampling
block with SE, 8 → 16 channels on (2, 8, 7, 6) (odd sides), train mode.
bicubic_upsample: F.interpolate(×2, bicubic, align_corners=False) of (2, 3, 5, 4).
repvit_small_{train,eval}: image 64, embed_dims [8, 16, 24, 32], depths [2, 2, 3, 2], SE on blocks
[0, 3, 4, 7] (stride 1 and stride 2), fusion 16 channels, neck 12; input (2, 3, 64, 64).
"""
import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import SqueezeExcite

from common import randn, run_layer, save, seed
from models import randomise, to_f64


class ConvBN(nn.Sequential):
    def __init__(self, a, b, k=1, stride=1, groups=1, bn_weight=1.0):
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, k, stride, (k - 1) // 2, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(b))
        nn.init.constant_(self.bn.weight, bn_weight)


class RepVGGDW(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = ConvBN(c, c, 3, groups=c)
        self.conv1 = ConvBN(c, c, 1, groups=c)

    def forward(self, x):
        return self.conv(x) + self.conv1(x) + x


class Residual(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return x + self.m(x)


class Block(nn.Module):
    def __init__(self, inp, oup, stride, se):
        super().__init__()
        gate = SqueezeExcite(inp, 0.25) if se else nn.Identity()
        if stride == 2:
            self.token_mixer = nn.Sequential(ConvBN(inp, inp, 3, 2, groups=inp), gate, ConvBN(inp, oup))
        else:
            self.token_mixer = nn.Sequential(RepVGGDW(inp), gate)
        self.channel_mixer = Residual(nn.Sequential(ConvBN(oup, 2 * oup), nn.GELU(), ConvBN(2 * oup, oup, bn_weight=0)))

    def forward(self, x):
        return self.channel_mixer(self.token_mixer(x))


class Upsample(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)


class OpSequential(nn.Module):
    def __init__(self, ops):
        super().__init__()
        self.op_list = nn.ModuleList(ops)

    def forward(self, x):
        for op in self.op_list:
            x = op(x)
        return x


class LayerNorm2d(nn.Module):
    def __init__(self, c, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * (x - u) / torch.sqrt(s + self.eps) + self.bias[:, None, None]


class RepViT(nn.Module):
    def __init__(self, cin=3, dims=(8, 16, 24, 32), depths=(2, 2, 3, 2), se=(0, 3, 4, 7), fusion=16, neck=12):
        super().__init__()
        layers = [nn.Sequential(ConvBN(cin, dims[0] // 2, 3, 2), nn.GELU(), ConvBN(dims[0] // 2, dims[0], 3, 2))]
        c, i = dims[0], 0
        self.stage2_end = sum(depths[:3])  # index in features of stage 2's last block
        for s, (d, n) in enumerate(zip(dims, depths)):
            for j in range(n):
                layers.append(Block(c, d, 2 if s > 0 and j == 0 else 1, i in se))
                c, i = d, i + 1
        self.features = nn.ModuleList(layers)
        self.fuse_stage2 = nn.Conv2d(dims[2], fusion, 1, bias=False)
        self.fuse_stage3 = OpSequential([nn.Conv2d(dims[3], fusion, 1, bias=False), Upsample()])
        self.neck = nn.Sequential(nn.Conv2d(fusion, neck, 1, bias=False), LayerNorm2d(neck),
                                  nn.Conv2d(neck, neck, 3, padding=1, bias=False), LayerNorm2d(neck))

    def forward(self, x):
        for k, f in enumerate(self.features):
            x = f(x)
            if k == self.stage2_end:
                s2 = x
        return self.neck(self.fuse_stage2(s2) + self.fuse_stage3(x))


def generate():
    seed(61)
    run_layer("repvit_block_s1", to_f64(randomise(Block(8, 8, 1, True))).train(), randn(2, 8, 6, 5),
              {"in": 8, "out": 8, "stride": 1, "se": 1})
    run_layer("repvit_block_s2", to_f64(randomise(Block(8, 16, 2, True))).train(), randn(2, 8, 7, 6),
              {"in": 8, "out": 16, "stride": 2, "se": 1})
    run_layer("bicubic_upsample", Upsample(), randn(2, 3, 5, 4), {"factor": 2})
    for mode in ["train", "eval"]:
        seed(62)
        m = to_f64(randomise(RepViT()))
        m.train(mode == "train")
        run_layer(f"repvit_small_{mode}", m, randn(2, 3, 64, 64), {"mode": mode})

"""Convolution family reference dumps: nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d (train and
eval), and TinyViT's conv blocks built from the MobileSAM reference code (tiny_vit_sam.Conv2d_BN,
PatchEmbed, MBConv, PatchMerging)."""
import math

import torch
from torch import nn
from common import randn, reference, round_module, run_layer, save, seed


def randomise(m):
    """Random weights everywhere (PyTorch's BN init of ones/zeros would hide mistakes); running
    statistics too, so eval mode and the momentum update are exercised."""
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d):
                fan_in = mod.weight.shape[1] * mod.weight.shape[2] * mod.weight.shape[3]
                mod.weight.copy_(torch.randn_like(mod.weight) / fan_in ** 0.5)
                if mod.bias is not None:
                    mod.bias.copy_(torch.randn_like(mod.bias) * 0.5)
            elif isinstance(mod, nn.ConvTranspose2d):
                mod.weight.copy_(torch.randn_like(mod.weight) / mod.weight.shape[0] ** 0.5)
                if mod.bias is not None:
                    mod.bias.copy_(torch.randn_like(mod.bias) * 0.5)
            elif isinstance(mod, nn.BatchNorm2d):
                mod.weight.copy_(1 + 0.5 * torch.randn_like(mod.weight))
                mod.bias.copy_(0.5 * torch.randn_like(mod.bias))
                mod.running_mean.copy_(0.5 * torch.randn_like(mod.running_mean))
                mod.running_var.copy_(0.5 + torch.rand_like(mod.running_var))
    return round_module(m)


def conv(name, cin, cout, k, s, p, groups, bias, xshape):
    m = randomise(nn.Conv2d(cin, cout, k, s, p, groups=groups, bias=bias))
    run_layer(name, m, randn(*xshape),
              {"in": cin, "out": cout, "kernel": k, "stride": s, "padding": p, "groups": groups, "bias": int(bias)})


def generate():
    seed(21)
    conv("conv2d_3x3", 4, 5, 3, 1, 1, 1, True, (2, 4, 6, 7))
    conv("conv2d_1x1_nobias", 6, 4, 1, 1, 0, 1, False, (2, 6, 5, 3))
    conv("conv2d_grouped_s2", 6, 4, 3, 2, 1, 2, True, (2, 6, 7, 6))
    conv("conv2d_depthwise_s1", 5, 5, 3, 1, 1, 5, True, (2, 5, 6, 5))
    conv("conv2d_depthwise_s2", 5, 5, 3, 2, 1, 5, True, (2, 5, 7, 8))
    conv("conv2d_patch4", 3, 4, 4, 4, 0, 1, True, (2, 3, 8, 12))

    seed(22)
    m = randomise(nn.ConvTranspose2d(6, 4, kernel_size=2, stride=2))
    run_layer("convtranspose2d", m, randn(2, 6, 3, 4), {"in": 6, "out": 4, "kernel": 2})

    seed(23)
    m = randomise(nn.BatchNorm2d(5)).train()
    run_layer("batchnorm2d_train", m, randn(3, 5, 4, 3, scale=1.5) + 0.7, {"channels": 5})
    m = randomise(nn.BatchNorm2d(5)).eval()
    run_layer("batchnorm2d_eval", m, randn(3, 5, 4, 3, scale=1.5) + 0.7, {"channels": 5})

    generate_tinyvit()


def generate_tinyvit():
    tv = reference().tiny_vit_sam
    seed(24)
    m = randomise(tv.Conv2d_BN(4, 6, 3, 2, 1)).train()
    run_layer("conv2d_bn_train", m, randn(2, 4, 7, 6), {"in": 4, "out": 6, "kernel": 3, "stride": 2, "padding": 1, "groups": 1})
    m = randomise(tv.Conv2d_BN(6, 6, 3, 1, 1, groups=6)).eval()
    run_layer("conv2d_bn_eval", m, randn(2, 6, 5, 4), {"in": 6, "out": 6, "kernel": 3, "stride": 1, "padding": 1, "groups": 6})

    seed(25)
    m = randomise(tv.PatchEmbed(3, 8, 16, nn.GELU)).train()
    run_layer("patch_embed", m, randn(2, 3, 16, 12), {"in": 3, "embed": 8})

    seed(26)
    m = randomise(tv.MBConv(4, 4, 4.0, nn.GELU, 0.0)).train()
    run_layer("mbconv_train", m, randn(2, 4, 6, 5), {"channels": 4, "expand": 4})
    m = randomise(tv.MBConv(3, 3, 2.0, nn.GELU, 0.0)).eval()
    run_layer("mbconv_eval", m, randn(2, 3, 5, 4), {"channels": 3, "expand": 2})

    seed(27)
    # Tokens input (B, H·W, dim), stride 2, odd width (output ⌈W/2⌉).
    m = randomise(tv.PatchMerging((6, 5), 4, 6, nn.GELU)).train()
    run_layer("patch_merging_tokens", m, randn(2, 30, 4), {"height": 6, "width": 5, "dim": 4, "out": 6})
    # NCHW input, eval mode.
    m = randomise(tv.PatchMerging((4, 6), 3, 5, nn.GELU)).eval()
    run_layer("patch_merging_map", m, randn(2, 3, 4, 6), {"height": 4, "width": 6, "dim": 3, "out": 5})
    generate_patch_merging_stride1(tv)


def formula(n, salt, lo, hi):
    """Deterministic values lo + (hi − lo)·q/2003, q = (i·7919 + salt·104729) mod 2003, computed
    in float64 in this exact order (the Swift test computes the same doubles), rounded to float32."""
    vals = [lo + (hi - lo) * (((i * 7919 + salt * 104729) % 2003) / 2003.0) for i in range(n)]
    return torch.tensor(vals, dtype=torch.float64).float().double()


# Ranges per kind of tensor (shared with the Swift test).
FORMULA_RANGES = {"c.weight": None, "bn.weight": (0.5, 1.5), "bn.bias": (-0.3, 0.3),
                  "bn.running_mean": (-0.3, 0.3), "bn.running_var": (0.5, 1.5)}


def generate_patch_merging_stride1(tv):
    """PatchMerging with out_dim 320 (the reference switches conv2 to stride 1). Its 320×320 conv3
    weight is too big to store, so every parameter and buffer comes from `formula` (salt = index
    in state-dict order); conv weights span ±sqrt(3 / fan_in). The conv3 weight gradient is
    stored as its first 8 rows plus its row and column sums."""
    dim, out, H, W = 2, 320, 2, 2
    m = tv.PatchMerging((H, W), dim, out, nn.GELU).double().train()
    assert m.conv2.c.stride == (1, 1)
    with torch.no_grad():
        for salt, (k, v) in enumerate((k, v) for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")):
            kind = k.split(".", 1)[1]
            if kind == "c.weight":
                fan_in = v.shape[1] * v.shape[2] * v.shape[3]
                bound = math.sqrt(3.0 / fan_in)
                lo, hi = -bound, bound
            else:
                lo, hi = FORMULA_RANGES[kind]
            v.copy_(formula(v.numel(), salt, lo, hi).view(v.shape))
    seed(28)
    x = randn(1, H * W, dim).requires_grad_(True)
    y = m(x)
    dy = randn(*y.shape)
    y.backward(dy)
    g3 = m.conv3.c.weight.grad
    out_t = {"x": x, "y": y, "dy": dy, "dx": x.grad,
             "gradslice.conv3.c.weight": g3.reshape(out, out)[:8],
             "gradrowsum.conv3.c.weight": g3.reshape(out, out).sum(1),
             "gradcolsum.conv3.c.weight": g3.reshape(out, out).sum(0)}
    for k, p in m.named_parameters():
        if k != "conv3.c.weight":
            out_t["grad." + k] = p.grad
    for k, v in m.state_dict().items():
        if "running" in k:
            out_t["buffer." + k] = v
    save("patch_merging_stride1", out_t, {"height": H, "width": W, "dim": dim, "out": out, "formula": 1})

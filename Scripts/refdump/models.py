"""Whole-encoder reference dumps: a small TinyViT on MobileSAM's exact code path, and a small SAM
ViT encoder, forward + backward in training mode (BatchNorm with batch statistics), plus an
eval-mode forward. Built from the reference classes (mobile_sam.modeling), randomised so that no
parameter sits at a constant initialisation.

Small TinyViT: 64×64 input, embed_dims [16, 24, 32, 40], depths [1, 2, 1, 1], heads [1, 2, 2, 4],
window_sizes [7, 7, 3, 4] -> stage grids 16, 8, 4, 4: MBConv stage, windowed attention with
padding (8×8 in 7×7 windows, 4×4 in 3×3 windows), the unpartitioned path (4×4 = window 4),
PatchMerging with stride 2 and stride 1, neck narrowed to 32 channels (MobileSAM's is 256).
Small ViT: 40×40 input, patch 8 -> 5×5 grid, embed 32, 2 heads, depth 3 with global attention at
block 1 and 3×3 windows (padded to 6×6) elsewhere, relative positions, neck to 24 channels.
"""
import torch
from common import f32, randn, reference, save, seed, grads


def randomise(m):
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() >= 2 and "attention_biases" not in name and "rel_pos" not in name and "pos_embed" not in name:
                fan_in = p[0].numel()
                p.copy_(torch.randn_like(p) / fan_in ** 0.5)
            elif name.endswith("weight"):  # norm weights
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn_like(b))
            elif name.endswith("running_var"):
                b.copy_(1 + 0.2 * torch.rand_like(b))
    return m


def to_f64(m):
    with torch.no_grad():
        for t in list(m.parameters()) + [b for b in m.buffers() if b.dtype.is_floating_point]:
            t.copy_(t.float().double())
    return m.double()


def dump(name, model, x, metadata, skip=lambda k: False):
    before = {f"buffer.initial.{k}": v.clone() for k, v in model.state_dict().items() if "running" in k}
    params = {f"param.{k}": v.clone() for k, v in model.state_dict().items()
              if not k.endswith("num_batches_tracked") and not skip(k) and "attention_bias_idxs" not in k}
    model.train()
    xg = x.clone().requires_grad_(True)
    y = model(xg)
    dy = randn(*y.shape)
    y.backward(dy)
    after = {f"buffer.{k}": v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.eval()
    with torch.no_grad():
        y_eval = model(x)
    out = {"x": x, "y": y, "dy": dy, "dx": xg.grad, "y_eval": y_eval}
    out.update(params)
    out.update(before)
    out.update(after)
    out.update({k: v for k, v in grads(model).items() if not skip(k[5:])})
    save(name, {k: v for k, v in out.items()}, metadata)


def tinyvit():
    seed(21)
    ref = reference()
    tv = ref.tiny_vit_sam
    m = tv.TinyViT(img_size=64, in_chans=3, num_classes=0, embed_dims=[16, 24, 32, 40], depths=[1, 2, 1, 1],
                   num_heads=[1, 2, 2, 4], window_sizes=[7, 7, 3, 4], mlp_ratio=4.0, drop_rate=0.0,
                   drop_path_rate=0.0, mbconv_expand_ratio=4.0, local_conv_size=3)
    # The reference picks PatchMerging stride 1 only for 320/448/576-wide outputs; at these narrow
    # widths set the last merge's stride to 1 explicitly (MobileSAM's 160→320 merge).
    m.layers[2].downsample.conv2.c.stride = (1, 1)
    m.neck = torch.nn.Sequential(torch.nn.Conv2d(40, 32, 1, bias=False), tv.LayerNorm2d(32),
                                 torch.nn.Conv2d(32, 32, 3, padding=1, bias=False), tv.LayerNorm2d(32))

    def forward_features(x):  # the reference hard-codes the 64×64 grid of a 1024 input
        x = m.patch_embed(x)
        for layer in m.layers:
            x = layer(x)
        B, L, C = x.shape
        r = int(L ** 0.5)
        return m.neck(x.view(B, r, r, C).permute(0, 3, 1, 2))
    m.forward = forward_features
    to_f64(randomise(m))
    dump("tinyvit_small", m, randn(2, 3, 64, 64),
         {"image_size": 64, "embed_dims": "16,24,32,40", "depths": "1,2,1,1", "num_heads": "1,2,2,4",
          "window_sizes": "7,7,3,4", "merge_strides": "2,2,1", "neck_channels": 32},
         skip=lambda k: k.startswith("norm_head.") or k.startswith("head."))


def vit():
    seed(22)
    ref = reference()
    from functools import partial
    m = ref.ImageEncoderViT(img_size=40, patch_size=8, in_chans=3, embed_dim=32, depth=3, num_heads=2,
                            mlp_ratio=4.0, out_chans=24, qkv_bias=True,
                            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_abs_pos=True,
                            use_rel_pos=True, rel_pos_zero_init=True, window_size=3, global_attn_indexes=(1,))
    to_f64(randomise(m))
    dump("vit_small", m, randn(2, 3, 40, 40),
         {"image_size": 40, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2, "out_channels": 24,
          "window_size": 3, "global_attention_indexes": "1"})


def generate():
    tinyvit()
    vit()

"""Fidelity of the Swift trainer with PyTorch: the same tiny distillation recipe run in PyTorch
(float64) for 20 steps; dumps the loss, lr and gradient-norm sequences to
Tests/Fixtures/train_fidelity.safetensors (a few hundred bytes). Tests/DistillTests/TrainerTests
runs the Swift trainer on the identical recipe and requires every loss within 1%.

Identical on both sides, without storing tensors:
  * model: MobileSAM's reference TinyViT (tiny_vit_sam.py) at 64×64, embed_dims [8, 16, 24, 32],
    depths [1, 1, 1, 1], heads [1, 2, 2, 4], windows [7, 4, 2, 2], merge strides [2, 2, 1],
    neck 16 channels (the reference's 256-channel neck replaced by the same modules, narrower);
  * initial weights: `fidelity_init` below (xoshiro256** uniform draws in sorted key order);
  * data: 6 images U(-2, 2) (3×64×64) and targets U(-1, 1) (16×4×4) from xoshiro seeds 11 / 12;
  * batch order: the Swift `BatchOrder` (seeded Fisher–Yates per epoch), batch 2, accumulation 2;
  * AdamW(betas .9/.999, eps 1e-8, wd 0.05 on conv/linear weights only), clip_grad_norm 1.0,
    warmup-cosine lr (peak 2e-3, 3 warmup steps, 20 total), MSE loss, BatchNorm in train mode.
"""
import math

import numpy as np
import torch

from common import reference, save

M64 = (1 << 64) - 1


class Xoshiro:
    """Tensor/Random.swift's SeededRandom: xoshiro256** seeded through SplitMix64."""

    def __init__(self, seed):
        z = seed & M64
        s = []
        for _ in range(4):
            z = (z + 0x9E3779B97F4A7C15) & M64
            x = z
            x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
            x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
            s.append(x ^ (x >> 31))
        self.s = s

    def next(self):
        s = self.s
        r = (((s[1] * 5) & M64) << 7 | ((s[1] * 5) & M64) >> 57) & M64
        r = (r * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]
        s[2] ^= t
        s[3] = ((s[3] << 45) | (s[3] >> 19)) & M64
        return r

    def uniform(self, lo, hi):
        u = np.float32(self.next() >> 40) * np.float32(1.0 / (1 << 24))
        return np.float32(lo) + (np.float32(hi) - np.float32(lo)) * u


def uniform_tensor(shape, lo, hi, rng):
    n = int(np.prod(shape))
    return torch.tensor(np.array([rng.uniform(lo, hi) for _ in range(n)], dtype=np.float32).reshape(shape))


def permutation(seed, epoch, count):
    rng = Xoshiro(seed ^ (((epoch + 1) * 0x9E3779B97F4A7C15) & M64))
    p = list(range(count))
    for i in range(count - 1, 0, -1):
        j = (rng.next() * (i + 1)) >> 64
        p[i], p[j] = p[j], p[i]
    return p


def rows(seed, count, cursor, n):
    return [permutation(seed, c // count, count)[c % count] for c in range(cursor, cursor + n)]


def fidelity_init(state, seed=5):
    """Sorted keys; running_mean 0, running_var 1; rank ≥ 2: U(±1/√(numel/shape[0]));
    rank-1 `…weight`: 1 + U(±0.1); other rank-1 and attention_biases: U(±0.1)."""
    rng = Xoshiro(seed)
    out = {}
    for k in sorted(state):
        v = state[k]
        if k.endswith("running_mean"):
            out[k] = torch.zeros(v.shape)
        elif k.endswith("running_var"):
            out[k] = torch.ones(v.shape)
        elif v.dim() >= 2 and not k.endswith("attention_biases"):
            b = np.float32(1 / math.sqrt(v.numel() / v.shape[0]))
            out[k] = uniform_tensor(v.shape, -b, b, rng)
        elif k.endswith("weight"):
            out[k] = uniform_tensor(v.shape, -0.1, 0.1, rng) + 1
        else:
            out[k] = uniform_tensor(v.shape, -0.1, 0.1, rng)
    return out


def lr_at(step, peak=2e-3, warmup=3, total=20, low=0.0):
    if step < warmup:
        return peak * (step + 1) / warmup
    if step >= total:
        return low
    return low + (peak - low) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def build():
    tv = reference().tiny_vit_sam
    m = tv.TinyViT(img_size=64, in_chans=3, num_classes=0, embed_dims=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                   num_heads=[1, 2, 2, 4], window_sizes=[7, 4, 2, 2], mlp_ratio=4.0, drop_rate=0.0,
                   drop_path_rate=0.0, mbconv_expand_ratio=4.0, local_conv_size=3)
    m.layers[2].downsample.conv2.c.stride = (1, 1)
    m.neck = torch.nn.Sequential(torch.nn.Conv2d(32, 16, 1, bias=False), tv.LayerNorm2d(16),
                                 torch.nn.Conv2d(16, 16, 3, padding=1, bias=False), tv.LayerNorm2d(16))

    def forward(x):  # the reference hard-codes the 64×64 grid of a 1024 input
        x = m.patch_embed(x)
        for layer in m.layers:
            x = layer(x)
        B, L, C = x.shape
        r = int(L ** 0.5)
        return m.neck(x.view(B, r, r, C).permute(0, 3, 1, 2))
    m.forward = forward
    return m


def generate():
    torch.manual_seed(0)
    m = build()
    keys = [k for k in m.state_dict() if not (k.startswith("norm_head.") or k.startswith("head.")
                                                 or k.endswith("num_batches_tracked"))]
    init = fidelity_init({k: m.state_dict()[k] for k in keys})
    m.load_state_dict(init, strict=False)
    m.double().train()

    N, seed, B, A, steps = 6, 7, 2, 2, 20
    images = uniform_tensor((N, 3, 64, 64), -2, 2, Xoshiro(11)).double()
    targets = uniform_tensor((N, 16, 4, 4), -1, 1, Xoshiro(12)).double()

    named = [(k, p) for k, p in m.named_parameters() if not (k.startswith("norm_head.") or k.startswith("head."))]
    decay = [p for k, p in named if p.dim() > 1 and not k.endswith("attention_biases")]
    no_decay = [p for k, p in named if not (p.dim() > 1 and not k.endswith("attention_biases"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr_at(0), betas=(0.9, 0.999), eps=1e-8)
    params = decay + no_decay
    losses, lrs, norms = [], [], []
    cursor = 0
    for step in range(steps):
        opt.zero_grad(set_to_none=False)
        total = 0.0
        for _ in range(A):
            r = rows(seed, N, cursor, B)
            cursor += B
            y = m(images[r])
            loss = torch.nn.functional.mse_loss(y, targets[r])
            total += loss.item()
            (loss / A).backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0).item()
        lr = lr_at(step)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        losses.append(total / A); lrs.append(lr); norms.append(norm)
        print(f"  step {step + 1:2d}  loss {total / A:.6f}  lr {lr:.2e}  grad_norm {norm:.4f}")
    save("train_fidelity", {"losses": torch.tensor(losses), "lrs": torch.tensor(lrs),
                            "grad_norms": torch.tensor(norms)},
         {"steps": steps, "batch_size": B, "grad_accumulation": A, "seed": seed})

"""The mask losses of prompt-in-the-loop distillation on low-res (256×256) decoder logits, written as
EdgeSAM writes them (its sigmoid_ce_loss and dice_loss, after DETR/SAM: per mask, summed over the
masks, divided by num_masks), against Layers' bceWithLogitsLoss and diceLoss.

Closed-formula inputs, evaluated by Tests/LayersTests/LossTests.swift too (no input fixture):
  logits[m, y, x] = 8 · sin(0.031x + 0.7m) · cos(0.023y − 0.4m) + 0.5       (float64 → float32)
  target[m, y, x] = 1 where (x − 100 − 30m)² + (y − 140)² < 70², else 0
for m in 0..<3.

Fixture mask_losses.safetensors: bce.value, dice.value (shape [1]; full precision in the metadata),
bce.grad_sub, dice.grad_sub = d value / d logits subsampled [:, 3::8, 5::8] (3, 32, 32).
"""
import numpy as np
import torch
import torch.nn.functional as F
from common import save

M = 3


def logits():
    m = np.arange(M, dtype=np.float64)[:, None, None]
    y = np.arange(256, dtype=np.float64)[None, :, None]
    x = np.arange(256, dtype=np.float64)[None, None, :]
    v = 8 * np.sin(0.031 * x + 0.7 * m) * np.cos(0.023 * y - 0.4 * m) + 0.5
    return torch.from_numpy(v.astype(np.float32)).double()


def target():
    m = np.arange(M, dtype=np.float64)[:, None, None]
    y = np.arange(256, dtype=np.float64)[None, :, None]
    x = np.arange(256, dtype=np.float64)[None, None, :]
    return torch.from_numpy(((x - 100 - 30 * m) ** 2 + (y - 140) ** 2 < 70 ** 2).astype(np.float64))


def sigmoid_ce_loss(inputs, targets, num_masks):
    """EdgeSAM / SAM-HQ: mean BCE per mask, summed, / num_masks."""
    loss = F.binary_cross_entropy_with_logits(inputs.flatten(1), targets.flatten(1), reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(inputs, targets, num_masks):
    """EdgeSAM / DETR: 1 − (2 Σ p·t + 1) / (Σ p + Σ t + 1) per mask, summed, / num_masks."""
    inputs = inputs.sigmoid().flatten(1)
    targets = targets.flatten(1)
    numerator = 2 * (inputs * targets).sum(-1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss.sum() / num_masks


def generate():
    out, meta = {}, {}
    t = target()
    for name, fn in [("bce", sigmoid_ce_loss), ("dice", dice_loss)]:
        x = logits().requires_grad_(True)
        value = fn(x, t, M)
        value.backward()
        out[f"{name}.value"] = value.detach().reshape(1)
        out[f"{name}.grad_sub"] = x.grad[:, 3::8, 5::8]
        meta[f"{name}.value"] = repr(value.item())
        print(f"  {name}: {value.item():.8f}")
    meta["subsample"] = "grad_sub [:, 3::8, 5::8]"
    save("mask_losses", out, meta)

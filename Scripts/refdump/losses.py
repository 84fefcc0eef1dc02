"""Loss reference dumps (Sources/Layers/Losses.swift): one file, `losses.safetensors`.

For each case NAME: NAME.prediction, NAME.target, NAME.value (shape [1]), NAME.grad (d value /
d prediction by autograd). Computed in float64 from float32 values (common.py conventions).
PyTorch's own functionals where they exist (mse_loss, l1_loss, huber_loss,
binary_cross_entropy_with_logits); the masked MSE and Dice formulas are written out here.
"""
import torch
import torch.nn.functional as F
from common import randn, save, seed


def masked_mse(p, t, regions, per_sample):
    """Top-left regions[b] = (h, w) of each sample's (C, H, W) map are valid."""
    valid = torch.zeros_like(p)
    for b, (h, w) in enumerate(regions):
        valid[b, :, :h, :w] = 1
    sq = (p - t) ** 2 * valid
    if not per_sample:
        return sq.sum() / valid.sum()
    # EdgeSAM's normalisation: per-sample sum / (C·h·w), then the mean over samples.
    per = sq.flatten(1).sum(1) / valid.flatten(1).sum(1)
    return per.mean()


def dice(logits, target, smooth):
    """DETR/SAM dice loss: masks are the last two dims; mean over masks."""
    p = logits.sigmoid().flatten(-2)
    t = target.flatten(-2)
    num = 2 * (p * t).sum(-1) + smooth
    den = p.sum(-1) + t.sum(-1) + smooth
    return (1 - num / den).mean()


def edgesam_valid_cells(h, grid=64, size=1024):
    """EdgeSAM's valid mask: bilinear downsampling of the full-resolution mask, > 0.5."""
    valid = torch.zeros(1, 1, size, size, dtype=torch.float64)
    valid[..., :h, :] = 1
    down = F.interpolate(valid, (grid, grid), mode="bilinear", align_corners=False) > 0.5
    return int(down[0, 0, :, 0].sum())


def generate():
    seed(21)
    out = {}
    meta = {}

    def case(name, pred, target, fn):
        pred = pred.clone().requires_grad_(True)
        value = fn(pred, target)
        value.backward()
        out[f"{name}.prediction"] = pred
        out[f"{name}.target"] = target
        out[f"{name}.value"] = value.reshape(1)
        out[f"{name}.grad"] = pred.grad
        meta[f"{name}.value"] = repr(value.item())  # full double precision

    case("mse", randn(2, 3, 4, 5), randn(2, 3, 4, 5), F.mse_loss)
    case("l1", randn(3, 7, 5), randn(3, 7, 5), F.l1_loss)
    # Huber: differences spread over both sides of delta (|d| up to ~4).
    case("huber", randn(4, 25, scale=1.5), randn(4, 25, scale=1.5), F.huber_loss)
    case("huber_delta", randn(4, 25, scale=1.5), randn(4, 25, scale=1.5),
         lambda p, t: F.huber_loss(p, t, delta=0.6))
    meta["huber_delta.delta"] = 0.6

    regions = [(8, 8), (5, 7), (3, 2)]
    p, t = randn(3, 4, 8, 8), randn(3, 4, 8, 8)
    case("masked_mse", p, t, lambda a, b: masked_mse(a, b, regions, False))
    case("masked_mse_per_sample", p, t, lambda a, b: masked_mse(a, b, regions, True))
    meta["masked_mse.regions"] = ";".join(f"{h}x{w}" for h, w in regions)

    logits = randn(2, 3, 6, 7, scale=3.0)
    binary = (torch.rand(2, 3, 6, 7) > 0.6).double()
    soft = torch.rand(2, 3, 6, 7).float().double()
    case("bce", logits, soft, F.binary_cross_entropy_with_logits)
    case("bce_binary", logits * 4, binary, F.binary_cross_entropy_with_logits)  # |x| up to ~40
    case("dice", logits, binary, lambda a, b: dice(a, b, 1.0))
    case("dice_soft", randn(5, 4, 9, scale=2.0), torch.rand(5, 4, 9).float().double(),
         lambda a, b: dice(a, b, 0.5))
    meta["dice_soft.smooth"] = 0.5

    heights = [0, 8, 9, 16, 24, 25, 680, 683, 767, 768, 1023, 1024]
    out["edgesam.heights"] = torch.tensor(heights, dtype=torch.float64)
    out["edgesam.cells"] = torch.tensor([edgesam_valid_cells(h) for h in heights], dtype=torch.float64)
    save("losses", out, meta)

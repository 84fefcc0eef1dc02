"""MobileSAM's real encoder (TinyViT-5M, weights/mobile_sam.pt) on a deterministic 1024×1024
input that the Swift test computes from the same formula, eval mode, float64. Stores a
subsample of the (1, 256, 64, 64) embedding (every 4th channel, every 4th pixel) plus every
channel's mean and standard deviation, so the fixture stays ~70 KB.

Input: x[c, h, w] = float32(2 · sin(0.0123 · (h + 1) · (c + 1)) · cos(0.0071 · (w + 1)))."""
import os
import subprocess

import numpy as np
import torch
from common import reference, save

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def synthetic_input():
    c = np.arange(3)[:, None, None] + 1.0
    h = np.arange(1024)[None, :, None] + 1.0
    w = np.arange(1024)[None, None, :] + 1.0
    x = 2 * np.sin(0.0123 * h * c) * np.cos(0.0071 * w)
    return torch.from_numpy(x.astype(np.float32)).double()[None]


def generate():
    subprocess.check_call([os.path.join(ROOT, "Scripts", "fetch-weights")])
    ref = reference()
    from mobile_sam.build_sam import build_sam_vit_t
    sam = build_sam_vit_t(checkpoint=os.path.join(ROOT, "weights", "mobile_sam.pt"))
    enc = sam.image_encoder.double().eval()
    enc.train(False)  # TinyViT's Attention caches its bias table (`ab`) on train(False)
    with torch.no_grad():
        y = enc(synthetic_input())
    assert y.shape == (1, 256, 64, 64)
    save("mobilesam_encoder", {
        "y_subsample": y[0, ::4, ::4, ::4],
        "y_channel_mean": y[0].mean(dim=(1, 2)),
        "y_channel_std": y[0].std(dim=(1, 2), unbiased=False),
    }, {"formula": "2*sin(0.0123*(h+1)*(c+1))*cos(0.0071*(w+1))"})

"""Antialiased bilinear resampling reference dumps (F.interpolate(mode="bilinear",
align_corners=False, antialias=True)), what a reduced-resolution TinyViT student (`input_resize`)
uses to shrink its input and to bring its embedding grid back up:

bilinear_resample_down: (2, 3, 17, 13) → (7, 6), non-integer factors (2.43, 2.17).
bilinear_resample_up: (2, 4, 5, 7) → (9, 11), plain bilinear with half-pixel centres.
bilinear_resample_mixed: (1, 2, 10, 4) → (6, 9), one axis down, the other up.
"""
import torch.nn.functional as F
from torch import nn

from common import randn, run_layer, seed


class Resample(nn.Module):
    def __init__(self, size):
        super().__init__()
        self.size = size

    def forward(self, x):
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)


def generate():
    seed(81)
    for name, shape, size in [("bilinear_resample_down", (2, 3, 17, 13), (7, 6)),
                              ("bilinear_resample_up", (2, 4, 5, 7), (9, 11)),
                              ("bilinear_resample_mixed", (1, 2, 10, 4), (6, 9))]:
        run_layer(name, Resample(size), randn(*shape), {"height": size[0], "width": size[1]})

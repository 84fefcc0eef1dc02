"""Reference dumps for the conv-only student (Sources/Distill/Students.swift `ConvStudent`):
the same network built from plain torch.nn modules with the same state-dict keys, randomised,
run in float64 in train mode (BatchNorm batch statistics) and eval mode.

conv_student_{train,eval}: image 32, stem 4 channels (stride 4, 7×7 kernel), stages
channels [4, 6, 8], blocks [1, 2, 1], strides [2, 1, 2] (total 32 → one 2×2 transposed conv
back to 2×2), upsample 6 channels, head 1×1 → 8 channels; one input channel (keeps the
dumps small); input (2, 1, 32, 32).
"""
import torch
from torch import nn

from common import randn, run_layer, seed
from models import randomise, to_f64


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (self.downsample(x) if self.downsample is not None else x))


class ConvStudent(nn.Module):
    def __init__(self, cin=1, stem=4, stem_stride=4, channels=(4, 6, 8), blocks=(1, 2, 1), strides=(2, 1, 2),
                 up_channels=6, out=8, image=32):
        super().__init__()
        k = 3 if stem_stride <= 2 else 2 * stem_stride - 1
        self.stem = nn.Sequential(nn.Conv2d(cin, stem, k, stem_stride, k // 2, bias=False), nn.BatchNorm2d(stem), nn.ReLU())
        layers, c = [], stem
        for w, n, s in zip(channels, blocks, strides):
            stage = []
            for j in range(n):
                stage.append(BasicBlock(c, w, s if j == 0 else 1))
                c = w
            layers.append(nn.Sequential(*stage))
        self.layers = nn.ModuleList(layers)
        total = stem_stride
        for s in strides:
            total *= s
        up = []
        while total > 16:
            up += [nn.ConvTranspose2d(c, up_channels, 2, 2), nn.ReLU()]
            c = up_channels
            total //= 2
        self.up = nn.Sequential(*up)
        self.head = nn.Conv2d(c, out, 1)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.up(x))


def generate():
    for mode in ["train", "eval"]:
        seed(51)
        m = to_f64(randomise(ConvStudent()))
        m.train(mode == "train")
        run_layer(f"conv_student_{mode}", m, randn(2, 1, 32, 32), {"mode": mode})

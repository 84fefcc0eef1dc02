"""LayerNorm, LayerNorm2d (SAM's), GELU and ReLU reference dumps."""
import torch
from common import randn, round_module, run_layer, seed


class LayerNorm2d(torch.nn.Module):
    """SAM's LayerNorm2d (segment_anything/modeling/common.py semantics)."""

    def __init__(self, c, eps=1e-6):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(c))
        self.bias = torch.nn.Parameter(torch.zeros(c))
        self.eps = eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def randomise(m):
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + (1.0 if p.dim() == 1 and "weight" else 0.0))
    return m


def generate():
    seed(2)
    m = round_module(randomise(torch.nn.LayerNorm(10)))
    run_layer("layernorm", m, randn(2, 3, 10, scale=2.0) + 0.5, {"features": 10})
    m = round_module(randomise(LayerNorm2d(6)))
    run_layer("layernorm2d", m, randn(2, 6, 3, 5, scale=2.0) - 0.3, {"channels": 6})
    run_layer("gelu", torch.nn.GELU(), randn(3, 17, scale=2.0))
    run_layer("relu", torch.nn.ReLU(), randn(3, 17, scale=2.0))
    generate_softmax()


def generate_softmax():
    seed(3)
    run_layer("softmax", torch.nn.Softmax(dim=-1), randn(2, 3, 9, scale=2.0))

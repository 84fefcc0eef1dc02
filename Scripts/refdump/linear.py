"""Linear layer reference dumps."""
import torch
from common import randn, round_module, run_layer, seed


def generate():
    seed(1)
    m = round_module(torch.nn.Linear(12, 7))
    run_layer("linear", m, randn(2, 5, 12), {"in": 12, "out": 7, "bias": 1})
    m = round_module(torch.nn.Linear(6, 4, bias=False))
    run_layer("linear_nobias", m, randn(3, 6), {"in": 6, "out": 4, "bias": 0})

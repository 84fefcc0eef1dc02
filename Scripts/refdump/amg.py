"""SAM's automatic mask generator (MobileSAM's automatic_mask_generator.py and utils/amg.py, the
reference code itself) for Tests/SegmentAnythingTests/AutomaticMaskGeneratorTests.swift.

Writes:
  Tests/Fixtures/amg_utils.safetensors  the amg.py helpers on small random inputs:
      stability.x (6, 13, 11) logits, stability.y (6) calculate_stability_score(x, 0, 1)
      box.x (7, 9, 12) 0/1 masks (two empty), box.y (7, 4) batched_mask_to_box
      rle.x (4, 7, 6) 0/1 masks (one empty, one full); metadata rle = JSON counts per mask
      nms.boxes (40, 4), nms.scores (40) (with ties), nms.categories (40); metadata nms_keep,
          nms_keep_categories, nms_keep_05 = JSON kept indices of torchvision's batched_nms
          (one category at 0.7, four categories at 0.7, one category at 0.5)
      regions.x (5, 24, 20) 0/1 masks; regions.holes / regions.islands (5, 24, 20) the
          remove_small_regions results (cv2, 8-connectivity) at area thresholds metadata
          regions_thresholds; metadata regions_changed_holes / regions_changed_islands
      metadata grids = JSON build_all_layer_point_grids(5, 2, 2) and (7, 1, 3);
          crop_boxes = JSON generate_crop_boxes for (480, 512, 2 layers), (37, 53, 1), (600, 868, 3)
  Tests/Fixtures/amg/fruits_pps8.json    SamAutomaticMaskGenerator(MobileSAM, points_per_side=8,
      output_mode="uncompressed_rle") on fruits.jpg: the records as the reference returns them
  Tests/Fixtures/amg/fruits_pps4_crop1.json  the same with points_per_side=4, crop_n_layers=1,
      min_mask_region_area=200
"""
import json
import os

import numpy as np
import torch
from common import FIXTURES, write_safetensors
from sam_decoder import mobile_sam
from sam_masks import photo


def amg_module():
    mobile_sam()  # puts the reference package on sys.path
    from mobile_sam.utils import amg
    return amg


def utils(amg):
    from torchvision.ops.boxes import batched_nms
    rng = np.random.default_rng(8)
    arrays, meta = {}, {}

    x = (rng.standard_normal((6, 13, 11)) * 2.5).astype(np.float32)
    x[5] = -3  # no pixel above −1: 0/0 = NaN
    arrays["stability.x"] = x
    arrays["stability.y"] = amg.calculate_stability_score(torch.from_numpy(x), 0.0, 1.0).numpy().astype(np.float32)

    m = np.zeros((7, 9, 12), dtype=bool)
    for i in range(5):
        y0, x0 = rng.integers(0, 9), rng.integers(0, 12)
        y1, x1 = rng.integers(y0, 9), rng.integers(x0, 12)
        m[i, y0:y1 + 1, x0:x1 + 1] = rng.random((y1 - y0 + 1, x1 - x0 + 1)) < 0.6
    arrays["box.x"] = m.astype(np.float32)
    arrays["box.y"] = amg.batched_mask_to_box(torch.from_numpy(m)).numpy().astype(np.float32)

    r = rng.random((4, 7, 6)) < 0.5
    r[2] = False
    r[3] = True
    arrays["rle.x"] = r.astype(np.float32)
    meta["rle"] = json.dumps([d["counts"] for d in amg.mask_to_rle_pytorch(torch.from_numpy(r))])

    xy = rng.integers(0, 40, size=(40, 2))
    wh = rng.integers(0, 25, size=(40, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    boxes[7] = boxes[3]  # duplicates and an empty box
    boxes[11] = 0
    scores = rng.choice(np.array([0.5, 0.75, 0.9, 0.95], dtype=np.float32), size=40) + \
        (rng.random(40) < 0.5) * rng.random(40).astype(np.float32) * 0.01
    scores = scores.astype(np.float32)
    categories = rng.integers(0, 4, size=40)
    arrays["nms.boxes"], arrays["nms.scores"], arrays["nms.categories"] = boxes, scores, categories.astype(np.float32)
    tb, ts = torch.from_numpy(boxes), torch.from_numpy(scores)
    meta["nms_keep"] = json.dumps(batched_nms(tb, ts, torch.zeros(40), 0.7).tolist())
    meta["nms_keep_categories"] = json.dumps(batched_nms(tb, ts, torch.from_numpy(categories), 0.7).tolist())
    meta["nms_keep_05"] = json.dumps(batched_nms(tb, ts, torch.zeros(40), 0.5).tolist())

    masks = np.zeros((5, 24, 20), dtype=bool)
    for i in range(5):
        # blobs, noise specks and holes
        yy, xx = np.mgrid[0:24, 0:20]
        for _ in range(3):
            cy, cx, rad = rng.integers(0, 24), rng.integers(0, 20), rng.integers(2, 8)
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= rad ** 2
        masks[i] ^= rng.random((24, 20)) < 0.08
    thresholds = [4, 10, 25, 3, 1000]
    holes, islands, ch, ci = [], [], [], []
    for i in range(5):
        a, c = amg.remove_small_regions(masks[i], thresholds[i], "holes")
        holes.append(a); ch.append(bool(c))
        b, c = amg.remove_small_regions(masks[i], thresholds[i], "islands")
        islands.append(b); ci.append(bool(c))
    arrays["regions.x"] = masks.astype(np.float32)
    arrays["regions.holes"] = np.stack(holes).astype(np.float32)
    arrays["regions.islands"] = np.stack(islands).astype(np.float32)
    meta["regions_thresholds"] = json.dumps(thresholds)
    meta["regions_changed_holes"] = json.dumps(ch)
    meta["regions_changed_islands"] = json.dumps(ci)

    meta["grids"] = json.dumps([
        dict(n=5, layers=2, scale=2, grids=[g.tolist() for g in amg.build_all_layer_point_grids(5, 2, 2)]),
        dict(n=7, layers=1, scale=3, grids=[g.tolist() for g in amg.build_all_layer_point_grids(7, 1, 3)]),
    ])
    crops = []
    for (h, w, layers) in [(480, 512, 2), (37, 53, 1), (600, 868, 3)]:
        boxes_, layer_idxs = amg.generate_crop_boxes((h, w), layers, 512 / 1500)
        crops.append(dict(h=h, w=w, layers=layers, boxes=boxes_, layer_idxs=layer_idxs))
    meta["crop_boxes"] = json.dumps(crops)
    write_safetensors("amg_utils", arrays, meta)


def end_to_end(name, image, **kwargs):
    sam = mobile_sam()
    from mobile_sam import SamAutomaticMaskGenerator
    generator = SamAutomaticMaskGenerator(sam, output_mode="uncompressed_rle", **kwargs)
    with torch.no_grad():
        records = generator.generate(photo(image))
    out = dict(image=image, options=kwargs, masks=records)
    outdir = os.path.join(FIXTURES, "amg")
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, f"{name}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(out, f, separators=(",", ":"))
    os.replace(path + ".tmp", path)
    print(f"  amg/{name}.json  {len(records)} masks, {os.path.getsize(path) / 1024:.1f} KiB")


def generate():
    utils(amg_module())
    end_to_end("fruits_pps8", "fruits.jpg", points_per_side=8)
    end_to_end("fruits_pps4_crop1", "fruits.jpg", points_per_side=4, crop_n_layers=1, min_mask_region_area=200)

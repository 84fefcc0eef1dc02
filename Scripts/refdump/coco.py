"""COCO ground truth as pycocotools reads it, for Tests/DistillTests/CocoEvaluationTests.swift.

Needs pycocotools (`pip install pycocotools`; generator only, the tests never run Python).

1. Decoding (`instances`): a small COCO instances file over two synthetic frames (50×40 and
   31×23) whose annotations exercise polygon rasterisation (concave, several parts, self-
   intersecting, touching and crossing the border, sub-pixel, slivers, random polygons) and RLE
   (compressed strings with long and negative-delta counts, uncompressed counts, a leading zero
   run, empty and full masks). The masks are what pycocotools' own `COCO(file).annToMask(ann)`
   returns (frPyObjects → merge → decode: the reference semantics, not a re-implementation).
   Writes:
     Tests/Fixtures/coco/instances.json      the COCO file
     Tests/Fixtures/coco_masks.safetensors   mask.ID (h, w) U8 0/1 per annotation id;
                                             area.ID (1,) F32 = maskUtils.area(annToRLE(ann))
2. End to end (`photos`): a COCO file over two opencv-doc photos (fruits.jpg, messi5.jpg;
   Scripts/fetch-images) with hand-drawn polygons (lime, kiwi, a crest, the ball: small, medium
   and large objects), masks of the reference MobileSAM as compressed / uncompressed RLE, and one
   crowd region. For every non-crowd annotation the reference pipeline (SamPredictor with the
   real mobile_sam.pt, float32, box prompt = COCO bbox as x0, y0, x0 + w, y0 + h, single-mask
   output) is compared with `annToMask`. Writes:
     Tests/Fixtures/coco/photos.json         the COCO file (file_name relative to the photo folder)
     Tests/Fixtures/coco_photos.safetensors  inter.ID, union.ID (1,) F32 pixel counts of the
                                             reference mask vs the ground truth
"""
import json
import os

import numpy as np
import torch
from common import FIXTURES, write_safetensors
from pycocotools import mask as maskUtils
from pycocotools.coco import COCO

COCO_DIR = os.path.join(FIXTURES, "coco")


def rle_json(rle):
    """A pycocotools RLE as it appears in a COCO JSON file (counts as str)."""
    c = rle["counts"]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": c.decode("ascii") if isinstance(c, bytes) else c}


def uncompressed(mask):
    """Column-major run lengths starting with a zero run, as COCO's uncompressed RLE."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            run, value = 0, v
        run += 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def blob(h, w, rng, blobs=4):
    yy, xx = np.mgrid[0:h, 0:w]
    m = np.zeros((h, w), dtype=bool)
    for _ in range(blobs):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, min(h, w) / 2.5)
        m |= (yy - cy) ** 2 + ((xx - cx) * rng.uniform(0.5, 1.5)) ** 2 < r * r
    return m


def write_coco(path, images, annotations):
    data = {"info": {"description": "SAMDistill test fixture (Scripts/refdump/coco.py)"},
            "licenses": [], "categories": [{"id": 1, "name": "thing", "supercategory": "thing"}],
            "images": images, "annotations": annotations}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=None, separators=(",", ":"))
        f.write("\n")


def decoding_fixture():
    rng = np.random.default_rng(6)
    A, B = (40, 50), (23, 31)  # (h, w)
    images = [{"id": 7, "file_name": "a.png", "width": A[1], "height": A[0]},
              {"id": 3, "file_name": "sub/b.png", "width": B[1], "height": B[0]}]
    polys = [  # (image id, polygons)
        (7, [[5, 5, 40, 5, 40, 30, 25, 12, 10, 33]]),                                   # concave
        (7, [[2.5, 3.5, 12.2, 3.5, 12.2, 9.8, 2.5, 9.8], [10, 8, 20.7, 14.1, 9.3, 17]]),  # two parts, overlapping
        (7, [[-2.3, -1, 52, 3.7, 49.9, 39.99, 0, 40]]),                                   # crossing the border
        (7, [[0, 0, 50, 0, 50, 40, 0, 40]]),                                              # the whole frame
        (7, [[10.1, 10.1, 10.4, 10.2, 10.2, 10.45]]),                                     # sub-pixel triangle
        (7, [[20.4, 20.4, 20.6, 20.4, 20.6, 20.6, 20.4, 20.6]]),                          # sub-pixel square
        (7, [[5, 5, 45, 6, 45, 6.3]]),                                                    # sliver
        (7, [[5, 35, 45, 5, 45, 35, 5, 5]]),                                              # bow tie
        (7, [[0.5, 0.5, 3.5, 0.5, 3.5, 3.5, 0.5, 3.5]]),                                  # pixel centres
        (7, [[30, 39, 49, 20, 49.7, 39.6]]),                                              # bottom-right corner
    ]
    for _ in range(8):  # random polygons, possibly self-intersecting and crossing the border
        n = int(rng.integers(3, 12))
        pts = np.stack([rng.uniform(-3, B[1] + 3, n), rng.uniform(-3, B[0] + 3, n)], 1)
        polys.append((3, [[round(float(v), 2) for v in pts.flatten()]]))
    annotations = []
    for i, (img, segm) in enumerate(polys):
        annotations.append({"id": 100 + i, "image_id": img, "category_id": 1, "iscrowd": 0, "segmentation": segm})
    # RLE: compressed (pycocotools' string), uncompressed, leading one, empty and full masks.
    m1 = blob(*A, rng, blobs=5)
    m2 = blob(*B, rng, blobs=3)
    m3 = blob(*A, rng, blobs=2)
    m3[0, 0] = True  # the first (column-major) pixel is set: counts start with a zero run
    big = np.zeros(A, dtype=bool)
    big[3:38, 2:47] = True
    big[10:12, 20:30] = False
    rles = [
        (7, rle_json(maskUtils.encode(np.asfortranarray(m1.astype(np.uint8)))), 0),
        (3, uncompressed(m2), 1),                                                          # crowd
        (7, uncompressed(m3), 0),
        (7, rle_json(maskUtils.encode(np.asfortranarray(big.astype(np.uint8)))), 0),    # long runs
        (3, rle_json(maskUtils.encode(np.zeros(B, dtype=np.uint8, order="F"))), 0),      # empty
        (3, rle_json(maskUtils.encode(np.ones(B, dtype=np.uint8, order="F"))), 0),       # full
        (7, rle_json(maskUtils.encode(np.asfortranarray(m2[:, ::-1].repeat(2, 0)[:40, :].repeat(2, 1)[:, :50].astype(np.uint8)))), 0),
    ]
    for j, (img, segm, crowd) in enumerate(rles):
        annotations.append({"id": 200 + j, "image_id": img, "category_id": 1, "iscrowd": crowd, "segmentation": segm})
    for a in annotations:  # bbox and area as COCO computes them (from the decoded segmentation)
        a["bbox"], a["area"] = [0, 0, 0, 0], 0
    path = os.path.join(COCO_DIR, "instances.json")
    write_coco(path, images, annotations)
    coco = COCO(path)
    arrays = {}
    for a in annotations:
        rle = coco.annToRLE(coco.anns[a["id"]])
        a["area"] = float(maskUtils.area(rle))
        a["bbox"] = [float(v) for v in maskUtils.toBbox(rle)]
        arrays[f"mask.{a['id']}"] = coco.annToMask(coco.anns[a["id"]]).astype(np.uint8)
        arrays[f"area.{a['id']}"] = np.array([a["area"]], dtype="<f4")
    write_coco(path, images, annotations)
    # The file as rewritten decodes to the same masks.
    coco = COCO(path)
    for a in annotations:
        assert (coco.annToMask(coco.anns[a["id"]]) == arrays[f"mask.{a['id']}"]).all()
    write_safetensors("coco_masks", arrays, {"annotations": str(len(annotations))})
    print(f"  instances.json: {len(annotations)} annotations, areas "
          f"{[int(a['area']) for a in annotations]}")


def photos_fixture():
    from sam_decoder import mobile_sam
    from sam_masks import photo
    sam = mobile_sam()  # puts the reference code on the path
    from mobile_sam import SamPredictor
    predictor = SamPredictor(sam)
    files = {"fruits.jpg": 1, "messi5.jpg": 2}
    rgb = {n: photo(n) for n in files}
    images = [{"id": i, "file_name": n, "width": int(rgb[n].shape[1]), "height": int(rgb[n].shape[0])} for n, i in files.items()]

    def predict(name, box):
        with torch.no_grad():
            predictor.set_image(rgb[name])
        masks, _, _ = predictor.predict(box=np.array(box, dtype=np.float64), multimask_output=False)
        return masks[0]

    # Hand-drawn polygons (original pixels), chosen by looking at the photos.
    anns = [
        ("fruits.jpg", "poly", [[345, 150, 380, 128, 430, 120, 480, 125, 510, 140, 512, 250, 470, 262,
                                  420, 290, 370, 298, 345, 260, 335, 200]], 0),                  # lime (large)
        ("fruits.jpg", "poly", [[0, 285, 40, 278, 80, 290, 110, 330, 118, 380, 108, 430, 80, 470,
                                  40, 480, 0, 480]], 0),                                          # kiwi, on the border
        ("messi5.jpg", "poly", [[253, 127, 267, 127, 268, 140, 260, 147, 252, 140]], 0),        # crest (small)
        ("messi5.jpg", "poly", [[list(np.round([362 + 23 * np.cos(t), 312 + 23 * np.sin(t)], 1)) for t in
                                 np.linspace(0, 2 * np.pi, 12, endpoint=False)]], 0),            # ball (medium)
        ("fruits.jpg", "sam", [320, 250, 511, 479], 0),                                          # lemon, compressed RLE
        ("messi5.jpg", "sam-uncompressed", [68, 55, 459, 336], 0),                               # player
        ("fruits.jpg", "crowd", None, 1),                                                         # cabbage region
    ]
    annotations = []
    for k, (name, kind, segm, crowd) in enumerate(anns):
        h, w = rgb[name].shape[:2]
        if kind == "poly":
            segm = [[float(v) for v in (np.array(p).flatten())] for p in segm]
        elif kind.startswith("sam"):
            m = predict(name, segm).astype(np.uint8)
            segm = uncompressed(m) if kind == "sam-uncompressed" else rle_json(maskUtils.encode(np.asfortranarray(m)))
        else:
            m = np.zeros((h, w), dtype=np.uint8)
            m[0:60, 150:500] = 1
            segm = uncompressed(m)
        annotations.append({"id": 1000 + k, "image_id": files[name], "category_id": 1, "iscrowd": crowd,
                            "segmentation": segm, "bbox": [0, 0, 0, 0], "area": 0})
    path = os.path.join(COCO_DIR, "photos.json")
    write_coco(path, images, annotations)
    coco = COCO(path)
    for a in annotations:
        rle = coco.annToRLE(coco.anns[a["id"]])
        a["area"] = float(maskUtils.area(rle))
        a["bbox"] = [float(v) for v in maskUtils.toBbox(rle)]
    write_coco(path, images, annotations)
    coco = COCO(path)
    arrays = {}
    for a in annotations:
        if a["iscrowd"]:
            continue
        x, y, w, h = a["bbox"]
        name = coco.imgs[a["image_id"]]["file_name"]
        pred = predict(name, [x, y, x + w, y + h])
        gt = coco.annToMask(coco.anns[a["id"]]).astype(bool)
        inter, union = int((pred & gt).sum()), int((pred | gt).sum())
        arrays[f"inter.{a['id']}"] = np.array([inter], dtype="<f4")
        arrays[f"union.{a['id']}"] = np.array([union], dtype="<f4")
        print(f"  {name} annotation {a['id']}: area {a['area']:.0f}, IoU {inter / union:.4f}")
    write_safetensors("coco_photos", arrays)


def generate():
    decoding_fixture()
    photos_fixture()

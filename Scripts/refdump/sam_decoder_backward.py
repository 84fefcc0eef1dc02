"""Gradient of a mask-decoder loss with respect to the image embedding (PyTorch autograd), with
MobileSAM's real prompt encoder and mask decoder (mobile_sam.pt) in float64 from the float32 weights,
on sam_decoder.py's synthetic embedding and mask inputs (closed formulas, no input fixture).

The loss is linear in the decoder's outputs, with closed-formula weights the Swift test
(Tests/SegmentAnythingTests/DecoderBackwardTests.swift) evaluates too:
  L = Σ low_res[b, k, y, x] · R[b, k, y, x] + Σ iou[b, k] · r[b, k]
  R[b, k, y, x] = sin(0.05x + 0.3k + 0.7b) · cos(0.043y − 0.2k) / 4096    (float64, rounded to float32)
  r[b, k] = 0.5 + 0.25k − 0.3b
so dL/d(low_res) = R and dL/d(iou) = r are the upstream gradients the decoder's backward takes.

Fixture mask_decoder_backward.safetensors, per case NAME (prompts as in sam_decoder.py):
  case.NAME.points / .labels / .boxes   the prompts (input-frame pixels)
  case.NAME.grad_sub    dL/d(image embedding) (1, 256, 64, 64) subsampled [0, ::8, 1::4, 2::4]
  case.NAME.loss        L (shape [1])
  metadata case.NAME = "multimask=0|1,mask_input=0|1"; mask inputs are synthetic_masks(B).
"""
import numpy as np
import torch
from common import save
from sam_decoder import PROMPTS, mobile_sam, prompt_args, store_prompt, synthetic_embedding, synthetic_masks


def loss_weights(B, K):
    b = np.arange(B, dtype=np.float64)[:, None, None, None]
    k = np.arange(K, dtype=np.float64)[None, :, None, None]
    y = np.arange(256, dtype=np.float64)[None, None, :, None]
    x = np.arange(256, dtype=np.float64)[None, None, None, :]
    r = np.sin(0.05 * x + 0.3 * k + 0.7 * b) * np.cos(0.043 * y - 0.2 * k) / 4096
    return torch.from_numpy(r.astype(np.float32)).double()


def iou_weights(B, K):
    b = np.arange(B, dtype=np.float64)[:, None]
    k = np.arange(K, dtype=np.float64)[None, :]
    return torch.from_numpy((0.5 + 0.25 * k - 0.3 * b).astype(np.float32)).double()


# (prompt set, multimask, mask input): point, box, point + box and mask-input prompts, single and
# multimask, and a batch of three prompts sharing the embedding (its gradient is their sum).
CASES = [
    ("point", True, False), ("point", False, False), ("box", False, False), ("point_box", True, False),
    ("point", False, True), ("batch", True, False), ("boxes", True, True),
]


def generate():
    sam = mobile_sam()
    pe = sam.prompt_encoder.double()
    md = sam.mask_decoder.double()
    out, meta = {}, {}
    for name, multimask, with_mask in CASES:
        p = PROMPTS[name]
        points, boxes = prompt_args(p, torch.float64)
        B = (points[0] if points is not None else boxes).shape[0]
        masks = synthetic_masks(B).double() if with_mask else None
        with torch.no_grad():
            sparse, dense = pe(points=points, boxes=boxes, masks=masks)
        emb = synthetic_embedding().double().requires_grad_(True)
        low, iou = md(image_embeddings=emb, image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse,
                      dense_prompt_embeddings=dense, multimask_output=multimask)
        K = low.shape[1]
        loss = (low * loss_weights(B, K)).sum() + (iou * iou_weights(B, K)).sum()
        loss.backward()
        key = f"{name}_{'multi' if multimask else 'single'}" + ("_mask" if with_mask else "")
        store_prompt(out, key, p)
        out[f"case.{key}.grad_sub"] = emb.grad[0, ::8, 1::4, 2::4]
        out[f"case.{key}.loss"] = loss.detach().reshape(1)
        meta[f"case.{key}"] = f"multimask={int(multimask)},mask_input={int(with_mask)}"
        g = emb.grad
        print(f"  {key}: loss {loss.item():.6f}, |grad| max {g.abs().max().item():.3e}")
    meta["subsample"] = "grad_sub [0, ::8, 1::4, 2::4]"
    save("mask_decoder_backward", out, meta)

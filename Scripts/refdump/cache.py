"""Feature-cache interop fixture (Tests/Fixtures/cache/): a tiny random TinyViT teacher
(tiny_teacher.safetensors + tiny_teacher.json, the config format of `samdistill cache
--teacher-config`) and pytorch_tiny.h5, a cache written by Scripts/cache_teacher_pytorch.py with
MobileSAM's reference TinyViT code from that teacher on three small images (one of them not an
image, so one row stays incomplete). DistillTests.FeatureCacheTests.testReadsPyTorchWrittenCache
reads it with the Swift reader and recomputes the embeddings with the Swift TinyViT."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch

from common import FIXTURES, reference, save, seed

CONFIG = dict(image_size=64, input_channels=3, embed_dims=[8, 16, 16, 16], depths=[1, 1, 1, 1],
              num_heads=[1, 2, 2, 2], window_sizes=[4, 4, 4, 4], merge_strides=[2, 2, 1], mlp_ratio=2.0,
              mbconv_expand_ratio=2.0, local_conv_size=3, neck_channels=8)


def generate():
    seed(41)
    here = os.path.dirname(os.path.abspath(__file__))
    scripts = os.path.join(here, "..")
    sys.path.insert(0, scripts)
    import cache_teacher_pytorch as ctp
    modeling = reference()
    m, _ = ctp.make_tinyvit(modeling, CONFIG)
    # Random but signal-preserving values (all-N(0, 0.3²) weights wash the input out: every image
    # would get the same embedding): default-init matrices × 1.5, norm scales 1 ± 0.2, small biases.
    with torch.no_grad():
        for k, v in m.state_dict().items():
            if not v.dtype.is_floating_point:
                continue
            if k.endswith("running_var"):
                v.copy_(torch.rand_like(v) * 0.5 + 0.5)
            elif k.endswith(("running_mean", "bias")):
                v.copy_(torch.randn_like(v) * 0.05)
            elif "attention_biases" in k:
                v.copy_(torch.randn_like(v) * 0.3)
            elif v.dim() == 1:
                v.copy_(1 + 0.2 * torch.randn_like(v))
            else:
                v.mul_(1.5)
    out = os.path.join(FIXTURES, "cache")
    os.makedirs(out, exist_ok=True)
    sd = {k: v for k, v in m.state_dict().items()
          if not k.endswith("num_batches_tracked") and not k.startswith(("head.", "norm_head."))}
    save("cache/tiny_teacher", sd)
    with open(os.path.join(out, "tiny_teacher.json"), "w") as f:
        json.dump({"architecture": "tinyvit", "config": CONFIG}, f, indent=1, sort_keys=True)
    images = tempfile.mkdtemp()
    try:
        src = os.path.join(FIXTURES, "images")
        shutil.copy(os.path.join(src, "rgb444.jpg"), os.path.join(images, "a_photo.jpg"))
        os.makedirs(os.path.join(images, "sub"))
        shutil.copy(os.path.join(src, "pil_rgb.png"), os.path.join(images, "sub", "b_drawing.png"))
        with open(os.path.join(images, "c_notes.jpg"), "w") as f:
            f.write("not an image\n")
        h5 = os.path.join(out, "pytorch_tiny.h5")
        subprocess.check_call([sys.executable, os.path.join(scripts, "cache_teacher_pytorch.py"),
                               "--images", images, "--teacher", os.path.join(out, "tiny_teacher.safetensors"),
                               "--teacher-config", os.path.join(out, "tiny_teacher.json"), "--out", h5,
                               "--val-fraction", "0.5", "--overwrite"])
        print(f"  cache/pytorch_tiny.h5  {os.path.getsize(h5) / 1024:.1f} KiB")
    finally:
        shutil.rmtree(images)

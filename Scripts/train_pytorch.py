#!/usr/bin/env python3
"""The PyTorch peer of `samdistill train` for a run config, at full size: the same student (MobileSAM's
reference TinyViT code), the same initial weights (depth pruning from the teacher checkpoint with
the same evenly spaced block map), the same cached batches in the same order (the Swift trainer's
seeded BatchOrder), the same loss, AdamW, clipping and learning-rate schedule, the same frozen units.
Writes one JSON line per step (loss, lr, grad_norm, seconds) so that the two loss curves and the
time per step can be compared (Scripts/compare-training does).

    python3 Scripts/train_pytorch.py Configs/quickstart.yaml --steps 30 --threads 2 --out torch.jsonl

Supports: a tinyvit student at its full input size (no `input_resize`, no `mlp_ratios`; session 9's
width-pruned and session 14's reduced-resolution quickstarts are outside it: compare with
`--set` overrides or an older config), init teacher_blocks or random (PyTorch's own
init, so not the same weights), freeze, loss mse, AdamW, one_cycle / warmup_cosine / constant,
batch_size, grad_accumulation. OneCycleLR runs with cycle_momentum=False: the Swift trainer's
one-cycle schedule drives the learning rate only. Needs torch, numpy, h5py, pyyaml.
"""
import argparse
import json
import math
import os
import sys
import time

import h5py
import numpy as np
import torch
import yaml

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "refdump"))
from common import reference  # noqa: E402
from train_fidelity import rows as batch_rows  # noqa: E402  (the Swift BatchOrder)

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
MOBILESAM = dict(embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7])


def evenly_spaced(ds, dt):
    if ds == 1:
        return [0]
    return [(2 * i * (dt - 1) + (ds - 1)) // (2 * (ds - 1)) for i in range(ds)]


def build_student(cfg):
    s = cfg.get("student", {})
    if s.get("type", "tinyvit") != "tinyvit":
        sys.exit("train_pytorch.py: only tinyvit students are supported")
    for key in ("input_resize", "mlp_ratios"):
        if key in s:
            sys.exit(f"train_pytorch.py: student.{key} is not implemented here")
    arch = dict(MOBILESAM)
    for k in arch:
        if k in s:
            arch[k] = s[k]
    tv = reference().tiny_vit_sam
    m = tv.TinyViT(img_size=s.get("image_size", 1024), in_chans=3, num_classes=1000, mlp_ratio=4.0, drop_rate=0.0,
                   drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
                   layer_lr_decay=0.8, **arch)
    return m, arch


def teacher_state(path):
    sd = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(sd, dict) and "model" in sd and not any(k.startswith("image_encoder.") for k in sd):
        sd = sd["model"]
    return {k[len("image_encoder."):]: v for k, v in sd.items() if k.startswith("image_encoder.")}


def depth_prune(student, teacher, depths):
    state = student.state_dict()
    new = {}
    for k in state:
        if k.startswith("head.") or k.startswith("norm_head.") or k.endswith("num_batches_tracked"):
            continue
        parts = k.split(".")
        src = k
        if len(parts) > 3 and parts[0] == "layers" and parts[2] == "blocks":
            stage, i = int(parts[1]), int(parts[3])
            dt = len({int(t.split(".")[3]) for t in teacher if t.startswith(f"layers.{stage}.blocks.")})
            src = ".".join(parts[:3] + [str(evenly_spaced(depths[stage], dt)[i])] + parts[4:])
        if src not in teacher or teacher[src].shape != state[k].shape:
            sys.exit(f"train_pytorch.py: teacher key {src} missing or mis-shaped for {k}")
        new[k] = teacher[src].float()
    student.load_state_dict(new, strict=False)


def lr_schedule(sched, steps):
    t = sched.get("type", "constant")
    if t == "constant":
        return lambda step: sched.get("lr", 1e-3)
    total = sched.get("total_steps", steps)
    if t == "warmup_cosine":
        peak, low, warm = sched["peak_lr"], sched.get("min_lr", 0.0), sched.get("warmup_steps", 0)

        def f(step):
            if step < warm:
                return peak * (step + 1) / warm
            if step >= total:
                return low
            return low + (peak - low) * 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
        return f
    if t == "one_cycle":
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        s = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=sched["max_lr"], total_steps=total,
                                                pct_start=sched.get("pct_start", 0.3), div_factor=sched.get("div_factor", 25.0),
                                                final_div_factor=sched.get("final_div_factor", 1e4), cycle_momentum=False)
        lrs = []
        for _ in range(total):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            s.step()
        return lambda step: lrs[min(step, total - 1)]
    sys.exit(f"train_pytorch.py: schedule {t} not supported")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--steps", type=int, help="stop after this many steps (default: the config's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True, help="JSON lines, one per step")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(open(args.config))
    steps_cfg = cfg.get("steps")
    steps = args.steps or steps_cfg
    student, arch = build_student(cfg)
    init = cfg.get("init", {}).get("type", "random")
    if init == "teacher_blocks":
        depth_prune(student, teacher_state(cfg["teacher"]["checkpoint"]), arch["depths"])
    elif init != "random":
        sys.exit(f"train_pytorch.py: init {init} not supported")
    student.train()
    units = ["patch_embed"] + [f"layers.{i}" for i in range(len(arch["depths"]))]
    frozen = cfg.get("freeze", [])
    for name in frozen:
        mod = student.patch_embed if name == "patch_embed" else student.layers[int(name.split(".")[1])]
        mod.eval()
        for p in mod.parameters():
            p.requires_grad_(False)
    assert frozen == units[:len(frozen)]

    named = [(k, p) for k, p in student.named_parameters()
             if p.requires_grad and not (k.startswith("head.") or k.startswith("norm_head."))]
    decay = [p for k, p in named if p.dim() > 1 and not k.endswith("attention_biases")]
    no_decay = [p for k, p in named if not (p.dim() > 1 and not k.endswith("attention_biases"))]
    o = cfg.get("optimizer", {})
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.get("weight_decay", 0.01)},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(o.get("beta1", 0.9), o.get("beta2", 0.999)), eps=o.get("eps", 1e-8))
    params = decay + no_decay
    lr_at = lr_schedule(cfg.get("schedule", {"type": "constant"}), steps_cfg)
    loss_type = cfg.get("loss", {}).get("type", "mse")
    if loss_type != "mse":
        sys.exit("train_pytorch.py: only the mse loss is supported")

    f = h5py.File(cfg["data"]["train"][0], "r")
    split, complete = f["split"][:], f["complete"][:]
    train_rows = [r for r in range(len(complete)) if complete[r] == 1 and split[r] == 0]
    S = f["image"].shape[1]
    B, A, seed = cfg.get("batch_size", 8), cfg.get("grad_accumulation", 1), cfg.get("seed", 0)

    def batch(rs):
        x = np.zeros((len(rs), 3, S, S), dtype=np.float32)
        for b, r in enumerate(rs):
            img = f["image"][r].astype(np.float32)
            h, w = f["resized_size"][r]
            x[b, :, :h, :w] = ((img[:h, :w] - PIXEL_MEAN) / PIXEL_STD).transpose(2, 0, 1)
        y = np.stack([f["embedding"][r].astype(np.float32) for r in rs])
        return torch.from_numpy(x), torch.from_numpy(y)

    out = open(args.out, "w")
    cursor = 0
    for step in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        total = 0.0
        for _ in range(A):
            x, y = batch([train_rows[i] for i in batch_rows(seed, len(train_rows), cursor, B)])
            cursor += B
            loss = torch.nn.functional.mse_loss(student(x), y)
            total += loss.item()
            (loss / A).backward()
        mg = o.get("max_grad_norm")
        norm = (torch.nn.utils.clip_grad_norm_(params, mg) if mg else
                torch.norm(torch.stack([p.grad.norm() for p in params]))).item()
        lr = lr_at(step)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        dt = time.perf_counter() - t0
        line = {"step": step + 1, "loss": total / A, "lr": lr, "grad_norm": norm, "seconds": dt}
        out.write(json.dumps(line) + "\n")
        out.flush()
        print(f"step {step + 1}/{steps}  loss {total / A:.6f}  lr {lr:.2e}  grad_norm {norm:.4f}  {dt:.2f} s", flush=True)


if __name__ == "__main__":
    main()

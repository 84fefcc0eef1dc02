#!/usr/bin/env python3
"""PyTorch peer of `samdistill bench encoder|train` (CPU, eager).

  --what encoder   MobileSAM image encoder (build_sam_vit_t from the reference code, weights from
                   weights/mobile_sam.pt when present), eval() + no_grad, one 1024×1024 image.
  --what train     TinyViT-5M (the same encoder) in train() mode: batch B (default 2) forward, MSE
                   against a random (B, 256, 64, 64) target, backward, AdamW (lr 1e-4, wd 0.01) step.
  --what decoder   SamPredictor.predict_torch on a fixed random 256×64×64 embedding (no encoder),
                   multimask, masks post-processed to a 1500×1000 image: one point prompt
                   (median_ms) and --prompts point prompts in one call (batch_median_ms), as
                   `samdistill bench decoder` does.

Runs each measurement in its own process (a fresh child per --what), so the peak resident set
(resource.getrusage, ru_maxrss) belongs to that measurement alone. One warm-up, then --repeats timed
runs; the median is reported. --json prints one JSON object (median_ms, peak_rss_mib, ...).
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def build_sam(checkpoint):
    sys.path.insert(0, os.path.join(ROOT, "Scripts", "refdump"))
    import warnings
    warnings.filterwarnings("ignore")
    import common
    common.reference()
    import importlib
    build_sam = importlib.import_module("mobile_sam.build_sam")
    sam = build_sam.build_sam_vit_t(checkpoint=checkpoint)
    sam.eval()  # again after loading: TinyViT caches its attention-bias table on eval()
    return sam


def decoder_prompt_xy(n):
    """The decoder benchmarks' n point prompts (x, y) on the 1500×1000 image, as `samdistill bench decoder`."""
    return [[50 + (i * 173) % 1400, 50 + (i * 97) % 900] for i in range(n)]


def torch_settings():
    """torch's version, thread pools and CPU back end, reported with every measurement."""
    import torch
    blas = next((kv.split("=", 1)[1] for kv in torch.__config__.show().replace(",", "\n").split()
                 if kv.startswith("BLAS_INFO=")), "unknown")
    return {"torch": torch.__version__, "intra_op_threads": torch.get_num_threads(),
            "inter_op_threads": torch.get_num_interop_threads(), "blas": blas,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def measure_decoder(args, ckpt):
    import resource
    import torch
    sam = build_sam(ckpt)
    from mobile_sam.predictor import SamPredictor
    pred = SamPredictor(sam)
    torch.manual_seed(1)
    pred.features = torch.randn(1, 256, 64, 64) * 0.5
    pred.original_size, pred.input_size, pred.is_image_set = (1000, 1500), (683, 1024), True

    def prompts(n):
        xy = decoder_prompt_xy(n)
        pts = pred.transform.apply_coords_torch(torch.tensor(xy, dtype=torch.float32)[:, None, :], (1000, 1500))
        return pts, torch.ones(n, 1)

    def timed(n):
        pts, labels = prompts(n)
        ts = []
        with torch.no_grad():
            for i in range(args.repeats + 1):
                t0 = time.perf_counter()
                pred.predict_torch(pts, labels, multimask_output=True)
                if i > 0:
                    ts.append(time.perf_counter() - t0)
        ts.sort()
        return ts[len(ts) // 2]
    one, many = timed(1), timed(args.prompts)
    return {"bench": "decoder", "framework": "pytorch", **torch_settings(), "threads": args.threads,
            "median_ms": one * 1e3, "batch": args.prompts, "batch_median_ms": many * 1e3,
            "per_prompt_ms_batched": many * 1e3 / args.prompts,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "weights": ckpt or "random"}


def measure(args):
    import resource
    import torch
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ckpt = args.checkpoint if args.checkpoint and os.path.exists(args.checkpoint) else None
    if args.what == "decoder":
        return measure_decoder(args, ckpt)
    enc = build_sam(ckpt).image_encoder
    S = args.image_size
    times = []
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.what == "encoder":
        enc.eval()
        x = torch.randn(args.batch, 3, S, S)
        with torch.no_grad():
            for i in range(args.repeats + 1):
                t0 = time.perf_counter()
                enc(x)
                if i > 0:
                    times.append(time.perf_counter() - t0)
    else:
        enc.train()
        params = [p for p in enc.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
        x = torch.randn(args.batch, 3, S, S)
        target = torch.randn(args.batch, 256, S // 16, S // 16)
        loss = None
        for i in range(args.repeats + 1):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=False)
            y = enc(x)
            loss = torch.nn.functional.mse_loss(y, target)
            loss.backward()
            opt.step()
            if i > 0:
                times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times.sort()
    med = times[len(times) // 2]
    return {"bench": args.what, "framework": "pytorch", **torch_settings(), "threads": args.threads,
            "batch": args.batch, "image_size": S, "median_ms": med * 1e3, "min_ms": times[0] * 1e3,
            "max_ms": times[-1] * 1e3, "repeats": args.repeats, "peak_rss_mib": peak,
            "baseline_rss_mib": baseline, "weights": ckpt or "random"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--what", choices=["encoder", "train", "decoder"], default="encoder")
    ap.add_argument("--prompts", type=int, default=64, help="decoder: prompts in the batched call")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=None, help="default: 1 for encoder, 2 for train")
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--checkpoint", default=os.path.join(ROOT, "weights", "mobile_sam.pt"))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.batch is None:
        args.batch = 1 if args.what == "encoder" else 2
    if args.child:
        print(json.dumps(measure(args)))
        return
    # A fresh process per measurement: its peak RSS is that measurement's alone.
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--what", args.what, "--threads", str(args.threads),
           "--repeats", str(args.repeats), "--batch", str(args.batch), "--image-size", str(args.image_size),
           "--checkpoint", args.checkpoint, "--prompts", str(args.prompts)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    r = json.loads(out.strip().splitlines()[-1])
    if args.json:
        print(json.dumps(r))
    else:
        if r["bench"] == "decoder":
            print(f"pytorch decoder, threads {r['threads']}: 1 prompt {r['median_ms']:.1f} ms; "
                  f"{r['batch']} prompts in one call {r['batch_median_ms']:.1f} ms")
            return
        print(f"pytorch {r['bench']}  batch {r['batch']}  {r['image_size']}²  threads {r['threads']}: "
              f"median {r['median_ms']:.1f} ms  peak RSS {r['peak_rss_mib']:.0f} MiB  (weights: {r['weights']})")


if __name__ == "__main__":
    main()

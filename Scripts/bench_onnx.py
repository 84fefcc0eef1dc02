#!/usr/bin/env python3
"""ONNX Runtime peer of `samdistill bench encoder|decoder` (CPU provider), what users run instead.

  --what encoder   MobileSAM's image encoder (build_sam_vit_t from the reference code, weights from
                   weights/mobile_sam.pt) exported with torch.onnx.export (the TorchScript-based
                   exporter, dynamo=False, opset 17), on one 1×3×1024×1024 input.
  --what decoder   prompt encoder + mask decoder + mask post-processing exported through the
                   reference code's SamOnnxModel (mobile_sam/utils/onnx.py; the interface of SAM's
                   scripts/export_onnx_model.py: embeddings, point_coords, point_labels, mask_input,
                   has_mask_input, orig_im_size), on the fixed random 256×64×64 embedding that
                   Scripts/bench_pytorch.py uses. One call with one point prompt (median_ms) and one
                   call with --prompts prompts (batch_median_ms): a batch of B point sets, each the
                   point plus SAM's padding point (label -1), as SamPredictor pads a prompt without
                   a box. Multimask output: SamOnnxModel's select_masks keeps masks 1-3 (what
                   SamPredictor's multimask_output=True returns) instead of picking one, masks
                   post-processed in the graph to 1500×1000 and thresholded (> 0) after the call,
                   as SamPredictor.predict_torch and `samdistill bench decoder` do.

The exports go to --cache (default runs/onnx/, gitignored) and are made again when missing or when
the checkpoint, torch, onnx or this script's export changes; making them also checks once that ONNX
Runtime's outputs equal PyTorch's (max abs diff, stored in the cache's export.json and reported with
every measurement). The session: all graph optimisations (ORT_ENABLE_ALL), intra_op_num_threads =
--threads, inter_op_num_threads 1, sequential execution, CPUExecutionProvider. Each measurement runs
in a fresh child process that imports onnxruntime and numpy only (not torch), so its peak resident
set is its own. One warm-up, then --repeats timed runs; the median is reported. --json prints one
JSON object.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
OPSET = 17
EXPORT_VERSION = 1  # bump when the export below changes
ORIGINAL_SIZE = (1000, 1500)  # (H, W), as bench_pytorch.py and `samdistill bench decoder`


def export_key(ckpt):
    from importlib.metadata import version
    st = os.stat(ckpt)
    return {"export_version": EXPORT_VERSION, "opset": OPSET, "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
            "torch": version("torch"), "onnx": version("onnx"), "checkpoint": os.path.abspath(ckpt),
            "checkpoint_bytes": st.st_size, "checkpoint_mtime": int(st.st_mtime)}


def session(path, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def decoder_feeds(inputs, n):
    """SamOnnxModel's inputs for the first n prompts of the stored prompt list: each prompt is its
    point plus the padding point (0, 0) with label -1, as SamPredictor adds without a box."""
    import numpy as np
    pts = inputs["point_coords"][:n]
    return {"image_embeddings": inputs["image_embeddings"],
            "point_coords": np.concatenate([pts, np.zeros_like(pts)], axis=1).astype(np.float32),
            "point_labels": np.tile(np.array([[1, -1]], dtype=np.float32), (n, 1)),
            "mask_input": np.zeros((1, 1, 256, 256), dtype=np.float32),
            "has_mask_input": np.zeros(1, dtype=np.float32),
            "orig_im_size": np.array(ORIGINAL_SIZE, dtype=np.float32)}


def make_exports(cache, ckpt, prompts):
    """Exports the encoder and the decoder into `cache`, stores the decoder's inputs, and compares
    ONNX Runtime's outputs with PyTorch's once."""
    import numpy as np
    import torch
    sys.path.insert(0, os.path.join(ROOT, "Scripts"))
    from bench_pytorch import build_sam, decoder_prompt_xy
    os.makedirs(cache, exist_ok=True)
    torch.manual_seed(0)
    sam = build_sam(ckpt)  # puts the reference code (mobile_sam) on sys.path
    from mobile_sam.predictor import SamPredictor
    from mobile_sam.utils.onnx import SamOnnxModel
    meta = export_key(ckpt)
    print(f"bench_onnx: exporting MobileSAM's encoder and decoder into {cache} ({meta['exporter']}, opset {OPSET})",
          file=sys.stderr)

    # Encoder: 1×3×1024×1024 in, 1×256×64×64 out.
    enc_path = os.path.join(cache, "encoder.onnx")
    x = torch.randn(1, 3, 1024, 1024)
    torch.onnx.export(sam.image_encoder, (x,), enc_path + ".tmp", opset_version=OPSET, dynamo=False,
                      input_names=["image"], output_names=["image_embeddings"])
    os.replace(enc_path + ".tmp", enc_path)
    with torch.no_grad():
        ref = sam.image_encoder(x).numpy()
    got = session(enc_path, torch.get_num_threads()).run(None, {"image": x.numpy()})[0]
    meta["encoder_parity"] = {"max_abs_diff": float(np.abs(got - ref).max()), "max_abs_ref": float(np.abs(ref).max())}

    # Decoder: SamOnnxModel, keeping the three multimask outputs (masks 1-3) where its
    # return_single_mask path would pick one; everything else is the reference's.
    class MultimaskSamOnnxModel(SamOnnxModel):
        def select_masks(self, masks, iou_preds, num_points):
            return masks[:, 1:, :, :], iou_preds[:, 1:]

    onnx_model = MultimaskSamOnnxModel(sam, return_single_mask=True)
    dec_path = os.path.join(cache, "decoder.onnx")
    dummy = {"image_embeddings": torch.randn(1, 256, 64, 64), "point_coords": torch.randint(0, 1024, (2, 3, 2)).float(),
             "point_labels": torch.randint(0, 4, (2, 3)).float(), "mask_input": torch.zeros(1, 1, 256, 256),
             "has_mask_input": torch.zeros(1), "orig_im_size": torch.tensor(ORIGINAL_SIZE, dtype=torch.float32)}
    per_prompt = {0: "prompts", 1: "num_points"}
    torch.onnx.export(onnx_model, tuple(dummy.values()), dec_path + ".tmp", opset_version=OPSET, dynamo=False,
                      input_names=list(dummy), output_names=["masks", "iou_predictions", "low_res_masks"],
                      dynamic_axes={"point_coords": per_prompt, "point_labels": per_prompt, "masks": {0: "prompts"},
                                    "iou_predictions": {0: "prompts"}, "low_res_masks": {0: "prompts"}})
    os.replace(dec_path + ".tmp", dec_path)

    # The inputs every decoder measurement uses: bench_pytorch.py's embedding and prompts.
    pred = SamPredictor(sam)
    torch.manual_seed(1)
    emb = torch.randn(1, 256, 64, 64) * 0.5
    xy = np.array(decoder_prompt_xy(prompts), dtype=np.float64)[:, None, :]
    coords = pred.transform.apply_coords(xy, ORIGINAL_SIZE).astype(np.float32)
    inputs = {"image_embeddings": emb.numpy(), "point_coords": coords}
    np.savez(os.path.join(cache, "decoder_inputs.npz"), **inputs)
    pred.features, pred.original_size, pred.input_size, pred.is_image_set = emb, ORIGINAL_SIZE, (683, 1024), True
    n = 4
    with torch.no_grad():
        masks, iou, _ = pred.predict_torch(torch.from_numpy(coords[:n]), torch.ones(n, 1), multimask_output=True,
                                           return_logits=True)
    got_masks, got_iou, _ = session(dec_path, torch.get_num_threads()).run(None, decoder_feeds(inputs, n))
    masks, iou = masks.numpy(), iou.numpy()
    meta["decoder_parity"] = {"prompts": n, "mask_logits_max_abs_diff": float(np.abs(got_masks - masks).max()),
                              "mask_logits_max_abs_ref": float(np.abs(masks).max()),
                              "mask_pixels_differing": float(((got_masks > 0) != (masks > 0)).mean()),
                              "iou_max_abs_diff": float(np.abs(got_iou - iou).max())}
    meta["prompts"] = prompts
    with open(os.path.join(cache, "export.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def exports(cache, ckpt, prompts):
    try:
        with open(os.path.join(cache, "export.json")) as f:
            meta = json.load(f)
        key = export_key(ckpt)
        files = ("encoder.onnx", "decoder.onnx", "decoder_inputs.npz")
        if all(meta.get(k) == v for k, v in key.items()) and meta.get("prompts", 0) >= prompts and \
                all(os.path.exists(os.path.join(cache, p)) for p in files):
            return meta
    except (OSError, ValueError):
        pass
    try:
        return make_exports(cache, ckpt, prompts)
    except Exception as e:  # the exporter's and ONNX Runtime's errors, in one line
        sys.exit(f"bench_onnx: exporting or checking the ONNX models in {cache} failed: {type(e).__name__}: {e}")


def median_ms(f, repeats):
    ts = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        f()
        if i > 0:
            ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2] * 1e3


def measure(args):
    import resource
    import numpy as np
    import onnxruntime as ort
    out = {"bench": args.what, "framework": "onnxruntime", "onnxruntime": ort.__version__, "threads": args.threads,
           "intra_op_num_threads": args.threads, "inter_op_num_threads": 1, "graph_optimization": "ORT_ENABLE_ALL",
           "provider": "CPUExecutionProvider"}
    if args.what == "encoder":
        sess = session(os.path.join(args.cache, "encoder.onnx"), args.threads)
        x = np.random.default_rng(0).standard_normal((1, 3, 1024, 1024), dtype=np.float32)
        out["median_ms"] = median_ms(lambda: sess.run(None, {"image": x}), args.repeats)
    else:
        sess = session(os.path.join(args.cache, "decoder.onnx"), args.threads)
        inputs = dict(np.load(os.path.join(args.cache, "decoder_inputs.npz")))

        def call(n):
            feeds = decoder_feeds(inputs, n)
            return lambda: sess.run(None, feeds)[0] > 0.0  # masks, thresholded as the others return them
        out["median_ms"] = median_ms(call(1), args.repeats)
        out["batch"] = args.prompts
        out["batch_median_ms"] = median_ms(call(args.prompts), args.repeats)
        out["per_prompt_ms_batched"] = out["batch_median_ms"] / args.prompts
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--what", choices=["encoder", "decoder"], default="encoder")
    ap.add_argument("--prompts", type=int, default=64, help="decoder: prompts in the batched call")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--checkpoint", default=os.path.join(ROOT, "weights", "mobile_sam.pt"))
    ap.add_argument("--cache", default=os.path.join(ROOT, "runs", "onnx"), help="where the exports live")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return
    if not os.path.exists(args.checkpoint):
        sys.exit(f"bench_onnx: {args.checkpoint} does not exist (Scripts/fetch-weights fetches weights/mobile_sam.pt)")
    meta = exports(args.cache, args.checkpoint, args.prompts)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--what", args.what, "--threads", str(args.threads),
           "--repeats", str(args.repeats), "--prompts", str(args.prompts), "--cache", args.cache]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    child = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if child.returncode != 0:
        sys.exit(f"bench_onnx: the {args.what} measurement failed:\n{child.stderr.strip()}")
    r = json.loads(child.stdout.strip().splitlines()[-1])
    r["export"] = {k: meta[k] for k in ("exporter", "opset", "torch", "onnx")}
    r["parity"] = meta[f"{args.what}_parity"]
    if args.json:
        print(json.dumps(r))
    elif r["bench"] == "decoder":
        print(f"onnxruntime decoder, threads {r['threads']}: 1 prompt {r['median_ms']:.1f} ms; "
              f"{r['batch']} prompts in one call {r['batch_median_ms']:.1f} ms; parity vs PyTorch {r['parity']}")
    else:
        print(f"onnxruntime encoder 1024², threads {r['threads']}: median {r['median_ms']:.1f} ms  "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB; parity vs PyTorch {r['parity']}")


if __name__ == "__main__":
    main()

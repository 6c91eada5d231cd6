"""Aligned objects: the same assembly seen by a fixed camera, where a defect is a part that is missing.

Textures are stationary (any window looks like any other), so one global center C describes every
tile. An aligned object is not: a tile showing bare plate is normal in one place and a missing part
in another. This generator makes such a set for the per-position center (tiles.center = "position",
fnet/tile_centers.py): a grey-green plate with fixed parts (dark chips, bright screws with a slot, a
copper pad row) at the same places in every image, each image shifted by at most `jitter` pixels (a
camera that is almost but not exactly registered), lit with a gentle random gradient, with sensor
noise. A defective image has one part left out: its pixels show the plate that lies under it, the
mask is exactly those pixels. The layout leaves about half the plate bare, so bare plate is common
and a missing part cannot be found by "unlike any normal tile" alone.

`aligned_set(n_train, n_good, n_missing, hw, seed)` -> (train, test) `NativeSet`s (data/native.py);
test ids MVTec-style, test/good/NNN and test/missing_<part>/NNN (the kind is the part left out).
"""

from __future__ import annotations

import numpy as np
from skimage import draw

from anounet_jax.data.native import NativeSet

PLATE = np.array([0.42, 0.52, 0.44], np.float32)
CHIP = np.array([0.10, 0.10, 0.12], np.float32)
SCREW = np.array([0.85, 0.85, 0.80], np.float32)
PAD = np.array([0.80, 0.52, 0.25], np.float32)


def _layout(h: int, w: int) -> list[tuple[str, tuple]]:
    """The parts, as (kind, geometry) in fractions of the image, fixed for every image of a size."""
    return [
        ("chip", (0.12, 0.10, 0.30, 0.30)),  # (y0, x0, y1, x1)
        ("chip", (0.12, 0.62, 0.26, 0.90)),
        ("chip", (0.58, 0.40, 0.80, 0.58)),
        ("screw", (0.80, 0.12, 0.07)),  # (cy, cx, r as a fraction of min(h, w))
        ("screw", (0.18, 0.47, 0.06)),
        ("screw", (0.82, 0.86, 0.07)),
        ("pads", (0.48, 0.66, 0.56, 0.94, 4)),  # a row of n pads
    ]


def _part_mask(kind: str, geo: tuple, h: int, w: int, dy: int, dx: int) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    if kind == "chip":
        y0, x0, y1, x1 = geo
        mask[max(0, int(y0 * h) + dy):max(0, int(y1 * h) + dy), max(0, int(x0 * w) + dx):max(0, int(x1 * w) + dx)] = True
    elif kind == "screw":
        cy, cx, r = geo
        rr, cc = draw.disk((cy * h + dy, cx * w + dx), max(2.0, r * min(h, w)), shape=(h, w))
        mask[rr, cc] = True
    else:  # pads
        y0, x0, y1, x1, n = geo
        step = (x1 - x0) * w / n
        for i in range(n):
            a = int(x0 * w + i * step + 0.2 * step) + dx
            b = int(x0 * w + (i + 0.8) * step) + dx
            mask[max(0, int(y0 * h) + dy):max(0, int(y1 * h) + dy), max(0, a):max(0, b)] = True
    return mask


def render(hw: tuple[int, int], rng: np.random.Generator, jitter: int = 2, missing: int | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """One image float32 (H, W, 3) in [0, 1] and the bool mask of its missing part (all False when
    `missing` is None; else the index of the part in the layout to leave out)."""
    h, w = hw
    dy, dx = (int(v) for v in rng.integers(-jitter, jitter + 1, size=2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    gy, gx = rng.uniform(-0.06, 0.06, size=2)
    light = 1.0 + gy * (yy / h - 0.5) + gx * (xx / w - 0.5)
    img = np.broadcast_to(PLATE, (h, w, 3)).copy()
    img *= (1.0 + 0.03 * np.sin(xx / 3.0 + rng.uniform(0, 6.3)))[..., None]  # fine brushed grain
    defect = np.zeros((h, w), bool)
    for j, (kind, geo) in enumerate(_layout(h, w)):
        m = _part_mask(kind, geo, h, w, dy, dx)
        if j == missing:
            defect = m
            continue
        if kind == "chip":
            img[m] = CHIP
        elif kind == "pads":
            img[m] = PAD
        else:
            img[m] = SCREW
            cy, cx, r = geo
            slot = m & (np.abs(yy - (cy * h + dy)) <= max(1.0, 0.2 * r * min(h, w)))
            img[slot] = CHIP
    img = img * light[..., None] + rng.normal(0.0, 0.02, img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32), defect


def aligned_set(n_train: int = 24, n_good: int = 8, n_missing: int = 16, hw: tuple[int, int] = (128, 192),
                seed: int = 0, jitter: int = 2) -> tuple[NativeSet, NativeSet]:
    """(train: normal images, test: good then defective images with one part missing each, masks, labels)."""
    rng = np.random.default_rng([seed, 404])
    n_parts = len(_layout(*hw))
    train = [render(hw, rng, jitter)[0] for _ in range(n_train)]
    images, masks, ids, defects = [], [], [], []
    for i in range(n_good):
        x, m = render(hw, rng, jitter)
        images.append(x), masks.append(m), ids.append(f"test/good/{i:03d}"), defects.append([])
    for i in range(n_missing):
        part = i % n_parts
        kind = _layout(*hw)[part][0]
        x, m = render(hw, rng, jitter, missing=part)
        images.append(x), masks.append(m), ids.append(f"test/missing_{kind}/{i:03d}")
        ys, xs = np.nonzero(m)
        defects.append([(f"missing {kind}", int(max(np.ptp(ys), np.ptp(xs)) + 1), int(ys.mean()), int(xs.mean()))])
    labels = np.array([0] * n_good + [1] * n_missing, np.int64)
    return (NativeSet(train, ids=[f"train/good/{i:03d}" for i in range(n_train)]),
            NativeSet(images, masks, labels, ids, defects))

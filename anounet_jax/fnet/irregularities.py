"""Synthetic local irregularities of normal images, for self-supervised f-Net training.

CutPaste (Li et al. 2021) and DRAEM (Zavrtanik et al. 2021) teach a network what "slightly wrong"
looks like by damaging normal images in small regions. Here the damaged normal images become one more
class of the f-Net's training ("normal" against "normal with a flaw", beside the reference classes),
so the f-Net learns the normal texture's own statistics, not only "this texture versus others".

`flawed_copies(images, seed)` damages each image once in one random region (an irregular blob of
about 1-6% of the image, or a thin scar) with one of:

  cutpaste  a patch from elsewhere in the same image, flipped or turned, pasted into the region
  noise     Gaussian noise inside the region
  blur      a box blur inside the region (local loss of detail)
  colour    a brightness / contrast / channel shift inside the region

This module is independent of the test defects (data/defects.py): different code, shapes and
parameters; the overlap of concepts (a blur and a smooth patch) is what such training relies on.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

KINDS = ("cutpaste", "noise", "blur", "colour")


def _blob(rng, h: int, w: int) -> np.ndarray:
    """A soft irregular region: a thresholded smooth random field inside a random ellipse, or a scar."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    if rng.random() < 0.25:  # a scar: a thin, long, turned rectangle
        length, width = rng.uniform(0.2, 0.45) * min(h, w), rng.uniform(1.0, 2.5)
        a = rng.uniform(0, np.pi)
        u = (yy - cy) * np.cos(a) + (xx - cx) * np.sin(a)
        v = -(yy - cy) * np.sin(a) + (xx - cx) * np.cos(a)
        return ((np.abs(u) < length / 2) & (np.abs(v) < width)).astype(np.float32)
    ry, rx = rng.uniform(0.08, 0.2, 2) * (h, w)
    ellipse = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1.0
    field = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), max(h, w) / 24)
    region = ellipse & (field > np.quantile(field[ellipse], 0.25) if ellipse.any() else ellipse)
    if region.sum() < 4:
        region = ellipse
    return ndimage.gaussian_filter(region.astype(np.float32), 0.7)


def _cutpaste(rng, img, region):
    h, w, _ = img.shape
    dy, dx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
    src = np.roll(img, (dy, dx), axis=(0, 1))
    if rng.random() < 0.5:
        src = src[::-1]
    if h == w and rng.random() < 0.5:
        src = np.swapaxes(src, 0, 1)
    return src


def _noise(rng, img, region):
    return np.clip(img + rng.uniform(0.05, 0.2) * rng.standard_normal(img.shape).astype(np.float32), 0, 1)


def _blur(rng, img, region):
    k = int(rng.integers(3, 8))
    return ndimage.uniform_filter(img, size=(k, k, 1), mode="reflect")


def _colour(rng, img, region):
    gain = rng.uniform(0.6, 1.4, 3).astype(np.float32) if rng.random() < 0.5 else np.full(3, rng.uniform(0.5, 1.5))
    shift = rng.uniform(-0.15, 0.15)
    mean = img.mean((0, 1), keepdims=True)
    return np.clip((img - mean) * gain + mean + shift, 0, 1)


_EDITS = {"cutpaste": _cutpaste, "noise": _noise, "blur": _blur, "colour": _colour}


def flawed_copies(images: np.ndarray, seed: int = 0, kinds=KINDS) -> tuple[np.ndarray, np.ndarray]:
    """One damaged copy of every image (float32 NHWC in [0, 1]) and where it was damaged (float32
    (N, H, W) in [0, 1], soft edges); image i uses its own random stream."""
    images = np.asarray(images, np.float32)
    out = np.empty_like(images)
    masks = np.empty(images.shape[:3], np.float32)
    for i, img in enumerate(images):
        rng = np.random.default_rng([seed, 7919, i])
        h, w, _ = img.shape
        region = _blob(rng, h, w)
        edited = _EDITS[kinds[int(rng.integers(len(kinds)))]](rng, img, region[..., None])
        out[i] = img * (1 - region[..., None]) + edited * region[..., None]
        masks[i] = region
    return out, masks

"""Planted defects with exact masks: `kind(rng, image, family_generator) -> (defective image, mask)`.

Every kind edits one region of a float32 (H, W, 3) image in [0, 1] and returns the bool (H, W) mask of
exactly the pixels whose value changed by more than `TOL` (max over channels): pixels outside the
mask equal the input bit for bit. Region pixels that the edit left (almost) unchanged, e.g. a black pixel
under a dark spot or a flat one under a blur, are nudged by `MIN_CHANGE` (1/255, invisible, in the
direction of their own change) so that the mask is the whole edited region: solid, never ragged nor
empty. A defect whose mean change over its mask stays below `VISIBLE` is drawn again, stronger (or
larger), up to `ATTEMPTS` times.

Sizes scale with s = min(H, W): spots and patches have radii of a few percent of s. From s >= 256 on,
40 % of the spots and scratches are small instead (2-6 px wide), to measure native-resolution work.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from anounet_jax.data.textures import FAMILIES

TOL = 0.5 / 255
MIN_CHANGE = 1 / 255
VISIBLE = 0.04
ATTEMPTS = 6
SMALL_FROM = 256


# ---------------- regions ----------------
def _small(rng, s: int) -> bool:
    return bool(rng.random() < 0.4) and s >= SMALL_FROM


def _region(rng, h, w, r, irregular=True):
    """A blob of mean radius r px at a random place -> (mask, rho 0 at its centre .. 1 at its rim, centre)."""
    cy = rng.uniform(r, h - r) if h > 2 * r else h / 2
    cx = rng.uniform(r, w - r) if w > 2 * r else w / 2
    aspect = rng.uniform(0.7, 1.3) if irregular else 1.0
    rot = rng.uniform(0, np.pi)
    harm = rng.uniform(0, 0.12, 3) * irregular, rng.uniform(0, 2 * np.pi, 3)
    reach = 2 * max(r, 0.75) + 2  # > r * max wobble (1.36) * max aspect (1.3): the blob's bounding box
    bb = (slice(max(int(cy - reach), 0), min(int(cy + reach) + 2, h)),
          slice(max(int(cx - reach), 0), min(int(cx + reach) + 2, w)))
    y, x = np.ogrid[bb]
    dy, dx = (y - cy).astype(np.float32), (x - cx).astype(np.float32)
    a = (np.cos(rot) * dx + np.sin(rot) * dy) / aspect
    b = (np.cos(rot) * dy - np.sin(rot) * dx) * aspect
    theta = np.arctan2(b, a)
    wobble = 1 + sum(harm[0][k] * np.cos((k + 2) * theta + harm[1][k]) for k in range(3))
    rho = np.ones((h, w), np.float32)
    rho[bb] = np.clip(np.sqrt(a * a + b * b) / (max(r, 0.75) * wobble), 0, 1)
    mask = np.zeros((h, w), bool)
    mask[bb] = rho[bb] < 1
    if not mask.any():  # a sub-pixel blob: take the pixel at its centre
        mask[min(int(cy), h - 1), min(int(cx), w - 1)] = True
    return mask, rho, (cy, cx)


def _bbox(region, margin=0):
    """Slices of the region's bounding box grown by margin (clipped to the image)."""
    ys, xs = np.nonzero(region)
    h, w = region.shape
    return (slice(max(ys.min() - margin, 0), min(ys.max() + margin + 1, h)),
            slice(max(xs.min() - margin, 0), min(xs.max() + margin + 1, w)))


def _patch_radius(rng, s, strength, lo=0.08, hi=0.15):
    return min(rng.uniform(lo, hi) * s * np.sqrt(strength), 0.25 * s)


def _paste_from(src, img, region, centre, angle_deg=0.0):
    """Copy src into img's region, centre onto src's centre, rotated by angle (bilinear)."""
    ys, xs = np.nonzero(region)
    t = np.deg2rad(angle_deg)
    dy, dx = ys - centre[0], xs - centre[1]
    sy = (src.shape[0] - 1) / 2 + np.cos(t) * dy - np.sin(t) * dx
    sx = (src.shape[1] - 1) / 2 + np.sin(t) * dy + np.cos(t) * dx
    out = img.copy()
    for c in range(3):
        out[ys, xs, c] = ndimage.map_coordinates(src[..., c], [sy, sx], order=1, mode="reflect")
    return out


def _extent(region, centre):
    ys, xs = np.nonzero(region)
    return float(np.sqrt(((ys - centre[0]) ** 2 + (xs - centre[1]) ** 2).max()))


# ---------------- kinds (core edits; `_planted` makes them exact and visible) ----------------
def _spot(rng, img, gen, strength, bright):
    h, w = img.shape[:2]
    small = _small(rng, min(h, w))
    r = rng.uniform(1, 3) if small else rng.uniform(0.04, 0.09) * min(h, w) * np.sqrt(strength)
    region, rho, _ = _region(rng, h, w, r, irregular=not small)
    alpha = (0.5 + 0.5 * (1 - rho * rho)) * min(0.9, (0.75 if small else 0.5) * strength)
    target = np.float32(0.97) if bright else np.float32(0.0)
    bb, out = _bbox(region), img.copy()
    out[bb] = img[bb] + (target - img[bb]) * alpha[bb][..., None]
    return out, region


def _dark_spot(rng, img, gen, strength):
    return _spot(rng, img, gen, strength, bright=False)


def _bright_spot(rng, img, gen, strength):
    return _spot(rng, img, gen, strength, bright=True)


def _scratch(rng, img, gen, strength):
    """A thin polyline with random turns (a scratch or crack), dark on bright or bright on dark."""
    h, w = img.shape[:2]
    s = min(h, w)
    width = rng.uniform(2, 6) if _small(rng, s) else max(1.0, rng.uniform(0.012, 0.025) * s)
    n_seg = int(rng.integers(2, 7))
    step = rng.uniform(0.25, 0.6) * s / n_seg
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.4, n_seg))
    pts = np.empty((n_seg + 1, 2))
    pts[0] = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
    pts[1:] = pts[0] + np.cumsum(step * np.stack([np.sin(heading), np.cos(heading)], 1), 0)
    half = max(width / 2, 0.6)
    lo, hi = np.floor(pts.min(0) - half - 1), np.ceil(pts.max(0) + half + 2)
    bb = (slice(int(np.clip(lo[0], 0, h)), int(np.clip(hi[0], 0, h))),
          slice(int(np.clip(lo[1], 0, w)), int(np.clip(hi[1], 0, w))))
    y, x = np.ogrid[bb]
    dist = np.full((h, w), np.inf, np.float32)
    for p, q in zip(pts[:-1], pts[1:]):
        d = q - p
        t = np.clip(((y - p[0]) * d[0] + (x - p[1]) * d[1]) / max(d @ d, 1e-9), 0, 1)
        dist[bb] = np.minimum(dist[bb], np.hypot(y - p[0] - t * d[0], x - p[1] - t * d[1]))
    region = dist <= half
    if not region.any():
        region[int(np.clip(pts[0, 0], 0, h - 1)), int(np.clip(pts[0, 1], 0, w - 1))] = True
    target = np.float32(0.05 if img[region].mean() > 0.45 else 0.95)
    alpha = min(1.0, 0.6 * strength) * (1 - 0.4 * np.clip(dist[bb] / half, 0, 1) ** 2)
    out = img.copy()
    out[bb] = img[bb] + (target - img[bb]) * alpha[..., None]
    return out, region


def _orientation(rng, img, gen, strength):
    """The same family turned (~90 deg, ~45 for square lattices) or at another period (isotropic ones)."""
    h, w = img.shape[:2]
    s = min(h, w)
    region, _, centre = _region(rng, h, w, _patch_radius(rng, s, strength))
    symmetry = getattr(gen, "symmetry", 0)
    if symmetry == 0 or rng.random() < 0.3:
        angle, k = 0.0, rng.choice([rng.uniform(0.5, 0.6), rng.uniform(1.6, 1.8)])  # finer or coarser
    else:
        angle, k = (90.0 if symmetry == 2 else 45.0) + rng.uniform(-10, 10), 1.0
    side = max(int(round(s * k)), int(np.ceil(2 * _extent(region, centre))) + 4, 16)
    return _paste_from(gen(rng, side, side), img, region, centre, angle), region


def _missing_detail(rng, img, gen, strength):
    """A smoothed patch: the fine structure is gone, the local mean colour stays."""
    h, w = img.shape[:2]
    s = min(h, w)
    region, _, _ = _region(rng, h, w, _patch_radius(rng, s, strength))
    sigma = max(1.0, rng.uniform(1 / 128, 1 / 48) * s * strength)
    bb, out = _bbox(region, int(3 * sigma) + 1), img.copy()
    out[bb] = ndimage.gaussian_filter(img[bb], (sigma, sigma, 0), mode="reflect")
    return out, region


def _extra_detail(rng, img, gen, strength):
    """Grainy noise added to a patch (mostly luminance, a little colour)."""
    h, w = img.shape[:2]
    s = min(h, w)
    region, _, _ = _region(rng, h, w, _patch_radius(rng, s, strength))
    bb, out = _bbox(region), img.copy()
    noise = rng.standard_normal(out[bb].shape[:2], dtype=np.float32)
    if s >= 128:  # keep the grain size a fixed fraction of the image
        noise = ndimage.gaussian_filter(noise, s / 256)
        noise /= noise.std() + 1e-8
    tint = (1 + 0.3 * rng.standard_normal(3)).astype(np.float32)
    out[bb] += np.float32(0.1 * strength) * noise[..., None] * tint
    return out, region


def _hue_matrix(theta):
    """Rotation by theta around the grey axis of RGB space (a hue rotation keeping luminance)."""
    k = np.ones(3) / np.sqrt(3)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return (np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx).astype(np.float32)


def _colour_shift(rng, img, gen, strength):
    """A stain: the hue of a patch turned by 15-40 deg plus a tint (so grey textures change too)."""
    h, w = img.shape[:2]
    region, rho, _ = _region(rng, h, w, _patch_radius(rng, min(h, w), strength))
    theta = np.deg2rad(rng.uniform(15, 40) * strength * rng.choice([-1, 1]))
    phi = rng.uniform(0, 2 * np.pi)
    tint = np.cos(phi) * np.array([1, -1, 0]) / np.sqrt(2) + np.sin(phi) * np.array([1, 1, -2]) / np.sqrt(6)
    bb, out = _bbox(region), img.copy()
    turned = img[bb] @ _hue_matrix(theta).T + np.float32(0.05 * strength) * tint.astype(np.float32)
    alpha = 0.6 + 0.4 * (1 - rho[bb] ** 2)
    out[bb] = img[bb] + (turned - img[bb]) * alpha[..., None]
    return out, region


def _foreign_patch(rng, img, gen, strength):
    """A patch of another family (same scale convention) pasted in."""
    h, w = img.shape[:2]
    s = min(h, w)
    others = [g for g in FAMILIES.values() if g is not gen]
    other = others[int(rng.integers(len(others)))]
    region, _, centre = _region(rng, h, w, _patch_radius(rng, s, strength))
    side = max(s, int(np.ceil(2 * _extent(region, centre))) + 4)
    return _paste_from(other(rng, side, side), img, region, centre), region


# ---------------- exact masks ----------------
def _change(a, b):
    """Per-pixel max over channels of |a - b| (three maximums: a reduce over a 3-long axis is slow)."""
    d = np.abs(a - b)
    return np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2])


def exact_mask(img, out, region):
    """Clip, restore everything outside region, nudge region pixels that barely changed -> (out, mask)."""
    bb, inside = _bbox(region), region[_bbox(region)]
    x = img[bb]
    o = np.where(inside[..., None], np.clip(out[bb], 0, 1), x).astype(np.float32)
    weak = inside & (_change(o, x) < MIN_CHANGE)
    if weak.any():
        xw = x[weak]
        sign = np.where(o[weak] >= xw, 1.0, -1.0)  # each channel's own direction, away from the bounds
        sign = np.where(xw + sign * MIN_CHANGE > 1, -1.0, np.where(xw + sign * MIN_CHANGE < 0, 1.0, sign))
        o[weak] = xw + (MIN_CHANGE * sign).astype(np.float32)
    result, mask = img.copy(), np.zeros(region.shape, bool)
    result[bb], mask[bb] = o, _change(o, x) > TOL
    return result, mask


def _planted(core):
    def plant(rng, image, family_generator):
        img = np.asarray(image, np.float32)
        for attempt in range(ATTEMPTS):
            out, mask = exact_mask(img, *core(rng, img, family_generator, 1.0 + 0.5 * attempt))
            change = _change(out[mask], img[mask])
            if change.size and change.mean() >= VISIBLE and change.max() >= 2 * VISIBLE:
                break
        return out, mask

    plant.__name__ = core.__name__.lstrip("_")
    plant.__doc__ = core.__doc__
    return plant


DEFECT_KINDS = {
    "dark_spot": _planted(_dark_spot),
    "bright_spot": _planted(_bright_spot),
    "scratch": _planted(_scratch),
    "orientation": _planted(_orientation),
    "missing_detail": _planted(_missing_detail),
    "extra_detail": _planted(_extra_detail),
    "colour_shift": _planted(_colour_shift),
    "foreign_patch": _planted(_foreign_patch),
}

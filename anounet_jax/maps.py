"""Anomaly heatmaps and the pictures made from them: residual maps, smoothing, overlays, panels.

Arrays follow the package conventions: images float32 NHWC in [0, 1], masks bool (N, H, W),
heatmaps float32 (N, H, W). Everything here is NumPy (jax arrays are accepted and copied to host):
these functions run once per evaluation, after the jitted fitting is done.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from anounet_jax.errors import AnoUnetError

__all__ = ["residual_map", "smooth", "smooth_map", "deviation", "describe_deviation", "finish", "overlay",
           "overlay_scale", "panel", "save_panel", "write_panels"]


# ----------------------------------------------------------------------------- heatmaps


def residual_map(x, recon) -> np.ndarray:
    """Per-pixel anomaly map: mean over channels of |x - recon|, float32 (N, H, W).

    The original Ano-Unet draws |x - G(x)| per pixel; averaging the absolute residual over the
    colour channels keeps the map in [0, 1] for images in [0, 1] and treats a defect visible in one
    channel like a fainter one visible in all three (a max over channels would favour colour
    noise). x and recon are (N, H, W, C) of the same shape; (H, W, C) gives (H, W).
    """
    a = np.asarray(x, dtype=np.float32)
    b = np.asarray(recon, dtype=np.float32)
    if a.shape != b.shape:
        raise AnoUnetError(f"reconstruction {b.shape} does not match images {a.shape}")
    if a.ndim not in (3, 4):
        raise AnoUnetError(f"images must be (N, H, W, C) or (H, W, C), got {a.shape}")
    return np.abs(a - b).mean(axis=-1, dtype=np.float32)


MAP_SCORES = ("max", "top1")


def map_score(maps, how: str = "max") -> np.ndarray:
    """One image score per map (N, H, W) -> (N,): "max" its largest value, "top1" the mean of its
    largest 1% of values (at least one)."""
    flat = np.asarray(maps, np.float32).reshape(len(maps), -1)
    if how == "max":
        return flat.max(1) if flat.size else np.zeros(len(flat), np.float32)
    if how == "top1":
        k = max(1, flat.shape[1] // 100)
        return np.partition(flat, flat.shape[1] - k, axis=1)[:, -k:].mean(1)
    raise AnoUnetError(f"unknown map score {how!r}; use one of {', '.join(MAP_SCORES)}")


def smooth(maps, sigma: float) -> np.ndarray:
    """Gaussian smoothing of each map over H and W only (never across maps), float32.

    `scipy.ndimage.gaussian_filter` with standard deviation `sigma` pixels, borders reflected
    (mode "reflect"), kernel truncated at 4 sigma. The filter is normalized, so the mean of a map
    is preserved up to border effects. sigma = 0 returns an unchanged float32 copy. Accepts
    (N, H, W) or a single (H, W) map.
    """
    m = np.asarray(maps, dtype=np.float32)
    if m.ndim not in (2, 3):
        raise AnoUnetError(f"maps must be (N, H, W) or (H, W), got {m.shape}")
    s = float(sigma)
    if not s >= 0.0:  # also catches NaN
        raise AnoUnetError(f"smoothing sigma must be >= 0, got {sigma!r}")
    if s == 0.0:
        return m.copy()
    sig = (s, s) if m.ndim == 2 else (0.0, s, s)
    return ndimage.gaussian_filter(m, sigma=sig, mode="reflect", output=np.float32)


def smooth_map(heat, sigma: float) -> np.ndarray:
    """`smooth` of one (H, W) map; NaN pixels (holes left by diverged tiles) are left out of their
    neighbours' averages and stay NaN."""
    heat = np.asarray(heat, np.float32)
    nan = np.isnan(heat)
    if not nan.any():
        return smooth(heat, sigma)
    num = smooth(np.where(nan, 0.0, heat), sigma)
    den = smooth((~nan).astype(np.float32), sigma)
    out = np.divide(num, den, out=np.full_like(num, np.nan), where=den > 1e-6)
    out[nan] = np.nan
    return out


DEVIATIONS = ("none", "absolute", "relative")


def deviation(maps, how: str = "none", center=None, low: float = 1.0) -> np.ndarray:
    """Each map's departure from its own typical value, in both directions, float32.

    A reconstruction's error is roughly even over a normal texture; a defect departs from that level
    either way: most defects are harder to reproduce (more error), but a patch that lost its detail
    is *easier* (less error than the texture around it: the raw map is coldest exactly there). With
    c the map's median (over its finite pixels; a defect is a small part of an image):
    "none" returns the maps unchanged, "absolute" |m - c|, "relative" |m - c| / c (scale-free: a
    normal image's map is about as hot whatever its texture's typical error; for objects on a flat
    background, where most of a map is near 0, c is too and "absolute" is the one). Per map, so a map does
    not depend on the others of a batch. NaN pixels stay NaN. Accepts (N, H, W) or one (H, W) map.
    center: c given (one float per map; e.g. of a map that arrives in bands, score/job.py), not computed.
    low: the weight of the low side, max(m - c, 0) + low * max(c - m, 0) (1: |m - c|). A smooth normal
    region (a brick's mortar) is also reproduced better than its surroundings; a weight below 1 lets
    the missing-detail side count without making every such region as hot as a defect.
    """
    m = np.asarray(maps, dtype=np.float32)
    if how not in DEVIATIONS:
        raise AnoUnetError(f"unknown map deviation {how!r}; use one of {', '.join(DEVIATIONS)}")
    if m.ndim not in (2, 3):
        raise AnoUnetError(f"maps must be (N, H, W) or (H, W), got {m.shape}")
    if not float(low) >= 0.0:  # also catches NaN
        raise AnoUnetError(f"the deviation's low-side weight must be >= 0, got {low!r}")
    if how == "none" or m.size == 0:
        return m.copy()
    if center is None:
        flat = m.reshape(-1, m.shape[-2] * m.shape[-1])
        finite = np.isfinite(flat)
        center = np.full(len(flat), np.nan, np.float32)  # an all-NaN map (every tile diverged) stays NaN
        for i in np.flatnonzero(finite.any(1)):
            center[i] = np.median(flat[i][finite[i]])
    c = np.asarray(center, np.float32).reshape((-1, 1, 1) if m.ndim == 3 else (1, 1))
    d = m - c  # one side is 0 at every pixel, so low = 1 gives |m - c| exactly
    out = np.maximum(d, 0) + np.float32(low) * np.maximum(-d, 0)
    if how == "relative":
        out = out / np.maximum(c, np.float32(1e-12))
    return out.astype(np.float32)


def describe_deviation(how: str, low: float = 1.0) -> str:
    """How a report names a map deviation: "none", "relative", "absolute (low side x 0.5)"."""
    return how if how == "none" or float(low) == 1.0 else f"{how} (low side x {float(low):g})"


def finish(raw, cfg, sigma: float | None = None) -> np.ndarray:
    """The map step every job runs on every method's raw maps (N, H, W) or (H, W): Gaussian smoothing
    (`smooth`, cfg.smoothing_sigma unless `sigma` is given; one map: `smooth_map`, around NaN holes),
    then `deviation` (cfg.deviation, low side weighted by cfg.deviation_low).
    cfg: a config.MapConfig."""
    s = cfg.smoothing_sigma if sigma is None else sigma
    raw = np.asarray(raw, np.float32)
    smoothed = smooth_map(raw, s) if raw.ndim == 2 else smooth(raw, s)
    return deviation(smoothed, getattr(cfg, "deviation", "none"), low=getattr(cfg, "deviation_low", 1.0))


# ----------------------------------------------------------------------------- pictures


def _to_float_rgb(image, what: str = "image") -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] from uint8 / float / bool, RGB or grey ((H, W) or (H, W, 1))."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise AnoUnetError(f"{what} must be (H, W, 3), (H, W, 1) or (H, W), got {np.shape(image)}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == bool:
        return a.astype(np.float32)
    return np.clip(np.nan_to_num(a.astype(np.float32)), 0.0, 1.0)


def overlay(image, heat, vmin=None, vmax=None, alpha: float = 0.5) -> np.ndarray:
    """Jet-coloured heatmap blended over an image; uint8 (H, W, 3).

    Normalization: heat is mapped linearly from [vmin, vmax] to [0, 1] and clipped, then coloured
    with matplotlib's "jet" (blue = low, dark red = high). By default vmax is this map's own
    maximum and vmin is min(0, this map's minimum), so each picture spans the full colour range
    (good for locating a defect, but two pictures are not comparable). Pass a fixed vmax (e.g. a
    high percentile of all maps of a set) to make the colours of a set comparable. If vmax <= vmin
    the whole map is drawn at the low end (blue). NaN heat pixels get no colour (image only).

    out = (1 - alpha) * image + alpha * jet(normalized heat), image as float in [0, 1] (uint8,
    grey (H, W) and (H, W, 1) images are accepted).
    """
    img = _to_float_rgb(image)
    h = np.asarray(heat, dtype=np.float32)
    if h.shape != img.shape[:2]:
        raise AnoUnetError(f"heatmap {h.shape} does not match image {img.shape[:2]}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise AnoUnetError(f"alpha must be in [0, 1], got {alpha!r}")
    finite = np.isfinite(h)
    vals = h[finite]
    if vmax is None:
        vmax = float(vals.max()) if vals.size else 1.0
    if vmin is None:
        vmin = min(0.0, float(vals.min())) if vals.size else 0.0
    span = float(vmax) - float(vmin)
    if span > 0:
        norm = np.clip((np.nan_to_num(h, nan=vmin) - vmin) / span, 0.0, 1.0)
    else:
        norm = np.zeros_like(h)
    color = matplotlib.colormaps["jet"](norm)[..., :3].astype(np.float32)
    a = np.where(np.isnan(h), 0.0, float(alpha))[..., None]
    out = (1.0 - a) * img + a * color
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def _tile_uint8(content, title: str) -> np.ndarray:
    """uint8 (H, W, 3) from an RGB/grey image (uint8 or float in [0, 1]) or a bool mask."""
    a = np.asarray(content)
    if a.dtype == bool:  # mask: white on black
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.ndim != 2:
            raise AnoUnetError(f"panel column {title!r}: a mask must be (H, W), got {a.shape}")
        return np.repeat((a.astype(np.uint8) * 255)[..., None], 3, axis=-1)
    if a.dtype == np.uint8 and a.ndim == 3 and a.shape[-1] == 3:
        return a
    f = _to_float_rgb(a, what=f"panel column {title!r}")
    return np.round(f * 255.0).astype(np.uint8)


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def panel(
    columns: Sequence[tuple[str, object]],
    scale: int | None = None,
    gap: int = 4,
) -> Image.Image:
    """A row of tiles, each with a small title above it; returns an RGB `PIL.Image`.

    columns: (title, content) pairs; content is an RGB or grey image (uint8, or float in [0, 1]),
    e.g. an `overlay`, or a bool mask (drawn white on black). Tiles are enlarged by an integer
    factor with NEAREST resampling so single pixels stay visible; `scale=None` picks the factor
    that brings the largest tile side closest to 192 px (3 for 64x64 tiles, 2 for 96x96). Titles
    use Pillow's default font, black on white, cut with "..." when wider than the tile; tiles of
    different sizes are top-aligned. `gap` is the white margin in px around and between tiles.

    The demo writes `image | reconstruction | heatmap overlay | true mask`; the evaluate command
    `image | true mask | method A overlay | method B overlay ...`.
    """
    if not columns:
        raise AnoUnetError("a panel needs at least one column")
    tiles = [(str(title), _tile_uint8(content, str(title))) for title, content in columns]
    side = max(max(t.shape[:2]) for _, t in tiles)
    if scale is None:
        scale = max(1, round(192 / side))
    scale = int(scale)
    if scale < 1:
        raise AnoUnetError(f"panel scale must be >= 1, got {scale}")
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title_h = probe.textbbox((0, 0), "Hg", font=font)[3] + 3  # text height with descenders
    sizes = [(t.shape[1] * scale, t.shape[0] * scale) for _, t in tiles]
    width = gap + sum(w + gap for w, _ in sizes)
    height = gap + title_h + max(h for _, h in sizes) + gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = gap
    for (title, tile), (w, h) in zip(tiles, sizes):
        img = Image.fromarray(tile).resize((w, h), Image.Resampling.NEAREST)
        canvas.paste(img, (x, gap + title_h))
        draw.text((x, gap), _fit_text(draw, title, font, w), fill=(0, 0, 0), font=font)
        x += w + gap
    return canvas


def save_panel(
    path: str | os.PathLike,
    columns: Sequence[tuple[str, object]],
    scale: int | None = None,
    gap: int = 4,
) -> str:
    """Write `panel(columns, scale, gap)` to `path` (format from the suffix; PNG when there is none).

    Parent folders are created. Returns the path written. Raises AnoUnetError (with the path) when
    the file cannot be written.
    """
    img = panel(columns, scale=scale, gap=gap)
    p = os.fspath(path)
    fmt = None if os.path.splitext(p)[1] else "PNG"
    try:
        parent = os.path.dirname(p)
        if parent:
            os.makedirs(parent, exist_ok=True)
        img.save(p, format=fmt)
    except (OSError, ValueError) as e:
        raise AnoUnetError(f"cannot write panel: {e}", path=p) from e
    return p


def overlay_scale(maps) -> float:
    """The top of one method's shared colour scale: the 99.5th percentile of all its finite values,
    so a hot normal image and a cold defect look different, as they should."""
    finite = np.asarray(maps)[np.isfinite(maps)]
    return float(np.percentile(finite, 99.5)) if finite.size else 1.0


def write_panels(out_dir, images, ids, maps: dict, masks=None, recon=None) -> int:
    """One PNG per image in out_dir/panels/: image | [reconstruction] | one overlay per named map
    (each method on its own shared scale) | [true mask]. Returns the number written."""
    vmax = {name: overlay_scale(m) for name, m in maps.items()}
    for i, ident in enumerate(ids):
        cols = [("image", images[i])]
        if recon is not None:
            cols.append(("reconstruction", recon[i]))
        cols += [(name, overlay(images[i], m[i], vmin=0.0, vmax=vmax[name])) for name, m in maps.items()]
        if masks is not None:
            cols.append(("true mask", masks[i]))
        save_panel(os.path.join(os.fspath(out_dir), "panels", ident.replace("/", "_") + ".png"), cols)
    return len(ids)

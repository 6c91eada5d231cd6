"""The embedded default data set: no download, everything cut from pictures scikit-image ships.

- normal: patches of a real texture photograph (`skimage.data.brick()` or `grass()`), 96-px native
  patches resized to the preset's image size; training patches come from the top 3/4 of the photograph,
  test patches from the bottom 1/4, so no test pixel was ever seen in training.
- test: normal test patches plus patches with one planted defect each (scratch, spot, smudge,
  cut-paste of the same texture at the wrong scale, stain) and its exact pixel mask.
- reference (metric learning): patches of the other bundled pictures, one class each, plus
  procedurally generated textures of several statistics. `skimage.data.gravel()` is never a reference
  class: it is kept free for independent evaluation (the category "gravel", a real-image family that
  no preset was tuned on).
"""

from __future__ import annotations

import numpy as np
import skimage.data as skd
from scipy import ndimage
from skimage import draw, transform

from anounet_jax.data.types import ImageSet
from anounet_jax.errors import AnoUnetError

NATIVE_PATCH = 96  # source pixels per patch side before resizing to the preset's size
NORMAL_SOURCES = {"brick": skd.brick, "grass": skd.grass}  # also reference classes for each other
EVALUATION_ONLY = {"gravel": skd.gravel}  # a normal category, never a reference class
CATEGORIES = (*NORMAL_SOURCES, *EVALUATION_ONLY)
REFERENCE_PICTURES = ("astronaut", "camera", "coffee", "chelsea", "coins", "moon", "page", "text",
                      "rocket", "retina", "hubble_deep_field", "immunohistochemistry", "cell", "clock",
                      "colorwheel")
PROCEDURAL = ("clouds", "stripes", "checkers", "blobs", "dots", "rings")
DEFECTS = ("scratch", "spot", "smudge", "cutpaste", "stain")


def _rgb01(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.float32)
    elif np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float32) / np.iinfo(a.dtype).max
    a = a.astype(np.float32)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    return np.clip(a[..., :3], 0.0, 1.0)


def _rescaled(a: np.ndarray, factor: float) -> np.ndarray:
    if factor == 1.0:
        return a
    out = transform.rescale(a, factor, channel_axis=-1, anti_aliasing=factor < 1, order=1)
    return out.astype(np.float32)


def _patches(src: np.ndarray, n: int, size: int, rng, flips: bool = True) -> np.ndarray:
    h, w = src.shape[:2]
    if h < size or w < size:
        raise AnoUnetError(f"source picture {h}x{w} is smaller than a {size}-pixel patch")
    ys = rng.integers(0, h - size + 1, n)
    xs = rng.integers(0, w - size + 1, n)
    out = np.stack([src[y:y + size, x:x + size] for y, x in zip(ys, xs)])
    if flips:
        out = np.where(rng.random((n, 1, 1, 1)) < 0.5, out[:, :, ::-1], out)
        out = np.where(rng.random((n, 1, 1, 1)) < 0.5, out[:, ::-1], out)
    return np.ascontiguousarray(out, np.float32)


# ---------------- procedural reference textures ----------------
def _procedural(kind: str, size: int, rng) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == "clouds":
        g = ndimage.gaussian_filter(rng.standard_normal((size, size)), rng.uniform(1, size / 6))
        g = (g - g.mean()) / (g.std() + 1e-6)
        img = 0.5 + 0.18 * g
    elif kind == "stripes":
        th, f = rng.uniform(0, np.pi), rng.uniform(2, 12)
        img = 0.5 + 0.4 * np.sin(2 * np.pi * f * (xx * np.cos(th) + yy * np.sin(th)) + rng.uniform(0, 6))
    elif kind == "checkers":
        f = rng.integers(2, 9)
        img = 0.2 + 0.6 * ((np.floor(xx * f) + np.floor(yy * f)) % 2)
    elif kind == "blobs":
        img = skd.binary_blobs(size, blob_size_fraction=rng.uniform(0.05, 0.3),
                               volume_fraction=rng.uniform(0.3, 0.6), rng=int(rng.integers(1 << 30)))
        img = 0.25 + 0.5 * img.astype(np.float32)
    elif kind == "dots":
        img = np.full((size, size), rng.uniform(0.2, 0.8), np.float32)
        for _ in range(rng.integers(5, 40)):
            rr, cc = draw.disk((rng.uniform(0, size), rng.uniform(0, size)), rng.uniform(1, size / 10),
                               shape=(size, size))
            img[rr, cc] = rng.uniform(0, 1)
    elif kind == "rings":
        cy, cx, f = rng.uniform(-0.5, 1.5), rng.uniform(-0.5, 1.5), rng.uniform(3, 15)
        img = 0.5 + 0.35 * np.sin(2 * np.pi * f * np.hypot(yy - cy, xx - cx))
    else:
        raise AnoUnetError(f"unknown procedural texture {kind!r}")
    img = np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1).astype(np.float32)
    rgb = img[..., None] * rng.uniform(0.6, 1.0, 3).astype(np.float32)  # a random tint
    return np.clip(rgb, 0, 1).astype(np.float32)


# ---------------- planted defects (exact masks) ----------------
def _soft_ellipse(size, rng, rmin, rmax):
    cy, cx = rng.uniform(0.2 * size, 0.8 * size, 2)
    ry, rx = rng.uniform(rmin, rmax, 2) * size
    rr, cc = draw.ellipse(cy, cx, ry, rx, shape=(size, size), rotation=rng.uniform(0, np.pi))
    mask = np.zeros((size, size), bool)
    mask[rr, cc] = True
    return mask


def plant_defect(img: np.ndarray, kind: str, rng, texture: np.ndarray | None = None):
    """One defect of `kind` planted into img (H,W,3) -> (defective image, bool mask of changed pixels)."""
    size = img.shape[0]
    out = img.copy()
    if kind == "scratch":
        mask = np.zeros((size, size), bool)
        pts = rng.uniform(0.1 * size, 0.9 * size, (3, 2))
        for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:]):
            rr, cc = draw.line(int(y0), int(x0), int(y1), int(x1))
            mask[rr, cc] = True
        mask = ndimage.binary_dilation(mask, iterations=max(1, size // 48))
        value = rng.choice([rng.uniform(0.0, 0.1), rng.uniform(0.9, 1.0)])
        out[mask] = value
    elif kind == "spot":
        mask = _soft_ellipse(size, rng, 0.05, 0.12)
        out[mask] = rng.choice([rng.uniform(0.0, 0.15), rng.uniform(0.85, 1.0)])
    elif kind == "smudge":
        mask = _soft_ellipse(size, rng, 0.1, 0.2)
        blurred = ndimage.gaussian_filter(img, (size / 24, size / 24, 0))
        shift = rng.choice([-0.2, 0.2])
        out[mask] = np.clip(blurred[mask] + shift, 0, 1)
    elif kind == "cutpaste":
        if texture is None:
            raise AnoUnetError("cutpaste needs a source texture")
        mask = _soft_ellipse(size, rng, 0.1, 0.2)
        zoom = _rescaled(texture, rng.choice([0.5, 2.0]))
        patch = _patches(zoom, 1, size, rng)[0]
        out[mask] = patch[mask]
    elif kind == "stain":
        mask = _soft_ellipse(size, rng, 0.08, 0.18)
        tint = np.array(rng.choice([[0.9, 0.5, 0.2], [0.3, 0.6, 0.9], [0.5, 0.8, 0.3]]), np.float32)
        out[mask] = out[mask] * tint
    else:
        raise AnoUnetError(f"unknown defect kind {kind!r}; use one of {DEFECTS}")
    changed = np.abs(out - img).max(-1) > 1e-3
    return np.clip(out, 0, 1).astype(np.float32), mask & changed


# ---------------- the data set ----------------
def _normal_source(category: str, image_size: int) -> np.ndarray:
    sources = {**NORMAL_SOURCES, **EVALUATION_ONLY}
    if category not in sources:
        raise AnoUnetError(f"unknown embedded category {category!r}; use one of {list(CATEGORIES)}")
    return _rescaled(_rgb01(sources[category]()), image_size / NATIVE_PATCH)


def load_normal(category: str, image_size: int, n: int, seed: int = 0) -> ImageSet:
    """Normal training patches from the top 3/4 of the photograph."""
    src = _normal_source(category, image_size)
    train_band = src[: int(0.75 * src.shape[0])]
    rng = np.random.default_rng([seed, 1])
    x = _patches(train_band, n, image_size, rng)
    return ImageSet(x, labels=np.zeros(n, np.int64), ids=[f"train/{category}/{i:04d}" for i in range(n)])


def load_test(category: str, image_size: int, n_good: int, n_defect: int, seed: int = 0) -> ImageSet:
    """Test patches from the bottom 1/4: n_good normal, n_defect with one defect each (kinds cycle)."""
    src = _normal_source(category, image_size)
    test_band = src[int(0.75 * src.shape[0]):]
    rng = np.random.default_rng([seed, 2])
    x = _patches(test_band, n_good + n_defect, image_size, rng)
    masks = np.zeros(x.shape[:3], bool)
    ids = [f"test/good/{i:03d}" for i in range(n_good)]
    for j in range(n_defect):
        kind = DEFECTS[j % len(DEFECTS)]
        x[n_good + j], masks[n_good + j] = plant_defect(x[n_good + j], kind, rng, texture=src)
        ids.append(f"test/{kind}/{j:03d}")
    labels = np.r_[np.zeros(n_good, np.int64), np.ones(n_defect, np.int64)]
    return ImageSet(x, masks=masks, labels=labels, ids=ids)


def load_reference(category: str, image_size: int, n_per_class: int, seed: int = 0) -> ImageSet:
    """Reference images: the other bundled pictures and procedural textures, one class each."""
    rng = np.random.default_rng([seed, 3])
    others = [c for c in NORMAL_SOURCES if c != category]
    images, labels, ids = [], [], []
    names = others + list(REFERENCE_PICTURES) + list(PROCEDURAL)
    for label, name in enumerate(names):
        if name in PROCEDURAL:
            x = np.stack([_procedural(name, image_size, rng) for _ in range(n_per_class)])
        else:
            raw = _rgb01((NORMAL_SOURCES.get(name) or getattr(skd, name))())
            # several scales per picture so a class is more than one crop size
            scales = image_size / NATIVE_PATCH * np.array([0.5, 1.0, 2.0])
            per = np.array_split(np.arange(n_per_class), len(scales))
            x = np.concatenate([_patches(_rescaled(raw, max(s, image_size / min(raw.shape[:2]) + 1e-3)),
                                         len(p), image_size, rng) for s, p in zip(scales, per) if len(p)])
        images.append(x)
        labels += [label] * n_per_class
        ids += [f"reference/{name}/{i:04d}" for i in range(n_per_class)]
    return ImageSet(np.concatenate(images), labels=np.asarray(labels, np.int64), ids=ids)


def load_embedded(data_cfg, image_size: int, seed: int = 0) -> dict[str, ImageSet]:
    """{"train": normal patches, "reference": labelled reference images, "test": with masks}."""
    c = data_cfg.category
    return {
        "train": load_normal(c, image_size, data_cfg.n_train, seed),
        "reference": load_reference(c, image_size, data_cfg.n_reference_per_class, seed),
        "test": load_test(c, image_size, data_cfg.n_test_good, data_cfg.n_test_defect, seed),
    }

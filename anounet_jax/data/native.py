"""Images at their native size for tiled evaluation, the demo's full photograph and the tiling benchmark.

`NativeSet`: images of any sizes as a list (no resizing, no stacking), with masks of the same sizes.

`load_native_mvtec(root)`: an MVTec-style category folder read at the files' size (masks are not
resized; a mask whose size differs from its image is a one-line `AnoUnetError` naming the mask file).

`load_native_embedded(category, ...)`: the embedded photograph (`skimage.data.brick()` / `grass()` /
`gravel()`, 512 x 512) at its own scale: training crops from its top 3/4, test crops from its bottom
1/4 (no test pixel was seen in training), each defective test crop with defects planted by
`plant_native_defects`: small ones of 2-6 pixels (a dot or a short scratch) and large ones of 12-28
pixels (a spot, a stain), with exact masks. `full_photo(...)`: the whole 512 x 512 photograph with
planted defects, for the demo (it contains the training band too: it is a picture to look at, the
demo's metrics on it are labelled as such).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from skimage import draw

from anounet_jax.errors import AnoUnetError

SMALL = (2, 6)  # small defects: 2-6 pixels across
LARGE = (12, 28)  # large defects


@dataclasses.dataclass
class NativeSet:
    """Images float32 (H_i, W_i, 3) in [0, 1], any sizes; masks bool (H_i, W_i) or None; labels (N,)."""

    images: list
    masks: list | None = None
    labels: np.ndarray | None = None
    ids: list = dataclasses.field(default_factory=list)
    defects: list = dataclasses.field(default_factory=list)  # per image: [(kind, size_px, y, x), ...]
    small: list | None = None  # per image: bool (H_i, W_i), the pixels of its 2-6 px defects

    def __len__(self) -> int:
        return len(self.images)

    def sizes(self) -> list[tuple[int, int]]:
        if isinstance(self.images, FolderImages):
            return self.images.sizes()
        return [tuple(x.shape[:2]) for x in self.images]


class FolderImages:
    """Image files read on demand, at their own size: `len`, `[i]` (float32 (H, W, 3) in [0, 1]) and
    `sizes()` from the headers only. For normal images that are only cut into a few tiles, or read one
    at a time, so that a folder of large images is never all in memory (train-fnet on tiles)."""

    def __init__(self, paths):
        from anounet_jax.data.io import image_size

        self.paths = list(paths)
        self._sizes = [image_size(p) for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        from anounet_jax.data.io import load_image

        return load_image(self.paths[i])

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def sizes(self) -> list[tuple[int, int]]:
        return list(self._sizes)


def native_folder(folder, recursive: bool = False) -> NativeSet:
    """The image files of a folder as a NativeSet of normal images read on demand (`FolderImages`)."""
    from pathlib import Path

    from anounet_jax.data.io import list_images

    paths = list_images(folder, recursive)
    return NativeSet(FolderImages(paths), labels=np.zeros(len(paths), np.int64),
                     ids=[str(Path(p).relative_to(folder)) for p in paths])


# ------------------------------------------------------------------------------------- defects
def _defect(img: np.ndarray, kind: str, size: int, rng) -> tuple[np.ndarray, tuple[int, int]]:
    """The bool mask of one defect of `kind`, about `size` pixels across, at a random place."""
    h, w = img.shape[:2]
    m = max(size, 2)
    cy, cx = int(rng.integers(m, max(m + 1, h - m))), int(rng.integers(m, max(m + 1, w - m)))
    mask = np.zeros((h, w), bool)
    if kind in ("dot", "spot", "stain"):
        r = size / 2.0
        rr, cc = draw.ellipse(cy, cx, r, max(r * rng.uniform(0.7, 1.3), 1.0), shape=(h, w),
                              rotation=rng.uniform(0, np.pi))
        mask[rr, cc] = True
        if not mask.any():
            mask[cy, cx] = True
    elif kind == "scratch":
        a = rng.uniform(0, np.pi)
        length = size if size > SMALL[1] else int(rng.integers(8, 16))  # a short hairline for small ones
        dy, dx = np.sin(a) * length / 2, np.cos(a) * length / 2
        rr, cc = draw.line(int(cy - dy), int(cx - dx), int(cy + dy), int(cx + dx))
        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        mask[rr[ok], cc[ok]] = True
        if size > 2:
            from scipy import ndimage

            mask = ndimage.binary_dilation(mask, iterations=max(1, min(size, SMALL[1]) // 3))
    else:
        raise AnoUnetError(f"unknown native defect kind {kind!r}")
    return mask, (cy, cx)


def plant_native_defects(img: np.ndarray, rng, n_small: int = 2, n_large: int = 1):
    """(image with defects, bool mask, [(kind, size_px, y, x)], bool mask of the small defects alone):
    n_small defects of 2-6 px (dots, hairline scratches: dark or bright) and n_large of 12-28 px
    (spots, stains)."""
    out = np.array(img, np.float32, copy=True)
    mask = np.zeros(out.shape[:2], bool)
    small_mask = np.zeros(out.shape[:2], bool)
    planted = []
    for i in range(n_small + n_large):
        small = i < n_small
        size = int(rng.integers(SMALL[0], SMALL[1] + 1)) if small else int(rng.integers(LARGE[0], LARGE[1] + 1))
        kind = ("dot", "scratch")[i % 2] if small else ("spot", "stain")[i % 2]
        m, (y, x) = _defect(out, kind, size, rng)
        if kind == "stain":
            tint = np.array(rng.choice([[0.9, 0.5, 0.2], [0.3, 0.6, 0.9]]), np.float32)
            out[m] = out[m] * tint
        else:
            out[m] = rng.uniform(0.0, 0.1) if out[m].mean() > 0.45 else rng.uniform(0.9, 1.0)
        changed = m & (np.abs(out - img).max(-1) > 1e-3)
        mask |= changed
        if small:
            small_mask |= changed
        planted.append((kind, size, y, x))
    return np.clip(out, 0, 1).astype(np.float32), mask, planted, small_mask


# ------------------------------------------------------------------------------------- embedded
def photo(category: str) -> np.ndarray:
    """The embedded photograph at its own size, float32 (H, W, 3)."""
    from anounet_jax.data.embedded import EVALUATION_ONLY, NORMAL_SOURCES, _rgb01

    sources = {**NORMAL_SOURCES, **EVALUATION_ONLY}
    if category not in sources:
        raise AnoUnetError(f"unknown embedded category {category!r}; use one of {list(sources)}")
    return _rgb01(sources[category]())


def _crops(src: np.ndarray, n: int, hw: tuple[int, int], rng) -> list[np.ndarray]:
    h, w = src.shape[:2]
    ch, cw = min(hw[0], h), min(hw[1], w)
    out = []
    for _ in range(n):
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        c = src[y:y + ch, x:x + cw]
        if rng.random() < 0.5:
            c = c[:, ::-1]
        out.append(np.ascontiguousarray(c, np.float32))
    return out


def load_native_embedded(category: str = "brick", n_train: int = 8, n_good: int = 2, n_defect: int = 4,
                         seed: int = 0, train_hw=(128, 128), test_hw=(128, 192), n_small: int = 2,
                         n_large: int = 1) -> tuple[NativeSet, NativeSet]:
    """(train, test) at the photograph's own scale (module docstring); test: n_good normal crops, then
    n_defect crops with n_small small and n_large large defects each (ids test/native/NNN)."""
    src = photo(category)
    cut = int(0.75 * src.shape[0])
    rng = np.random.default_rng([seed, 11])
    train = _crops(src[:cut], n_train, train_hw, rng)
    test = _crops(src[cut:], n_good + n_defect, test_hw, rng)
    masks, defects = [np.zeros(x.shape[:2], bool) for x in test], [[] for _ in test]
    small = [np.zeros(x.shape[:2], bool) for x in test]
    for j in range(n_good, n_good + n_defect):
        test[j], masks[j], defects[j], small[j] = plant_native_defects(test[j], rng, n_small, n_large)
    ids = [f"test/good/{i:03d}" for i in range(n_good)] + [f"test/native/{j:03d}" for j in range(n_defect)]
    labels = np.r_[np.zeros(n_good, np.int64), np.ones(n_defect, np.int64)]
    return (NativeSet(train, labels=np.zeros(n_train, np.int64), ids=[f"train/{category}/{i:04d}" for i in range(n_train)]),
            NativeSet(test, masks, labels, ids, defects, small))


def full_photo(category: str = "brick", seed: int = 0, n_small: int = 6, n_large: int = 3):
    """(the whole photograph with planted defects, its mask, the defects' list, the small defects' mask)."""
    return plant_native_defects(photo(category), np.random.default_rng([seed, 12]), n_small, n_large)


# ------------------------------------------------------------------------------------- folders
def load_native_mvtec(root, split: str = "test") -> NativeSet:
    """An MVTec-style category folder at the files' own sizes (see data/mvtec.py for the layout)."""
    from pathlib import Path

    from anounet_jax.data.io import list_images, read_image, read_mask
    from anounet_jax.data.mvtec import GOOD, _folder

    root = Path(root)
    if split == "train":
        paths = list_images(_folder(root / "train" / GOOD, "training"))
        return NativeSet([read_image(p)[0] for p in paths], labels=np.zeros(len(paths), np.int64),
                         ids=[f"train/{GOOD}/{p.stem}" for p in paths])
    test = _folder(root / "test", "test")
    groups = sorted(d.name for d in test.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not groups:
        raise AnoUnetError("no subfolders (good, <defect types>) in the test folder", test)
    groups = ([GOOD] if GOOD in groups else []) + [g for g in groups if g != GOOD]
    images, masks, labels, ids = [], [], [], []
    for group in groups:
        if group != GOOD:
            _folder(root / "ground_truth" / group, "ground-truth")
        for p in list_images(test / group):
            image, hw = read_image(p)
            if group == GOOD:
                mask = np.zeros(hw, bool)
            else:
                mask_path = root / "ground_truth" / group / f"{p.stem}_mask.png"
                if not mask_path.is_file():
                    raise AnoUnetError(f"missing ground-truth mask for test image {p}", mask_path)
                mask, mhw = read_mask(mask_path)
                if mhw != hw:
                    raise AnoUnetError(f"mask is {mhw[0]}x{mhw[1]} but its image {p} is {hw[0]}x{hw[1]}",
                                       mask_path)
            images.append(image)
            masks.append(mask)
            labels.append(0 if group == GOOD else 1)
            ids.append(f"test/{group}/{p.stem}")
    return NativeSet(images, masks, np.asarray(labels, np.int64), ids)

"""Synthetic validation suite: procedural texture families with planted defects and exact masks.

A data source ``"synthetic:NAME"`` (NAME one of `FAMILIES`) gives normal training images of one family
and a test set of normal + defective images (`anounet_jax.data.defects`), at any size, with nothing to
download. The families are split once and for all:

- `TUNING`: presets, thresholds and method choices may be tuned on these families only;
- `HELD_OUT`: for reporting only. They hold the weave-, speckle- and fibre-like textures (a user
  already reported results on such textures, so tuning on them would flatter those results); each
  split has periodic, stochastic and structured families.

Reproducibility: every image has its own random stream ``default_rng([seed, family_index, stream, i])``
(stream 0 train, 1 test good, 2 test defective), so a seed reproduces every byte, train and test never
share a sample, and no image depends on how many others were asked for. ``family_index`` is the
family's position in `FAMILIES`; new families are appended so old indices keep their data.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from anounet_jax.data.defects import DEFECT_KINDS
from anounet_jax.data.io import normalize_size
from anounet_jax.data.textures import FAMILIES
from anounet_jax.data.types import ImageSet
from anounet_jax.errors import AnoUnetError

__all__ = ["FAMILIES", "DEFECT_KINDS", "TUNING", "HELD_OUT", "load_synthetic", "parse_synthetic",
           "write_mvtec", "applicable_kinds", "defect_free_test_images"]

TUNING: tuple[str, ...] = ("tiles", "clouds", "grain", "bricks", "leather")
HELD_OUT: tuple[str, ...] = ("weave", "grid", "speckle", "fibres", "cells")
SPLITS = {"tuning": TUNING, "held-out": HELD_OUT, "all": tuple(FAMILIES)}
PREFIX = "synthetic:"
_TRAIN, _GOOD, _DEFECT = 0, 1, 2


def _check_family(family: str) -> int:
    if family not in FAMILIES:
        raise AnoUnetError(f"unknown synthetic family {family!r}; use one of {', '.join(FAMILIES)} "
                           f"(or {PREFIX}tuning / {PREFIX}held-out)")
    return list(FAMILIES).index(family)


def applicable_kinds(family: str) -> tuple[str, ...]:
    """Defect kinds that make sense on `family`: all but "orientation" on scale-free textures (a turned
    or zoomed patch of 1/f noise looks like any other patch; elsewhere it adapts to the symmetry)."""
    _check_family(family)
    scale_free = getattr(FAMILIES[family], "scale_free", False)
    return tuple(k for k in DEFECT_KINDS if not (scale_free and k == "orientation"))


def _rng(seed: int, family_index: int, stream: int, i: int):
    return np.random.default_rng([seed, family_index, stream, i])


def load_synthetic(family: str, size=64, n_train: int = 200, n_test_good: int = 10,
                   n_test_defect: int = 40, seed: int = 0, kinds=None) -> dict[str, ImageSet]:
    """{"train": normal images (labels 0), "test": good then defective images with labels and masks}.

    size: int or (height, width). Defect kinds cycle over `kinds` (default: `applicable_kinds`); test
    ids are ``test/good/000`` and ``test/<kind>/000`` numbered within each kind, as in MVTec AD.
    """
    fi = _check_family(family)
    hw = normalize_size(size)
    if hw is None:
        raise AnoUnetError("synthetic images need a size (an int or a (height, width) pair)")
    h, w = hw
    if min(h, w) < 16:
        raise AnoUnetError(f"synthetic images need at least 16 px per side, got {h}x{w}")
    kinds = tuple(applicable_kinds(family) if kinds is None else kinds)
    unknown = [k for k in kinds if k not in DEFECT_KINDS]
    if unknown or not kinds:
        raise AnoUnetError(f"unknown defect kinds {unknown}; use some of {', '.join(DEFECT_KINDS)}")
    if min(n_train, n_test_good, n_test_defect) < 0:
        raise AnoUnetError("image counts must be >= 0")
    gen = FAMILIES[family]
    empty = np.zeros((0, h, w, 3), np.float32)

    def normal(stream, i):
        return gen(_rng(seed, fi, stream, i), h, w)

    train = np.stack([normal(_TRAIN, i) for i in range(n_train)]) if n_train else empty
    images = [normal(_GOOD, i) for i in range(n_test_good)]
    masks = [np.zeros((h, w), bool)] * n_test_good
    ids = [f"test/good/{i:03d}" for i in range(n_test_good)]
    counts = dict.fromkeys(kinds, 0)
    for j in range(n_test_defect):
        kind = kinds[j % len(kinds)]
        rng = _rng(seed, fi, _DEFECT, j)
        image, mask = DEFECT_KINDS[kind](rng, gen(rng, h, w), gen)
        images.append(image)
        masks.append(mask)
        ids.append(f"test/{kind}/{counts[kind]:03d}")
        counts[kind] += 1
    n_test = n_test_good + n_test_defect
    test = ImageSet(
        images=np.stack(images) if n_test else empty,
        masks=np.stack(masks) if n_test else np.zeros((0, h, w), bool),
        labels=np.r_[np.zeros(n_test_good, np.int64), np.ones(n_test_defect, np.int64)],
        ids=ids,
    )
    train_set = ImageSet(train, labels=np.zeros(n_train, np.int64),
                         ids=[f"train/good/{i:04d}" for i in range(n_train)])
    return {"train": train_set, "test": test}


def defect_free_test_images(family: str, size=64, n_test_good: int = 10, n_test_defect: int = 40,
                            seed: int = 0) -> np.ndarray:
    """The test images of `load_synthetic` (same arguments) as they were before their defect was planted:
    each defective image's texture is drawn from its own stream first, so drawing it again without the
    defect gives the image it was made from (good images are returned as they are). An oracle for
    ablations ("what if the method knew the normal version of this image?"), never an input of a method."""
    fi = _check_family(family)
    h, w = normalize_size(size)
    gen = FAMILIES[family]
    good = [gen(_rng(seed, fi, _GOOD, i), h, w) for i in range(n_test_good)]
    bad = [gen(_rng(seed, fi, _DEFECT, j), h, w) for j in range(n_test_defect)]
    return np.stack(good + bad) if good or bad else np.zeros((0, h, w, 3), np.float32)


def parse_synthetic(spec: str):
    """ "synthetic:NAME" -> NAME; "synthetic:tuning" / "synthetic:held-out" / "synthetic:all" -> list."""
    if not isinstance(spec, str) or not spec.startswith(PREFIX):
        raise AnoUnetError(f"a synthetic data source looks like '{PREFIX}NAME', got {spec!r}")
    name = spec[len(PREFIX):].strip().lower()
    if name in SPLITS:
        return list(SPLITS[name])
    _check_family(name)
    return name


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_mvtec(root: str | os.PathLike, family: str, **load_kwargs) -> Path:
    """Write one MVTec-AD-layout category folder that `anounet_jax.data.mvtec.load_mvtec` reads back.

    ``root/train/good/0000.png``, ``root/test/<good|kind>/000.png``, ``root/ground_truth/<kind>/000_mask.png``
    (8-bit RGB images, 8-bit 0/255 masks). Keyword arguments go to `load_synthetic`.
    """
    root = Path(root)
    data = load_synthetic(family, **load_kwargs)
    try:
        for split in ("train", "test"):
            s = data[split]
            pixels = np.round(s.images * 255).astype(np.uint8)
            for k, ident in enumerate(s.ids):
                _save_png(pixels[k], root / f"{ident}.png")
                _, group, stem = ident.split("/")
                if split == "test" and group != "good":
                    mask_path = root / "ground_truth" / group / f"{stem}_mask.png"
                    _save_png(s.masks[k].astype(np.uint8) * 255, mask_path)
    except OSError as e:
        raise AnoUnetError(f"cannot write the synthetic data set ({e})", root) from None
    return root

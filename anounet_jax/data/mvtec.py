"""MVTec AD: one category folder (``bottle``, ``carpet``, ...) as laid out in the official archive::

    <root>/train/good/000.png ...
    <root>/test/good/000.png ...
    <root>/test/<defect>/000.png ...
    <root>/ground_truth/<defect>/000_mask.png ...

`load_mvtec` returns an `ImageSet` with ids ``"train/good/000"``, ``"test/scratch/000"`` (no
extension). The test split has labels 0 (good) / 1 (any defect) and bool masks (all False for good
images); its groups come ``good`` first, then the defect types in name order. Each mask must have the
same size as its image *in the files* (checked before resizing); a missing mask or folder raises
`AnoUnetError` naming the path.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from anounet_jax.data.io import Size, list_images, normalize_size, read_image, read_mask, stack_images
from anounet_jax.data.types import ImageSet
from anounet_jax.errors import AnoUnetError

MVTEC_CATEGORIES: tuple[str, ...] = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip
GOOD = "good"


def _folder(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise AnoUnetError(f"{what} folder not found (is this an MVTec AD category folder?)", path)
    return path


def _load_train(root: Path, hw) -> ImageSet:
    folder = _folder(root / "train" / GOOD, "training")
    paths = list_images(folder)
    images = stack_images([read_image(p, hw)[0] for p in paths], paths)
    return ImageSet(
        images=images,
        labels=np.zeros(len(paths), np.int32),
        ids=[f"train/{GOOD}/{p.stem}" for p in paths],
    )


def _load_test(root: Path, hw) -> ImageSet:
    test = _folder(root / "test", "test")
    groups = sorted(d.name for d in test.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not groups:
        raise AnoUnetError("no subfolders (good, <defect types>) in the test folder", test)
    groups = ([GOOD] if GOOD in groups else []) + [g for g in groups if g != GOOD]
    gt_root = root / "ground_truth"
    images, masks, labels, ids, paths = [], [], [], [], []
    for group in groups:
        if group != GOOD:
            _folder(gt_root / group, "ground-truth")
        for p in list_images(test / group):
            image, image_hw = read_image(p, hw)
            if group == GOOD:
                mask = np.zeros(image.shape[:2], bool)
            else:
                mask_path = gt_root / group / f"{p.stem}_mask.png"
                if not mask_path.is_file():
                    raise AnoUnetError(f"missing ground-truth mask for test image {p}", mask_path)
                mask, mask_hw = read_mask(mask_path, hw)
                if mask_hw != image_hw:
                    raise AnoUnetError(
                        f"mask is {mask_hw[0]}x{mask_hw[1]} but its image {p} is {image_hw[0]}x{image_hw[1]}",
                        mask_path,
                    )
            images.append(image)
            masks.append(mask)
            labels.append(0 if group == GOOD else 1)
            ids.append(f"test/{group}/{p.stem}")
            paths.append(p)
    return ImageSet(
        images=stack_images(images, paths), masks=np.stack(masks), labels=np.asarray(labels, np.int32), ids=ids)


def load_mvtec(root: str | os.PathLike, size: Size, split: str = "train") -> ImageSet:
    """Load one MVTec AD category folder.

    Args:
      root: the category folder, e.g. ``mvtec_anomaly_detection/bottle``.
      size: ``int`` or ``(height, width)`` to resize to (bicubic images, nearest masks); ``None`` keeps
        the file size (MVTec categories are square, 700-1024 px).
      split: ``"train"`` (good images only; labels all 0, no masks) or ``"test"`` (labels 0/1, masks).
    """
    root = Path(root)
    hw = normalize_size(size)
    if not root.is_dir():
        raise AnoUnetError("MVTec AD category folder not found", root)
    if split == "train":
        return _load_train(root, hw)
    if split == "test":
        return _load_test(root, hw)
    raise AnoUnetError(f"split must be 'train' or 'test', got {split!r}")

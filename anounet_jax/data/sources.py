"""Where images come from, by name: one rule for every command.

A data source is named by a string:
  "embedded" / "embedded:CATEGORY"  the built-in textures (data/embedded.py), the preset's category
                                    unless one is named. Always the built-in data: a real folder of
                                    that name is given as "./embedded".
  "synthetic:FAMILY"                a generated texture family with planted defects (data/synthetic.py)
  "aligned"                         a generated aligned object (a board with parts at fixed places) whose
                                    defects are missing parts (data/aligned.py); native 128 x 192
  anything else                     a folder: an MVTec AD category or a DAGM 2007 class folder
                                    (``ClassN``) for evaluate, or images (score, train-fnet); a
                                    folder of categories is a whole benchmark (jobs/evaluate_suite.py)

Two shapes of data come out:
  `load_labelled(spec, preset)` -> `Labelled` (normal training images + test images with labels and
      masks), for evaluation;
  `open_source(...)` -> a chunked source of unlabelled images (`ArraySource`, `FolderSource`) whose
      `chunk(lo, hi)` gives one `Chunk` (the type data/folder.py defines), for bulk scoring.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from anounet_jax.data.folder import Chunk, ImageFolder
from anounet_jax.data.types import ImageSet
from anounet_jax.errors import AnoUnetError

EMBEDDED, SYNTHETIC, ALIGNED = "embedded", "synthetic", "aligned"
ALIGNED_HW = (128, 192)
ALIGNED_MAX_TRAIN = 32  # normal images of the aligned object (each gives many tiles)


def parse_source(spec) -> tuple[str, str | Path | None]:
    """("embedded", category or None) | ("synthetic", family) | ("folder", Path)."""
    if isinstance(spec, str):
        kind, _, name = spec.partition(":")
        if kind == EMBEDDED:
            return EMBEDDED, name or None
        if kind == SYNTHETIC:
            if not name:
                raise AnoUnetError("name a texture family: synthetic:FAMILY (see data/synthetic.py)")
            return SYNTHETIC, name
        if spec == ALIGNED:
            return ALIGNED, None
    return "folder", Path(spec)


@dataclasses.dataclass
class Labelled:
    """A data set to evaluate on: normal training images and labelled test images with masks."""

    name: str  # "embedded brick", "synthetic weave" or the folder path
    category: str  # the reference set leaves out this embedded texture (if it is one)
    train: ImageSet
    test: ImageSet


def load_labelled(spec, preset, seed: int = 0) -> Labelled:
    """The normal training images and the test images (labels, masks) of `spec` at the preset's size."""
    kind, name = parse_source(spec)
    size, d = preset.image_size, preset.data
    if kind == EMBEDDED:
        from anounet_jax.data.embedded import load_normal, load_test

        category = name or d.category
        train = load_normal(category, size, d.n_train, seed)
        test = load_test(category, size, d.n_test_good, d.n_test_defect, seed)
        return Labelled(f"embedded {category}", category, train, test)
    if kind == SYNTHETIC:
        from anounet_jax.data.synthetic import load_synthetic

        sets = load_synthetic(name, size=size, n_train=d.n_train, n_test_good=d.n_test_good,
                              n_test_defect=d.n_test_defect, seed=seed)
        return Labelled(f"synthetic {name}", name, sets["train"], sets["test"])
    if kind == ALIGNED:  # resized (squashed) to the preset's square size; tiled evaluation reads it native
        from anounet_jax.data.tiling import resize_image, resize_map

        train, test = load_aligned(d, seed)
        imgs = lambda xs: np.stack([resize_image(x, (size, size)) for x in xs])  # noqa: E731
        masks = np.stack([resize_map(m.astype(np.float32), (size, size)) > 0.5 for m in test.masks])
        return Labelled("aligned object", "aligned",
                        ImageSet(imgs(train.images), labels=np.zeros(len(train), np.int64), ids=train.ids),
                        ImageSet(imgs(test.images), masks=masks, labels=test.labels, ids=test.ids))
    from anounet_jax.data.dagm import class_folder, load_dagm_evaluation
    from anounet_jax.data.mvtec import load_mvtec

    if not name.is_dir():
        raise AnoUnetError("data folder not found (give an MVTec AD category folder, 'embedded' or "
                           "'synthetic:FAMILY')", name)
    dagm = class_folder(name)
    if dagm is not None:  # a DAGM 2007 class folder (ClassN)
        train, test = load_dagm_evaluation(dagm[0], dagm[1], size, seed)
        return Labelled(str(name), name.name, train, test)
    return Labelled(str(name), name.name, load_mvtec(name, size, "train"), load_mvtec(name, size, "test"))


def load_aligned(d, seed: int = 0):
    """The aligned-object set at its native size for the preset's data section: (train, test) NativeSets."""
    from anounet_jax.data.aligned import aligned_set

    return aligned_set(min(d.n_train, ALIGNED_MAX_TRAIN), d.n_test_good, d.n_test_defect, ALIGNED_HW, seed)


def load_normal_images(spec, preset, seed: int = 0, recursive: bool = False) -> ImageSet:
    """Normal training images: a folder of images (resized to the preset's size), or a named source's
    normal training images."""
    kind, path = parse_source(spec)
    if kind != "folder":
        return load_labelled(spec, preset, seed).train
    from anounet_jax.data.folder import load_folder

    return load_folder(path, size=preset.image_size, recursive=recursive)


class ArraySource:
    """Images already in memory (float32 (N, S, S, 3) in [0, 1], or uint8)."""

    def __init__(self, images, ids=None, image_size: int | None = None, description: str = "arrays"):
        x = np.asarray(images)
        if x.dtype == np.uint8:
            x = x.astype(np.float32) / np.float32(255.0)
        x = np.asarray(x, np.float32)
        if x.ndim == 3 and x.shape[-1] == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise AnoUnetError(f"images must be (N, H, W, 3), got {x.shape}")
        if image_size is not None and x.shape[1:3] != (image_size, image_size):
            raise AnoUnetError(f"images are {x.shape[1]}x{x.shape[2]}, the checkpoint works at "
                               f"{image_size}x{image_size}; resize them (anounet_jax.data.io resizes files)")
        self.images = x
        self.ids = list(ids) if ids is not None else [f"{i:06d}" for i in range(len(x))]
        if len(self.ids) != len(x):
            raise AnoUnetError(f"{len(self.ids)} ids for {len(x)} images")
        self.description = description

    def __len__(self):
        return len(self.images)

    def chunk(self, lo: int, hi: int) -> Chunk:
        return Chunk(np.arange(lo, hi, dtype=np.int64), self.ids[lo:hi], self.images[lo:hi], {})


class FolderSource:
    """A folder of image files, decoded lazily chunk by chunk and resized to the model's size."""

    def __init__(self, root, image_size: int, recursive: bool = False):
        self.folder = ImageFolder(root, size=image_size, recursive=recursive)
        self.ids = self.folder.ids
        self.description = str(root)  # as the user named it: reports show no machine-specific path

    def __len__(self):
        return len(self.folder)

    def chunk(self, lo: int, hi: int) -> Chunk:
        return next(self.folder.iter_chunks(hi - lo, start=lo))


def open_source(inputs, image_size: int, preset, recursive: bool = False):
    """A chunked source: a folder path, a named source's test images, an ImageSet, or an array."""
    if isinstance(inputs, ImageSet):
        return ArraySource(inputs.images, inputs.ids, image_size)
    if isinstance(inputs, (str, os.PathLike)):
        kind, _ = parse_source(inputs)
        if kind == "folder":
            return FolderSource(inputs, image_size, recursive)
        test = load_labelled(inputs, preset).test
        return ArraySource(test.images, test.ids, image_size, description=str(inputs))
    return ArraySource(inputs, None, image_size)

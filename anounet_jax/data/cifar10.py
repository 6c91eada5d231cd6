"""CIFAR-10 with the Ano-Unet paper's anomaly split, read through tensorflow-datasets.

The split (all class numbers are the standard CIFAR-10 ones, `CIFAR10_CLASSES`):

* ``train_normal``: every *training* image of the normal class (horse, 7): 5,000 images, labels 0.
* ``reference``: ``n_reference`` (6,000) training images drawn without replacement, with
  ``np.random.default_rng(seed)``, from the classes other than the normal and the anomalous one; labels
  are those classes renumbered ``0..K-1`` in increasing CIFAR order (see `reference_class_names`).
  This is the f-Net's reference set.
* ``test``: the *test* images of the normal class (label 0) and of the anomalous class (deer, 4;
  label 1), in the test split's order. No masks.

All images are resized from 32x32 to ``size`` (96x96 in the paper) with bicubic interpolation and
returned as float32 NHWC in ``[0, 1]``. ids are ``"train/01234"`` / ``"test/00042"``: split and index
in tensorflow-datasets' ordering.

Reading uses ``tfds.data_source`` (random-access ArrayRecord files; no TensorFlow needed). The first
call downloads and prepares the dataset into ``data_dir`` (default ``~/tensorflow_datasets``) unless
``download=False``. tensorflow-datasets is an optional dependency: ``pip install anounet_jax[tfds]``.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from anounet_jax.data.io import Size, normalize_size
from anounet_jax.data.types import ImageSet
from anounet_jax.errors import AnoUnetError

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
HORSE = 7
DEER = 4


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise AnoUnetError(
            "CIFAR-10 is read through tensorflow-datasets, which is not installed: "
            "pip install anounet_jax[tfds]"
        ) from None
    return tfds


def reference_class_names(normal_class: int = HORSE, anomaly_class: int = DEER) -> list[str]:
    """Names of the reference classes in the order of their remapped labels ``0..K-1``."""
    return [c for i, c in enumerate(CIFAR10_CLASSES) if i not in (normal_class, anomaly_class)]


def read_cifar10_split(
    split: str, data_dir: str | os.PathLike | None = None, download: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """One tfds split of CIFAR-10 as ``(uint8 images (N, 32, 32, 3), int64 labels (N,))``."""
    tfds = _import_tfds()
    try:
        source = tfds.data_source(
            "cifar10", split=split, data_dir=None if data_dir is None else os.fspath(data_dir), download=download
        )
        examples = [source[i] for i in range(len(source))]
    except Exception as e:  # noqa: BLE001 - tfds raises many types (not found, no network, ...)
        raise AnoUnetError(
            f"cannot read CIFAR-10 split {split!r} through tensorflow-datasets ({type(e).__name__}: {e})",
            data_dir,
        ) from None
    if not examples:
        raise AnoUnetError(f"CIFAR-10 split {split!r} is empty", data_dir)
    images = np.stack([np.asarray(ex["image"], dtype=np.uint8) for ex in examples])
    labels = np.array([int(ex["label"]) for ex in examples], dtype=np.int64)
    return images, labels


def resize_uint8(images: np.ndarray, size: Size) -> np.ndarray:
    """uint8 ``(N, h, w, 3)`` -> float32 ``(N, H, W, 3)`` in ``[0, 1]``, bicubic (as in `load_image`)."""
    hw = normalize_size(size)
    if hw is None or hw == images.shape[1:3]:
        return images.astype(np.float32) * np.float32(1.0 / 255.0)
    out = np.empty((len(images), *hw, 3), np.float32)
    for i, x in enumerate(images):
        out[i] = np.asarray(Image.fromarray(x).resize((hw[1], hw[0]), Image.Resampling.BICUBIC), np.float32)
    out *= np.float32(1.0 / 255.0)
    return out


def load_cifar10_anomaly(
    size: Size = 96,
    n_reference: int = 6000,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    *,
    normal_class: int = HORSE,
    anomaly_class: int = DEER,
    download: bool = True,
) -> dict[str, ImageSet]:
    """The paper's CIFAR-10 split: ``{"train_normal", "reference", "test"}`` -> `ImageSet`.

    See the module docstring for the exact content of each set. Raises `AnoUnetError` when
    tensorflow-datasets is missing, the data cannot be read, or fewer than ``n_reference`` reference
    images exist.
    """
    if normal_class == anomaly_class or not all(0 <= c < 10 for c in (normal_class, anomaly_class)):
        raise AnoUnetError("normal_class and anomaly_class must be two different classes in 0..9")
    if n_reference < 0:
        raise AnoUnetError(f"n_reference must be >= 0, got {n_reference}")
    train_x, train_y = read_cifar10_split("train", data_dir, download)
    test_x, test_y = read_cifar10_split("test", data_dir, download)

    normal_idx = np.flatnonzero(train_y == normal_class)
    if len(normal_idx) == 0:
        raise AnoUnetError(f"no {CIFAR10_CLASSES[normal_class]} images in the CIFAR-10 train split", data_dir)
    ref_classes = np.array([c for c in range(10) if c not in (normal_class, anomaly_class)])
    candidates = np.flatnonzero(np.isin(train_y, ref_classes))
    if n_reference > len(candidates):
        raise AnoUnetError(
            f"n_reference={n_reference} but the CIFAR-10 train split has only {len(candidates)} images "
            "of the reference classes",
            data_dir,
        )
    rng = np.random.default_rng(seed)
    ref_idx = np.sort(rng.choice(candidates, size=n_reference, replace=False))
    remap = np.full(10, -1, np.int32)
    remap[ref_classes] = np.arange(len(ref_classes), dtype=np.int32)
    test_idx = np.flatnonzero(np.isin(test_y, (normal_class, anomaly_class)))

    return {
        "train_normal": ImageSet(
            images=resize_uint8(train_x[normal_idx], size),
            labels=np.zeros(len(normal_idx), np.int32),
            ids=[f"train/{i:05d}" for i in normal_idx],
        ),
        "reference": ImageSet(
            images=resize_uint8(train_x[ref_idx], size),
            labels=remap[train_y[ref_idx]],
            ids=[f"train/{i:05d}" for i in ref_idx],
        ),
        "test": ImageSet(
            images=resize_uint8(test_x[test_idx], size),
            labels=(test_y[test_idx] == anomaly_class).astype(np.int32),
            ids=[f"test/{i:05d}" for i in test_idx],
        ),
    }

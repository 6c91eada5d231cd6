"""What the CLI job and the Python API share: a checkpoint + a preset -> scores, flags and maps per chunk.

Per image (global position i, so its U-Net key is fold_in(seed, i) whatever the chunking):

    features  = f(x)                          the checkpoint's frozen f-Net, batches padded to FEATURE_BATCH
    score     = scorer(features)              LOF or distance to C, as stored in the checkpoint
    flagged   = score > threshold             the checkpoint scorer's threshold unless overridden
    maps      = Engine(preset.unet, preset.fit, f, C)   for every image ("all"), the flagged ones
                                                        ("flagged") or none ("none")

Status of a row: "ok" (maps made), "not visualized" (scored, no maps asked for), "diverged" (the
fit went non-finite; no maps written), or the problem text of a file that could not be used.

Preset. The checkpoint fixes the f-Net (architecture and weights), C, the scorer and the image size.
A preset passed for scoring only chooses the U-Net and the per-image fit; it must have the
checkpoint's image size. `None` scores with the checkpoint's own preset.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from anounet_jax.config import Preset, get_preset
from anounet_jax.errors import AnoUnetError

FEATURE_BATCH = 32  # f-Net batches are padded to this size: one compilation, same numbers for any chunk
VISUALIZE = ("all", "flagged", "none")
STATUS_OK, STATUS_NOT_VISUALIZED, STATUS_DIVERGED = "ok", "not visualized", "diverged"
NONFINITE_FEATURES = "f-Net features are not finite"


def is_failure(status: str) -> bool:
    """True for a row whose image could not be scored or whose fit diverged."""
    return status not in (STATUS_OK, STATUS_NOT_VISUALIZED)


# ---------------------------------------------------------------------------------------- the model
@functools.lru_cache(maxsize=None)
def _fnet_apply(fnet_cfg):
    """One apply function per f-Net config for the whole process: the engine's compiled-step cache
    and jax.jit key on function identity, so repeated jobs in one process compile once."""
    from anounet_jax.fnet.model import build_fnet_module

    module = build_fnet_module(fnet_cfg)
    return lambda variables, x: module.apply(variables, x, train=False)


@functools.lru_cache(maxsize=None)
def _jitted_features(fnet_cfg):
    import jax

    return jax.jit(_fnet_apply(fnet_cfg))


def resolve_preset(checkpoint_preset: Preset, preset: Preset | str | None) -> Preset:
    """The preset a scoring run uses (see the module docstring)."""
    if preset is None:
        return checkpoint_preset
    if isinstance(preset, str):
        preset = get_preset(preset)
    if preset.image_size != checkpoint_preset.image_size:
        raise AnoUnetError(f"preset {preset.name!r} works at {preset.image_size}x{preset.image_size}, the "
                           f"checkpoint's f-Net and scorer at {checkpoint_preset.image_size}x"
                           f"{checkpoint_preset.image_size}; use a preset of the checkpoint's image size")
    return dataclasses.replace(preset, fnet=checkpoint_preset.fnet)


def check_visualize(visualize: str) -> str:
    if visualize not in VISUALIZE:
        raise AnoUnetError(f"visualize must be one of {VISUALIZE}, got {visualize!r}")
    return visualize


@dataclasses.dataclass
class ChunkOutcome:
    """Results for the n loaded images of a chunk (row j = indices[j])."""

    scores: np.ndarray  # float32 (n,), NaN where the features were not finite
    flagged: np.ndarray  # bool (n,)
    problems: list  # (n,) None or a problem text
    fitted: np.ndarray  # int (m,) rows (into the chunk) that were fitted, ascending
    fit: object | None  # FitResult for those m rows (None when m == 0)

    def fit_row(self) -> dict[int, int]:
        return {int(r): k for k, r in enumerate(self.fitted)}


class ScoringModel:
    """Checkpoint (path or loaded `Checkpoint`) + preset -> `process(images, indices, visualize)`."""

    def __init__(self, checkpoint, preset: Preset | str | None = None, *, threshold: float | None = None,
                 seed: int = 0, formulation: str = "auto"):
        from anounet_jax.checkpoint import Checkpoint, load_checkpoint
        from anounet_jax.engine.fit import resolve_formulation
        from anounet_jax.fnet.model import FrozenFNet

        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        self.checkpoint = ckpt
        self.preset = resolve_preset(ckpt.preset, preset)
        self.fnet = FrozenFNet(apply=_fnet_apply(ckpt.preset.fnet), variables=ckpt.fnet.variables)
        self._features_fn = _jitted_features(ckpt.preset.fnet)
        self.scorer = ckpt.scorer
        t = ckpt.scorer.threshold if threshold is None else threshold
        try:
            self.threshold = float(t)
        except (TypeError, ValueError):
            raise AnoUnetError(f"threshold must be a number, got {threshold!r}") from None
        if not np.isfinite(self.threshold):
            raise AnoUnetError(f"threshold must be finite, got {threshold!r}")
        self.threshold_overridden = threshold is not None
        self.seed = int(seed)
        self.formulation = resolve_formulation(formulation)
        self._engine = None

    @property
    def image_size(self) -> int:
        return self.preset.image_size

    @property
    def engine(self):
        if self._engine is None:
            from anounet_jax.engine.fit import build_engine

            self._engine = build_engine(self.preset.unet, self.preset.fit, self.fnet, self.checkpoint.center,
                                        self.preset.image_size, self.formulation)
        return self._engine

    def features(self, images: np.ndarray) -> np.ndarray:
        """float32 (N, D), in batches of exactly FEATURE_BATCH (the last one zero-padded)."""
        import jax.numpy as jnp

        out = []
        for s in range(0, len(images), FEATURE_BATCH):
            batch = images[s:s + FEATURE_BATCH]
            n = len(batch)
            if n < FEATURE_BATCH:
                batch = np.concatenate([batch, np.zeros((FEATURE_BATCH - n, *batch.shape[1:]), np.float32)])
            out.append(np.asarray(self._features_fn(self.fnet.variables, jnp.asarray(batch)))[:n])
        return np.concatenate(out).astype(np.float32)

    def process(self, images: np.ndarray, indices: np.ndarray, visualize: str) -> ChunkOutcome:
        """Score every image; fit maps for all / the flagged / none of them."""
        from anounet_jax.engine.fit import FitResult

        n = len(images)
        scores = np.full(n, np.nan, np.float32)
        problems: list = [None] * n
        if n:
            feats = self.features(images)
            good = np.isfinite(feats).all(1)
            if good.any():
                scores[good] = self.scorer.score(feats[good])
            for j in np.flatnonzero(~good):
                problems[j] = NONFINITE_FEATURES
        flagged = np.isfinite(scores) & (scores > self.threshold)
        if visualize == "all":
            fit_mask = np.isfinite(scores)
        elif visualize == "flagged":
            fit_mask = flagged
        else:
            fit_mask = np.zeros(n, bool)
        fitted = np.flatnonzero(fit_mask)
        fit = None
        if len(fitted):
            idx = np.asarray(indices)[fitted]
            parts = [r for _, r in self.engine.iter_fit([(idx, images[fitted])], self.seed)]
            fit = FitResult.concatenate(parts)
        return ChunkOutcome(scores, flagged, problems, fitted, fit)


# ---------------------------------------------------------------------------------------- sources
class Chunk(NamedTuple):
    """Positions [lo, hi): `indices` loaded (ascending, with `images`), `errors` {position: problem}."""

    indices: np.ndarray
    images: np.ndarray
    errors: dict


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
        return Chunk(np.arange(lo, hi, dtype=np.int64), self.images[lo:hi], {})


class FolderSource:
    """A folder of image files, decoded lazily chunk by chunk and resized to the model's size."""

    def __init__(self, root, image_size: int, recursive: bool = False):
        from anounet_jax.data.folder import ImageFolder

        self.folder = ImageFolder(root, size=image_size, recursive=recursive)
        self.ids = self.folder.ids
        self.description = str(Path(root).absolute())

    def __len__(self):
        return len(self.folder)

    def chunk(self, lo: int, hi: int) -> Chunk:
        c = next(self.folder.iter_chunks(hi - lo, start=lo))
        return Chunk(c.indices, c.images, c.errors)


def open_source(inputs, image_size: int, recursive: bool = False, preset: Preset | None = None):
    """A folder path, "embedded" (the preset's embedded test set), an ImageSet, or an array."""
    from anounet_jax.data.types import ImageSet

    if isinstance(inputs, ImageSet):
        return ArraySource(inputs.images, inputs.ids, image_size)
    if isinstance(inputs, (str, os.PathLike)):
        if str(inputs) == "embedded" and not Path("embedded").exists():
            from anounet_jax.data.embedded import load_test

            d = (preset.data if preset is not None else get_preset("small").data)
            test = load_test(d.category, image_size, d.n_test_good, d.n_test_defect)
            return ArraySource(test.images, test.ids, image_size, description=f"embedded:{d.category}")
        return FolderSource(inputs, image_size, recursive)
    return ArraySource(inputs, None, image_size)


def ids_digest(ids) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()

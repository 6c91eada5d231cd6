"""What the CLI job and the Python API share: a checkpoint + a preset -> scores, flags and maps per chunk.

Per image (global position i, so its U-Net key is fold_in(seed, i) whatever the chunking):

    features  = f(x)                          the checkpoint's frozen f-Net (FrozenFNet.features)
    score     = scorer(features)              LOF or distance to C, as stored in the checkpoint
    flagged   = score > threshold             the checkpoint scorer's threshold unless overridden
    maps      = Engine.from_preset(preset, f, C), smoothed by preset.maps, for every image ("all"),
                the flagged ones ("flagged") or none ("none")

Status of a row: "ok" (maps made), "not visualized" (scored, no maps asked for), "diverged" (the
fit went non-finite; no maps written), or the problem text of a file that could not be used.

Preset. The checkpoint fixes the f-Net (architecture and weights), C, the scorer and the image size.
A preset passed for scoring only chooses the U-Net and the per-image fit; it must have the
checkpoint's image size. `None` scores with the checkpoint's own preset.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from anounet_jax.config import Preset, get_preset
from anounet_jax.errors import AnoUnetError

VISUALIZE = ("all", "flagged", "none")
STATUS_OK, STATUS_NOT_VISUALIZED, STATUS_DIVERGED = "ok", "not visualized", "diverged"
NONFINITE_FEATURES = "f-Net features are not finite"


def is_failure(status: str) -> bool:
    """True for a row whose image could not be scored or whose fit diverged."""
    return status not in (STATUS_OK, STATUS_NOT_VISUALIZED)


# ---------------------------------------------------------------------------------------- the model
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


def check_threshold(threshold) -> float:
    """A flagging threshold: a finite number >= 0 (every image score, LOF or a distance, is >= 0)."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise AnoUnetError(f"threshold must be a number, got {threshold!r}") from None
    if not np.isfinite(t) or t < 0:
        raise AnoUnetError(f"threshold must be a finite number >= 0 (image scores are LOF factors or "
                           f"distances), got {threshold!r}")
    return t


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
                 seed: int = 0, formulation: str | None = None):
        from anounet_jax.checkpoint import Checkpoint, load_checkpoint
        from anounet_jax.engine.fit import check_formulation
        from anounet_jax.jobs.common import check_seed

        self.seed = check_seed(seed)
        if formulation is not None:
            check_formulation(formulation)
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        self.checkpoint = ckpt
        self.preset = resolve_preset(ckpt.preset, preset)
        if formulation is not None:
            self.preset = self.preset.replace(engine={"formulation": formulation})
        self.fnet = ckpt.fnet
        self.scorer = ckpt.scorer
        self.threshold = check_threshold(ckpt.scorer.threshold if threshold is None else threshold)
        self.threshold_overridden = threshold is not None
        self._engine = None

    @property
    def image_size(self) -> int:
        return self.preset.image_size

    @property
    def formulation(self) -> str:
        return self.preset.engine.formulation

    @property
    def engine(self):
        if self._engine is None:
            from anounet_jax.engine.fit import Engine

            self._engine = Engine.from_preset(self.preset, self.fnet, self.checkpoint.center)
        return self._engine

    def process(self, images: np.ndarray, indices: np.ndarray, visualize: str) -> ChunkOutcome:
        """Score every image; fit maps for all / the flagged / none of them."""
        from anounet_jax.engine.fit import FitResult
        from anounet_jax.maps import smooth

        n = len(images)
        scores = np.full(n, np.nan, np.float32)
        problems: list = [None] * n
        if n:
            feats = self.fnet.features(images)
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
            fit.heatmap = smooth(fit.heatmap, self.preset.maps.smoothing_sigma)
        return ChunkOutcome(scores, flagged, problems, fitted, fit)


def ids_digest(ids) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()

"""Baseline 4: a memory of normal patch features (PatchCore, Roth et al. 2022), on the project's f-Net.

No network is trained. The frozen f-Net's intermediate maps give one feature vector per patch
(`anounet_jax.fnet.local`: stride-4 and stride-8 maps by default, 3x3 local average, concatenated).
The patch vectors of all normal training images are subsampled by greedy k-center selection (the
coreset: each new point is the one farthest from those already chosen, so the memory covers the
normal feature space evenly instead of repeating its dense parts) and kept as the memory M.

    patch score  s(p) = mean of the distances from f(p) to its k nearest vectors of M   (k = 1 default)
    heatmap      s upsampled bilinearly to the image size (cells placed on their receptive-field
                 centres, see anounet_jax.fnet.local)          score = max over patches of s
    recon        the input image itself (nothing is reconstructed; kept finite so `diverged` holds)

Distances are Euclidean, computed as ||a||^2 - 2 a.b + ||b||^2 (a matmul) with M in fixed-size blocks
(lax.scan with a running minimum), so a 20k-vector memory never meets all query patches at once.
Images go through in zero-padded batches of one size: one compilation for any N, and an image's maps
never depend on the other images of its batch (the f-Net runs in inference mode).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from anounet_jax.baselines.configs import FeatureMemoryConfig
from anounet_jax.baselines.common import BaselineResult, check_images
from anounet_jax.batching import map_in_batches
from anounet_jax.data.types import ImageSet
from anounet_jax.errors import AnoUnetError
from anounet_jax.fnet.local import default_layers, finest_stride, local_feature_fn, upsample_to_image
from anounet_jax.fnet.model import FrozenFNet
from anounet_jax.fnet.patch_memory import greedy_coreset, memory_blocks, nearest_distances, patch_features


def _check_config(cfg: FeatureMemoryConfig) -> None:
    if not 0.0 < cfg.coreset_fraction <= 1.0:
        raise AnoUnetError(f"coreset_fraction must be in (0, 1], got {cfg.coreset_fraction}")
    for name in ("max_memory", "projection_dim", "k", "batch_size", "memory_block", "coreset_chunk"):
        if int(getattr(cfg, name)) < 1:
            raise AnoUnetError(f"feature memory {name} must be >= 1, got {getattr(cfg, name)}")


def memory_size(n_vectors: int, cfg: FeatureMemoryConfig) -> int:
    """How many of `n_vectors` normal patch vectors the memory keeps."""
    return max(1, min(n_vectors, cfg.max_memory, math.ceil(cfg.coreset_fraction * n_vectors)))


# ----------------------------------------------------------------------------- model


@dataclasses.dataclass
class FeatureMemory:
    """The memory of normal patch features; `score_maps(images)` gives the per-image maps and scores."""

    cfg: FeatureMemoryConfig
    fnet: FrozenFNet
    fnet_cfg: Any  # FNetConfig
    layers: tuple[str, ...]
    image_hw: tuple[int, int]
    memory: np.ndarray  # (M, C) float32
    n_patches: int  # normal patch vectors the memory was selected from

    def __post_init__(self):
        features = local_feature_fn(self.fnet_cfg, self.layers)
        k = min(int(self.cfg.k), len(self.memory))
        self._blocks = tuple(map(jnp.asarray, memory_blocks(self.memory, int(self.cfg.memory_block))))

        def patch_scores(variables, blocks, block_sq, images):
            f = features(variables, images)
            n, h, w, c = f.shape
            return nearest_distances(f.reshape(n * h * w, c), blocks, block_sq, k).reshape(n, h, w)

        self._patch_scores = jax.jit(patch_scores)
        stride = finest_stride(self.layers)
        self._upsample = jax.jit(lambda s: upsample_to_image(s, self.image_hw, stride))

    def patch_scores(self, images) -> np.ndarray:
        """float32 (N, h, w): each patch's distance to the memory, on the local feature grid."""
        x = check_images(images, self.image_hw)
        return map_in_batches(lambda b: self._patch_scores(self.fnet.variables, *self._blocks, b), x,
                                self.cfg.batch_size)

    def score_maps(self, images) -> BaselineResult:
        """heatmap: the patch scores upsampled bilinearly to H x W (between the cells' receptive-field
        centres, `anounet_jax.fnet.local.upsample_to_image`); score: the largest patch score; recon: a
        copy of the input images (this method reconstructs nothing)."""
        x = check_images(images, self.image_hw)
        if len(x) == 0:
            return BaselineResult(np.zeros((0, *self.image_hw), np.float32), x.copy(), np.zeros(0, np.float32))
        patches = self.patch_scores(x)
        heat = map_in_batches(self._upsample, patches, self.cfg.batch_size)
        return BaselineResult(heat.astype(np.float32), x.copy(), patches.max(axis=(1, 2)).astype(np.float32))


def train(normal: ImageSet, fnet: FrozenFNet, fnet_cfg, cfg: FeatureMemoryConfig = FeatureMemoryConfig(),
          seed: int = 0, progress: bool = False) -> FeatureMemory:
    """Collect the local f-Net features of every normal image and keep a greedy coreset of them.
    `fnet_cfg` is the FNetConfig `fnet` was built from (it names the architecture whose maps are
    read). Deterministic given `seed` (the coreset's random start and projection)."""
    _check_config(cfg)
    x = check_images(normal.images)
    if len(x) == 0:
        raise AnoUnetError("feature memory: no normal training images")
    layers = tuple(cfg.layers) if cfg.layers is not None else default_layers(fnet_cfg.arch)
    feats = patch_features(fnet, fnet_cfg, layers, x, cfg.batch_size, progress)
    vectors = feats.reshape(-1, feats.shape[-1])
    idx = greedy_coreset(vectors, memory_size(len(vectors), cfg), seed, cfg.projection_dim,
                         cfg.coreset_chunk, progress)
    return FeatureMemory(cfg, fnet, fnet_cfg, layers, tuple(x.shape[1:3]),
                         np.ascontiguousarray(vectors[idx], np.float32), len(vectors))

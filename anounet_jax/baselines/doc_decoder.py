"""Baseline 2: DOC + decoder, the author's previous visualization.

A decoder D is trained to map the frozen f-Net feature of each normal image back to the image:

    D* = argmin_D  mean (x - D(f(x)))^2   over normal x   (f frozen; loss="l1" for mean |.|)
    heatmap = mean_c |x - D(f(x))|        score = sum over pixels of the heatmap

Features are standardized with the mean and standard deviation of the normal training features
(per dimension) before the decoder sees them, so the f-Net's feature scale does not matter.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from anounet_jax.batching import map_in_batches
from anounet_jax.baselines.configs import DocDecoderConfig
from anounet_jax.baselines.common import (BaselineResult, ConvDecoder, check_images,
                                          train_reconstruction, reconstruction_result)
from anounet_jax.data.types import ImageSet
from anounet_jax.fnet.model import FrozenFNet


@dataclasses.dataclass
class DocDecoder:
    """A trained feature decoder; `score_maps(images)` gives the per-image maps and scores."""

    cfg: DocDecoderConfig
    fnet: FrozenFNet
    module: ConvDecoder
    params: Any
    feat_mean: np.ndarray  # (D,)
    feat_std: np.ndarray  # (D,)
    history: list[float]

    def __post_init__(self):
        self._apply = jax.jit(lambda p, f: self.module.apply({"params": p}, f))

    def reconstruct(self, images) -> np.ndarray:
        x = check_images(images, self.module.image_hw)
        f = _standardize(self.fnet.features(x), self.feat_mean, self.feat_std)
        return map_in_batches(lambda b: self._apply(self.params, b), f, self.cfg.eval_batch_size)

    def score_maps(self, images) -> BaselineResult:
        x = check_images(images, self.module.image_hw)
        return reconstruction_result(x, self.reconstruct(x))


def _standardize(f, mean, std) -> np.ndarray:
    return ((np.asarray(f, np.float32) - mean) / std).astype(np.float32)


def train(normal: ImageSet, fnet: FrozenFNet, cfg: DocDecoderConfig = DocDecoderConfig(), seed: int = 0,
          progress: bool = False) -> DocDecoder:
    """Train the decoder D(f(x)) ~ x on the normal images, f the frozen f-Net."""
    x = check_images(normal.images)
    feats = np.asarray(fnet.features(x), np.float32)
    mean = feats.mean(0)
    std = np.maximum(feats.std(0), 1e-6).astype(np.float32)
    module = ConvDecoder(cfg.width, cfg.depth, tuple(x.shape[1:3]), cfg.norm)
    params, history = train_reconstruction(module, _standardize(feats, mean, std), x, loss=cfg.loss,
                                         lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size,
                                         seed=seed, progress=progress, desc="DOC decoder")
    return DocDecoder(cfg, fnet, module, params, mean, std, history)

"""Baseline 1: a convolutional autoencoder trained on the normal images.

    AE = Dec(Enc(x)), trained with Adam on  mean (x - AE(x))^2  (or mean |x - AE(x)| with loss="l1").
    heatmap = mean_c |x - AE(x)|        score = sum over pixels of the heatmap

One network for all test images (the classic reconstruction baseline): a defect is whatever the
bottleneck, fitted to normal texture only, fails to reproduce.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from anounet_jax.batching import map_in_batches
from anounet_jax.baselines.configs import AutoencoderConfig
from anounet_jax.baselines.common import (BaselineResult, ConvDecoder, ConvEncoder,
                                          check_images, train_reconstruction, reconstruction_result)
from anounet_jax.data.types import ImageSet


class ConvAutoencoder(nn.Module):
    width: int
    depth: int
    latent: int
    image_hw: tuple[int, int]
    norm: str = "group"

    @nn.compact
    def __call__(self, x):
        z = ConvEncoder(self.width, self.depth, self.latent, norm="none", name="encoder")(x)
        return ConvDecoder(self.width, self.depth, self.image_hw, self.norm, name="decoder")(z)


@dataclasses.dataclass
class Autoencoder:
    """A trained autoencoder; `score_maps(images)` gives the per-image maps and scores."""

    cfg: AutoencoderConfig
    module: ConvAutoencoder
    params: Any
    history: list[float]  # mean training loss per epoch

    def __post_init__(self):
        self._apply = jax.jit(lambda p, x: self.module.apply({"params": p}, x))

    def reconstruct(self, images) -> np.ndarray:
        x = check_images(images, self.module.image_hw)
        return map_in_batches(lambda b: self._apply(self.params, b), x, self.cfg.eval_batch_size)

    def score_maps(self, images) -> BaselineResult:
        x = check_images(images, self.module.image_hw)
        return reconstruction_result(x, self.reconstruct(x))


def train(normal: ImageSet, cfg: AutoencoderConfig = AutoencoderConfig(), seed: int = 0,
          progress: bool = False) -> Autoencoder:
    """Train the autoencoder on the normal images."""
    x = check_images(normal.images)
    module = ConvAutoencoder(cfg.width, cfg.depth, cfg.latent, tuple(x.shape[1:3]), cfg.norm)
    params, history = train_reconstruction(module, x, x, loss=cfg.loss, lr=cfg.lr, epochs=cfg.epochs,
                                         batch_size=cfg.batch_size, seed=seed, progress=progress,
                                         desc="autoencoder")
    return Autoencoder(cfg, module, params, history)

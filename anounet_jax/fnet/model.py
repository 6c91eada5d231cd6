"""The frozen f-Net as the engine sees it: `features(variables, images) -> (N, D)`, plus the center C."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from anounet_jax.errors import AnoUnetError


def build_fnet_module(cfg) -> nn.Module:
    """The feature network named by an FNetConfig (no classification head)."""
    if cfg.arch == "mobilenet_v2":
        from anounet_jax.models.mobilenet_v2 import MobileNetV2

        return MobileNetV2(alpha=cfg.alpha)
    if cfg.arch == "small_cnn":
        from anounet_jax.models.small_cnn import SmallCNN

        return SmallCNN(width=cfg.small_cnn_width)
    raise AnoUnetError(f"unknown f-Net arch {cfg.arch!r}; use 'mobilenet_v2' or 'small_cnn'")


@dataclasses.dataclass
class FrozenFNet:
    """A trained feature network in inference mode.

    `apply(variables, images) -> (N, D)` is a pure function (BatchNorm uses its moving statistics, so
    images in a batch never influence each other); `variables` is passed to jitted code as an argument,
    not baked in as a constant.
    """

    apply: Callable[[Any, jax.Array], jax.Array]
    variables: Any

    @classmethod
    def from_module(cls, module: nn.Module, variables) -> "FrozenFNet":
        return cls(apply=lambda v, x: module.apply(v, x, train=False), variables=variables)

    @functools.cached_property
    def _jitted(self):
        return jax.jit(self.apply)

    def features(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(N,H,W,3) -> float32 (N, D), computed in fixed-size batches (the last one padded)."""
        images = np.asarray(images, np.float32)
        out = []
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            n = len(batch)
            if n < batch_size and len(images) > batch_size:
                batch = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]), np.float32)])
            out.append(np.asarray(self._jitted(self.variables, jnp.asarray(batch)))[:n])
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def compute_center(features: np.ndarray) -> np.ndarray:
    """C: the mean f-Net feature of the normal training images."""
    if len(features) == 0:
        raise AnoUnetError("cannot compute the center C from zero normal images")
    return np.asarray(features, np.float32).mean(0)

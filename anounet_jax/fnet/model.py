"""The frozen f-Net as the engine sees it: `apply(variables, images) -> (N, D)`, plus the center C."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np

from anounet_jax.batching import map_in_batches
from anounet_jax.errors import AnoUnetError

FEATURE_BATCH = 32  # features() pads every batch to this size: the same numbers on every path


def build_fnet_module(cfg) -> nn.Module:
    """The feature network named by an FNetConfig (no classification head)."""
    if cfg.arch == "mobilenet_v2":
        from anounet_jax.models.mobilenet_v2 import MobileNetV2

        return MobileNetV2(alpha=cfg.alpha)
    if cfg.arch == "small_cnn":
        from anounet_jax.models.small_cnn import SmallCNN

        return SmallCNN(width=cfg.small_cnn_width)
    raise AnoUnetError(f"unknown f-Net arch {cfg.arch!r}; use 'mobilenet_v2' or 'small_cnn'")


@functools.lru_cache(maxsize=None)
def inference_apply(module: nn.Module) -> Callable[[Any, jax.Array], jax.Array]:
    """`module` in inference mode as a pure function. One function object per (equal) module for the
    whole process: compiled programs are keyed on it, so an f-Net restored twice compiles once."""
    return lambda variables, x: module.apply(variables, x, train=False)


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
        return cls(apply=inference_apply(module), variables=variables)

    @functools.cached_property
    def _jitted(self):
        return jax.jit(self.apply)

    def features(self, images: np.ndarray) -> np.ndarray:
        """(N,H,W,3) -> float32 (N, D), in batches of exactly FEATURE_BATCH images (the last one
        zero-padded), so an image's features are the same whichever job asks for them."""
        images = np.asarray(images, np.float32)
        if len(images) == 0:
            return np.zeros((0, 0), np.float32)
        out = map_in_batches(lambda b: self._jitted(self.variables, b), images, FEATURE_BATCH)
        return out.astype(np.float32)


def compute_center(features: np.ndarray) -> np.ndarray:
    """C: the mean f-Net feature of the normal training images."""
    if len(features) == 0:
        raise AnoUnetError("cannot compute the center C from zero normal images")
    return np.asarray(features, np.float32).mean(0)

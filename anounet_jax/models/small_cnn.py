"""A small CNN feature extractor for tests and the tiny preset (same interface as MobileNetV2)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class SmallCNN(nn.Module):
    """Three stride-2 (conv, BatchNorm, ReLU) stages, global average pool -> (N, features).

    ``__call__(x, train=False, return_maps=False)``; with ``return_maps=True`` it returns
    ``(features, maps)``, ``maps`` the output of each stage: ``"stride2"``, ``"stride4"``,
    ``"stride8"`` with ``width``, ``2 * width`` and ``4 * width`` channels (as MobileNetV2's maps,
    keyed by stride).
    """

    width: int = 16
    features: int = 64
    bn_momentum: float = 0.99  # 0.0: train mode stores the batch's own statistics (fnet.train)

    @nn.compact
    def __call__(self, x, train: bool = False, return_maps: bool = False):
        x = x * 2.0 - 1.0
        maps = {}
        for i, mult in enumerate((1, 2, 4)):
            x = nn.Conv(self.width * mult, (3, 3), strides=(2, 2), use_bias=False, name=f"conv{i}")(x)
            x = nn.BatchNorm(use_running_average=not train, epsilon=1e-3, momentum=self.bn_momentum, name=f"bn{i}")(x)
            x = nn.relu(x)
            maps[f"stride{2 ** (i + 1)}"] = x
        out = nn.Dense(self.features, name="proj")(jnp.mean(x, (1, 2)))
        return (out, maps) if return_maps else out

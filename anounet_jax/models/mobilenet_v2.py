"""MobileNetV2 feature extractor, layer for layer the same as Keras' ``applications.MobileNetV2``.

``MobileNetV2(alpha)`` is ``keras.applications.MobileNetV2(alpha=alpha, include_top=False,
pooling="avg")`` written as a plain ``flax.linen`` module, so that Keras ImageNet weights can be
imported one to one (see :mod:`anounet_jax.models.keras_import`):

* every Flax submodule carries the name of the Keras layer it replaces (``Conv1``, ``bn_Conv1``,
  ``expanded_conv_depthwise``, ``block_1_expand``, ``block_1_expand_BN``, ..., ``Conv_1``,
  ``Conv_1_bn``) and all of them sit at the top level of the parameter tree;
* channel widths follow Keras (``_make_divisible(v, 8)``; the last 1x1 conv keeps 1280 channels
  for ``alpha <= 1`` and is widened only for ``alpha > 1``);
* stride-2 depthwise convs are preceded by Keras' ``ZeroPadding2D(correct_pad(x, 3))`` and run
  with 'valid' padding; every other conv is 'same' (TF/XLA convention, extra pixel at the end);
* BatchNorm uses Keras' ``epsilon=1e-3`` and ``momentum=0.999``; activations are ReLU6.

Input convention: float32 NHWC images in ``[0, 1]`` (the project convention). The module maps
them to Keras' MobileNetV2 preprocessing range ``[-1, 1]`` itself (``x * 2 - 1``, which is
``keras.applications.mobilenet_v2.preprocess_input`` for images scaled to ``[0, 1]``), so
callers must NOT preprocess again. Output: ``(N, num_features)`` float32 after global average
pooling; ``num_features`` is 1280 for ``alpha <= 1``.

Any spatial size works (Keras requires at least 32x32; 64x64 and 96x96 are tested).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from anounet_jax.errors import AnoUnetError

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.999

# Keras' inverted residual table: (expansion, stride, filters) for block_id 0..16.
BLOCKS: tuple[tuple[int, int, int], ...] = (
    (1, 1, 16),
    (6, 2, 24), (6, 1, 24),
    (6, 2, 32), (6, 1, 32), (6, 1, 32),
    (6, 2, 64), (6, 1, 64), (6, 1, 64), (6, 1, 64),
    (6, 1, 96), (6, 1, 96), (6, 1, 96),
    (6, 2, 160), (6, 1, 160), (6, 1, 160),
    (6, 1, 320),
)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Keras' ``_make_divisible``: round ``v`` to a multiple of ``divisor``, never below 90% of v."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def num_features_for(alpha: float) -> int:
    """Width of the pooled feature vector: 1280, widened only when ``alpha > 1`` (as Keras)."""
    return make_divisible(1280 * alpha, 8) if alpha > 1.0 else 1280


def correct_pad(height: int, width: int, kernel_size: int = 3) -> tuple[tuple[int, int], ...]:
    """Keras' ``imagenet_utils.correct_pad`` for a static ``(height, width)``."""
    adjust = (1 - height % 2, 1 - width % 2)
    c = kernel_size // 2
    return ((c - adjust[0], c), (c - adjust[1], c))


def layer_names(alpha: float = 0.5) -> dict[str, list[str]]:
    """Keras layer names that carry weights, by kind, in Keras' creation order.

    Returns ``{"conv": [...], "depthwise": [...], "bn": [...]}``. ``alpha`` does not change the
    names; it is accepted for symmetry with the other helpers.
    """
    del alpha
    conv, depthwise, bn = ["Conv1"], [], ["bn_Conv1"]
    for block_id, _ in enumerate(BLOCKS):
        prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
        if block_id:
            conv.append(f"{prefix}expand")
            bn.append(f"{prefix}expand_BN")
        depthwise.append(f"{prefix}depthwise")
        bn.append(f"{prefix}depthwise_BN")
        conv.append(f"{prefix}project")
        bn.append(f"{prefix}project_BN")
    conv.append("Conv_1")
    bn.append("Conv_1_bn")
    return {"conv": conv, "depthwise": depthwise, "bn": bn}


class MobileNetV2(nn.Module):
    """Keras-compatible MobileNetV2 trunk + global average pooling: ``(N,H,W,3) -> (N, D)``.

    Attributes:
      alpha: width multiplier (Keras ``alpha``); ImageNet weights exist for 0.35, 0.5, 0.75, 1.0,
        1.3, 1.4.
      dtype: computation dtype of convs and BatchNorm (e.g. ``jnp.bfloat16``); the pooled output
        is always returned as float32.
      param_dtype: dtype of the parameters.

    ``__call__(x, train=False)``: ``x`` float32 NHWC in ``[0, 1]`` (mapped to ``[-1, 1]``
    inside). With ``train=True`` BatchNorm normalizes with batch statistics and updates the
    ``batch_stats`` collection (apply with ``mutable=["batch_stats"]``).
    """

    alpha: float = 0.5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @property
    def num_features(self) -> int:
        """Length D of the output feature vector."""
        return num_features_for(self.alpha)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise AnoUnetError(
                f"MobileNetV2 expects NHWC RGB images of shape (N, H, W, 3), got {tuple(x.shape)}"
            )

        def conv(h, features, kernel, stride, padding, name, groups=1):
            return nn.Conv(
                features,
                (kernel, kernel),
                strides=(stride, stride),
                padding=padding,
                feature_group_count=groups,
                use_bias=False,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=name,
            )(h)

        def bn(h, name):
            return nn.BatchNorm(
                use_running_average=not train,
                momentum=BN_MOMENTUM,
                epsilon=BN_EPSILON,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=name,
            )(h)

        x = jnp.asarray(x, self.dtype) * 2.0 - 1.0  # [0, 1] -> Keras' [-1, 1]

        x = conv(x, make_divisible(32 * self.alpha, 8), 3, 2, "SAME", "Conv1")
        x = nn.relu6(bn(x, "bn_Conv1"))

        for block_id, (expansion, stride, filters) in enumerate(BLOCKS):
            inputs = x
            in_channels = x.shape[-1]
            pointwise_filters = make_divisible(int(filters * self.alpha), 8)
            if block_id:
                prefix = f"block_{block_id}_"
                x = conv(x, expansion * in_channels, 1, 1, "SAME", f"{prefix}expand")
                x = nn.relu6(bn(x, f"{prefix}expand_BN"))
            else:
                prefix = "expanded_conv_"
            channels = x.shape[-1]
            if stride == 2:
                padding = correct_pad(x.shape[1], x.shape[2], 3)
            else:
                padding = "SAME"
            x = conv(x, channels, 3, stride, padding, f"{prefix}depthwise", groups=channels)
            x = nn.relu6(bn(x, f"{prefix}depthwise_BN"))
            x = conv(x, pointwise_filters, 1, 1, "SAME", f"{prefix}project")
            x = bn(x, f"{prefix}project_BN")
            if in_channels == pointwise_filters and stride == 1:
                x = inputs + x

        x = conv(x, self.num_features, 1, 1, "SAME", "Conv_1")
        x = nn.relu6(bn(x, "Conv_1_bn"))
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))

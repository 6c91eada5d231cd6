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

Speed on XLA:CPU: the depthwise convs, written as grouped convolutions
(``feature_group_count = channels``), run slowly there, their gradients much more so, and 1x1
convs lose ~3x to the same matmul. So on the CPU backend the module by default computes the 3x3
depthwise convs as sums of 9 shifted slices (hand-written backward, see
:func:`depthwise_conv_shifts`) and the 1x1 convs as matmuls; elsewhere it keeps the plain
convolutions. Parameters and maths are identical either way (``depthwise_impl``,
``pointwise_impl``; ``benchmarks/fnet_speed.py`` measures them).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

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


DEPTHWISE_IMPLS = ("auto", "lax", "shifts")
POINTWISE_IMPLS = ("auto", "conv", "matmul")


def resolve_depthwise_impl(impl: str) -> str:
    """``"auto"`` -> ``"shifts"`` on the CPU backend, ``"lax"`` elsewhere; others pass through."""
    if impl not in DEPTHWISE_IMPLS:
        raise AnoUnetError(f"depthwise_impl must be one of {DEPTHWISE_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "shifts" if jax.default_backend() == "cpu" else "lax"
    return impl


def resolve_pointwise_impl(impl: str) -> str:
    """``"auto"`` -> ``"matmul"`` on the CPU backend, ``"conv"`` elsewhere; others pass through."""
    if impl not in POINTWISE_IMPLS:
        raise AnoUnetError(f"pointwise_impl must be one of {POINTWISE_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "matmul" if jax.default_backend() == "cpu" else "conv"
    return impl


def _explicit_pads(x_shape, kernel_hw, stride, padding) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(x_shape[1:3], kernel_hw, (stride, stride), padding)
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _tap_slice(xp, i, j, stride, oh, ow):
    """``xp[:, i : i + stride*oh : stride, j : j + stride*ow : stride, :]``."""
    n, _, _, c = xp.shape
    return lax.slice(xp, (0, i, j, 0), (n, i + (oh - 1) * stride + 1, j + (ow - 1) * stride + 1, c),
                     (1, stride, stride, 1))


def _sum_of_taps(xp, kernel, stride, oh, ow):
    """``sum_ij xp[:, s*h+i, s*w+j, :] * kernel[i, j, 0, :]`` (one fused elementwise loop)."""
    kh, kw = kernel.shape[:2]
    y = None
    for i in range(kh):
        for j in range(kw):
            tap = _tap_slice(xp, i, j, stride, oh, ow) * kernel[i, j, 0]
            y = tap if y is None else y + tap
    return y


def _output_hw(padded_hw, kernel_hw, stride):
    return tuple((p - k) // stride + 1 for p, k in zip(padded_hw, kernel_hw))


def _depthwise_shifts_fwd(x, kernel, stride, pads):
    # the residual is the padded input (the forward materializes it anyway), not x and a re-pad
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    oh, ow = _output_hw(xp.shape[1:3], kernel.shape[:2], stride)
    return _sum_of_taps(xp, kernel, stride, oh, ow), (xp, kernel)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_shifts(x, kernel, stride, pads):
    return _depthwise_shifts_fwd(x, kernel, stride, pads)[0]


def _depthwise_shifts_bwd(stride, pads, residuals, gy):
    xp, kernel = residuals
    kh, kw, _, c = kernel.shape
    (pt, pb), (pl, pr) = pads
    h, w = xp.shape[1] - pt - pb, xp.shape[2] - pl - pr
    oh, ow = gy.shape[1:3]
    # d kernel[i, j, c] = sum_{n,h,w} xpad[n, s*h+i, s*w+j, c] * gy[n, h, w, c]. One variadic
    # reduction over the batch axis computes all taps in one pass (separate per-tap reductions
    # make XLA:CPU materialize every shifted slice), then a small sum over (h, w).
    acc = jnp.promote_types(gy.dtype, jnp.float32)
    prods = tuple(
        (_tap_slice(xp, i, j, stride, oh, ow) * gy).astype(acc)
        for i in range(kh) for j in range(kw)
    )
    per_tap = lax.reduce(prods, tuple(jnp.zeros((), acc) for _ in prods),
                         lambda a, b: tuple(u + v for u, v in zip(a, b)), (0,))
    dkernel = jnp.stack([jnp.sum(t, (0, 1)) for t in per_tap]).reshape(kh, kw, 1, c)
    # d x: the transposed conv = a stride-1 correlation of gy, zero-upsampled by the stride and
    # padded (negative padding crops) to x's frame, with the flipped kernel; again one fused loop.
    lo_h, lo_w = kh - 1 - pt, kw - 1 - pl
    hi_h = h + kh - 1 - lo_h - (stride * (oh - 1) + 1)
    hi_w = w + kw - 1 - lo_w - (stride * (ow - 1) + 1)
    gyp = lax.pad(gy, jnp.zeros((), gy.dtype),
                  ((0, 0, 0), (lo_h, hi_h, stride - 1), (lo_w, hi_w, stride - 1), (0, 0, 0)))
    dx = _sum_of_taps(gyp, kernel[::-1, ::-1], 1, h, w)
    return dx.astype(xp.dtype), dkernel.astype(kernel.dtype)


_depthwise_shifts.defvjp(_depthwise_shifts_fwd, _depthwise_shifts_bwd)


def depthwise_conv_shifts(x: jnp.ndarray, kernel: jnp.ndarray, stride: int,
                          padding: Any) -> jnp.ndarray:
    """Depthwise conv as a sum of shifted slices: ``y = sum_ij xpad[., s*h+i, s*w+j, c] k[i,j,c]``.

    ``x``: (N, H, W, C); ``kernel``: (kh, kw, 1, C) (the grouped-conv layout); ``padding``:
    ``"SAME"``/``"VALID"`` or explicit ``((lo, hi), (lo, hi))`` as for ``lax.conv_general_dilated``.
    The same maths as ``lax.conv_general_dilated(..., feature_group_count=C)`` (cross-correlation),
    written with pads, strided slices and elementwise multiply-adds only, so that XLA:CPU never
    runs its slow grouped convolution. The backward pass is hand-written (``jax.custom_vjp``):
    the input gradient is the transposed conv done the same way (a sum of 9 shifted slices of the
    zero-upsampled output gradient times the flipped taps), the kernel gradient one variadic
    reduction; autodiff of the forward gives the same numbers but runs several times slower on
    XLA:CPU. Reverse mode only (``jax.jvp`` through it is not supported; use ``"lax"`` for that).
    """
    pads = _explicit_pads(x.shape, kernel.shape[:2], stride, padding)
    return _depthwise_shifts(x, kernel, int(stride), pads)


class DepthwiseConv(nn.Module):
    """Bias-free depthwise conv with the parameter ``kernel`` of shape ``(k, k, 1, C)``.

    The parameter tree is the one ``nn.Conv(C, (k, k), feature_group_count=C, use_bias=False)``
    creates (same name, shape and default initializer), so Keras weights import unchanged.
    ``impl``: ``"lax"`` (grouped ``lax.conv_general_dilated``), ``"shifts"``
    (:func:`depthwise_conv_shifts`) or ``"auto"`` (see :func:`resolve_depthwise_impl`).
    """

    kernel_size: int = 3
    stride: int = 1
    padding: Any = "SAME"
    impl: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c = x.shape[-1]
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, 1, c), self.param_dtype)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        if resolve_depthwise_impl(self.impl) == "shifts":
            return depthwise_conv_shifts(x, kernel, self.stride, self.padding)
        return lax.conv_general_dilated(
            x, kernel, (self.stride, self.stride), self.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c,
        )


class PointwiseConv(nn.Module):
    """Bias-free 1x1 conv (stride 1) as one matmul over the channel axis.

    Same parameter as ``nn.Conv(features, (1, 1), use_bias=False)`` (``kernel`` of shape
    ``(1, 1, C_in, features)``, same default initializer) and the same maths; written as
    ``(N*H*W, C_in) @ (C_in, features)`` because XLA:CPU runs that matmul and its two gradient
    matmuls several times faster than a 1x1 convolution and its gradients (which it lowers with
    transposed copies of the activations).
    """

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (1, 1, c, self.features), self.param_dtype)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        y = jnp.dot(x.reshape(-1, c), kernel[0, 0])
        return y.reshape(*x.shape[:-1], self.features)


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
      depthwise_impl: how the 3x3 depthwise convs run: ``"lax"`` (grouped convolution),
        ``"shifts"`` (sum of 9 shifted slices times per-channel taps: elementwise forward and
        backward, several times faster on XLA:CPU, where grouped convolutions are slow) or
        ``"auto"`` (default: ``"shifts"`` on the CPU backend, ``"lax"`` elsewhere). Same
        parameters and the same maths either way.
      pointwise_impl: how the 1x1 convs run: ``"conv"`` (``nn.Conv``), ``"matmul"`` (one
        ``(N*H*W, C_in) @ (C_in, C_out)`` matmul; about 3x faster forward + backward on XLA:CPU)
        or ``"auto"`` (default: ``"matmul"`` on the CPU backend, ``"conv"`` elsewhere). Same
        parameters and the same maths either way. ``depthwise_impl="lax",
        pointwise_impl="conv"`` is the plain Flax/Keras formulation (the reference).

    ``__call__(x, train=False, return_maps=False)``: ``x`` float32 NHWC in ``[0, 1]`` (mapped to
    ``[-1, 1]`` inside). With ``train=True`` BatchNorm normalizes with batch statistics and
    updates the ``batch_stats`` collection (apply with ``mutable=["batch_stats"]``). With
    ``return_maps=True`` it returns ``(pooled, maps)``: ``maps`` holds the last feature map at
    each stride, keys ``"stride2"`` (block 0, ``expanded_conv``), ``"stride4"`` (block 2),
    ``"stride8"`` (block 5), ``"stride16"`` (block 12) and ``"stride32"`` (``Conv_1`` after
    ReLU6, the map that is pooled), each ``(N, ceil(H/s), ceil(W/s), C)`` in ``dtype``. The
    pooled output and the parameters are the same either way.
    """

    alpha: float = 0.5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    depthwise_impl: str = "auto"
    pointwise_impl: str = "auto"
    bn_momentum: float = BN_MOMENTUM  # 0.0: train mode stores the batch's own statistics (fnet.train)

    @property
    def num_features(self) -> int:
        """Length D of the output feature vector."""
        return num_features_for(self.alpha)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, return_maps: bool = False):
        if x.ndim != 4 or x.shape[-1] != 3:
            raise AnoUnetError(
                f"MobileNetV2 expects NHWC RGB images of shape (N, H, W, 3), got {tuple(x.shape)}"
            )

        depthwise_impl = resolve_depthwise_impl(self.depthwise_impl)
        pointwise_matmul = resolve_pointwise_impl(self.pointwise_impl) == "matmul"

        def conv(h, features, kernel, stride, padding, name):
            if pointwise_matmul and kernel == 1 and stride == 1:
                return PointwiseConv(
                    features, dtype=self.dtype, param_dtype=self.param_dtype, name=name
                )(h)
            return nn.Conv(
                features,
                (kernel, kernel),
                strides=(stride, stride),
                padding=padding,
                use_bias=False,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=name,
            )(h)

        def bn(h, name):
            return nn.BatchNorm(
                use_running_average=not train,
                momentum=self.bn_momentum,
                epsilon=BN_EPSILON,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=name,
            )(h)

        x = jnp.asarray(x, self.dtype) * 2.0 - 1.0  # [0, 1] -> Keras' [-1, 1]

        x = conv(x, make_divisible(32 * self.alpha, 8), 3, 2, "SAME", "Conv1")
        x = nn.relu6(bn(x, "bn_Conv1"))

        # maps: the output of the last block of each stride stage (the one before the next
        # stride-2 block), for patch-level features (anounet_jax.fnet.local)
        maps = {}
        total_stride = 2
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
            if stride == 2:
                padding = correct_pad(x.shape[1], x.shape[2], 3)
            else:
                padding = "SAME"
            x = DepthwiseConv(
                3, stride, padding, impl=depthwise_impl, dtype=self.dtype,
                param_dtype=self.param_dtype, name=f"{prefix}depthwise",
            )(x)
            x = nn.relu6(bn(x, f"{prefix}depthwise_BN"))
            x = conv(x, pointwise_filters, 1, 1, "SAME", f"{prefix}project")
            x = bn(x, f"{prefix}project_BN")
            if in_channels == pointwise_filters and stride == 1:
                x = inputs + x
            total_stride *= stride
            if block_id + 1 < len(BLOCKS) and BLOCKS[block_id + 1][1] == 2:
                maps[f"stride{total_stride}"] = x

        x = conv(x, self.num_features, 1, 1, "SAME", "Conv_1")
        x = nn.relu6(bn(x, "Conv_1_bn"))
        maps[f"stride{total_stride}"] = x
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return (pooled, maps) if return_maps else pooled

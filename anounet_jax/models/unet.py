"""The per-image generator G: the original's U-Net, with pluggable convolution arithmetic.

Structure (paper preset): 4 levels of two (3x3 conv, BatchNorm, ReLU) with widths 64..512, a 1024-wide
bottleneck, 2x2 max-pool down, 2x2 stride-2 transposed conv up, skip concatenation, 1x1 conv to 3
channels, sigmoid.

`conv_impl` chooses how convolutions are computed, not what they compute:
  "lax"     -- lax.conv_general_dilated (the library conv path);
  "matmul"  -- 3x3 convs as im2col (nine shifted slices) times the kernel. Under `jax.vmap` over
               per-image parameters this becomes a batched matmul instead of a grouped convolution,
               which XLA:CPU runs far faster (see DESIGN.md);
  "swapped" -- library convs whose kernel gradient is one forward convolution with batch and channels
               swapped: at batch 1, XLA:CPU's own kernel-gradient convolution is up to 7x slower
               (64x64x16->16: 2.8 ms against 0.4 ms);
  "hybrid"  -- per layer what is fastest for ONE image on XLA:CPU (measured layer by layer): "matmul"
               at 8x8 pixels and below, "swapped" above (plain "lax" when the batch is larger), and
               matmul up-convolutions (XLA:CPU's transposed conv backward is 3-10x slower). Meant for
               batch-1 programs (the loop formulation), not under vmap.
All give the same numbers up to float rounding (tested). `upconv_impl` overrides the up-convolutions.

BatchNorm: G only ever sees the one image it is fitted to (batch 1, as in the original), so it
normalizes with that image's own statistics over H and W, in training and when the final
reconstruction is drawn. (Keras would draw it with moving averages that after 150 steps at momentum
0.99 have moved only 78% of the way from their initial values; we do not copy that.) Under vmap each
image keeps its own statistics, so images never mix.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from anounet_jax.errors import AnoUnetError

BN_EPSILON = 1e-3  # Keras BatchNormalization default
HE_NORMAL = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
LECUN_NORMAL = nn.initializers.variance_scaling(1.0, "fan_in", "normal")


def im2col_3x3(x):
    """(N,H,W,C) -> (N,H,W,9C) 'same'-padded 3x3 patches, ordered (dy, dx, c) like an HWIO kernel."""
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return jnp.concatenate([xp[:, dy:dy + h, dx:dx + w, :] for dy in range(3) for dx in range(3)], -1)


def _conv_same(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _kernel_grad_swapped(x, g):
    """d(conv)/d(kernel) as ONE forward convolution with batch and channels swapped: the padded input
    (C, H+2, W+2, N) correlated with the output gradient (H, W, N, O) gives (C, 3, 3, O). Same sums as
    XLA's own kernel-gradient convolution, which XLA:CPU runs several times slower at batch 1."""
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).transpose(3, 1, 2, 0)
    dk = jax.lax.conv_general_dilated(xp, g.transpose(1, 2, 0, 3), (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return dk.transpose(1, 2, 0, 3)


@jax.custom_vjp
def conv3x3_swapped_grad(x, kernel):
    """A 'same' 3x3 convolution whose kernel gradient is computed by `_kernel_grad_swapped`."""
    return _conv_same(x, kernel)


def _swapped_fwd(x, kernel):
    return _conv_same(x, kernel), (x, kernel)


def _swapped_bwd(res, g):
    x, kernel = res
    dx = jax.vjp(lambda x: _conv_same(x, kernel), x)[1](g)[0]
    return dx, _kernel_grad_swapped(x, g).astype(kernel.dtype)


conv3x3_swapped_grad.defvjp(_swapped_fwd, _swapped_bwd)

CONV_IMPLS = ("lax", "matmul", "hybrid", "swapped")

# "hybrid": where im2col matmuls beat XLA:CPU's convolutions for one image (measured: 8x8 and smaller)
HYBRID_MATMUL_MAX_PIXELS = 64


class Conv3x3(nn.Module):
    features: int
    conv_impl: str = "lax"
    dtype: Any = jnp.float32  # compute dtype; parameters stay float32

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        kernel = self.param("kernel", HE_NORMAL, (3, 3, cin, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        impl = self.conv_impl
        if impl == "hybrid":  # measured per layer shape on XLA:CPU (see the module docstring)
            if x.shape[1] * x.shape[2] <= HYBRID_MATMUL_MAX_PIXELS:
                impl = "matmul"
            else:
                impl = "swapped" if x.shape[0] == 1 else "lax"
        if impl == "matmul":
            y = im2col_3x3(x) @ kernel.reshape(9 * cin, self.features)
        elif impl == "swapped":
            y = conv3x3_swapped_grad(x, kernel)
        else:
            y = _conv_same(x, kernel)
        return y + bias.astype(self.dtype)


class UpConv2x2(nn.Module):
    """2x2 stride-2 transposed convolution: every input pixel writes its own 2x2 output block."""

    features: int
    conv_impl: str = "lax"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        n, h, w, cin = x.shape
        kernel = self.param("kernel", HE_NORMAL, (2, 2, cin, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if self.conv_impl == "matmul":
            k = kernel.transpose(2, 0, 1, 3).reshape(cin, 4 * self.features)
            y = (x @ k).reshape(n, h, w, 2, 2, self.features)
            y = y.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, self.features)
        else:
            # conv_transpose flips the kernel spatially unless transpose_kernel; flip it back so that
            # kernel[dy, dx] lands at output offset (dy, dx) like the matmul path.
            y = jax.lax.conv_transpose(x, kernel[::-1, ::-1], (2, 2), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias.astype(self.dtype)


class ImageNorm(nn.Module):
    """BatchNorm with the statistics of the current batch over (N, H, W): per image when N = 1."""

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        xf = x.astype(jnp.float32)  # statistics in float32 also under bfloat16 compute
        mean = xf.mean((0, 1, 2))
        var = jnp.mean(jnp.square(xf - mean), (0, 1, 2))
        y = (xf - mean) * jax.lax.rsqrt(var + BN_EPSILON) * scale + bias
        return y.astype(x.dtype)


class ConvBlock(nn.Module):
    features: int
    norm: str = "batch"
    conv_impl: str = "lax"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i in range(2):
            x = Conv3x3(self.features, self.conv_impl, self.dtype, name=f"conv{i}")(x)
            if self.norm == "batch":
                x = ImageNorm(name=f"norm{i}")(x)
            x = nn.relu(x)
        return x


class UNet(nn.Module):
    width: int = 64
    depth: int = 4
    norm: str = "batch"
    out_channels: int = 3
    conv_impl: str = "lax"
    upconv_impl: str | None = None  # "lax" | "matmul"; default: conv_impl ("hybrid" -> "matmul")
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.norm not in ("batch", "none"):
            raise AnoUnetError(f"unknown U-Net norm {self.norm!r}; use 'batch' or 'none'")
        h, w = x.shape[1:3]
        if h % 2 ** self.depth or w % 2 ** self.depth:
            raise AnoUnetError(f"image size {h}x{w} must be divisible by 2**depth = {2 ** self.depth}")
        if self.conv_impl not in CONV_IMPLS:
            raise AnoUnetError(f"unknown conv_impl {self.conv_impl!r}; use one of {CONV_IMPLS}")
        up_impl = self.upconv_impl or ("matmul" if self.conv_impl == "hybrid" else self.conv_impl)
        kw = dict(norm=self.norm, conv_impl=self.conv_impl, dtype=self.dtype)
        skips = []
        for level in range(self.depth):
            x = ConvBlock(self.width * 2 ** level, name=f"down{level}", **kw)(x)
            skips.append(x)
            n, hh, ww, c = x.shape
            x = x.reshape(n, hh // 2, 2, ww // 2, 2, c).max((2, 4))
        x = ConvBlock(self.width * 2 ** self.depth, name="bottleneck", **kw)(x)
        for level in reversed(range(self.depth)):
            feats = self.width * 2 ** level
            x = UpConv2x2(feats, up_impl, self.dtype, name=f"upconv{level}")(x)
            x = jnp.concatenate([skips[level], x.astype(skips[level].dtype)], -1)
            x = ConvBlock(feats, name=f"up{level}", **kw)(x)
        kernel = self.param("out_kernel", LECUN_NORMAL, (x.shape[-1], self.out_channels))
        bias = self.param("out_bias", nn.initializers.zeros, (self.out_channels,))
        y = x.astype(jnp.float32) @ kernel + bias
        return nn.sigmoid(y)


def unet_from_config(cfg, conv_impl: str = "lax", dtype=jnp.float32, upconv_impl: str | None = None) -> UNet:
    return UNet(width=cfg.width, depth=cfg.depth, norm=cfg.norm, conv_impl=conv_impl,
                upconv_impl=upconv_impl, dtype=dtype)


def init_unet_params(unet: UNet, key, image_shape) -> dict:
    """Parameters with the module's initial distributions from ONE normal draw.

    Same distributions as `unet.init` (He-normal conv kernels, LeCun-normal output layer, zero biases,
    unit norm scales), different values. Why: XLA:CPU compiles each threefry draw separately and
    slowly (about 3 s each here); `unet.init` makes one per layer, this makes one per image. Pure and
    vmap-safe: the same key gives the same parameters batched or alone.
    """
    shapes = jax.eval_shape(lambda: unet.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_shape))))
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes["params"])
    sizes = [int(np.prod(leaf.shape)) for _, leaf in paths_leaves]
    # drawn as rows of 1024: XLA:CPU generates a 2-D draw about twice as fast as one long vector (an
    # engine fit of 16 small-preset images for one step: 1.1 s against 2.1-2.5 s), and with JAX's
    # partitionable threefry (the default) each value depends only on its position: the same values
    n = sum(sizes)
    z = jax.random.normal(key, (-(-n // 1024), 1024), jnp.float32).reshape(-1)[:n]
    out, offset = [], 0
    for (path, leaf), size in zip(paths_leaves, sizes):
        name = path[-1].key
        if name in ("kernel", "out_kernel"):
            fan_in = int(np.prod(leaf.shape[:-1]))
            std = np.sqrt((2.0 if name == "kernel" else 1.0) / fan_in)
            out.append((z[offset:offset + size] * std).reshape(leaf.shape))
        elif name == "scale":
            out.append(jnp.ones(leaf.shape, jnp.float32))
        else:  # biases
            out.append(jnp.zeros(leaf.shape, jnp.float32))
        offset += size
    return jax.tree_util.tree_unflatten(treedef, out)

"""Pieces the baselines share: the result type, conv encoder/decoder modules and a trainer for
reconstruction networks. Nothing here knows a concrete method (their settings: baselines/configs.py).

Every baseline maps the same inputs to the same outputs as the Ano-Unet engine:
images float32 (N, H, W, 3) in [0, 1]  ->  BaselineResult(heatmap (N, H, W), recon (N, H, W, 3), score (N,)).
Heatmaps are raw (no smoothing): the evaluate harness smooths every method's maps the same way.

Networks here use no batch-statistics normalization (GroupNorm is per sample), so an image's output
never depends on the other images in its batch, in training mode or at inference.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from anounet_jax.errors import AnoUnetError
from anounet_jax.training import run_epochs


# ----------------------------------------------------------------------------- results


@dataclasses.dataclass
class BaselineResult:
    """Per-image results, numpy, in input order."""

    heatmap: np.ndarray  # (N, H, W) float32, mean_c |x - recon|, not smoothed
    recon: np.ndarray  # (N, H, W, 3) float32
    score: np.ndarray  # (N,) float32 image anomaly score (higher = more anomalous)

    @property
    def diverged(self) -> np.ndarray:
        """(N,) bool: non-finite score or reconstruction."""
        return ~(np.isfinite(self.score) & np.isfinite(self.recon).all((1, 2, 3)))

    @staticmethod
    def concatenate(parts: Sequence["BaselineResult"]) -> "BaselineResult":
        return BaselineResult(*(np.concatenate([getattr(p, f.name) for p in parts])
                                for f in dataclasses.fields(BaselineResult)))


def reconstruction_result(images: np.ndarray, recon: np.ndarray, score=None) -> BaselineResult:
    """heatmap = mean_c |x - recon|; score = sum of the heatmap unless given."""
    from anounet_jax.maps import residual_map

    recon = np.asarray(recon, np.float32)
    heat = residual_map(images, recon)
    if score is None:
        score = heat.sum((1, 2), dtype=np.float64)
    return BaselineResult(heat.astype(np.float32), recon, np.asarray(score, np.float32))


def check_images(images, shape: tuple[int, int] | None = None) -> np.ndarray:
    """float32 (N, H, W, 3); with `shape`, H and W must equal the training images' size."""
    x = np.asarray(images, np.float32)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise AnoUnetError(f"images must be (N, H, W, 3), got {x.shape}")
    if shape is not None and tuple(x.shape[1:3]) != tuple(shape):
        raise AnoUnetError(f"images are {x.shape[1]}x{x.shape[2]} but the baseline was trained on "
                           f"{shape[0]}x{shape[1]}")
    return x


def base_size(image_hw: tuple[int, int], depth: int) -> tuple[int, int]:
    """Spatial size at the bottom of `depth` stride-2 levels; H and W must be divisible by 2**depth."""
    f = 2 ** depth
    h, w = image_hw
    if h % f or w % f or h < f or w < f:
        raise AnoUnetError(f"image size {h}x{w} is not divisible by 2**depth = {f}; change the "
                           f"baseline depth or the image size")
    return h // f, w // f


# ----------------------------------------------------------------------------- modules


def init_params(module: nn.Module, seed: int, *example_args) -> Any:
    """Parameters of `module` without compiling its forward pass (XLA:CPU takes seconds for that).

    Shapes come from `jax.eval_shape(module.init, ...)` (nothing is compiled: XLA:CPU compiles random
    draws of 4-D kernel shapes very slowly, seconds per kernel); values from numpy's PCG64 seeded with `seed`,
    drawn leaf by leaf in tree order: "kernel" ~ N(0, 1/fan_in) with fan_in = prod(shape[:-1]) (LeCun
    normal, untruncated; for HWIO conv kernels that is kh*kw*in), "scale" = 1, everything else
    (biases) = 0. Only for modules built from Dense / Conv / ConvTranspose / GroupNorm / LayerNorm.
    """
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *example_args)["params"]
    rng = np.random.default_rng(seed)

    def leaf(path, sd):
        name = getattr(path[-1], "key", str(path[-1]))
        if name == "kernel":
            fan_in = math.prod(sd.shape[:-1])
            return jnp.asarray(rng.standard_normal(sd.shape, np.float32) / np.sqrt(fan_in), sd.dtype)
        if name == "scale":
            return jnp.ones(sd.shape, sd.dtype)
        return jnp.zeros(sd.shape, sd.dtype)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def _norm(kind: str, channels: int, name: str):
    if kind == "group":
        return nn.GroupNorm(num_groups=math.gcd(channels, 8), name=name)
    if kind == "none":
        return lambda x: x
    raise AnoUnetError(f"unknown norm {kind!r}; use 'group' or 'none'")


def space_to_depth2(x):
    """(N, H, W, C) -> (N, H/2, W/2, 4C): each 2x2 pixel block becomes one pixel of 4C channels."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h // 2, w // 2, 4 * c)


def depth_to_space2(x):
    """(N, H, W, 4C) -> (N, 2H, 2W, C), the inverse of space_to_depth2 (a "pixel shuffle")."""
    n, h, w, c4 = x.shape
    c = c4 // 4
    return x.reshape(n, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, c)


def upsample2x(x):
    """Nearest-neighbour 2x up-sampling of (N, H, W, C)."""
    n, h, w, c = x.shape
    return jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, 2, w, 2, c)).reshape(n, 2 * h, 2 * w, c)


# Why no conv runs at full resolution (both modules): XLA:CPU runs convs with few channels on large maps
# far below its peak (measured, 64 images 64x64: a 3x3 conv 8->4 channels took 36 ms for 0.08 GMAC,
# 32->16 took 70 ms for 1.2 GMAC). So the encoder's first level reads 2x2 pixel blocks as channels
# (space-to-depth + 2x2 conv: a stride-2 conv with a 4x4 receptive field), and the decoder's last level
# writes them (3x3 conv to 12 channels at half resolution + pixel shuffle). With up-sampling + conv
# instead of stride-2 transposed convs (which XLA:CPU also ran ~2.5x slower, and which make checkerboard
# artifacts, Odena et al. 2016), the AnoGAN latent-search step got ~3x faster than a transposed-conv
# DCGAN of the same widths.


class ConvEncoder(nn.Module):
    """x in [0, 1] -> features. `depth` stride-2 levels, widths width * 2**i, each (conv, norm,
    LeakyReLU 0.2): level 0 is space-to-depth + 2x2 conv (no norm, as in DCGAN), the others 4x4 stride-2
    convs. Returns the flattened last feature map (N, h*w*C); with `latent`, a Dense projection of it.
    """

    width: int
    depth: int
    latent: int | None = None
    norm: str = "none"

    @nn.compact
    def __call__(self, x):
        x = space_to_depth2(x * 2.0 - 1.0)
        x = nn.leaky_relu(nn.Conv(self.width, (2, 2), padding="SAME", name="conv0")(x), 0.2)
        for i in range(1, self.depth):
            c = self.width * 2 ** i
            x = nn.Conv(c, (4, 4), strides=(2, 2), padding="SAME", name=f"conv{i}")(x)
            x = nn.leaky_relu(_norm(self.norm, c, f"norm{i}")(x), 0.2)
        x = x.reshape(x.shape[0], -1)
        if self.latent is not None:
            x = nn.Dense(self.latent, name="latent")(x)
        return x


class ConvDecoder(nn.Module):
    """(N, K) -> (N, H, W, 3) in [0, 1]: Dense to (H/2**depth, W/2**depth, width * 2**(depth-1)), norm,
    ReLU; depth-1 levels of (2x nearest up-sampling, 3x3 conv, norm, ReLU) halving the width; then a
    3x3 conv to 12 channels, pixel shuffle to (H, W, 3) (the last 2x up-sampling) and a sigmoid."""

    width: int
    depth: int
    image_hw: tuple[int, int]
    norm: str = "group"

    @nn.compact
    def __call__(self, z):
        h0, w0 = base_size(self.image_hw, self.depth)
        c = self.width * 2 ** (self.depth - 1)
        x = nn.Dense(h0 * w0 * c, name="project")(z).reshape(z.shape[0], h0, w0, c)
        x = nn.relu(_norm(self.norm, c, "norm_in")(x))
        for i in range(self.depth - 1):
            c = max(c // 2, 1)
            x = nn.Conv(c, (3, 3), padding="SAME", name=f"up{i}")(upsample2x(x))
            x = nn.relu(_norm(self.norm, c, f"norm{i}")(x))
        x = nn.Conv(12, (3, 3), padding="SAME", name="out")(x)
        return nn.sigmoid(depth_to_space2(x))


# ----------------------------------------------------------------------------- training / inference


def recon_loss(kind: str, target, recon):
    """Per-batch mean of the per-pixel loss: "l2" squared error, "l1" absolute error."""
    d = target - recon
    if kind == "l2":
        return jnp.mean(d * d)
    if kind == "l1":
        return jnp.mean(jnp.abs(d))
    raise AnoUnetError(f"unknown reconstruction loss {kind!r}; use 'l1' or 'l2'")


def train_reconstruction(module: nn.Module, inputs: np.ndarray, targets: np.ndarray, *, loss: str,
                         lr: float, epochs: int, batch_size: int, seed: int, progress: bool,
                         desc: str) -> tuple[Any, list[float]]:
    """Train `module(inputs) ~ targets` with Adam on shuffled minibatches (training.run_epochs).
    Returns (params, mean loss per epoch)."""
    if len(inputs) == 0:
        raise AnoUnetError(f"{desc}: no training images")
    if loss not in ("l1", "l2"):
        raise AnoUnetError(f"unknown reconstruction loss {loss!r}; use 'l1' or 'l2'")
    params = init_params(module, seed, jnp.asarray(inputs[:1]))
    tx = optax.adam(lr)

    def step(state, x, y):
        params, opt_state = state
        value, grads = jax.value_and_grad(lambda p: recon_loss(loss, y, module.apply({"params": p}, x)))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    (params, _), history = run_epochs(jax.jit(step, donate_argnums=(0,)), (params, tx.init(params)),
                                      (inputs, targets), batch_size=batch_size, epochs=epochs, seed=seed,
                                      desc=desc, progress=progress)
    return params, history

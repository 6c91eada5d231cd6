"""The memory of normal patch features: f-Net local features of the normal training images, kept as a
greedy k-center coreset (PatchCore, Roth et al. 2022). The feature-memory baseline scores test patches
by their distance to it; Ano-Unet's spatial term (fit.spatial_beta, engine/steps.py) pulls G(x)'s
local features toward it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from tqdm.auto import tqdm

from anounet_jax.batching import map_in_batches
from anounet_jax.errors import AnoUnetError
from anounet_jax.fnet.local import default_layers, local_feature_fn

# ----------------------------------------------------------------------------- coreset


@jax.jit
def _sq_dist_to(z, i):
    return jnp.sum(jnp.square(z - z[i]), axis=1)


@functools.partial(jax.jit, static_argnums=2)
def _greedy_steps(z, min_d2, steps: int):
    """`steps` greedy k-center picks: each takes the point farthest from the chosen ones (min_d2 is
    each point's squared distance to them; chosen points hold -1, so they are never picked again)."""

    def body(min_d2, _):
        i = jnp.argmax(min_d2)
        min_d2 = jnp.minimum(min_d2, jnp.sum(jnp.square(z - z[i]), axis=1)).at[i].set(-1.0)
        return min_d2, i

    min_d2, picks = lax.scan(body, min_d2, None, length=steps)
    return picks, min_d2


def greedy_coreset(vectors, size: int, seed: int = 0, projection_dim: int | None = 128,
                   chunk: int = 512, progress: bool = False) -> np.ndarray:
    """Indices (size,) of a greedy k-center coreset of `vectors` (n, C), all distinct.

    Starts at a random point (numpy PCG64 from `seed`), then adds the point farthest from the chosen
    set, `size - 1` times: a 2-approximation of the minimal covering radius (Gonzalez 1985). As in
    PatchCore, distances are taken on a Gaussian random projection to `projection_dim` dims
    (Johnson-Lindenstrauss: distances kept up to a small factor) when C is larger; None: never.
    Runs in jitted chunks of `chunk` steps (one compilation for any size; the last chunk's extra
    picks are dropped: greedy picks do not depend on how many follow). size >= n: all indices.
    """
    v = np.asarray(vectors, np.float32)
    n, c = v.shape
    size = int(size)
    if size < 1:
        raise AnoUnetError(f"coreset size must be >= 1, got {size}")
    if size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if projection_dim is not None and c > projection_dim:
        proj = rng.standard_normal((c, projection_dim), np.float32) / np.float32(np.sqrt(projection_dim))
        v = v @ proj
    z = jnp.asarray(v)
    start = int(rng.integers(n))
    min_d2 = _sq_dist_to(z, start).at[start].set(-1.0)
    picks = [np.array([start])]
    with tqdm(total=size, initial=1, desc="coreset", unit="pt", disable=not progress) as bar:
        while sum(len(p) for p in picks) < size:
            idx, min_d2 = _greedy_steps(z, min_d2, int(chunk))
            picks.append(np.asarray(idx))
            bar.update(min(int(chunk), size - bar.n))
    return np.concatenate(picks)[:size]


# ----------------------------------------------------------------------------- nearest neighbours


def nearest_distances(queries, blocks, block_sq, k: int = 1):
    """(Q,) mean Euclidean distance of each query (Q, C) to its k nearest memory vectors.

    The memory comes as `blocks` (nb, B, C) with squared norms `block_sq` (nb, B); padding rows have
    norm +inf, so they are never among the nearest. Squared distances ||a||^2 - 2ab + ||b||^2 are
    clipped at 0 (float cancellation for near-identical vectors) before the square root.
    """
    q_sq = jnp.sum(queries * queries, axis=1)

    def step(best, block):
        b, b_sq = block
        # HIGHEST: no reduced-precision (TF32/bf16) matmul on accelerators; the expansion cancels
        d2 = q_sq[:, None] - 2.0 * jnp.dot(queries, b.T, precision=lax.Precision.HIGHEST) + b_sq[None, :]
        if k == 1:
            return jnp.minimum(best, jnp.min(d2, axis=1, keepdims=True)), None
        return -lax.top_k(-jnp.concatenate([best, d2], axis=1), k)[0], None

    best = jnp.full((queries.shape[0], k), jnp.inf, queries.dtype)
    best, _ = lax.scan(step, best, (blocks, block_sq))
    return jnp.mean(jnp.sqrt(jnp.maximum(best, 0.0)), axis=1)


def memory_blocks(memory: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(nb, block, C) zero-padded blocks and their squared norms, +inf on the padding rows."""
    m, c = memory.shape
    nb = -(-m // block)
    blocks = np.zeros((nb * block, c), np.float32)
    blocks[:m] = memory
    sq = np.full(nb * block, np.inf, np.float32)
    sq[:m] = np.einsum("ij,ij->i", memory, memory)
    return blocks.reshape(nb, block, c), sq.reshape(nb, block)


# ----------------------------------------------------------------------------- Ano-Unet's memory


@functools.lru_cache(maxsize=None)
def cached_local_feature_fn(fnet_cfg, layers: tuple[str, ...]) -> Callable:
    """One local-feature function per (f-Net config, layers) for the process: compiled programs are
    keyed on it (engine/steps.py StepSpec.local_apply)."""
    return local_feature_fn(fnet_cfg, layers)


@dataclasses.dataclass
class PatchMemory:
    """What Ano-Unet's spatial term needs: the memory (M, C), the layers its features come from, and
    its unit `scale`: the mean squared distance of a normal training patch to its nearest memory
    vector (the spatial term's value for a typical normal image)."""

    memory: np.ndarray
    scale: float
    layers: tuple[str, ...]
    fnet_cfg: Any

    @property
    def local_apply(self) -> Callable:
        return cached_local_feature_fn(self.fnet_cfg, self.layers)


def patch_features(fnet, fnet_cfg, layers, images, batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """float32 (N, h, w, C): the local f-Net features (`fnet.local`) of `images`, in padded batches."""
    fn = jax.jit(cached_local_feature_fn(fnet_cfg, tuple(layers)))
    with tqdm(total=len(images), desc="patch features", unit="img", disable=not progress) as bar:
        def batch(b):
            out = fn(fnet.variables, b)
            bar.update(min(len(b), bar.total - bar.n))
            return out

        return map_in_batches(batch, np.asarray(images, np.float32), batch_size)


def build_patch_memory(fnet, fnet_cfg, normal_images, seed: int = 0, coreset_fraction: float = 0.01,
                       max_memory: int = 4096, layers=None, batch_size: int = 32,
                       scale_images: int = 64) -> PatchMemory:
    """The coreset memory of the normal images' local f-Net features (`fnet` a FrozenFNet built from
    `fnet_cfg`) and its scale. The scale is measured on the patches of `scale_images` images (at most
    a quarter) kept out of the memory: a patch of the memory itself would be at distance 0."""
    layers = tuple(layers) if layers is not None else default_layers(fnet_cfg.arch)
    x = np.asarray(normal_images, np.float32)
    if len(x) < 2:
        raise AnoUnetError(f"the patch memory needs at least 2 normal images, got {len(x)}")
    feats = patch_features(fnet, fnet_cfg, layers, x, batch_size)
    n_probe = max(1, min(int(scale_images), len(x) // 4))
    probe = feats[len(x) - n_probe:].reshape(-1, feats.shape[-1])
    vectors = feats[:len(x) - n_probe].reshape(-1, feats.shape[-1])
    size = max(1, min(len(vectors), max_memory, math.ceil(coreset_fraction * len(vectors))))
    memory = np.ascontiguousarray(vectors[greedy_coreset(vectors, size, seed)], np.float32)
    blocks, sq = memory_blocks(memory, 2048)
    dist = np.asarray(nearest_distances(jnp.asarray(probe), jnp.asarray(blocks), jnp.asarray(sq)), np.float64)
    scale = float(np.mean(dist ** 2))
    if not np.isfinite(scale) or scale <= 0:
        raise AnoUnetError(f"the normal patch features all lie on the memory (mean distance {scale}): "
                           f"the spatial term has no unit")
    return PatchMemory(memory, scale, layers, fnet_cfg)

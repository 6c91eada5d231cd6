"""The batched per-image fit: one independent U-Net G_i per test image x_i, many fitted at once.

    L_i = mean|x_i - G_i(x_i)| + beta * mean|f(G_i(x_i)) - C|        heatmap_i = mean_c |x_i - G_i(x_i)|

Every image has its own parameters and optimizer state (a leading image axis on every leaf), its own
PRNG key (fold_in(seed, global index), so results do not depend on chunking or batch size), and its own
gradient: losses are never summed or averaged across images, so an image that diverges (NaN/inf) is
flagged and cannot change any other image.

Formulations (same numbers, different arithmetic; chosen per backend, see FORMULATIONS):
  "vmap_matmul" -- vmap over per-image params; 3x3 convs as im2col @ kernel -> batched matmuls.
  "vmap_conv"   -- vmap over per-image params with library convs -> grouped convolutions.
  "unrolled"    -- the chunk's images unrolled inside one jitted step, each a batch-1 library conv.
  "loop"        -- the original's structure: one image at a time, a jitted step per image.
Steps run as a Python loop of jitted steps with donated buffers; `steps_per_call` > 1 unrolls that many
steps inside one call (fewer dispatches on accelerators). lax.scan is avoided: XLA:CPU does not rewrite
convs inside loop bodies to its fast path (jax #12868).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from anounet_jax.errors import AnoUnetError
from anounet_jax.fnet.model import FrozenFNet
from anounet_jax.models.unet import init_unet_params, unet_from_config

_COMPILED: dict = {}  # see Engine._compiled

FORMULATIONS = ("vmap_matmul", "vmap_conv", "unrolled", "loop")

# Fastest measured formulation per backend (benchmarks/throughput.py; figures in the README).
AUTO_FORMULATION = {"cpu": "loop", "gpu": "vmap_matmul", "tpu": "vmap_conv"}


def make_optimizer(fit_cfg, unet_cfg=None) -> optax.GradientTransformation:
    """The per-image optimizer. With BatchNorm, conv biases (kept for parity with the original's
    parameter count) are frozen: the normalization cancels them, so their gradient is pure rounding
    noise, which Adam would rescale into full-size steps that differ between formulations."""
    if fit_cfg.optimizer == "sgd":
        tx = optax.sgd(fit_cfg.lr, momentum=fit_cfg.momentum or None)
    elif fit_cfg.optimizer == "adam":
        tx = optax.adam(fit_cfg.lr)
    else:
        raise AnoUnetError(f"unknown optimizer {fit_cfg.optimizer!r}; use 'sgd' or 'adam'")
    if unet_cfg is None or unet_cfg.norm != "batch":
        return tx

    def labels(params):
        def label(path, _):
            keys = [getattr(k, "key", "") for k in path]
            dead = keys[-1] == "bias" and any(str(k).startswith("conv") for k in keys[-2:-1])
            return "frozen" if dead else "train"

        return jax.tree_util.tree_map_with_path(label, params)

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


@dataclasses.dataclass
class FitResult:
    """Per-image results, numpy, in input order."""

    recon: np.ndarray  # (N, H, W, 3) float32 G(x)
    heatmap: np.ndarray  # (N, H, W) float32 mean_c |x - G(x)| (smoothed if the config says so)
    loss_r: np.ndarray  # (N,) final mean|x - G(x)|
    loss_c: np.ndarray  # (N,) final mean|f(G(x)) - C|
    diverged: np.ndarray  # (N,) bool: non-finite loss or reconstruction

    @staticmethod
    def concatenate(parts: list["FitResult"]) -> "FitResult":
        return FitResult(*(np.concatenate([getattr(p, f.name) for p in parts])
                           for f in dataclasses.fields(FitResult)))


def resolve_formulation(name: str, backend: str | None = None) -> str:
    if name == "auto":
        return AUTO_FORMULATION.get(backend or jax.default_backend(), "vmap_matmul")
    if name not in FORMULATIONS:
        raise AnoUnetError(f"unknown formulation {name!r}; use 'auto' or one of {FORMULATIONS}")
    return name


class Engine:
    """Fits per-image U-Nets to chunks of images; see the module docstring.

    unet_cfg, fit_cfg: UNetConfig, FitConfig. fnet: the frozen feature network. center: C, (D,).
    devices: the devices to shard the image axis over (default: all local devices; vmap formulations
    only). compute_dtype: jnp.bfloat16 runs the U-Net's convs in bfloat16 on accelerators; parameters,
    optimizer state, normalization statistics and losses stay float32.
    """

    def __init__(self, unet_cfg, fit_cfg, fnet: FrozenFNet, center, *, formulation: str = "auto",
                 chunk_size: int | None = None, steps_per_call: int = 1, devices=None,
                 compute_dtype=jnp.float32):
        self.fit_cfg = fit_cfg
        self.fnet = fnet
        self.center = jnp.asarray(center, jnp.float32)
        self.formulation = resolve_formulation(formulation)
        self.steps_per_call = max(1, int(steps_per_call))
        if fit_cfg.steps % self.steps_per_call:
            raise AnoUnetError(f"steps ({fit_cfg.steps}) must be a multiple of steps_per_call "
                               f"({self.steps_per_call})")
        conv_impl = "matmul" if self.formulation == "vmap_matmul" else "lax"
        self.unet = unet_from_config(unet_cfg, conv_impl=conv_impl, dtype=compute_dtype)
        self.tx = make_optimizer(fit_cfg, unet_cfg)
        devices = list(devices) if devices is not None else jax.local_devices()
        if self.formulation not in ("vmap_matmul", "vmap_conv"):
            devices = devices[:1]
        self.mesh = Mesh(np.array(devices), ("images",))
        chunk = chunk_size or fit_cfg.chunk_size
        self.chunk_size = math.ceil(chunk / len(devices)) * len(devices)  # divisible over devices
        self._fns = {}

    # ---- per-image maths (unbatched: one image, one parameter set) ----
    def _loss(self, params, x, fnet_vars, center):
        recon = self.unet.apply({"params": params}, x[None])
        l_r = jnp.mean(jnp.abs(x[None] - recon))
        feat = self.fnet.apply(fnet_vars, recon)[0]
        l_c = jnp.mean(jnp.abs(feat - center))
        return l_r + self.fit_cfg.beta * l_c, (recon[0], l_r, l_c)

    def _init_one(self, key, x):
        params = init_unet_params(self.unet, key, x.shape)
        return params, self.tx.init(params)

    def _step_one(self, params, opt_state, x, fnet_vars, center):
        grads = jax.grad(lambda p: self._loss(p, x, fnet_vars, center)[0])(params)
        updates, opt_state = self.tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def _eval_one(self, params, x, fnet_vars, center):
        _, (recon, l_r, l_c) = self._loss(params, x, fnet_vars, center)
        return recon, l_r, l_c

    # ---- batched over the image axis ----
    def _batched(self, fn, n_batched):
        """fn over a leading image axis of its first n_batched arguments (the rest are shared)."""
        if self.formulation in ("vmap_matmul", "vmap_conv"):
            return jax.vmap(fn, in_axes=(0,) * n_batched + (None,) * 2)

        def unrolled(*args):
            batched, shared = args[:n_batched], args[n_batched:]
            n = jax.tree.leaves(batched[0])[0].shape[0]
            outs = [fn(*jax.tree.map(lambda a: a[i], batched), *shared) for i in range(n)]
            return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

        return unrolled

    def _cache_key(self):
        return (self.unet, dataclasses.replace(self.fit_cfg, smoothing_sigma=0.0, chunk_size=0),
                self.formulation, self.steps_per_call, self.fnet.apply,
                tuple(d.id for d in self.mesh.devices.flat))

    def _compiled(self):
        """The jitted init/steps/evaluate, shared by every Engine with the same configuration (so
        that tests and repeated jobs in one process compile once)."""
        if not self._fns:
            key = self._cache_key()
            if key not in _COMPILED:
                _COMPILED[key] = self._build()
            self._fns = _COMPILED[key]
        return self._fns

    def _build(self):
        shard = NamedSharding(self.mesh, P("images"))
        repl = NamedSharding(self.mesh, P())
        init = jax.vmap(self._init_one)
        step1 = self._batched(self._step_one, 3)

        def steps(params, opt_state, x, fnet_vars, center):
            for _ in range(self.steps_per_call):
                params, opt_state = step1(params, opt_state, x, fnet_vars, center)
            return params, opt_state

        evaluate = self._batched(self._eval_one, 2)
        return dict(
            init=jax.jit(init, out_shardings=shard),
            steps=jax.jit(steps, in_shardings=(shard, shard, shard, repl, repl),
                          out_shardings=(shard, shard), donate_argnums=(0, 1)),
            evaluate=jax.jit(evaluate, in_shardings=(shard, shard, repl, repl), out_shardings=shard),
            shard=shard, repl=repl,
        )

    def _fit_batch(self, x, keys):
        """Fit a batch of images (the image axis is sharded); returns device arrays."""
        fns = self._compiled()
        x = jax.device_put(x, fns["shard"])
        fnet_vars = jax.device_put(self.fnet.variables, fns["repl"])
        center = jax.device_put(self.center, fns["repl"])
        params, opt_state = fns["init"](jax.device_put(keys, fns["shard"]), x)
        for _ in range(self.fit_cfg.steps // self.steps_per_call):
            params, opt_state = fns["steps"](params, opt_state, x, fnet_vars, center)
        return fns["evaluate"](params, x, fnet_vars, center)

    def fit_chunk(self, images: np.ndarray, indices: np.ndarray, seed: int = 0) -> FitResult:
        """Fit up to chunk_size images; `indices` are their global positions (they pick the PRNG keys)."""
        images = np.asarray(images, np.float32)
        n = len(images)
        if n > self.chunk_size:
            raise AnoUnetError(f"chunk of {n} images exceeds chunk_size {self.chunk_size}")
        base = jax.random.PRNGKey(seed)
        keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(indices, jnp.uint32))
        if self.formulation == "loop":
            outs = [self._fit_batch(images[i:i + 1], keys[i:i + 1]) for i in range(n)]
            recon, l_r, l_c = (np.concatenate([np.asarray(o[k]) for o in outs]) for k in range(3))
        else:
            pad = self.chunk_size - n  # fixed shapes: one compilation for every chunk
            if pad:
                images_p = np.concatenate([images, np.zeros((pad, *images.shape[1:]), np.float32)])
                keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], pad, 0)])
            else:
                images_p = images
            recon, l_r, l_c = (np.asarray(a)[:n] for a in self._fit_batch(images_p, keys))
        return self._result(images, recon, l_r, l_c)

    def _result(self, images, recon, l_r, l_c) -> FitResult:
        from anounet_jax.maps import residual_map, smooth

        recon = recon.astype(np.float32)
        diverged = ~(np.isfinite(l_r) & np.isfinite(l_c) & np.isfinite(recon).all((1, 2, 3)))
        heat = residual_map(images, recon)
        if self.fit_cfg.smoothing_sigma > 0:
            heat = smooth(heat, self.fit_cfg.smoothing_sigma)
        return FitResult(recon, heat.astype(np.float32), l_r.astype(np.float32),
                         l_c.astype(np.float32), diverged)

    def iter_fit(self, chunks: Iterable[tuple[np.ndarray, np.ndarray]], seed: int = 0
                 ) -> Iterator[tuple[np.ndarray, FitResult]]:
        """Stream (indices, images) chunks of any size; yields (indices, result) per chunk_size piece."""
        for indices, images in chunks:
            for s in range(0, len(images), self.chunk_size):
                idx = np.asarray(indices[s:s + self.chunk_size])
                yield idx, self.fit_chunk(images[s:s + self.chunk_size], idx, seed)

    def fit(self, images: np.ndarray, seed: int = 0, progress: bool = False, desc: str = "Ano-Unet"
            ) -> FitResult:
        """Fit every image (any number), streamed through fixed-size chunks."""
        from tqdm.auto import tqdm

        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise AnoUnetError(f"images must be (N, H, W, 3), got {images.shape}")
        parts = []
        with tqdm(total=len(images), desc=desc, unit="img", disable=not progress) as bar:
            for _, res in self.iter_fit([(np.arange(len(images)), images)], seed):
                parts.append(res)
                bar.update(len(res.loss_r))
        return FitResult.concatenate(parts)

"""Warm starts for the per-image fits: U-Net parameters trained once on the normal training images.

Every test image's fit normally starts from random U-Net parameters and needs fit.steps steps. Two
starts, both trained on the normal images with the per-image objective
L_i(theta) = mean|x_i - G_theta(x_i)| + w * mean|f(G_theta(x_i)) - C|:

- "shared" (`train_start`): min_theta mean_i L_i(theta), one U-Net that already reconstructs normal
  texture;
- "reptile" (`train_reptile_start`, first-order meta-learning, Nichol et al. 2018): the start from which
  K steps of each image's own fit do well. Outer loop over batches of normal images; inner loop = K
  steps of the per-image fit (the fit's optimizer and learning rate) from the current start, one copy
  per image; outer update theta += eps * mean_i(phi_i - theta), eps annealed linearly to 0.

Each image then fine-tunes its own copy (`Engine(..., start_params=...)`) for fewer steps. The risk
(issue 17): a start that reconstructs everything also reproduces the defect, so the gain is measured
with heatmap quality, not loss (benchmarks/warm_start.py). Each image is passed through the U-Net on
its own (vmap, batch-1 BatchNorm statistics), as in the per-image fits, so the start's normalization
matches what the fine-tuning sees. The spatial term (fit.spatial_beta) is left out of both.

With fit.start = "warm" the start is part of the f-Net stage (`with_warm_start`, the preset's `start`
section says how it is trained): trained once per f-Net checkpoint by `anounet train-fnet` and stored
in it (checkpoint.py), trained in-process by `anounet demo` and `anounet evaluate`; every fit then
begins there (`start_params_for`, read by `Engine.for_trained`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from anounet_jax.engine.steps import make_optimizer
from anounet_jax.errors import AnoUnetError
from anounet_jax.models.unet import init_unet_params, unet_from_config

METHODS = ("shared", "reptile")
START_CHOICES = ("cold", "warm")  # FitConfig.start


@dataclasses.dataclass
class WarmStart:
    """A trained start as a checkpoint stores it: the U-Net parameters (numpy tree) and how they were
    made (method, steps: outer steps for "reptile", inner_steps: its K; 0 for "shared")."""

    params: dict
    method: str
    steps: int
    inner_steps: int = 0

    def describe(self) -> dict:
        return {"method": self.method, "steps": int(self.steps), "inner_steps": int(self.inner_steps)}


def _weight(preset, trained) -> jnp.ndarray:
    """L_C's weight in the preset's units (fit.beta / the feature scale for lc_scale 'normal')."""
    scale = 1.0
    if preset.fit.lc_scale == "normal":
        if trained.feature_scale is None:
            raise AnoUnetError("fit.lc_scale 'normal' needs the f-Net's feature scale")
        scale = trained.feature_scale
    return jnp.float32(preset.fit.beta / scale)


def _check_images(images, steps) -> np.ndarray:
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or len(images) < 1 or steps < 1:
        raise AnoUnetError(f"a warm start needs normal images (N, H, W, 3) and steps >= 1 (got "
                           f"{images.shape}, {steps})")
    return images


def train_start(preset, trained, images: np.ndarray, steps: int = 300, batch_size: int = 16,
                lr: float = 1e-3, seed: int = 0, progress: bool = False) -> dict:
    """U-Net parameters (one set) trained on `images` (the normal training images) with the preset's
    per-image objective (L_R + beta L_C in the preset's units; the spatial term is left out).
    trained: the f-Net stage (`fnet.train.TrainedFNet`)."""
    images = _check_images(images, steps)
    weight = _weight(preset, trained)
    unet = unet_from_config(preset.unet, conv_impl="lax")
    fnet_apply, fnet_vars = trained.fnet.apply, trained.fnet.variables
    center = jnp.asarray(trained.center, jnp.float32)
    tx = make_optimizer("adam", lr, 0.0, preset.unet.norm == "batch")
    params = init_unet_params(unet, jax.random.PRNGKey(seed), images.shape[1:])
    opt_state = tx.init(params)

    def loss_fn(p, x):
        recon = jax.vmap(lambda xi: unet.apply({"params": p}, xi[None])[0])(x)
        loss_r = jnp.mean(jnp.abs(x - recon), axis=(1, 2, 3))
        if preset.fit.beta == 0:  # no L_C: the f-Net is not run
            return jnp.mean(loss_r)
        loss_c = jnp.mean(jnp.abs(fnet_apply(fnet_vars, recon) - center), axis=-1)
        return jnp.mean(loss_r + weight * loss_c)

    @jax.jit
    def step(p, opt_state, x):
        loss, grads = jax.value_and_grad(loss_fn)(p, x)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    bs = min(int(batch_size), len(images))
    for _ in tqdm(range(int(steps)), desc="warm start", unit="step", disable=not progress):
        params, opt_state, loss = step(params, opt_state, jnp.asarray(images[rng.choice(len(images), bs, replace=False)]))
    if not np.isfinite(float(loss)):
        raise AnoUnetError("the warm start's training diverged (non-finite loss); lower its learning rate")
    return jax.device_get(params)


def train_reptile_start(preset, trained, images: np.ndarray, steps: int = 100, inner_steps: int = 10,
                        batch_size: int = 8, outer_lr: float = 1.0, seed: int = 0,
                        progress: bool = False) -> dict:
    """U-Net parameters meta-learned with first-order Reptile on `images` (the normal training images).

    steps: outer iterations; each draws batch_size images, gives every image its own copy of theta and a
    fresh optimizer state (the preset's fit optimizer and learning rate, as `Engine(start_params=...)`
    fits start), runs inner_steps steps of its own per-image objective, then moves
    theta += eps_t * mean_i(phi_i - theta), eps_t = outer_lr * (1 - t / steps). An image whose inner
    fit diverges (non-finite parameters) is left out of the mean.
    Own jitted code (a vmap over images, the engine's "vmap_matmul" convolutions, the batch split over
    the local devices when it divides evenly), not the engine's compiled programs."""
    images = _check_images(images, steps)
    if inner_steps < 1 or batch_size < 1 or not outer_lr > 0:
        raise AnoUnetError(f"Reptile needs inner_steps >= 1, batch_size >= 1, outer_lr > 0 (got "
                           f"{inner_steps}, {batch_size}, {outer_lr})")
    weight = _weight(preset, trained)
    unet = unet_from_config(preset.unet, conv_impl="matmul")  # batched kernels: matmuls, not grouped convs
    fnet_apply, fnet_vars = trained.fnet.apply, trained.fnet.variables
    center = jnp.asarray(trained.center, jnp.float32)
    f = preset.fit
    tx = make_optimizer(f.optimizer, f.lr, f.momentum, preset.unet.norm == "batch")

    def loss_one(p, xi):  # one image's objective, batch-1 BatchNorm statistics as in the engine
        recon = unet.apply({"params": p}, xi[None])
        loss_r = jnp.mean(jnp.abs(xi[None] - recon))
        if preset.fit.beta == 0:  # no L_C: the f-Net is not run
            return loss_r
        loss_c = jnp.mean(jnp.abs(fnet_apply(fnet_vars, recon) - center))
        return loss_r + weight * loss_c

    # The batch's images are split over the local devices (as the engine splits its chunks): every
    # per-image copy and its optimizer state live with their image; theta is replicated. The inner fits
    # need no communication; the outer mean is taken on one device after a plain copy, never by an
    # XLA collective (XLA:CPU aborts the process when a starved device thread misses an all-reduce
    # rendezvous for 40 s, which a busy machine can cause).
    devices = jax.local_devices()
    bs = min(int(batch_size), len(images))
    if bs % len(devices):
        devices = devices[:1]
    mesh = Mesh(np.array(devices), ("images",))
    by_image, replicated = NamedSharding(mesh, P("images")), NamedSharding(mesh, P())

    def split(tree):
        return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, by_image), tree)

    @jax.jit
    def begin(theta, x):
        params = split(jax.tree.map(lambda a: jnp.broadcast_to(a, (x.shape[0], *a.shape)), theta))
        return params, split(jax.vmap(tx.init)(params))

    @jax.jit
    def inner_step(params, opt_state, x):
        grads = jax.vmap(jax.grad(loss_one))(params, x)
        updates, opt_state = jax.vmap(tx.update)(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    @jax.jit
    def outer(theta, params, eps):
        ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a), axis=tuple(range(1, a.ndim)))
                                for a in jax.tree.leaves(params)]), axis=0)  # (B,)
        n_ok = jnp.maximum(jnp.sum(ok), 1)

        def move(t, p):
            delta = jnp.where(ok.reshape((-1,) + (1,) * t.ndim), p - t[None], 0.0)
            return t + eps * jnp.sum(delta, axis=0) / n_ok

        return jax.tree.map(move, theta, params), jnp.sum(ok)

    theta = jax.device_put(init_unet_params(unet, jax.random.PRNGKey(seed), images.shape[1:]), replicated)
    rng = np.random.default_rng(seed)
    n_ok = bs
    for t in tqdm(range(int(steps)), desc="reptile start", unit="step", disable=not progress):
        x = jax.device_put(images[rng.choice(len(images), bs, replace=False)], by_image)
        params, opt_state = begin(theta, x)
        for _ in range(int(inner_steps)):
            params, opt_state = inner_step(params, opt_state, x)
        first = jax.device_put((theta, params), devices[0])  # copies, not a collective
        theta, n_ok = outer(*first, jnp.float32(outer_lr * (1.0 - t / steps)))
        theta = jax.device_put(theta, replicated)
    if int(n_ok) == 0 or not all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(theta)):
        raise AnoUnetError("the Reptile start's inner fits diverged (non-finite parameters); lower the "
                           "fit's learning rate or inner_steps")
    return jax.device_get(theta)


def make_start(preset, trained, images: np.ndarray, seed: int = 0, progress: bool = False) -> WarmStart:
    """A `WarmStart` trained on `images` (the normal training images, or tiles of them) by the recipe of
    `preset.start` (method "shared": `train_start`; "reptile": `train_reptile_start`)."""
    cfg = preset.start
    if cfg.method == "shared":
        params = train_start(preset, trained, images, steps=cfg.steps, batch_size=cfg.batch_size, seed=seed,
                             progress=progress)
        return WarmStart(params, "shared", int(cfg.steps))
    if cfg.method == "reptile":
        params = train_reptile_start(preset, trained, images, steps=cfg.steps, inner_steps=cfg.inner_steps,
                                     batch_size=cfg.batch_size, seed=seed, progress=progress)
        return WarmStart(params, "reptile", int(cfg.steps), int(cfg.inner_steps))
    raise AnoUnetError(f"unknown warm-start method {cfg.method!r}; use one of {list(METHODS)}")


def check_start(preset) -> None:
    """AnoUnetError for an unknown fit.start or warm-start recipe (before anything is trained)."""
    if getattr(preset.fit, "start", "cold") not in START_CHOICES:
        raise AnoUnetError(f"unknown fit.start {preset.fit.start!r}; use one of {list(START_CHOICES)}")
    cfg = preset.start
    if cfg.method not in METHODS:
        raise AnoUnetError(f"unknown warm-start method {cfg.method!r}; use one of {list(METHODS)}")
    if min(cfg.steps, cfg.inner_steps, cfg.batch_size) < 1:
        raise AnoUnetError(f"the warm start needs steps, inner_steps and batch_size >= 1 (got {cfg.steps}, "
                           f"{cfg.inner_steps}, {cfg.batch_size})")


def with_warm_start(preset, trained, images: np.ndarray, seed: int = 0, progress: bool = False, log=None):
    """`trained` (the f-Net stage) with the warm start its fits need: unchanged for fit.start "cold" or
    when it already carries one (a restored checkpoint), else with a start trained on `images` (the
    images the f-Net and C came from) by `preset.start`. The one place every job builds a start."""
    check_start(preset)
    if preset.fit.start != "warm" or getattr(trained, "warm_start", None) is not None:
        return trained
    cfg = preset.start
    if log is not None:
        log(f"warm start ({cfg.method}, {cfg.steps} steps"
            + (f" of {cfg.inner_steps} inner steps" if cfg.method == "reptile" else "")
            + f") on {len(images)} normal images")
    return dataclasses.replace(trained, warm_start=make_start(preset, trained, images, seed=seed, progress=progress))


def check_start_shape(unet_cfg, image_size: int, params) -> None:
    """AnoUnetError unless `params` has exactly the tree, shapes and dtypes of `unet_cfg`'s U-Net."""
    unet = unet_from_config(unet_cfg, conv_impl="lax")
    want = jax.eval_shape(lambda: init_unet_params(unet, jax.random.PRNGKey(0), (image_size, image_size, 3)))
    want_flat = {jax.tree_util.keystr(k): (tuple(v.shape), np.dtype(v.dtype))
                 for k, v in jax.tree_util.tree_flatten_with_path(want)[0]}
    try:
        got_flat = {jax.tree_util.keystr(k): (tuple(np.shape(v)), np.asarray(v).dtype)
                    for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    except Exception:  # not a tree of arrays
        got_flat = {}
    if got_flat != want_flat:
        diff = sorted(set(got_flat.items()) ^ set(want_flat.items()))[:1]
        raise AnoUnetError(f"the checkpoint's warm start does not fit the preset's U-Net (width "
                           f"{unet_cfg.width}, depth {unet_cfg.depth}, norm {unet_cfg.norm}; first difference: "
                           f"{diff[0][0] if diff else '?'}); rebuild it with `anounet train-fnet ... "
                           f"--set fit.start=warm` and this preset's unet settings, or use fit.start=cold")


def start_params_for(preset, trained):
    """The start every fit of `preset` begins from: None for fit.start "cold" (random, per image), the
    f-Net stage's warm start for "warm" (`trained.warm_start`: from `with_warm_start`, or restored
    by checkpoint.load_checkpoint). A clear AnoUnetError when the checkpoint has none or it does not fit the U-Net."""
    start = getattr(preset.fit, "start", "cold")
    if start == "cold":
        return None
    if start != "warm":
        raise AnoUnetError(f"unknown fit.start {start!r}; use one of {list(START_CHOICES)}")
    ws = getattr(trained, "warm_start", None)
    if ws is None:
        raise AnoUnetError("fit.start=warm needs a warm start stored with the f-Net, and this checkpoint has "
                           "none; rebuild it with `anounet train-fnet ... --set fit.start=warm`, or score "
                           "with `--set fit.start=cold --set fit.steps=60`")
    check_start_shape(preset.unet, preset.image_size, ws.params)
    return ws.params

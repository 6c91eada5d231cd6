"""The per-image fit's maths as pure module-level functions, and their compiled, sharded programs.

    L_i = L_R + w * L_C,   L_R = mean|x_i - G_i(x_i)|,   L_C = mean|f(G_i(x_i)) - C|,   w = beta / scale

(+ optional local f-Net terms: the spatial term against a memory of normal patch features, and the
flaw term from the f-Net's flaw head, fnet/flaw_head.py.)

`target = {"weight": w}` is a run-time argument (scale is 1 for the original's raw L_C, or the typical
L_C of a normal image, FitConfig.lc_scale), and so is C, given per image (`center`, (N, D): the one
global C on every row, or a tile position's own center, data/tiling.py): a beta sweep, a new f-Net or
new centers reuse the compiled programs.

Every image has its own U-Net parameters and optimizer state (a leading image axis on every leaf).
The gradient of the sum of per-image losses with respect to image i's parameters is exactly dL_i
(nothing is shared), so an image that diverges cannot change another. Only the U-Nets are per image:
the frozen f-Net sees the batch of reconstructions at once (inference mode: samples never interact).

`StepSpec` holds everything that enters the compiled programs and nothing else (not the number of
steps, the chunk size or the map smoothing), so equal specs share one compilation. `programs(spec,
mesh)` compiles once per spec and mesh: the image axis is split over the mesh's devices with
`shard_map`, so every device runs the same executable on its own images (compiled once, not once per
device). Within a device, images are vmapped ("vmap") or unrolled as batch-1 U-Nets ("unroll").
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from anounet_jax.errors import AnoUnetError
from anounet_jax.fnet.flaw_head import flaw_loss
from anounet_jax.models.unet import init_unet_params


@dataclasses.dataclass(frozen=True)
class StepSpec:
    unet: nn.Module  # the per-image U-Net (its conv arithmetic and dtype included)
    fnet_apply: Callable[[Any, jax.Array], jax.Array]  # the frozen f-Net (fnet.model.inference_apply)
    optimizer: str  # "sgd" | "adam"
    lr: float
    momentum: float
    per_image: str  # "vmap" | "unroll"
    steps_per_call: int = 1
    # the f-Net's local feature maps (fnet.local.local_feature_fn), for the spatial term; None: no such term
    local_apply: Callable[[Any, jax.Array], jax.Array] | None = None
    # the f-Net's flaw head (fnet.flaw_head.flaw_logits_fn), for the flaw term; None: no such term
    flaw_apply: Callable[[Any, Any, jax.Array], jax.Array] | None = None
    # False when beta is 0: L_C leaves the objective, so the training steps never run the f-Net and
    # its backward pass (L_C is still reported by `evaluate`)
    global_term: bool = True


def make_optimizer(optimizer: str, lr: float, momentum: float, batch_norm: bool) -> optax.GradientTransformation:
    """The per-image optimizer. With BatchNorm, conv biases (kept for parity with the original's
    parameter count) are frozen: the normalization cancels them, so their gradient is pure rounding
    noise, which Adam would rescale into full-size steps that differ between formulations."""
    if optimizer == "sgd":
        tx = optax.sgd(lr, momentum=momentum or None)
    elif optimizer == "adam":
        tx = optax.adam(lr)
    else:
        raise AnoUnetError(f"unknown optimizer {optimizer!r}; use 'sgd' or 'adam'")
    if not batch_norm:
        return tx

    def labels(params):
        def label(path, _):
            keys = [getattr(k, "key", "") for k in path]
            dead = keys[-1] == "bias" and any(str(k).startswith("conv") for k in keys[-2:-1])
            return "frozen" if dead else "train"

        return jax.tree_util.tree_map_with_path(label, params)

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def _tx(spec: StepSpec) -> optax.GradientTransformation:
    return make_optimizer(spec.optimizer, spec.lr, spec.momentum, spec.unet.norm == "batch")


def _over_images(spec: StepSpec, fn):
    """fn over the leading image axis of all its arguments: vmapped, or unrolled into batch-1 calls."""
    if spec.per_image == "vmap":
        return jax.vmap(fn)

    def unrolled(*args):
        n = jax.tree.leaves(args[0])[0].shape[0]
        outs = [fn(*jax.tree.map(lambda a: a[i], args)) for i in range(n)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    return unrolled


def losses(spec: StepSpec, params, x, center, fnet_vars, target):
    """Per-image (L, (recon, L_R, L_C)), each (N,) (recon (N, H, W, 3)); L_C in the f-Net's raw units,
    against each image's own center row (center (N, D))."""
    recon = _over_images(spec, lambda p, xi: spec.unet.apply({"params": p}, xi[None])[0])(params, x)
    loss_r = jnp.mean(jnp.abs(x - recon), axis=(1, 2, 3))
    feat = spec.fnet_apply(fnet_vars, recon.astype(jnp.float32))
    loss_c = jnp.mean(jnp.abs(feat - center), axis=-1)
    total = loss_r + target["weight"] * loss_c if spec.global_term else loss_r
    if spec.local_apply is not None:
        total = total + target["spatial_weight"] * spatial_loss(spec, recon, fnet_vars, target)
    if spec.flaw_apply is not None:
        logits = spec.flaw_apply(fnet_vars, target["flaw_head"], recon.astype(jnp.float32))
        total = total + target["flaw_weight"] * flaw_loss(logits)
    return total, (recon, loss_r, loss_c)


def spatial_loss(spec: StepSpec, recon, fnet_vars, target):
    """Per image (N,): the mean over positions of the squared distance from G(x)'s local f-Net feature
    to its nearest neighbour in the memory of normal patch features (target["memory"] (M, C)).
    Squared: the pull on a patch grows with its distance (a plain distance pulls every patch with the
    same force), so the gradient lands where G(x) looks unlike any normal patch: on the defect."""
    lf = spec.local_apply(fnet_vars, recon.astype(jnp.float32))
    n, h, w, c = lf.shape
    q = lf.reshape(n * h * w, c)
    mem = target["memory"]
    d2 = (jnp.sum(q * q, 1, keepdims=True) - 2.0 * jnp.dot(q, mem.T, precision=jax.lax.Precision.HIGHEST)
          + jnp.sum(mem * mem, 1)[None, :])
    d2 = jnp.maximum(jnp.min(d2, axis=1), 0.0)  # (the expansion can cancel below 0)
    return jnp.mean(d2.reshape(n, h * w), axis=1)


def init(spec: StepSpec, keys, x):
    """Fresh U-Net parameters and optimizer state per image, from its own key."""
    tx = _tx(spec)

    def one(key, xi):
        params = init_unet_params(spec.unet, key, xi.shape)
        return params, tx.init(params)

    return jax.vmap(one)(keys, x)


def init_from(spec: StepSpec, keys, x, start):
    """Every image starts from the same `start` parameters (a warm start, engine/warm_start.py), each
    with its own copy and a fresh optimizer state."""
    tx = _tx(spec)
    return jax.vmap(lambda key, xi: (start, tx.init(start)))(keys, x)


def train_steps(spec: StepSpec, params, opt_state, x, center, fnet_vars, target):
    """spec.steps_per_call optimizer steps of every image's own fit."""
    tx = _tx(spec)
    for _ in range(spec.steps_per_call):
        # d(sum_j L_j)/d params_i = dL_i/d params_i, and the cotangent of a sum is 1 whatever the
        # values: a NaN loss cannot reach another image
        grads = jax.grad(lambda p: jnp.sum(losses(spec, p, x, center, fnet_vars, target)[0]))(params)
        updates, opt_state = jax.vmap(tx.update)(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    return params, opt_state


def evaluate(spec: StepSpec, params, x, center, fnet_vars, target):
    """(recon, L_R, L_C) of the current parameters."""
    return losses(spec, params, x, center, fnet_vars, target)[1]


@functools.lru_cache(maxsize=64)
def programs(spec: StepSpec, mesh: Mesh) -> dict:
    """The jitted init / train_steps / evaluate for `spec`, the image axis split over `mesh`
    (cached per process: the cache holds specs and meshes, never an Engine or its buffers)."""
    img, rep = P("images"), P()

    def per_device(fn, in_specs, out_specs):
        return jax.shard_map(functools.partial(fn, spec), mesh=mesh, in_specs=in_specs,
                             out_specs=out_specs, check_vma=False)

    return dict(
        init=jax.jit(per_device(init, (img, img), (img, img))),
        init_from=jax.jit(per_device(init_from, (img, img, rep), (img, img))),
        steps=jax.jit(per_device(train_steps, (img, img, img, img, rep, rep), (img, img)), donate_argnums=(0, 1)),
        evaluate=jax.jit(per_device(evaluate, (img, img, img, rep, rep), (img, img, img))),
        images=NamedSharding(mesh, img), replicated=NamedSharding(mesh, rep),
    )

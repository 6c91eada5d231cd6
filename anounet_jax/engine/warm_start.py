"""A warm start for the per-image fits: one U-Net trained once on the normal training images.

Every test image's fit normally starts from random U-Net parameters and needs fit.steps steps. A start
trained on the normal images with the same objective, averaged over them,

    min_theta  mean_i [ mean|x_i - G_theta(x_i)| + w * mean|f(G_theta(x_i)) - C| ],

already reconstructs normal texture; each image then fine-tunes its own copy (`Engine(...,
start_params=...)`) for fewer steps. The risk (issue 17): a start that reconstructs everything also
reproduces the defect, so the gain is measured with heatmap quality, not loss (benchmarks/warm_start.py).
Each image is passed through the shared U-Net on its own (vmap, batch-1 BatchNorm statistics), as in
the per-image fits, so the start's normalization matches what the fine-tuning sees.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from anounet_jax.engine.steps import make_optimizer
from anounet_jax.errors import AnoUnetError
from anounet_jax.models.unet import init_unet_params, unet_from_config


def train_start(preset, trained, images: np.ndarray, steps: int = 300, batch_size: int = 16,
                lr: float = 1e-3, seed: int = 0, progress: bool = False) -> dict:
    """U-Net parameters (one set) trained on `images` (the normal training images) with the preset's
    per-image objective (L_R + beta L_C in the preset's units; the spatial term is left out).
    trained: the f-Net stage (`fnet.train.TrainedFNet`)."""
    images = np.asarray(images, np.float32)
    if len(images) < 1 or steps < 1:
        raise AnoUnetError(f"a warm start needs normal images and steps >= 1 (got {len(images)}, {steps})")
    scale = 1.0
    if preset.fit.lc_scale == "normal":
        if trained.feature_scale is None:
            raise AnoUnetError("fit.lc_scale 'normal' needs the f-Net's feature scale")
        scale = trained.feature_scale
    weight = jnp.float32(preset.fit.beta / scale)
    unet = unet_from_config(preset.unet, conv_impl="lax")
    fnet_apply, fnet_vars = trained.fnet.apply, trained.fnet.variables
    center = jnp.asarray(trained.center, jnp.float32)
    tx = make_optimizer("adam", lr, 0.0, preset.unet.norm == "batch")
    params = init_unet_params(unet, jax.random.PRNGKey(seed), images.shape[1:])
    opt_state = tx.init(params)

    def loss_fn(p, x):
        recon = jax.vmap(lambda xi: unet.apply({"params": p}, xi[None])[0])(x)
        loss_r = jnp.mean(jnp.abs(x - recon), axis=(1, 2, 3))
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

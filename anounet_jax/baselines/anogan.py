"""Baseline 3: AnoGAN (Schlegl et al. 2017).

1. A small DCGAN is trained on the normal images: generator G: z -> image (sigmoid output), discriminator
   D with an intermediate feature layer f_D (the flattened last conv block); non-saturating GAN loss,
   Adam(lr, b1=0.5).
2. For each test image x a latent search finds the z whose G(z) is closest to x:

       L(z) = (1 - lambda) * sum |x - G(z)| + lambda * sum |f_D(x) - f_D(G(z))|       (lambda = 0.1)

   minimized by Adam on z alone (G and D frozen) for `search_steps` steps, z_0 ~ N(0, I).
   heatmap = mean_c |x - G(z*)|        score = L(z*)

The searches of many images run at once, like the Ano-Unet engine: every image has its own z, its own
Adam state and its own PRNG key (fold_in(seed, global index), so results do not depend on chunking),
and its own gradient (a vmap over a one-image loss; G and D are shared, so the convolutions stay
ordinary batched convolutions). Images go through fixed-size chunks (the last one padded: one
compilation) and a Python loop of jitted steps with donated buffers (no lax.scan: see DESIGN.md).
G and D normalize per sample (GroupNorm), so no image ever influences another, and an image that
diverges (NaN) is flagged in its own score only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from anounet_jax.baselines.configs import AnoGANConfig
from anounet_jax.batching import pad_rows
from anounet_jax.engine.batching import image_keys, pad_keys
from anounet_jax.training import run_epochs
from anounet_jax.baselines.common import (BaselineResult, ConvDecoder, ConvEncoder, check_images,
                                          init_params, reconstruction_result)
from anounet_jax.data.types import ImageSet
from anounet_jax.errors import AnoUnetError


class Discriminator(nn.Module):
    """x -> (logit (N,), f_D(x) (N, F)): f_D is the flattened last conv block."""

    width: int
    depth: int
    norm: str = "group"

    @nn.compact
    def __call__(self, x):
        feat = ConvEncoder(self.width, self.depth, None, self.norm, name="features")(x)
        return nn.Dense(1, name="logit")(feat)[:, 0], feat


@dataclasses.dataclass
class AnoGAN:
    """A trained DCGAN; `score_maps(images)` runs the batched latent search."""

    cfg: AnoGANConfig
    generator: ConvDecoder
    discriminator: Discriminator
    g_params: Any
    d_params: Any
    history: list[tuple[float, float]]  # (D loss, G loss) mean per epoch

    def __post_init__(self):
        self.tx = optax.adam(self.cfg.search_lr)
        self._fns = {}

    # ---- per-image maths (one image, one z) ----
    def _features(self, d_params, x):
        return self.discriminator.apply({"params": d_params}, x[None])[1][0]

    def _loss(self, z, x, fx, g_params, d_params):
        gz = self.generator.apply({"params": g_params}, z[None])[0]
        l_r = jnp.sum(jnp.abs(x - gz))
        l_d = jnp.sum(jnp.abs(fx - self._features(d_params, gz)))
        lam = self.cfg.lam
        return (1.0 - lam) * l_r + lam * l_d, gz

    def _init_one(self, key, x, d_params):
        z = jax.random.normal(key, (self.cfg.latent,), jnp.float32)
        return z, self.tx.init(z), self._features(d_params, x)

    def _step_one(self, z, opt_state, x, fx, g_params, d_params):
        grad = jax.grad(lambda z_: self._loss(z_, x, fx, g_params, d_params)[0])(z)
        updates, opt_state = self.tx.update(grad, opt_state, z)
        return optax.apply_updates(z, updates), opt_state

    def _eval_one(self, z, x, fx, g_params, d_params):
        loss, gz = self._loss(z, x, fx, g_params, d_params)
        return gz, loss

    # ---- batched over the image axis ----
    def _compiled(self):
        if self._fns:
            return self._fns
        step1 = jax.vmap(self._step_one, in_axes=(0, 0, 0, 0, None, None))
        spc = max(1, int(self.cfg.steps_per_call))

        def steps(z, opt_state, x, fx, g_params, d_params):
            for _ in range(spc):
                z, opt_state = step1(z, opt_state, x, fx, g_params, d_params)
            return z, opt_state

        self._fns = dict(
            init=jax.jit(jax.vmap(self._init_one, in_axes=(0, 0, None))),
            steps=jax.jit(steps, donate_argnums=(0, 1)),
            evaluate=jax.jit(jax.vmap(self._eval_one, in_axes=(0, 0, 0, None, None))),
            spc=spc,
        )
        return self._fns

    def search_chunk(self, images: np.ndarray, indices: np.ndarray, seed: int = 0,
                     chunk_size: int | None = None, steps: int | None = None) -> BaselineResult:
        """Latent search for up to chunk_size images; `indices` (global positions) pick the PRNG keys.

        For a fixed chunk_size an image's result is bitwise independent of the other images in its
        chunk and of its position there. Another chunk_size is another compiled program: equal up to
        float rounding, which the search amplifies with the number of steps (see the tests)."""
        chunk = int(chunk_size or self.cfg.chunk_size)
        images = np.asarray(images, np.float32)
        n = len(images)
        if n > chunk:
            raise AnoUnetError(f"chunk of {n} images exceeds chunk_size {chunk}")
        fns = self._compiled()
        # fixed shapes (padded chunks): one compilation for every chunk; keys as the engine's
        keys = pad_keys(image_keys(seed, indices), chunk)
        x = jnp.asarray(pad_rows(images, chunk))
        steps = self.cfg.search_steps if steps is None else int(steps)
        if steps % fns["spc"]:
            raise AnoUnetError(f"search_steps ({steps}) must be a multiple of steps_per_call ({fns['spc']})")
        z, opt_state, fx = fns["init"](keys, x, self.d_params)
        for _ in range(steps // fns["spc"]):
            z, opt_state = fns["steps"](z, opt_state, x, fx, self.g_params, self.d_params)
        recon, loss = fns["evaluate"](z, x, fx, self.g_params, self.d_params)
        return reconstruction_result(images, np.asarray(recon)[:n], np.asarray(loss)[:n])

    def score_maps(self, images, seed: int = 0, progress: bool = False,
                   chunk_size: int | None = None, steps: int | None = None) -> BaselineResult:
        """Latent search for every image (any number), streamed through fixed-size chunks.

        seed: z_0 of image i is drawn with fold_in(PRNGKey(seed), i). chunk_size, steps: override
        cfg.chunk_size, cfg.search_steps."""
        x = check_images(images, self.generator.image_hw)
        chunk = int(chunk_size or self.cfg.chunk_size)
        if chunk < 1:
            raise AnoUnetError(f"chunk_size must be >= 1, got {chunk}")
        steps = self.cfg.search_steps if steps is None else int(steps)
        if steps < 0 or steps % max(1, int(self.cfg.steps_per_call)):
            raise AnoUnetError(f"search steps ({steps}) must be a non-negative multiple of "
                               f"steps_per_call ({self.cfg.steps_per_call})")
        parts = []
        with tqdm(total=len(x), desc="AnoGAN search", unit="img", disable=not progress) as bar:
            for s in range(0, len(x), chunk):
                idx = np.arange(s, min(s + chunk, len(x)))
                parts.append(self.search_chunk(x[idx], idx, seed, chunk, steps))
                bar.update(len(idx))
        if not parts:
            h, w = self.generator.image_hw
            return BaselineResult(np.zeros((0, h, w), np.float32), np.zeros((0, h, w, 3), np.float32),
                                  np.zeros(0, np.float32))
        return BaselineResult.concatenate(parts)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """n generated images G(z), z ~ N(0, I)."""
        z = jax.random.normal(jax.random.PRNGKey(seed), (n, self.cfg.latent))
        return np.asarray(jax.jit(self.generator.apply)({"params": self.g_params}, z))


def _bce_logits(logits, label: float):
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, label)))


def train(normal: ImageSet, cfg: AnoGANConfig = AnoGANConfig(), seed: int = 0,
          progress: bool = False) -> AnoGAN:
    """Train the DCGAN on the normal images (one D step then one G step per minibatch)."""
    x_all = check_images(normal.images)
    n = len(x_all)
    if n == 0:
        raise AnoUnetError("AnoGAN: no training images")
    hw = tuple(x_all.shape[1:3])
    gen = ConvDecoder(cfg.width, cfg.depth, hw, cfg.norm)
    disc = Discriminator(cfg.width, cfg.depth, cfg.norm)
    g_params = init_params(gen, seed, jnp.zeros((1, cfg.latent)))
    d_params = init_params(disc, seed + 1, jnp.asarray(x_all[:1]))
    key = jax.random.PRNGKey(seed)
    tx = optax.adam(cfg.lr, b1=cfg.beta1)
    g_opt, d_opt = tx.init(g_params), tx.init(d_params)

    def step(g_params, d_params, g_opt, d_opt, key, x):
        kz1, kz2 = jax.random.split(key)
        z = jax.random.normal(kz1, (x.shape[0], cfg.latent))
        fake = gen.apply({"params": g_params}, z)

        def d_loss(dp):  # one pass over [real; fake] (D normalizes per sample, so nothing mixes)
            logits = disc.apply({"params": dp}, jnp.concatenate([x, fake]))[0]
            return _bce_logits(logits[:x.shape[0]], 1.0) + _bce_logits(logits[x.shape[0]:], 0.0)

        ld, gd = jax.value_and_grad(d_loss)(d_params)
        upd, d_opt = tx.update(gd, d_opt, d_params)
        d_params = optax.apply_updates(d_params, upd)

        def g_loss(gp):
            z2 = jax.random.normal(kz2, (x.shape[0], cfg.latent))
            return _bce_logits(disc.apply({"params": d_params}, gen.apply({"params": gp}, z2))[0], 1.0)

        lg, gg = jax.value_and_grad(g_loss)(g_params)
        upd, g_opt = tx.update(gg, g_opt, g_params)
        return optax.apply_updates(g_params, upd), d_params, g_opt, d_opt, ld, lg

    def train_step(state, key, x):
        *state, ld, lg = step(*state, key, x)
        return tuple(state), (ld, lg)

    (g_params, d_params, _, _), history = run_epochs(
        jax.jit(train_step, donate_argnums=(0,)), (g_params, d_params, g_opt, d_opt), (x_all,),
        batch_size=cfg.batch_size, epochs=cfg.epochs, seed=seed, desc="AnoGAN (DCGAN)", progress=progress,
        key=key)
    return AnoGAN(cfg, gen, disc, g_params, d_params, history)

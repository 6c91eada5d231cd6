"""The f-Net's flaw head: where a picture of normal texture looks locally wrong.

With `fnet.synthetic_flaws` the f-Net also learns, DRAEM-style, to find the damaged region of normal
images damaged by `fnet/irregularities.py` (a 1x1 conv on its stride-8 map, per-cell logits; trained
in `fnet/train.py`). Kept after training, it gives Ano-Unet's flaw term (fit.flaw_beta,
engine/steps.py): the mean over cells of -log(1 - p_flaw) of G(x), so each image's fit rewrites what
the head sees as a flaw (a smoothed patch, a turned one) toward texture the head calls normal, and the
heatmap |x - G(x)| shows it. The head reads the f-Net's own local features: an untrained f-Net's
features already reconstruct well, but do not see a missing detail (benchmarks/results/flaw_term_small.md).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from anounet_jax.batching import map_in_batches
from anounet_jax.fnet.local import layer_stride, upsample_to_image
from anounet_jax.fnet.model import build_fnet_module

LAYER = "stride8"  # the f-Net map the head reads (fnet/train.py trains it there)


@functools.lru_cache(maxsize=None)
def flaw_logits_fn(fnet_cfg, layer: str = LAYER) -> Callable[[Any, Any, jax.Array], jax.Array]:
    """fn(f-Net variables, head params, images (N, H, W, 3)) -> flaw logits (N, h, w) on the layer's
    grid, the f-Net in inference mode. One function per (config, layer) for the process: compiled
    programs are keyed on it (engine/steps.py StepSpec.flaw_apply)."""
    module = build_fnet_module(fnet_cfg)

    def fn(variables, head, images):
        _, maps = module.apply(variables, images, train=False, return_maps=True)
        m = maps[layer].astype(jnp.float32)
        return jnp.einsum("nhwc,c->nhw", m, head["kernel"].reshape(-1)) + head["bias"].reshape(())

    return fn


@dataclasses.dataclass
class FlawHead:
    """The trained head (`params`: "kernel" (1, 1, C, 1), "bias" (1,)) of the f-Net built from `fnet_cfg`."""

    params: dict
    fnet_cfg: Any  # FNetConfig
    layer: str = LAYER

    @property
    def apply(self) -> Callable:
        return flaw_logits_fn(self.fnet_cfg, self.layer)

    def logits(self, fnet_variables, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """float32 (N, h, w): the head's flaw logits for `images`."""
        fn = jax.jit(self.apply)
        head = jax.tree.map(jnp.asarray, self.params)
        return map_in_batches(lambda b: fn(fnet_variables, head, b), np.asarray(images, np.float32),
                              batch_size).astype(np.float32)

    def pixel_maps(self, fnet_variables, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """float32 (N, H, W): the logits resampled onto the pixels, between the cells'
        receptive-field centres (fnet/local.py `upsample_to_image`)."""
        images = np.asarray(images, np.float32)
        logits = self.logits(fnet_variables, images, batch_size)
        return np.asarray(upsample_to_image(logits, images.shape[1:3], layer_stride(self.layer)), np.float32)


def flaw_loss(logits: jax.Array) -> jax.Array:
    """Per image (N,): the mean over cells of -log(1 - sigmoid(logit)) = softplus(logit), the
    cross-entropy of "no flaw here": near 0 where the head sees normal texture, growing with its
    confidence in a flaw, so the gradient lands on what it flags."""
    return jnp.mean(jax.nn.softplus(logits), axis=(1, 2))

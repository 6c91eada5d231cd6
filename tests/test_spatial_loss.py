"""Ano-Unet's spatial feature term: G(x)'s local f-Net features against a memory of normal patches."""

import numpy as np
import pytest

from anounet_jax.config import TINY
from anounet_jax.engine.fit import Engine
from anounet_jax.errors import AnoUnetError
from anounet_jax.fnet.patch_memory import build_patch_memory
from tests.conftest import stripes, tiny_fit

SIZE = TINY.image_size


@pytest.fixture(scope="module")
def memory(tiny_trained):
    return build_patch_memory(tiny_trained.fnet, TINY.fnet, stripes(64), seed=0, coreset_fraction=1.0)


def test_memory_is_a_coreset_with_a_positive_unit(memory):
    assert memory.memory.ndim == 2 and len(memory.memory) > 10
    assert np.isfinite(memory.memory).all()
    assert memory.scale > 0 and np.isfinite(memory.scale)


def test_the_spatial_gradient_lands_on_the_defect(tiny_trained, memory):
    """d(spatial term)/d(G(x)) at G(x) = x with a red square planted in the stripes: the gradient is
    concentrated in and around the square, not spread over the background."""
    import jax
    import jax.numpy as jnp

    from anounet_jax.engine.steps import spatial_loss

    x = stripes(1, seed=5)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[10:20, 12:22] = True
    x[0][mask] = (0.9, 0.1, 0.1)
    eng = Engine(TINY.unet, tiny_fit(spatial_beta=1.0), tiny_trained.fnet, tiny_trained.center,
                 formulation="loop", patch_memory=memory)
    grad = jax.grad(lambda r: jnp.sum(spatial_loss(eng.spec, r, tiny_trained.fnet.variables, eng.target)))(
        jnp.asarray(x))
    g = np.abs(np.asarray(grad[0])).sum(-1)
    near = np.zeros_like(mask)
    near[6:24, 8:26] = True  # the square and its receptive-field border
    assert g[near].mean() > 2.5 * g[~near].mean()  # (3.2 measured)


def test_the_spatial_term_changes_the_fit_and_keeps_images_independent(tiny_trained, memory):
    x = stripes(4, seed=9)
    x[1, 8:16, 8:16] = 0.9
    fit = tiny_fit(steps=4, spatial_beta=1.0)
    kw = dict(formulation="loop", patch_memory=memory)
    with_term = Engine(TINY.unet, fit, tiny_trained.fnet, tiny_trained.center, **kw).fit(x, seed=2)
    without = Engine(TINY.unet, tiny_fit(steps=4), tiny_trained.fnet, tiny_trained.center, **kw).fit(x, seed=2)
    assert np.abs(with_term.recon - without.recon).max() > 1e-3
    # chunking does not change an image's fit (per-image keys, nothing shared)
    two = Engine(TINY.unet, fit, tiny_trained.fnet, tiny_trained.center, chunk_size=2, **kw).fit(x, seed=2)
    np.testing.assert_allclose(two.recon, with_term.recon, atol=1e-5)
    # one image alone (its global index picks its key) fits as it does among the others
    alone = Engine(TINY.unet, fit, tiny_trained.fnet, tiny_trained.center, **kw).fit_chunk(x[2:3], np.array([2]), 2)
    np.testing.assert_allclose(alone.recon[0], with_term.recon[2], atol=1e-5)


def test_a_spatial_weight_without_a_memory_is_a_clear_error(tiny_trained):
    with pytest.raises(AnoUnetError, match="spatial_beta"):
        Engine(TINY.unet, tiny_fit(spatial_beta=1.0), tiny_trained.fnet, tiny_trained.center, formulation="loop")


def test_measure_picks_a_formulation_with_the_spatial_term(tiny_trained, memory):
    x = stripes(2, seed=4)
    eng = Engine(TINY.unet, tiny_fit(steps=1, spatial_beta=1.0), tiny_trained.fnet, tiny_trained.center,
                 formulation="measure", chunk_size=2, patch_memory=memory)
    res = eng.fit(x, seed=0)
    assert eng.formulation in ("loop", "vmap_matmul") and np.isfinite(res.heatmap).all()

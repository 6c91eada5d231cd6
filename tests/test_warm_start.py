"""Warm-started fits: every image starts from one U-Net trained on the normal images (issue 17)."""

import numpy as np

from anounet_jax.config import TINY
from anounet_jax.engine.fit import Engine
from anounet_jax.engine.warm_start import train_start


def test_a_warm_start_reconstructs_normal_images_and_every_fit_starts_from_it(tiny_data, tiny_trained):
    normal = tiny_data["train"].images
    test = tiny_data["test"].images[:4]
    start = train_start(TINY, tiny_trained, normal, steps=40, batch_size=8, lr=3e-3, seed=0)
    one_step = TINY.replace(fit={"steps": 1})
    cold = Engine.for_trained(one_step, tiny_trained, formulation="loop").fit(test, seed=1)
    warm = Engine.for_trained(one_step, tiny_trained, formulation="loop", start_params=start).fit(test, seed=1)
    # after one step the warm fits already reconstruct far better than the cold ones
    assert warm.loss_r.mean() < 0.7 * cold.loss_r.mean()
    # the same start in every formulation and chunking: the same numbers, per image
    vm = Engine.for_trained(one_step, tiny_trained, formulation="vmap_matmul", chunk_size=2,
                            start_params=start).fit(test, seed=1)
    np.testing.assert_allclose(vm.recon, warm.recon, atol=2e-4)
    # images stay independent: a fit alone equals the same fit among others
    alone = Engine.for_trained(one_step, tiny_trained, formulation="loop", start_params=start).fit_chunk(
        test[2:3], np.array([2]), 1)
    np.testing.assert_allclose(alone.recon[0], warm.recon[2], atol=1e-5)


def test_reptile_outer_step_moves_to_the_per_image_fit_result(tiny_data, tiny_trained):
    """One outer step with one image and eps = 1 lands exactly on that image's K-step fit from the
    start: the inner loop is the engine's per-image fit (same optimizer, same objective)."""
    import jax

    from anounet_jax.engine.warm_start import train_reptile_start
    from anounet_jax.models.unet import init_unet_params, unet_from_config

    x = tiny_data["train"].images[:1]
    theta = train_reptile_start(TINY, tiny_trained, x, steps=1, inner_steps=3, batch_size=1, outer_lr=1.0)
    theta0 = init_unet_params(unet_from_config(TINY.unet), jax.random.PRNGKey(0), x.shape[1:])
    fit = Engine.for_trained(TINY.replace(fit={"steps": 3}), tiny_trained, formulation="loop",
                             start_params=theta0).fit(x, seed=0)
    recon = unet_from_config(TINY.unet).apply({"params": theta}, x)
    assert np.abs(recon - fit.recon).max() < 5e-4  # 2e-6 measured on CPU
    # it moved: the start is not theta0
    assert max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(theta0))) > 1e-3


def test_a_reptile_start_fits_normal_images_faster_than_a_cold_start(tiny_data, tiny_trained):
    from anounet_jax.engine.warm_start import train_reptile_start

    normal = tiny_data["train"].images
    start = train_reptile_start(TINY, tiny_trained, normal[:48], steps=30, inner_steps=3, batch_size=8, seed=0)
    held_out = normal[48:56]  # normal images the start never saw
    three = TINY.replace(fit={"steps": 3})
    cold = Engine.for_trained(three, tiny_trained, formulation="vmap_matmul").fit(held_out, seed=1)
    warm = Engine.for_trained(three, tiny_trained, formulation="vmap_matmul", start_params=start).fit(held_out, seed=1)
    assert warm.loss_r.mean() < 0.5 * cold.loss_r.mean()

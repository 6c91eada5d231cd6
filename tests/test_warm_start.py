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

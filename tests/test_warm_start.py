"""Warm-started fits: every image starts from one U-Net trained on the normal images (issue 17)."""

import jax
import numpy as np
import pytest

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


def test_the_f_net_stage_carries_the_start_a_warm_preset_asks_for(tiny_data, tiny_trained):
    """`with_warm_start`: nothing for a cold preset; for fit.start "warm" the `start` section's recipe
    (trained once: a stage that already has one, as a restored checkpoint does, is left as it is)."""
    import jax

    from anounet_jax.engine.warm_start import start_params_for, with_warm_start
    from anounet_jax.errors import AnoUnetError

    normal = tiny_data["train"].images[:16]
    assert with_warm_start(TINY, tiny_trained, normal) is tiny_trained
    warm_preset = TINY.replace(fit={"start": "warm", "steps": 3}, start={"steps": 2, "inner_steps": 2,
                                                                       "batch_size": 4})
    lines = []
    warm = with_warm_start(warm_preset, tiny_trained, normal, log=lines.append)
    assert tiny_trained.warm_start is None  # the stage it came from is not changed
    assert (warm.warm_start.method, warm.warm_start.steps, warm.warm_start.inner_steps) == ("reptile", 2, 2)
    assert "reptile, 2 steps of 2 inner steps" in lines[0] and "16 normal images" in lines[0]
    assert with_warm_start(warm_preset, warm, normal) is warm  # not trained twice
    # the fits of a warm preset start there (the engine holds exactly these parameters)
    engine = Engine.for_trained(warm_preset, warm)
    for a, b in zip(jax.tree.leaves(engine.start_params), jax.tree.leaves(warm.warm_start.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # an engine built from the preset alone cannot silently fit a warm preset from random starts
    with pytest.raises(AnoUnetError, match="fit.start 'warm' needs the warm start"):
        Engine.from_preset(warm_preset, tiny_trained.fnet, tiny_trained.center)
    shared = with_warm_start(warm_preset.replace(start={"method": "shared"}), tiny_trained, normal)
    assert shared.warm_start.method == "shared"
    assert start_params_for(warm_preset, shared) is shared.warm_start.params
    for bad, match in (({"start": {"method": "maml"}}, "warm-start method 'maml'"),
                       ({"fit": {"start": "hot"}}, "unknown fit.start 'hot'"),
                       ({"start": {"batch_size": 0}}, "batch_size >= 1")):
        with pytest.raises(AnoUnetError, match=match):
            with_warm_start(warm_preset.replace(**bad), tiny_trained, normal)


def test_warm_settings_are_checked_and_old_records_read():
    from anounet_jax.config import Preset, get_preset
    from anounet_jax.errors import AnoUnetError
    from anounet_jax.settings import apply_overrides

    p = apply_overrides(get_preset("paper"), ["fit.start=warm", "start.steps=50", "start.method=shared"])
    assert (p.fit.start, p.start.steps, p.start.method) == ("warm", 50, "shared")
    for bad in ("fit.start=checkpoint", "start.method=maml", "start.inner_steps=0"):
        with pytest.raises(AnoUnetError, match=bad.split("=")[0]):
            apply_overrides(TINY, [bad])
    # a record written before the `start` section: no section, fit.start "checkpoint" meant "warm"
    d = TINY.replace(fit={"start": "cold"}).to_dict()
    del d["start"]
    d["fit"]["start"] = "checkpoint"
    old = Preset.from_dict(d)
    assert old.fit.start == "warm" and old.start == TINY.start
    assert Preset.from_dict(TINY.to_dict()) == TINY


def test_at_beta_0_the_starts_never_run_the_f_net(tiny_data, tiny_trained):
    """Both start recipes train on L_R alone at beta 0: an f-Net whose gradient is NaN everywhere
    gives the same start as the real one (before, it poisoned the start through a zero weight)."""
    import dataclasses

    import jax.numpy as jnp

    from anounet_jax.engine.warm_start import train_reptile_start
    from anounet_jax.fnet.model import FrozenFNet

    normal = tiny_data["train"].images[:8]
    d = len(tiny_trained.center)
    bad = FrozenFNet(apply=lambda v, x: jnp.sqrt(jnp.maximum(x.mean((1, 2)) - 2.0, 0.0)).sum(-1, keepdims=True)
                     * jnp.ones((1, d)), variables={})
    poisoned = dataclasses.replace(tiny_trained, fnet=bad)
    beta0 = TINY.replace(fit={"beta": 0.0})
    for train in (lambda p, t: train_start(p, t, normal, steps=2, batch_size=4, seed=0),
                  lambda p, t: train_reptile_start(p, t, normal, steps=2, inner_steps=2, batch_size=4, seed=0)):
        good, got = train(beta0, tiny_trained), train(beta0, poisoned)
        for a, b in zip(jax.tree.leaves(good), jax.tree.leaves(got)):
            np.testing.assert_array_equal(a, b)


def test_l_c_in_the_warm_start_only(tiny_data, tiny_trained):
    """fit.lc_where "start": the start is trained with L_C (the same start as "everywhere"), each image's
    fit is the plain reconstruction from it: the same fits as beta 0 from that start, bit for bit, and
    not those of L_C everywhere; without a warm start the setting is refused."""
    from anounet_jax.engine.warm_start import with_warm_start
    from anounet_jax.errors import AnoUnetError
    from anounet_jax.settings import apply_overrides

    normal, test = tiny_data["train"].images[:16], tiny_data["test"].images[:4]
    everywhere = TINY.replace(fit={"start": "warm", "steps": 3, "beta": 50.0},
                              start={"steps": 2, "inner_steps": 2, "batch_size": 4})
    only_start = everywhere.replace(fit={"lc_where": "start"})
    assert (everywhere.fit.fit_beta, only_start.fit.fit_beta) == (50.0, 0.0)
    a = with_warm_start(everywhere, tiny_trained, normal)
    b = with_warm_start(only_start, tiny_trained, normal)
    c = with_warm_start(everywhere.replace(fit={"beta": 0.0}), tiny_trained, normal)
    same = [np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.warm_start.params), jax.tree.leaves(b.warm_start.params))]
    assert all(same)  # the start carries L_C either way
    assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.warm_start.params),
                                                         jax.tree.leaves(c.warm_start.params)))
    fit_start = Engine.for_trained(only_start, b, formulation="loop").fit(test, seed=1)
    fit_b0 = Engine.for_trained(everywhere.replace(fit={"beta": 0.0}), a, formulation="loop").fit(test, seed=1)
    fit_all = Engine.for_trained(everywhere, a, formulation="loop").fit(test, seed=1)
    np.testing.assert_array_equal(fit_start.recon, fit_b0.recon)
    assert np.abs(fit_start.recon - fit_all.recon).max() > 1e-4
    assert apply_overrides(everywhere, ["fit.lc_where=start"]).fit.lc_where == "start"
    with pytest.raises(AnoUnetError, match="fit.lc_where=start .* needs fit.start=warm"):
        apply_overrides(TINY, ["fit.lc_where=start"])
    with pytest.raises(AnoUnetError, match="fit.lc_where"):
        apply_overrides(everywhere, ["fit.lc_where=fits"])
    with pytest.raises(AnoUnetError, match="needs fit.start 'warm'"):
        Engine.from_preset(TINY.replace(fit={"lc_where": "start"}), tiny_trained.fnet, tiny_trained.center)

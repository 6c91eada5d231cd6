"""A warm start stored in the f-Net checkpoint (issue 17): round trip, older checkpoints, clear errors."""

import jax
import numpy as np
import pytest

from anounet_jax.checkpoint import fingerprint, load_checkpoint, read_checkpoint_info, save_checkpoint
from anounet_jax.config import TINY
from anounet_jax.engine.fit import Engine
from anounet_jax.engine.warm_start import WarmStart, start_params_for
from anounet_jax.errors import AnoUnetError
from anounet_jax.fnet.model import FrozenFNet, build_fnet_module, compute_center
from anounet_jax.fnet.scores import make_scorer
from anounet_jax.models.unet import init_unet_params, unet_from_config
from test_checkpoint import _random_variables

WARM = TINY.replace(fit={"start": "warm", "steps": 2})
# fingerprint of `_content()` written by checkpoint.py before warm starts existed (commit 016f75c):
# a checkpoint without a warm start must keep exactly this content identity
GOLDEN = "d16ced416a230e6684f16d97c580a77628f9e49fbce48bb2016488f378d6c9eb"


def _content():
    """f-Net variables, C and a fitted L2 scorer made with numpy only (no float rounding of compiled code)."""
    rng = np.random.default_rng(17)
    variables = _random_variables(build_fnet_module(TINY.fnet), TINY.image_size, rng)
    feats = rng.normal(size=(12, 8)).astype(np.float32)
    center = feats.mean(0)
    return variables, center, make_scorer("l2").fit(feats, center=center)


@pytest.fixture(scope="module")
def fnet_parts():
    """A random tiny f-Net, its C on random images, a scorer, and a warm start (random U-Net parameters)."""
    module = build_fnet_module(TINY.fnet)
    rng = np.random.default_rng(3)
    fnet = FrozenFNet.from_module(module, _random_variables(module, TINY.image_size, rng))
    images = rng.uniform(0, 1, (10, TINY.image_size, TINY.image_size, 3)).astype(np.float32)
    feats = fnet.features(images)
    center = compute_center(feats[:8])
    params = jax.device_get(init_unet_params(unet_from_config(TINY.unet), jax.random.PRNGKey(5), images.shape[1:]))
    warm = WarmStart(params, "reptile", 7, 3)
    return fnet, images, center, make_scorer("l2").fit(feats[:8]), warm


def test_a_checkpoint_without_a_warm_start_keeps_its_layout_and_fingerprint(tmp_path):
    variables, center, scorer = _content()
    digest = save_checkpoint(tmp_path / "old", TINY, variables, center, scorer)
    assert digest == fingerprint(variables, center, scorer) == GOLDEN
    assert "warm_start" not in read_checkpoint_info(tmp_path / "old")
    ck = load_checkpoint(tmp_path / "old", expected_preset=TINY)
    assert ck.fingerprint == GOLDEN and ck.warm_start is None and ck.trained.warm_start is None
    assert start_params_for(TINY, ck.trained) is None  # fit.start "cold": a random start per image
    # asking it for a warm start: one clear line that says how to rebuild
    with pytest.raises(AnoUnetError, match="has none; rebuild it with `anounet train-fnet .* --set fit.start=warm`") as e:
        start_params_for(WARM, ck.trained)
    assert "\n" not in str(e.value)


def test_the_stored_warm_start_round_trips_and_drives_the_same_fits(tmp_path, fnet_parts):
    fnet, images, center, scorer, warm = fnet_parts
    path = tmp_path / "ckpt"
    digest = save_checkpoint(path, TINY, fnet, center, scorer, warm_start=warm)
    assert digest != fingerprint(fnet, center, scorer)  # the warm start is part of the content
    assert digest == fingerprint(fnet, center, scorer, warm_start=warm) == read_checkpoint_info(path)["fingerprint"]
    assert read_checkpoint_info(path)["warm_start"] == {"method": "reptile", "steps": 7, "inner_steps": 3}
    ck = load_checkpoint(path, expected_preset=TINY)
    assert (ck.warm_start.method, ck.warm_start.steps, ck.warm_start.inner_steps) == ("reptile", 7, 3)
    saved = jax.tree_util.tree_flatten_with_path(warm.params)[0]
    loaded = jax.tree_util.tree_flatten_with_path(ck.warm_start.params)[0]
    assert [k for k, _ in saved] == [k for k, _ in loaded]
    for (_, a), (_, b) in zip(saved, loaded):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # fit.start=warm: every fit starts from the stored parameters (Engine.for_trained reads the
    # setting, as the score job's engine does), exactly as from the in-memory ones
    test = images[8:10]
    stored = Engine.for_trained(WARM, ck.trained, formulation="loop").fit(test, seed=1)
    memory = Engine.from_preset(WARM, fnet, center, formulation="loop",
                                start_params=warm.params).fit(test, seed=1)
    cold = Engine.for_trained(WARM.replace(fit={"start": "cold"}), ck.trained,
                              formulation="loop").fit(test, seed=1)
    np.testing.assert_array_equal(stored.heatmap, memory.heatmap)
    assert np.abs(stored.recon - cold.recon).max() > 1e-3  # and that is not the random start
    from anounet_jax.jobs.score.model import ScoringModel

    job_engine = ScoringModel(path, WARM).engine
    assert job_engine.start_params is not None
    for a, b in zip(jax.tree.leaves(job_engine.start_params), jax.tree.leaves(warm.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a changed warm start is a corrupt checkpoint, not a silent different start
    other = WarmStart(jax.tree.map(lambda a: a + 1.0, warm.params), "reptile", 7, 3)
    assert fingerprint(fnet, center, scorer, warm_start=other) != digest


def test_a_warm_start_that_does_not_fit_the_unet_is_refused_in_one_line(tmp_path, fnet_parts):
    fnet, _, center, scorer, warm = fnet_parts
    save_checkpoint(tmp_path / "ckpt", TINY, fnet, center, scorer, warm_start=warm)
    trained = load_checkpoint(tmp_path / "ckpt").trained
    for unet in ({"width": 8}, {"depth": 3}, {"norm": "none"}):  # the fit's U-Net is not the checkpoint's
        with pytest.raises(AnoUnetError, match="warm start does not fit the preset's U-Net") as e:
            start_params_for(WARM.replace(unet=unet), trained)
        assert "\n" not in str(e.value) and "fit.start=cold" in str(e.value)
    with pytest.raises(AnoUnetError, match="unknown fit.start 'hot'"):
        start_params_for(TINY.replace(fit={"start": "hot"}), trained)
    # saving refuses a warm start made for another U-Net than the checkpoint's preset
    with pytest.raises(AnoUnetError, match="does not fit the preset's U-Net"):
        save_checkpoint(tmp_path / "bad", TINY.replace(unet={"width": 8}), fnet, center, scorer, warm_start=warm)
    assert not (tmp_path / "bad").exists()


def test_train_fnet_stores_a_warm_start_once_for_every_job(tmp_path):
    """`anounet train-fnet embedded --set fit.start=warm --set start.steps=2 ...`: the checkpoint carries it."""
    from anounet_jax.jobs.train_fnet import train_fnet_checkpoint

    preset = TINY.replace(fnet={"epochs": 1}, fit={"start": "warm"}, start={"steps": 2, "inner_steps": 1})
    info = train_fnet_checkpoint("embedded", tmp_path / "ckpt", preset=preset, scorer="l2", progress=False,
                                 log=lambda *_: None)
    assert info["warm_start_seconds"] > 0
    ck = load_checkpoint(tmp_path / "ckpt")
    assert ck.fingerprint == info["fingerprint"] and ck.preset.fit.start == "warm"
    assert (ck.warm_start.method, ck.warm_start.steps, ck.warm_start.inner_steps) == ("reptile", 2, 1)
    start = start_params_for(ck.preset, ck.trained)
    init = init_unet_params(unet_from_config(TINY.unet), jax.random.PRNGKey(0), (TINY.image_size,) * 2 + (3,))
    # trained, not the seed's initial parameters
    assert max(np.abs(np.asarray(a) - np.asarray(b)).max()
               for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(init))) > 1e-4
    # a cold preset stores none
    info = train_fnet_checkpoint("embedded", tmp_path / "cold", preset=TINY.replace(fnet={"epochs": 1}),
                                 scorer="l2", progress=False, log=lambda *_: None)
    assert info["warm_start_seconds"] is None and load_checkpoint(tmp_path / "cold").warm_start is None
    # an unknown recipe is refused before anything is trained or written
    with pytest.raises(AnoUnetError, match="warm-start method 'maml'"):
        train_fnet_checkpoint("embedded", tmp_path / "x", preset=preset.replace(start={"method": "maml"}))
    assert not (tmp_path / "x").exists()

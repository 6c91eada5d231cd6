"""orbax checkpoint of f-Net variables, C, scorer and preset: round trip, preset check, corruption."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from anounet_jax.checkpoint import (fingerprint, load_checkpoint, read_checkpoint_info, save_checkpoint)
from anounet_jax.config import SMALL, TINY
from anounet_jax.errors import AnoUnetError
from anounet_jax.fnet.model import FrozenFNet, build_fnet_module, compute_center
from anounet_jax.fnet.scores import make_scorer


def _random_variables(module, image_size, rng):
    """Variables of `module` filled with numpy noise (BatchNorm variances positive).

    Shapes come from jax.eval_shape, so nothing is compiled: XLA:CPU takes seconds per threefry op.
    """
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32)
    shapes = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x, train=False), x)

    def fill(path, s):
        if "var" in jax.tree_util.keystr(path):
            return rng.uniform(0.5, 2.0, s.shape).astype(np.float32)
        return (rng.normal(0, 1, s.shape) / np.sqrt(max(np.prod(s.shape[:-1]), 1))).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def parts():
    """An f-Net with random params *and* random BatchNorm statistics, C, images, fitted scorers."""
    module = build_fnet_module(TINY.fnet)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (24, TINY.image_size, TINY.image_size, 3)).astype(np.float32)
    fnet = FrozenFNet.from_module(module, _random_variables(module, TINY.image_size, rng))
    feats = fnet.features(images)
    assert np.std(feats, 0).min() > 0  # the round trip below compares something non-trivial
    center = compute_center(feats[:16])
    scorers = {n: make_scorer(n).fit(feats[:16]) for n in ("lof", "l2", "l1")}
    return fnet, images, feats, center, scorers


@pytest.mark.parametrize("scorer_name", ["lof", "l1"])
def test_round_trip_identical_features_and_scores(tmp_path, parts, scorer_name):
    fnet, images, feats, center, scorers = parts
    scorer = scorers[scorer_name]
    path = tmp_path / "ckpt"
    digest = save_checkpoint(path, TINY, fnet.variables, center, scorer)
    assert digest == fingerprint(fnet, center, scorer) == read_checkpoint_info(path)["fingerprint"]

    ck = load_checkpoint(path, expected_preset=TINY)
    assert ck.preset == TINY and ck.fingerprint == digest and ck.path == str(path)
    np.testing.assert_array_equal(ck.center, center)
    np.testing.assert_array_equal(ck.fnet.features(images), feats)
    assert type(ck.scorer) is type(scorer) and ck.scorer.threshold == scorer.threshold
    np.testing.assert_array_equal(ck.scorer.score(feats), scorer.score(feats))
    np.testing.assert_array_equal(ck.scorer.flag(ck.scorer.score(feats)), scorer.flag(scorer.score(feats)))


def test_fingerprint_follows_content(tmp_path, parts):
    fnet, _, _, center, scorers = parts
    a = save_checkpoint(tmp_path / "a", TINY, fnet, center, scorers["l2"])
    b = save_checkpoint(tmp_path / "b", TINY.replace(fit={"beta": 3.0}), fnet, center, scorers["l2"])
    assert a == b  # same content wherever it lives, whatever the fit settings
    assert fingerprint(fnet, center + 1.0, scorers["l2"]) != a
    assert fingerprint(fnet, center, scorers["l1"]) != a


def test_wrong_preset_is_refused_naming_the_fields(tmp_path, parts):
    fnet, _, _, center, scorers = parts
    path = tmp_path / "ckpt"
    save_checkpoint(path, TINY, fnet, center, scorers["l2"])
    other = TINY.replace(fnet={"method": "doc", "lr": 0.5})
    with pytest.raises(AnoUnetError) as e:
        load_checkpoint(path, expected_preset=other)
    msg = str(e.value)
    assert str(path) in msg and "fnet.method" in msg and "fnet.lr" in msg and "fnet.arch" not in msg
    with pytest.raises(AnoUnetError, match="name"):
        load_checkpoint(path, expected_preset=SMALL)
    # per-image fit settings are not part of the f-Net checkpoint: accepted
    load_checkpoint(path, expected_preset=TINY.replace(fit={"steps": 5}, unet={"width": 8}))


def test_overwrite_semantics(tmp_path, parts):
    fnet, _, _, center, scorers = parts
    path = tmp_path / "ckpt"
    save_checkpoint(path, TINY, fnet, center, scorers["l2"])
    with pytest.raises(AnoUnetError, match="overwrite=True"):
        save_checkpoint(path, TINY, fnet, center, scorers["lof"])
    assert load_checkpoint(path).scorer.kind == "distance"
    save_checkpoint(path, TINY, fnet, center, scorers["lof"], overwrite=True)
    assert load_checkpoint(path).scorer.kind == "lof"
    assert os.listdir(tmp_path) == ["ckpt"]  # no temporary or old copies left behind


def test_variables_must_match_the_preset_fnet(tmp_path, parts):
    fnet, _, _, center, scorers = parts
    with pytest.raises(AnoUnetError, match="do not match"):
        save_checkpoint(tmp_path / "c", TINY.replace(fnet={"small_cnn_width": 16}), fnet, center,
                        scorers["l2"])
    assert not (tmp_path / "c").exists()


def test_missing_and_corrupt_checkpoints(tmp_path, parts):
    fnet, _, _, center, scorers = parts
    with pytest.raises(AnoUnetError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnoUnetError, match="empty"):
        load_checkpoint(tmp_path / "empty")

    path = tmp_path / "ckpt"
    save_checkpoint(path, TINY, fnet, center, scorers["lof"])
    meta_file = path / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())

    meta_file.write_text(json.dumps({**meta, "fingerprint": "0" * 64}))  # arrays no longer match
    with pytest.raises(AnoUnetError, match="corrupt"):
        load_checkpoint(path)

    meta_file.write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(AnoUnetError, match="format version 99"):
        load_checkpoint(path)

    meta_file.write_text("{not json")
    with pytest.raises(AnoUnetError, match="ckpt"):
        load_checkpoint(path)

    meta_file.write_text(json.dumps(meta))
    load_checkpoint(path)  # intact again
    # Damaged array metadata. (Garbling the tensorstore data files also gives AnoUnetError, but
    # reads still in flight then report "Event loop is closed" from orbax's finished asyncio loop.)
    (path / "arrays" / "_METADATA").write_text("garbage")
    with pytest.raises(AnoUnetError, match="arrays are unreadable"):
        load_checkpoint(path)
    shutil.rmtree(path / "arrays")
    with pytest.raises(AnoUnetError, match="arrays are unreadable"):
        load_checkpoint(path)


def test_feature_scale_and_patch_memory_round_trip_and_drive_the_same_engine(tmp_path, parts):
    """A checkpoint of an f-Net with a feature scale and a memory of normal patch features gives back
    both (fingerprinted), so `anounet score` fits with the same scale-free, spatial loss."""
    from anounet_jax.engine.fit import Engine
    from anounet_jax.fnet.patch_memory import build_patch_memory

    fnet, images, _, center, scorers = parts
    preset = TINY.replace(fnet={"patch_memory": 0.5}, fit={"lc_scale": "normal", "spatial_beta": 1.0, "steps": 2})
    memory = build_patch_memory(fnet, preset.fnet, images[:16], coreset_fraction=0.5)
    path = tmp_path / "ckpt"
    digest = save_checkpoint(path, preset, fnet, center, scorers["l2"], feature_scale=0.25, patch_memory=memory)
    assert digest != fingerprint(fnet, center, scorers["l2"])  # the new content is fingerprinted
    assert digest == fingerprint(fnet, center, scorers["l2"], 0.25, memory)
    ck = load_checkpoint(path)
    assert ck.feature_scale == 0.25 and ck.patch_memory.scale == memory.scale
    assert ck.patch_memory.layers == memory.layers
    np.testing.assert_array_equal(ck.patch_memory.memory, memory.memory)
    a = Engine.for_trained(preset, ck.trained, formulation="loop").fit(images[16:18], seed=1)
    b = Engine.from_preset(preset, fnet, center, 0.25, memory, formulation="loop").fit(images[16:18], seed=1)
    np.testing.assert_array_equal(a.heatmap, b.heatmap)
    # an older checkpoint (no scale) cannot drive a scale-free fit: a clear error, not a silent unit
    save_checkpoint(tmp_path / "old", TINY, fnet, center, scorers["l2"])
    with pytest.raises(AnoUnetError, match="feature scale"):
        Engine.for_trained(preset.replace(fit={"spatial_beta": 0.0}), load_checkpoint(tmp_path / "old").trained)


def test_normal_features_round_trip_and_drive_the_same_nearest_center_fits(tmp_path, parts):
    """fit.lc_center "nearest": the checkpoint keeps f(normal training images) (fingerprinted), so a
    score job picks the same C per image as the job that trained the f-Net."""
    from anounet_jax.engine.fit import Engine
    from anounet_jax.fnet.train import TrainedFNet

    fnet, images, feats, center, scorers = parts
    preset = TINY.replace(fit={"lc_center": "nearest", "lc_center_k": 4, "steps": 2})
    path = tmp_path / "ckpt"
    digest = save_checkpoint(path, preset, fnet, center, scorers["l2"], normal_features=feats[:16])
    assert digest == fingerprint(fnet, center, scorers["l2"], normal_features=feats[:16])
    assert digest != fingerprint(fnet, center, scorers["l2"])
    ck = load_checkpoint(path)
    np.testing.assert_array_equal(ck.normal_features, feats[:16])
    a = Engine.for_trained(preset, ck.trained, formulation="loop").fit(images[16:18], seed=1)
    b = Engine.for_trained(preset, TrainedFNet(fnet, center, feats[:16], []), formulation="loop").fit(
        images[16:18], seed=1)
    np.testing.assert_array_equal(a.heatmap, b.heatmap)
    with pytest.raises(AnoUnetError, match="normal features"):
        save_checkpoint(tmp_path / "bad", preset, fnet, center, scorers["l2"], normal_features=feats[:16, :3])
    # a checkpoint without them cannot drive nearest-center fits: a clear error naming the fix
    save_checkpoint(tmp_path / "old", TINY, fnet, center, scorers["l2"])
    with pytest.raises(AnoUnetError, match="fit.lc_center=nearest"):
        Engine.for_trained(preset, load_checkpoint(tmp_path / "old").trained)

"""Baselines (autoencoder, DOC + decoder, AnoGAN): tiny end-to-end runs on 32x32 embedded textures."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from anounet_jax.baselines import (BaselineResult, anogan, autoencoder, baseline_config, doc_decoder)
from anounet_jax.data.embedded import load_normal, load_test
from anounet_jax.errors import AnoUnetError
from anounet_jax.fnet.model import FrozenFNet

SIZE = 32


@pytest.fixture(scope="module")
def data():
    return load_normal("brick", SIZE, 64, seed=0), load_test("brick", SIZE, 4, 8, seed=0)


@pytest.fixture(scope="module")
def cfgs():
    return baseline_config("tiny")


@pytest.fixture(scope="module")
def gan(data, cfgs):
    return anogan.train(data[0], cfgs.anogan, seed=0)


def _check_result(res: BaselineResult, n: int):
    assert res.heatmap.shape == (n, SIZE, SIZE) and res.heatmap.dtype == np.float32
    assert res.recon.shape == (n, SIZE, SIZE, 3) and res.recon.dtype == np.float32
    assert res.score.shape == (n,) and res.score.dtype == np.float32
    assert np.isfinite(res.heatmap).all() and np.isfinite(res.recon).all() and np.isfinite(res.score).all()
    assert not res.diverged.any()
    assert res.recon.min() >= 0.0 and res.recon.max() <= 1.0  # sigmoid outputs


def test_autoencoder_shapes_and_localizes_defects(data, cfgs):
    normal, test = data
    ae = autoencoder.train(normal, cfgs.autoencoder, seed=0)
    assert len(ae.history) == cfgs.autoencoder.epochs and ae.history[-1] < ae.history[0]
    res = ae.score_maps(test.images)
    _check_result(res, len(test))
    np.testing.assert_allclose(res.score, res.heatmap.sum((1, 2)), rtol=1e-5)
    # reconstruction is worse on the planted defects than on the normal texture around them
    defect = test.labels == 1
    inside = res.heatmap[defect][test.masks[defect]].mean()
    outside = res.heatmap[defect][~test.masks[defect]].mean()
    assert inside > 1.5 * outside, (inside, outside)
    # any batch size gives the same maps (fixed-size padded batches, no cross-image normalization)
    one = ae.score_maps(test.images[:3])
    np.testing.assert_allclose(one.heatmap, res.heatmap[:3], atol=1e-5)
    with pytest.raises(AnoUnetError, match="trained on 32x32"):
        ae.score_maps(np.zeros((1, 16, 16, 3), np.float32))


def test_doc_decoder_shapes(data, cfgs):
    normal, test = data
    # any frozen function (N,H,W,3) -> (N,D) will do: a fixed random projection of 4x4-pooled pixels
    w = np.random.default_rng(0).standard_normal((8 * 8 * 3, 16)).astype(np.float32)
    fnet = FrozenFNet(apply=lambda v, x: jnp.tanh(
        x.reshape(x.shape[0], 8, 4, 8, 4, 3).mean((2, 4)).reshape(x.shape[0], -1) @ v["w"]),
        variables={"w": w})
    dd = doc_decoder.train(normal, fnet, cfgs.doc_decoder, seed=0)
    assert dd.history[-1] < dd.history[0]
    res = dd.score_maps(test.images)
    _check_result(res, len(test))
    np.testing.assert_allclose(res.score, res.heatmap.sum((1, 2)), rtol=1e-5)


def test_anogan_shapes_and_score_is_the_search_loss(data, gan, cfgs):
    _, test = data
    assert len(gan.history) == cfgs.anogan.epochs and np.isfinite(gan.history).all()
    assert gan.sample(2).shape == (2, SIZE, SIZE, 3)
    res = gan.score_maps(test.images)  # 12 images, chunk 4
    _check_result(res, len(test))
    # score = (1 - lam) * sum|x - G(z)| + lam * sum|f_D(x) - f_D(G(z))| >= (1 - lam) * 3 * sum(map)
    lam = cfgs.anogan.lam
    assert (res.score >= (1 - lam) * 3 * res.heatmap.sum((1, 2)) * (1 - 1e-5)).all()


def test_anogan_batched_search_equals_one_image_at_a_time(data, gan):
    """Same seed; per-image keys fold_in(seed, index) make every image's search the same computation
    whatever its chunk.

    - one image at a time through the same compiled chunk (alone, zero-padded): bitwise equal.
    - one image at a time with chunk_size 1 (a batch-1 program): XLA rounds the differently batched
      convs differently, and the search amplifies it (L1 sign flips, Adam's normalized steps): after
      5 steps ~1e-7 in score / ~1e-4 in pixels, after 20 steps ~2e-4 / ~1e-2. Tolerances below.
    """
    images = data[1].images[:6]
    batched = gan.score_maps(images, seed=3, chunk_size=4)  # chunks of 4 and 2 (+2 padding)
    alone = BaselineResult.concatenate(
        [gan.search_chunk(images[i:i + 1], np.array([i]), seed=3, chunk_size=4) for i in range(6)])
    np.testing.assert_array_equal(batched.score, alone.score)
    np.testing.assert_array_equal(batched.recon, alone.recon)

    b5 = gan.score_maps(images, seed=3, chunk_size=4, steps=5)
    s5 = gan.score_maps(images, seed=3, chunk_size=1, steps=5)
    np.testing.assert_allclose(b5.score, s5.score, rtol=1e-5)
    np.testing.assert_allclose(b5.recon, s5.recon, atol=1e-3)
    single = gan.score_maps(images, seed=3, chunk_size=1)  # the full 20 steps
    np.testing.assert_allclose(batched.score, single.score, rtol=2e-3)
    np.testing.assert_allclose(batched.recon, single.recon, atol=5e-2)
    # a different seed gives different starting points, hence different results
    other = gan.score_maps(images, seed=4, chunk_size=4)
    assert np.abs(other.recon - batched.recon).max() > 1e-3


def test_anogan_nan_image_does_not_change_others(data, gan):
    images = data[1].images[:4].copy()
    clean = gan.score_maps(images, seed=0, chunk_size=4)
    images[1] = np.nan
    poisoned = gan.score_maps(images, seed=0, chunk_size=4)
    assert poisoned.diverged.tolist() == [False, True, False, False]
    keep = [0, 2, 3]
    np.testing.assert_array_equal(poisoned.score[keep], clean.score[keep])
    np.testing.assert_array_equal(poisoned.recon[keep], clean.recon[keep])


def test_baseline_config_presets():
    for name in ("tiny", "small", "paper"):
        c = baseline_config(name)
        assert c.anogan.lam == 0.1
        assert dataclasses.is_dataclass(c.autoencoder) and dataclasses.is_dataclass(c.doc_decoder)
    assert baseline_config("paper").anogan.search_steps == 500
    assert baseline_config("small").anogan.search_steps == 500
    with pytest.raises(AnoUnetError, match="unknown preset"):
        baseline_config("huge")


def test_bad_sizes_raise_project_error(data):
    normal, _ = data
    with pytest.raises(AnoUnetError, match="divisible"):
        autoencoder.train(normal, autoencoder.AutoencoderConfig(depth=6, epochs=1))
    with pytest.raises(AnoUnetError, match="unknown reconstruction loss"):
        autoencoder.train(normal, autoencoder.AutoencoderConfig(width=4, depth=2, loss="l3", epochs=1))

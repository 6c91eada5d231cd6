"""fit.lc_center "nearest": each test image's C is the mean feature of its k nearest normal images."""

import numpy as np
import pytest

from anounet_jax.config import TINY
from anounet_jax.errors import AnoUnetError
from anounet_jax.fnet.nearest_centers import nearest_centers


def test_nearest_centers_by_hand():
    normal = np.array([[0, 0], [1, 0], [10, 10], [11, 10], [50, 50]], np.float32)
    q = np.array([[0.4, 0.1], [10.6, 9.9], [49, 49]], np.float32)
    np.testing.assert_array_equal(nearest_centers(q, normal, 1), [[0, 0], [11, 10], [50, 50]])
    np.testing.assert_allclose(nearest_centers(q, normal, 2), [[0.5, 0], [10.5, 10], [30.5, 30]])
    # k = all of them: every image gets the global C back
    np.testing.assert_allclose(nearest_centers(q, normal, 5), np.repeat(normal.mean(0, keepdims=True), 3, 0))
    with pytest.raises(AnoUnetError, match="lc_center_k must be between 1 and"):
        nearest_centers(q, normal, 6)
    with pytest.raises(AnoUnetError, match="same D"):
        nearest_centers(q, normal[:, :1], 1)


def test_the_engine_fits_toward_each_image_s_nearest_center(tiny_data, tiny_trained):
    """The same fits as the per-image centers given by hand, not those of the global C; a fit alone
    equals the same fit among others; without normal features or with given centers: a clear error."""
    from anounet_jax.engine.fit import Engine

    test = tiny_data["test"].images[:4]
    nearest = TINY.replace(fit={"steps": 3, "beta": 50.0, "lc_center": "nearest", "lc_center_k": 3})
    engine = Engine.for_trained(nearest, tiny_trained, formulation="loop")
    got = engine.fit(test, seed=1)
    by_hand = nearest_centers(tiny_trained.fnet.features(test), tiny_trained.train_features, 3)
    assert np.abs(by_hand - tiny_trained.center).max() > 1e-3  # not the global C
    glob = Engine.for_trained(nearest.replace(fit={"lc_center": "global"}), tiny_trained, formulation="loop")
    want = next(glob.iter_fit([(np.arange(4), test, by_hand)], seed=1))[1]
    np.testing.assert_allclose(got.recon, want.recon, atol=1e-6)
    assert np.abs(got.recon - glob.fit(test, seed=1).recon).max() > 1e-5
    alone = engine.fit_chunk(test[2:3], np.array([2]), 1)
    np.testing.assert_allclose(alone.recon[0], got.recon[2], atol=1e-5)
    # centers given with the images (a tile position's, tiles.center "position") replace the nearest ones
    given = np.repeat(tiny_trained.center[None], 2, 0)
    np.testing.assert_allclose(engine.fit_chunk(test[:2], np.arange(2), 1, centers=given).recon,
                               glob.fit(test[:2], seed=1).recon, atol=1e-6)
    with pytest.raises(AnoUnetError, match="needs the f-Net features of the normal training images"):
        Engine.from_preset(nearest, tiny_trained.fnet, tiny_trained.center)
    # at beta 0 the center is never read: no features needed
    Engine.from_preset(nearest.replace(fit={"beta": 0.0}), tiny_trained.fnet, tiny_trained.center)


def test_settings():
    from anounet_jax.settings import apply_overrides

    p = apply_overrides(TINY, ["fit.lc_center=nearest", "fit.lc_center_k=8"])
    assert (p.fit.lc_center, p.fit.lc_center_k) == ("nearest", 8)
    for bad, match in (("fit.lc_center=median", "fit.lc_center"), ("fit.lc_center_k=0", "lc_center_k")):
        with pytest.raises(AnoUnetError, match=match):
            apply_overrides(TINY, [bad])

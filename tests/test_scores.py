"""Image-level scorers: LOF on min-max scaled features, L2/L1 distance to C."""

import numpy as np
import pytest

from anounet_jax.errors import AnoUnetError
from anounet_jax.fnet.scores import (DistanceScorer, LOFScorer, make_scorer, scorer_from_state)


def _data(seed=0, n=200, d=8):
    rng = np.random.default_rng(seed)
    train = rng.normal(0, 1, (n, d)).astype(np.float32)
    test = rng.normal(0, 1, (30, d)).astype(np.float32)
    test[7] += 6.0  # the planted outlier
    return train, test


@pytest.mark.parametrize("name", ["lof", "l2", "l1"])
def test_planted_outlier_ranks_highest_and_is_flagged(name):
    train, test = _data()
    scorer = make_scorer(name).fit(train)
    s = scorer.score(test)
    assert s.shape == (30,) and s.dtype == np.float32
    assert int(np.argmax(s)) == 7
    flags = scorer.flag(s)
    assert flags.dtype == bool and flags[7]
    assert flags.sum() <= 6  # mostly normal points stay below the 95% threshold
    # the threshold is the 0.95 quantile of the training scores: about 5% of training images flagged
    train_flag_rate = scorer.flag(scorer.score(train)).mean()
    assert train_flag_rate <= 0.1


def test_lof_threshold_uses_leave_self_out_training_factors():
    train, _ = _data(1)
    s = LOFScorer(quantile=0.9).fit(train)
    assert s.threshold == pytest.approx(np.quantile(-s._lof.negative_outlier_factor_, 0.9))
    assert s.threshold > 1.0  # factors of inliers are around 1


def test_distance_scorer_uses_given_center_and_metric():
    train = np.array([[0, 0], [2, 0], [0, 2], [2, 2]], np.float32)
    l2 = DistanceScorer("l2").fit(train)
    np.testing.assert_allclose(l2.center, [1, 1])
    np.testing.assert_allclose(l2.score(np.array([[4, 5]], np.float32)), [5.0])
    l1 = DistanceScorer("l1").fit(train, center=np.zeros(2))
    np.testing.assert_allclose(l1.score(np.array([[-3, 4]], np.float32)), [7.0])


@pytest.mark.parametrize("name", ["lof", "l2", "l1"])
def test_state_round_trip_gives_identical_scores(name):
    train, test = _data(2)
    scorer = make_scorer(name, quantile=0.9).fit(train)
    state = scorer.state_dict()
    for v in state.values():  # plain numpy arrays, numbers and strings only (checkpointable, no pickle)
        assert isinstance(v, (np.ndarray, int, float, str))
    copy = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in state.items()}
    restored = scorer_from_state(copy)
    assert type(restored) is type(scorer)
    assert restored.threshold == scorer.threshold
    np.testing.assert_array_equal(restored.score(test), scorer.score(test))


def test_errors():
    train, test = _data(3)
    with pytest.raises(AnoUnetError, match="unknown scorer"):
        make_scorer("mahalanobis")
    with pytest.raises(AnoUnetError, match="not fitted"):
        LOFScorer().score(test)
    with pytest.raises(AnoUnetError, match="dimension"):
        make_scorer("lof").fit(train).score(test[:, :4])
    with pytest.raises(AnoUnetError, match=r"\(N, D\)"):
        make_scorer("l2").fit(train[0])
    with pytest.raises(AnoUnetError, match="kind"):
        scorer_from_state({"kind": "pickle"})


def test_lof_with_few_training_images_caps_neighbours_quietly(recwarn):
    train, test = _data(4, n=4)
    s = LOFScorer().fit(train)
    assert s._lof.n_neighbors == 3
    assert s.score(test).shape == (30,)
    assert not [w for w in recwarn if "n_neighbors" in str(w.message)]

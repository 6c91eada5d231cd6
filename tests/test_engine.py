import numpy as np
import pytest

from anounet_jax import AnoUnetError
from anounet_jax.config import TINY
from anounet_jax.engine.fit import FORMULATIONS, Engine
from tests.conftest import tiny_fit

# Tolerance: batch sizes and formulations change the order of float additions (a vmapped conv is a
# grouped conv for 4 images and a plain one for 1), and a fit amplifies rounding (Adam rescales tiny
# gradients, BatchNorm over small maps divides by small deviations): a few tiny-preset steps agree to
# 1e-4 on maps in [0, 1]. Longer fits drift further apart (README, "Reproducibility").
SAME_FORMULATION_ATOL = 1e-4
CROSS_FORMULATION_ATOL = 1e-4


def _images(n, seed=0):
    return np.random.default_rng(seed).random((n, 32, 32, 3), dtype=np.float32)


def _engine(fnet, formulation="vmap_matmul", chunk_size=4, **fit):
    center = np.zeros(8, np.float32) + 0.1
    return Engine(TINY.unet, tiny_fit(steps=3, **fit), fnet, center, formulation=formulation,
                  chunk_size=chunk_size)


# "unrolled" and "loop" fit a chunk image by image inside the step: test_every_formulation_gives_the_
# same_numbers compares them with the vmap formulations
@pytest.mark.parametrize("formulation", ["vmap_matmul", "vmap_conv"])
def test_batched_fit_equals_fitting_each_image_alone(random_fnet, formulation):
    x = _images(5)
    batched = _engine(random_fnet, formulation, chunk_size=4).fit(x, seed=3)  # chunks of 4 + 1 (padded)
    # each image alone must use its global index for its key: fit_chunk with explicit indices
    alone = [_engine(random_fnet, formulation, chunk_size=1).fit_chunk(x[i:i + 1], np.array([i]), seed=3)
             for i in range(5)]
    for i in range(5):
        np.testing.assert_allclose(batched.heatmap[i], alone[i].heatmap[0], atol=SAME_FORMULATION_ATOL)
        np.testing.assert_allclose(batched.loss_r[i], alone[i].loss_r[0], atol=SAME_FORMULATION_ATOL)
        np.testing.assert_allclose(batched.loss_c[i], alone[i].loss_c[0], atol=SAME_FORMULATION_ATOL)


def test_every_formulation_gives_the_same_numbers(random_fnet):
    # SGD (the paper's optimizer): Adam's first steps are sign(gradient) * lr, which turns rounding
    # noise in near-zero gradients into full-size steps, so under Adam formulations agree less.
    x = _images(4)
    results = {f: _engine(random_fnet, f, optimizer="sgd", lr=1e-2).fit(x, seed=1) for f in FORMULATIONS}
    ref = results["loop"]
    for f, r in results.items():
        np.testing.assert_allclose(r.heatmap, ref.heatmap, atol=CROSS_FORMULATION_ATOL, err_msg=f)
        np.testing.assert_allclose(r.recon, ref.recon, atol=CROSS_FORMULATION_ATOL, err_msg=f)
        np.testing.assert_allclose(r.loss_c, ref.loss_c, atol=CROSS_FORMULATION_ATOL, err_msg=f)


def test_steps_per_call_unrolls_steps_with_the_same_numbers(random_fnet):
    x = _images(2)
    fit = tiny_fit(steps=3, optimizer="sgd", lr=1e-2)  # loop's programs compiled for the test above
    center = np.full(8, 0.1, np.float32)
    one = Engine(TINY.unet, fit, random_fnet, center, formulation="loop").fit(x, seed=1)
    three = Engine(TINY.unet, fit, random_fnet, center, formulation="loop", steps_per_call=3).fit(x, seed=1)
    np.testing.assert_allclose(three.heatmap, one.heatmap, atol=SAME_FORMULATION_ATOL)
    np.testing.assert_allclose(three.loss_c, one.loss_c, atol=SAME_FORMULATION_ATOL)
    with pytest.raises(AnoUnetError, match="multiple of steps_per_call"):
        Engine(TINY.unet, fit, random_fnet, center, formulation="loop", steps_per_call=2)


def test_same_seed_same_result_other_seed_other_result(random_fnet):
    x = _images(3)
    eng = _engine(random_fnet)
    a, b, c = eng.fit(x, seed=7), eng.fit(x, seed=7), eng.fit(x, seed=8)
    np.testing.assert_array_equal(a.heatmap, b.heatmap)
    assert np.abs(a.heatmap - c.heatmap).max() > 1e-3


@pytest.mark.parametrize("formulation", ["vmap_matmul", "unrolled", "loop"])
def test_nan_image_is_flagged_and_leaves_the_others_unchanged(random_fnet, formulation):
    x = _images(4)
    fit = dict(optimizer="sgd", lr=1e-2)  # the configuration compiled for the test above
    clean = _engine(random_fnet, formulation, **fit).fit(x, seed=0)
    bad = x.copy()
    bad[2, 5, 5, 1] = np.nan
    dirty = _engine(random_fnet, formulation, **fit).fit(bad, seed=0)
    assert dirty.diverged.tolist() == [False, False, True, False]
    assert not clean.diverged.any()
    for i in (0, 1, 3):
        np.testing.assert_array_equal(dirty.heatmap[i], clean.heatmap[i])
        np.testing.assert_array_equal(dirty.recon[i], clean.recon[i])


def test_a_diverging_fit_is_flagged(random_fnet):
    # an infinite SGD step blows every image up: each must be flagged, none may raise
    res = _engine(random_fnet, optimizer="sgd", lr=np.inf, momentum=0.0).fit(_images(2))
    assert res.diverged.all()


def test_streams_any_number_of_images_through_fixed_chunks(random_fnet):
    eng = _engine(random_fnet, chunk_size=3)
    x = _images(7)
    parts = list(eng.iter_fit([(np.arange(0, 5), x[:5]), (np.arange(5, 7), x[5:])], seed=2))
    assert [len(idx) for idx, _ in parts] == [3, 2, 2]
    whole = eng.fit(x, seed=2)
    streamed = np.concatenate([r.heatmap for _, r in parts])
    np.testing.assert_allclose(streamed, whole.heatmap, atol=SAME_FORMULATION_ATOL)


def test_bad_arguments_are_clear_errors(random_fnet):
    with pytest.raises(AnoUnetError, match="formulation"):
        _engine(random_fnet, "vmapp")
    with pytest.raises(AnoUnetError, match="optimizer"):
        _engine(random_fnet, optimizer="rmsprop")
    with pytest.raises(AnoUnetError, match="images must be"):
        _engine(random_fnet).fit(np.zeros((2, 32, 32), np.float32))


def test_planted_defects_are_hotter_inside_their_masks(tiny_data, tiny_trained):
    """Ano-Unet on the tiny preset: the heatmap is higher inside a planted defect than around it."""
    test = tiny_data["test"]
    eng = Engine(TINY.unet, TINY.fit, tiny_trained.fnet, tiny_trained.center)
    res = eng.fit(test.images, seed=0)
    defective = np.flatnonzero(test.labels == 1)
    inside = np.array([res.heatmap[i][test.masks[i]].mean() for i in defective])
    outside = np.array([res.heatmap[i][~test.masks[i]].mean() for i in defective])
    assert np.mean(inside > outside) >= 0.75, (inside, outside)
    assert inside.mean() > 1.5 * outside.mean()


def test_measure_picks_the_fastest_candidate_and_remembers_it(random_fnet):
    from anounet_jax.engine.fit import build_engine, measure_formulation, resolve_formulation

    fit = tiny_fit(steps=3)
    center = np.full(8, 0.1, np.float32)
    best, timings = measure_formulation(TINY.unet, fit, random_fnet, center, (32, 32, 3),
                                        candidates=("loop", "vmap_matmul"), chunk_size=4)
    assert set(timings) == {"loop", "vmap_matmul"} and all(np.isfinite(t) and t >= 0 for t in timings.values())
    assert best == min(timings, key=timings.get)
    again = measure_formulation(TINY.unet, fit, random_fnet, center, (32, 32, 3),
                                candidates=("loop", "vmap_matmul"), chunk_size=4)
    assert again == (best, timings)  # cached: not timed twice
    with pytest.raises(AnoUnetError, match="image shape"):
        resolve_formulation("measure")
    # on CPU the candidates are ("loop", "vmap_matmul"): the choice above is reused
    eng = build_engine(TINY.unet, fit, random_fnet, center, 32, "measure", chunk_size=4)
    assert eng.formulation == best

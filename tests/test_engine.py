import numpy as np
import pytest

from anounet_jax import AnoUnetError
from anounet_jax.config import TINY
from anounet_jax.engine.fit import FORMULATIONS, Engine, FitResult
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
    return Engine(TINY.unet, tiny_fit(**{"steps": 3, **fit}), fnet, center, formulation=formulation,
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
    start = _engine(random_fnet, "loop", optimizer="sgd", lr=1e-2, steps=0).fit(x, seed=1)
    # the fit moved every reconstruction by far more than the tolerance the formulations agree to
    assert np.abs(ref.recon - start.recon).reshape(4, -1).max(1).min() > 20 * CROSS_FORMULATION_ATOL
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


@pytest.mark.parametrize("slow", ["loop", "vmap_matmul"])
def test_measure_picks_the_fastest_candidate_and_remembers_it(random_fnet, monkeypatch, slow):
    """One candidate is made slow on purpose (each of its steps sleeps): the other must win, and an
    Engine asked to "measure" resolves to it on its first chunk without timing again."""
    import time

    from anounet_jax.engine import fit as fit_module

    monkeypatch.setattr(fit_module, "_MEASURED_CHOICE", {})
    real = Engine._fit_group

    def fit_group(self, images, keys, centers):
        if self.formulation == slow:
            time.sleep(0.05 * self.fit_cfg.steps)
        return real(self, images, keys, centers)

    monkeypatch.setattr(Engine, "_fit_group", fit_group)
    fit = tiny_fit(steps=3, optimizer="sgd", lr=1e-2)
    center = np.full(8, 0.1, np.float32)
    best, timings = fit_module.measure_formulation(TINY.unet, fit, random_fnet, center, (32, 32, 3),
                                                   candidates=("loop", "vmap_matmul"), chunk_size=4)
    assert set(timings) == {"loop", "vmap_matmul"} and all(np.isfinite(t) and t >= 0 for t in timings.values())
    assert best != slow and timings[slow] > timings[best]
    monkeypatch.setattr(fit_module.Engine, "_fit_group", real)  # a second timing would now differ
    eng = Engine(TINY.unet, fit, random_fnet, center, formulation="measure", chunk_size=4)
    assert eng.formulation is None  # resolved at the first chunk, when the image shape is known
    eng.fit(_images(2))
    assert eng.formulation == best


def test_the_losses_are_the_papers_and_beta_weights_the_f_net_term(random_fnet):
    """L_R = mean|x - G(x)|, L_C = mean|f(G(x)) - C|, L = L_R + beta L_C, checked against a hand
    computation from the reconstruction; and beta changes where the fit goes."""
    import jax

    from anounet_jax.engine import steps

    x = _images(3)
    eng = _engine(random_fnet, beta=2.5)
    keys = np.asarray(jax.random.split(jax.random.PRNGKey(0), 3))
    params, _ = jax.jit(lambda k, x: steps.init(eng.spec, k, x))(keys, x)
    total, (recon, loss_r, loss_c) = steps.losses(eng.spec, params, x, eng.row_centers(len(x)),
                                                  random_fnet.variables, eng.target)
    recon = np.asarray(recon)
    np.testing.assert_allclose(loss_r, np.abs(x - recon).mean((1, 2, 3)), rtol=1e-5)
    feats = np.asarray(random_fnet.apply(random_fnet.variables, recon))
    np.testing.assert_allclose(loss_c, np.abs(feats - np.asarray(eng.center)).mean(-1), rtol=1e-5)
    np.testing.assert_allclose(total, loss_r + 2.5 * loss_c, rtol=1e-6)
    # a feature scale divides L_C (lc_scale "normal"): beta is then in units of a normal image's L_C
    scaled = Engine(TINY.unet, eng.fit_cfg, random_fnet, eng.center, formulation="vmap_matmul",
                    feature_scale=5.0)
    total5 = steps.losses(scaled.spec, params, x, scaled.row_centers(len(x)), random_fnet.variables,
                          scaled.target)[0]
    np.testing.assert_allclose(total5, loss_r + 0.5 * loss_c, rtol=1e-6)
    plain = _engine(random_fnet, optimizer="sgd", lr=1e-2, beta=0.0).fit(x, seed=1)
    pulled = _engine(random_fnet, optimizer="sgd", lr=1e-2, beta=50.0).fit(x, seed=1)
    assert np.abs(plain.recon - pulled.recon).max() > 20 * CROSS_FORMULATION_ATOL
    assert pulled.loss_c.mean() < plain.loss_c.mean()  # the f-Net term pulls f(G(x)) toward C


def test_per_image_centers_equal_one_engine_per_center(random_fnet):
    """Each row's own C (a tile position's center) gives that image exactly the fit of an engine whose
    one C is that row, whatever the chunking; and the centers matter (they are not ignored)."""
    x = _images(3)
    rng = np.random.default_rng(5)
    centers = rng.normal(0.0, 0.5, (3, 8)).astype(np.float32)
    eng = _engine(random_fnet, beta=5.0, chunk_size=2)
    together = FitResult.concatenate([r for _, r in eng.iter_fit([(np.arange(3), x, centers)], seed=3)])
    for i in range(3):
        alone = Engine(TINY.unet, eng.fit_cfg, random_fnet, centers[i], formulation="vmap_matmul",
                       chunk_size=1).fit_chunk(x[i:i + 1], np.array([i]), seed=3)
        np.testing.assert_allclose(together.recon[i], alone.recon[0], atol=CROSS_FORMULATION_ATOL)
        np.testing.assert_allclose(together.loss_c[i], alone.loss_c[0], rtol=1e-4)
    shared = eng.fit(x, seed=3)  # the engine's own C (zeros) on every row
    assert np.abs(shared.recon - together.recon).max() > 20 * CROSS_FORMULATION_ATOL
    with pytest.raises(AnoUnetError, match="per-image centers must be"):
        eng.fit_chunk(x[:2], np.arange(2), centers=centers[:1])


def test_bfloat16_compute_stays_close_to_float32(random_fnet):
    import jax.numpy as jnp

    x = _images(2)
    center = np.full(8, 0.1, np.float32)
    fit = tiny_fit(steps=3, optimizer="sgd", lr=1e-2)
    f32 = Engine(TINY.unet, fit, random_fnet, center, formulation="vmap_matmul", chunk_size=2).fit(x, seed=1)
    bf16 = Engine(TINY.unet, fit, random_fnet, center, formulation="vmap_matmul", chunk_size=2,
                  compute_dtype=jnp.bfloat16).fit(x, seed=1)
    assert not bf16.diverged.any() and bf16.recon.dtype == np.float32
    diff = np.abs(bf16.recon - f32.recon).max()
    assert 0 < diff < 0.05, diff  # bfloat16 really ran (not bitwise float32) and stayed close


def test_at_beta_0_the_f_net_never_enters_the_fit(random_fnet):
    """beta 0 means no L_C: the steps do not run the f-Net (nor its backward pass, the cost), so an
    f-Net whose gradient is NaN everywhere leaves the fit exactly as a well-behaved one does; L_C is
    still reported."""
    import jax.numpy as jnp

    from anounet_jax.fnet.model import FrozenFNet

    # value 0 (finite L_C), gradient 0 * inf = NaN: any weight times it poisons the parameters
    bad = FrozenFNet(apply=lambda v, x: jnp.sqrt(jnp.maximum(x.mean((1, 2)) - 2.0, 0.0)).sum(-1, keepdims=True)
                     * jnp.ones((1, 8)), variables={})
    x = _images(3)
    good = _engine(random_fnet, beta=0.0).fit(x, seed=2)
    res = _engine(bad, beta=0.0).fit(x, seed=2)
    assert not res.diverged.any()
    np.testing.assert_array_equal(res.recon, good.recon)
    np.testing.assert_allclose(res.loss_c, 0.1, rtol=1e-6)  # |0 - C| with C = 0.1
    assert _engine(bad, beta=1e-3).fit(x, seed=2).diverged.all()  # with any weight it does enter

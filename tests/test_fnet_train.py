"""f-Net training (L2-softmax, DOC) on tiny embedded data, and FrozenFNet feature extraction."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anounet_jax.config import TINY
from anounet_jax.data.embedded import load_normal, load_reference
from anounet_jax.fnet.model import FrozenFNet, build_fnet_module, compute_center
from anounet_jax.fnet.train import Classifier, train_fnet
from anounet_jax.models.small_cnn import SmallCNN

SIZE = TINY.image_size


@pytest.fixture(scope="module")
def data():
    # 32 normal brick patches, 23 reference classes x 3 patches: 3 steps of 32 per epoch.
    return load_normal("brick", SIZE, 32), load_reference("brick", SIZE, 3)


def _cfg(method, epochs=4):
    return dataclasses.replace(TINY.fnet, method=method, epochs=epochs)


def _relative_spread(fnet, normal, reference):
    """Mean distance of normal features to their mean C, over the mean distance of references to C."""
    fn, fr = fnet.features(normal.images), fnet.features(reference.images)
    c = compute_center(fn)
    return np.linalg.norm(fn - c, axis=1).mean() / np.linalg.norm(fr - c, axis=1).mean()


@pytest.fixture(scope="module")
def trained(data):
    """Both methods trained for 4 epochs of 3 steps; DOC starts from a known untrained backbone."""
    normal, reference = data
    # XLA:CPU needs ~5 s to compile each threefry random op (every parameter initializer, the
    # augmentation); the "rbg" PRNG compiles in well under a second and changes nothing tested here.
    with jax.default_prng_impl("rbg"):
        module = build_fnet_module(TINY.fnet)
        untrained = module.init(jax.random.PRNGKey(0), normal.images[:2], train=False)
        out = {"untrained": FrozenFNet.from_module(module, untrained)}
        out["l2softmax"] = train_fnet(_cfg("l2softmax"), normal, reference, seed=0, progress=False)
        # doc_lambda 10 instead of the preset's 0.1: with 12 steps the compactness term must dominate
        # enough to be measured (at 0.1 it shrinks the spread by only a few percent more than lambda 0)
        out["doc"] = train_fnet(dataclasses.replace(_cfg("doc"), doc_lambda=10.0), normal, reference,
                                seed=0, progress=False, init_variables=untrained)
    return out


@pytest.mark.parametrize("method", ["l2softmax", "doc"])
def test_training_reduces_loss_and_gives_finite_features(trained, data, method):
    normal, _ = data
    result = trained[method]
    h = result.history
    assert len(h) == 4 and all(np.isfinite(h))
    assert h[-1] < 0.9 * h[0], h
    f = result.fnet.features(normal.images)
    assert f.shape == (len(normal), 64) and f.dtype == np.float32
    assert np.all(np.isfinite(f))
    # the frozen net holds only the backbone (the classification head is dropped)
    assert set(result.fnet.variables) == {"params", "batch_stats"}
    assert "head" not in result.fnet.variables["params"]


def test_doc_compactness_shrinks_normal_spread(trained, data):
    normal, reference = data
    before = _relative_spread(trained["untrained"], normal, reference)
    after = _relative_spread(trained["doc"].fnet, normal, reference)
    assert after < 0.9 * before, (before, after)


def test_features_in_batches_equal_one_call(trained, data):
    normal, _ = data
    fnet = trained["doc"].fnet
    whole = np.asarray(jax.jit(fnet.apply)(fnet.variables, normal.images))  # one call, all 32 images
    np.testing.assert_allclose(fnet.features(normal.images), whole, rtol=1e-5, atol=1e-5)
    # 40 images: a full batch and a zero-padded one
    twice = np.concatenate([normal.images, normal.images[:8]])
    np.testing.assert_allclose(fnet.features(twice), np.concatenate([whole, whole[:8]]), rtol=1e-5, atol=1e-5)
    # inference BatchNorm: an image's features do not depend on the rest of its batch
    np.testing.assert_allclose(fnet.features(normal.images[3:4]), whole[3:4], rtol=1e-5, atol=1e-5)


class _Times7(nn.Module):
    """A backbone whose features are 7 times those of `inner` (same parameters)."""

    inner: nn.Module

    @nn.compact
    def __call__(self, x, train: bool = False):
        return 7.0 * self.inner(x, train=train)


def test_l2_softmax_logits_are_the_head_of_alpha_times_unit_features():
    x = np.random.default_rng(0).random((5, 16, 16, 3), dtype=np.float32)
    alpha, classes = 16.0, 6
    backbone = SmallCNN(width=4, features=8)
    with jax.default_prng_impl("rbg"):  # compiles fast on XLA:CPU (see `trained`)
        variables = Classifier(backbone, classes, alpha).init(jax.random.PRNGKey(0), x, train=False)
    params = dict(variables["params"])
    params["head"] = {"kernel": params["head"]["kernel"], "bias": jnp.linspace(-1.0, 1.0, classes)}
    variables = {"params": params, "batch_stats": variables["batch_stats"]}
    kernel = np.asarray(params["head"]["kernel"], np.float64)
    bias = np.asarray(params["head"]["bias"], np.float64)

    f, logits, _ = Classifier(backbone, classes, alpha).apply(variables, x, train=False)
    f = np.asarray(f, np.float64)
    assert f.shape == (5, 8) and logits.shape == (5, classes)
    z = alpha * f / np.linalg.norm(f, axis=1, keepdims=True)
    np.testing.assert_allclose(logits, z @ kernel + bias, rtol=1e-5, atol=1e-5)

    # the logits do not depend on the scale of f: a backbone giving 7 f gives the same logits
    scaled_vars = {"params": {"backbone": {"inner": params["backbone"]}, "head": params["head"]},
                   "batch_stats": {"backbone": {"inner": variables["batch_stats"]["backbone"]}}}
    f7, logits7, _ = Classifier(_Times7(backbone), classes, alpha).apply(scaled_vars, x, train=False)
    np.testing.assert_allclose(f7, 7.0 * f, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits7, logits, rtol=1e-5, atol=1e-5)

    # DOC (alpha_l2 None): the head sees f itself, so the scale does change the logits
    _, plain, _ = Classifier(backbone, classes, None).apply(variables, x, train=False)
    np.testing.assert_allclose(plain, f @ kernel + bias, rtol=1e-5, atol=1e-5)
    _, plain7, _ = Classifier(_Times7(backbone), classes, None).apply(scaled_vars, x, train=False)
    np.testing.assert_allclose(plain7, 7.0 * f @ kernel + bias, rtol=1e-5, atol=1e-5)


def _train_mode_mismatch(trained_fnet, images):
    """Relative distance between the frozen (inference-mode) features of `images` and the features
    training computes for the same batch (BatchNorm with the batch's own statistics)."""
    module = build_fnet_module(TINY.fnet)
    frozen = trained_fnet.fnet.features(images)
    seen, _ = module.apply(trained_fnet.fnet.variables, jnp.asarray(images), train=True, mutable=["batch_stats"])
    seen = np.asarray(seen)
    return float(np.linalg.norm(frozen - seen) / np.linalg.norm(seen - seen.mean(0)))


def test_recomputed_batch_norm_statistics_make_the_frozen_f_net_the_trained_one(trained, data):
    """With 12 training steps the moving averages (momentum 0.99) are still ~89% their initial values:
    the frozen f-Net's features of the training images differ from what training saw. Recomputed
    statistics (fnet.bn_stats "recompute") make them agree, and give C a real scale."""
    normal, reference = data
    images = np.concatenate([normal.images, reference.images])
    with jax.default_prng_impl("rbg"):
        recomputed = train_fnet(dataclasses.replace(_cfg("l2softmax"), bn_stats="recompute"), normal, reference,
                                seed=0, progress=False)
    moving = trained["l2softmax"]
    # same weights (same seed and data); only the statistics differ
    w_a = jax.tree.leaves(moving.fnet.variables["params"])
    w_b = jax.tree.leaves(recomputed.fnet.variables["params"])
    assert all(np.array_equal(a, b) for a, b in zip(w_a, w_b))
    bad, good = _train_mode_mismatch(moving, images), _train_mode_mismatch(recomputed, images)
    print(f"mismatch: moving {bad:.4f}, recomputed {good:.4f}")
    assert good < 0.1 and bad > 3 * good
    assert recomputed.feature_scale == pytest.approx(
        np.abs(recomputed.train_features - recomputed.center).mean(), rel=1e-6)


def test_flawed_copies_change_only_their_region_and_repeat_with_the_seed(data):
    from anounet_jax.fnet.irregularities import flawed_copies

    normal, _ = data
    x = normal.images[:12]
    flawed, masks = flawed_copies(x, seed=3)
    again, _ = flawed_copies(x, seed=3)
    np.testing.assert_array_equal(flawed, again)
    assert flawed.shape == x.shape and masks.shape == x.shape[:3]
    changed = np.abs(flawed - x).max(-1) > 1e-6
    assert not (changed & (masks == 0)).any()  # nothing outside the region
    assert all(changed[i][masks[i] > 0.5].mean() > 0.3 for i in range(len(x)))  # the region is damaged
    assert ((masks > 0.5).mean((1, 2)) < 0.2).all()  # a local flaw, not a new image


def test_synthetic_flaw_training_localizes_flaws(data):
    """With synthetic flaws the f-Net also trains a flaw-localization head: its loss falls, and the
    frozen f-Net (head dropped) has the same interface as before."""
    normal, reference = data
    with jax.default_prng_impl("rbg"):
        cfg = dataclasses.replace(_cfg("l2softmax", epochs=6), synthetic_flaws=True, bn_stats="recompute")
        res = train_fnet(cfg, normal, reference, seed=0, progress=False)
    assert res.history[-1] < res.history[0] and np.isfinite(res.history).all()
    feats = res.fnet.features(normal.images[:4])
    assert feats.shape == (4, build_fnet_module(TINY.fnet).features) and np.isfinite(feats).all()

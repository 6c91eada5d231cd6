"""Feature-memory baseline (PatchCore style): the f-Net's local feature maps, the greedy coreset, blocked
nearest-neighbour distances and the maps/scores, on a tiny random SmallCNN f-Net and 32x32 images."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anounet_jax.baselines import feature_memory as fm
from anounet_jax.config import FNetConfig
from anounet_jax.data.types import ImageSet
from anounet_jax.errors import AnoUnetError
from anounet_jax.fnet.local import cell_centers, local_feature_fn, local_feature_shape, upsample_to_image
from anounet_jax.fnet.model import FrozenFNet, build_fnet_module

SMALL = FNetConfig(arch="small_cnn", small_cnn_width=8)
MOBILE = FNetConfig(arch="mobilenet_v2", alpha=0.5)
SIZE = 32


def random_variables(module, seed: int = 0):
    """module.init's variable tree with numpy-drawn values: He-normal kernels, BatchNorm scale / var 1,
    biases / mean 0. (module.init itself compiles every random initializer: ~10 s on a busy CPU.)"""
    spec = jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32)
    shapes = jax.eval_shape(lambda a: module.init(jax.random.PRNGKey(0), a), spec)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "kernel" in name:
            return jnp.asarray(rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape), jnp.float32)
        return jnp.full(leaf.shape, 1.0 if ("scale" in name or "'var'" in name) else 0.0, jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def small_fnet():
    module = build_fnet_module(SMALL)
    return FrozenFNet.from_module(module, random_variables(module))


def stripes(n: int, seed: int) -> np.ndarray:
    """One normal texture: smooth diagonal stripes with a random phase per image, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    wave = 0.45 + 0.15 * np.sin(2 * np.pi * (xx + 0.5 * yy) / 8.0 + phase)
    img = wave[..., None] * np.array([0.9, 0.8, 0.7], np.float32) + rng.normal(0, 0.02, (n, SIZE, SIZE, 3))
    return np.clip(img, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def memory(small_fnet):
    cfg = fm.FeatureMemoryConfig(coreset_fraction=0.25, batch_size=8, memory_block=64)
    return fm.train(ImageSet(stripes(40, seed=0)), small_fnet, SMALL, cfg, seed=0)


# ----------------------------------------------------------------------------- local features


def test_local_feature_shapes_small_cnn(small_fnet):
    x = jnp.asarray(stripes(2, seed=1))
    # default: stride-4 (16 ch) + stride-8 (32 ch) maps on the stride-4 grid
    assert local_feature_fn(SMALL)(small_fnet.variables, x).shape == (2, 8, 8, 48)
    f = local_feature_fn(SMALL, ("stride2", "stride8"))(small_fnet.variables, x)
    assert f.shape == (2, 16, 16, 8 + 32) and f.dtype == jnp.float32
    assert local_feature_shape(SMALL, (64, 64)) == (16, 16, 48)


def test_local_feature_shapes_mobilenet_v2():
    # alpha 0.5: stride 4 and 8 maps have 16 channels each; stride 16 (block 12) has 48
    assert local_feature_shape(MOBILE, (64, 64)) == (16, 16, 32)
    assert local_feature_shape(MOBILE, (96, 96)) == (24, 24, 32)
    assert local_feature_shape(MOBILE, (64, 64), ("stride8", "stride16")) == (8, 8, 64)


def test_local_average_and_resample(small_fnet):
    """The stride-8 part of the features is the 3x3-averaged stride-8 map, interpolated linearly
    from the stride-8 cell centres (pixels 7, 15, 23, 31) to the stride-4 ones (3, 7, ..., 31)."""
    module = build_fnet_module(SMALL)
    x = jnp.asarray(stripes(2, seed=2))
    _, maps = module.apply(small_fnet.variables, x, train=False, return_maps=True)
    m = np.asarray(maps["stride8"])  # (2, 4, 4, 32)
    pad = np.pad(m, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cnt = np.pad(np.ones((1, 4, 4, 1)), ((0, 0), (1, 1), (1, 1), (0, 0)))
    avg = sum(pad[:, i:i + 4, j:j + 4] for i in range(3) for j in range(3))
    avg /= sum(cnt[:, i:i + 4, j:j + 4] for i in range(3) for j in range(3))
    fine, coarse = 4 * np.arange(8) + 3, 8 * np.arange(4) + 7
    expected = np.apply_along_axis(lambda v: np.interp(fine, coarse, v), 1, avg)
    expected = np.apply_along_axis(lambda v: np.interp(fine, coarse, v), 2, expected)
    got = local_feature_fn(SMALL, ("stride4", "stride8"))(small_fnet.variables, x)[..., 16:]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [32, 30])
def test_cell_centers_are_receptive_field_centres(small_fnet, size):
    """The input pixels a stride-8 cell depends on (its gradient's support) are centred on
    cell_centers(size, 8), for even sizes (padding after) and odd ones (padding both sides)."""
    module = build_fnet_module(SMALL)
    x = jnp.asarray(np.random.default_rng(0).random((1, size, size, 3), np.float32))
    centers = cell_centers(size, 8)
    assert len(centers) == -(-size // 8)
    if size == 32:
        np.testing.assert_array_equal(centers, [7, 15, 23, 31])
        np.testing.assert_array_equal(cell_centers(64, 4), 4 * np.arange(16) + 3)

    def cell(img, i):
        # summed over channels: with random weights and input, every pixel of the receptive field
        # reaches some active (ReLU > 0) unit, so the gradient's support is the whole field
        _, maps = module.apply(small_fnet.variables, img, train=False, return_maps=True)
        return maps["stride8"][0, i, 1].sum()

    for i in (1, 2):  # interior cells: the support is not clipped by the border
        g = np.abs(np.asarray(jax.grad(cell)(x, i)))[0].sum((1, 2))
        rows = np.flatnonzero(g > 0)
        assert (rows.min() + rows.max()) / 2 == centers[i]


def test_upsample_to_image_puts_cells_on_their_centres():
    maps = np.arange(16, dtype=np.float32).reshape(1, 4, 4) * 10  # rows 0, 40, 80, 120 at col 0
    up = np.asarray(upsample_to_image(jnp.asarray(maps), (32, 32), 8))
    assert up.shape == (1, 32, 32)
    np.testing.assert_allclose(up[0, [7, 15, 23, 31], 7], maps[0, :, 0], rtol=1e-6)  # at the centres
    np.testing.assert_allclose(up[0, :8, 7], 0.0, atol=1e-6)  # constant before the first centre
    np.testing.assert_allclose(up[0, 11, 7], 20.0, rtol=1e-6)  # halfway between two centres


def test_default_apply_outputs_unchanged(small_fnet):
    module = build_fnet_module(SMALL)
    x = jnp.asarray(stripes(2, seed=3))
    plain = module.apply(small_fnet.variables, x, train=False)
    pooled, maps = module.apply(small_fnet.variables, x, train=False, return_maps=True)
    assert isinstance(plain, jax.Array) and plain.shape == (2, 64)
    np.testing.assert_array_equal(plain, pooled)
    assert {k: v.shape for k, v in maps.items()} == {
        "stride2": (2, 16, 16, 8), "stride4": (2, 8, 8, 16), "stride8": (2, 4, 4, 32)}
    # the stride-8 map is the last stage's ReLU(BatchNorm) output
    _, inter = module.apply(small_fnet.variables, x, train=False, capture_intermediates=True,
                            mutable=["intermediates"])
    np.testing.assert_allclose(maps["stride8"], jax.nn.relu(inter["intermediates"]["bn2"]["__call__"][0]),
                               rtol=1e-6)

    mobile = build_fnet_module(MOBILE)
    spec = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    variables = jax.eval_shape(lambda a: mobile.init(jax.random.PRNGKey(0), a), spec)
    out = jax.eval_shape(lambda v, a: mobile.apply(v, a, train=False), variables, spec)
    assert isinstance(out, jax.ShapeDtypeStruct) and out.shape == (2, 1280)
    pooled, maps = jax.eval_shape(lambda v, a: mobile.apply(v, a, train=False, return_maps=True),
                                  variables, spec)
    assert pooled.shape == (2, 1280)
    assert {k: v.shape for k, v in maps.items()} == {
        "stride2": (2, 32, 32, 8), "stride4": (2, 16, 16, 16), "stride8": (2, 8, 8, 16),
        "stride16": (2, 4, 4, 48), "stride32": (2, 2, 2, 1280)}


# ----------------------------------------------------------------------------- coreset / distances


def _cover_radius(points, centers):
    d2 = ((points[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
    return float(np.sqrt(d2.min(1).max()))


def test_coreset_size_distinct_and_covering():
    rng = np.random.default_rng(0)
    # clusters of very different sizes: a random subset over-samples the big ones
    centers = rng.normal(0, 5, (12, 6))
    sizes = [800, 400, 200, 100, 50, 25, 12, 6, 3, 2, 1, 1]
    pts = np.concatenate([c + rng.normal(0, 0.3, (s, 6)) for c, s in zip(centers, sizes)]).astype(np.float32)
    idx = fm.greedy_coreset(pts, 40, seed=0, chunk=16)
    assert idx.shape == (40,) and len(set(idx.tolist())) == 40
    np.testing.assert_array_equal(idx, fm.greedy_coreset(pts, 40, seed=0, chunk=7))  # chunking is invisible
    radius = _cover_radius(pts, pts[idx])
    for s in range(5):
        random_idx = np.random.default_rng(s).choice(len(pts), 40, replace=False)
        assert radius <= _cover_radius(pts, pts[random_idx])
    # the projection path (C > projection_dim) and size >= n
    wide = rng.normal(size=(300, 50)).astype(np.float32)
    idx = fm.greedy_coreset(wide, 30, seed=1, projection_dim=8)
    assert idx.shape == (30,) and len(set(idx.tolist())) == 30
    np.testing.assert_array_equal(fm.greedy_coreset(wide, 500), np.arange(300))
    # duplicates in the data still give distinct indices
    assert len(set(fm.greedy_coreset(np.zeros((20, 3), np.float32), 10).tolist())) == 10


@pytest.mark.parametrize("k", [1, 3])
def test_blocked_nearest_distances_match_brute_force(k):
    rng = np.random.default_rng(1)
    q = rng.normal(size=(50, 5)).astype(np.float32)
    mem = rng.normal(size=(70, 5)).astype(np.float32)
    blocks, sq = fm.memory_blocks(mem, 16)  # 5 blocks, the last one padded
    got = np.asarray(fm.nearest_distances(jnp.asarray(q), jnp.asarray(blocks), jnp.asarray(sq), k))
    d = np.sqrt(((q[:, None] - mem[None]) ** 2).sum(-1))
    np.testing.assert_allclose(got, np.sort(d, 1)[:, :k].mean(1), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- the baseline


def test_planted_square_is_found(memory):
    assert memory.memory.shape == (fm.memory_size(40 * 64, memory.cfg), 48) == (640, 48)
    normal = stripes(6, seed=10)
    bad = stripes(1, seed=11)
    bad[0, 10:20, 14:24] = 1.0  # a bright 10x10 square
    res = memory.score_maps(np.concatenate([normal, bad]))
    assert res.heatmap.shape == (7, SIZE, SIZE) and res.heatmap.dtype == np.float32
    assert res.score.shape == (7,) and not res.diverged.any()
    np.testing.assert_array_equal(res.recon, np.concatenate([normal, bad]))
    r, c = np.unravel_index(np.argmax(res.heatmap[-1]), (SIZE, SIZE))
    assert 10 <= r < 20 and 14 <= c < 24
    assert res.score[-1] > res.score[:-1].max()


def test_batched_equals_one_at_a_time_and_deterministic(memory, small_fnet):
    x = stripes(5, seed=20)
    x[2, 4:10, 4:10] = 0.0
    batched = memory.score_maps(x)
    single = fm.BaselineResult.concatenate([memory.score_maps(x[i:i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(batched.heatmap, single.heatmap, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batched.score, single.score, rtol=1e-5, atol=1e-6)
    again = fm.train(ImageSet(stripes(40, seed=0)), small_fnet, SMALL, memory.cfg, seed=0)
    np.testing.assert_array_equal(again.memory, memory.memory)
    # k = 3 neighbours: a mean of larger distances, so never below k = 1
    k3 = dataclasses.replace(memory, cfg=dataclasses.replace(memory.cfg, k=3))
    assert np.all(k3.score_maps(x).score >= batched.score - 1e-6)
    assert memory.score_maps(x[:0]).heatmap.shape == (0, SIZE, SIZE)


def test_user_errors(memory, small_fnet):
    with pytest.raises(AnoUnetError, match="16x16"):
        memory.score_maps(stripes(2, seed=0)[:, :16, :16])
    with pytest.raises(AnoUnetError):
        memory.score_maps(np.zeros((2, SIZE, SIZE), np.float32))
    normal = ImageSet(stripes(4, seed=0))
    with pytest.raises(AnoUnetError, match="stride16"):
        fm.train(normal, small_fnet, SMALL, fm.FeatureMemoryConfig(layers=("stride16",)))
    with pytest.raises(AnoUnetError, match="coreset_fraction"):
        fm.train(normal, small_fnet, SMALL, fm.FeatureMemoryConfig(coreset_fraction=0.0))
    with pytest.raises(AnoUnetError, match="k must"):
        fm.train(normal, small_fnet, SMALL, fm.FeatureMemoryConfig(k=0))

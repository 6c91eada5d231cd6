"""The synthetic validation suite: texture families, planted defects with exact masks, data source."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from anounet_jax.data.defects import DEFECT_KINDS
from anounet_jax.data.mvtec import load_mvtec
from anounet_jax.data.synthetic import (FAMILIES, HELD_OUT, TUNING, applicable_kinds, defect_free_test_images,
                                        load_synthetic, parse_synthetic, write_mvtec)
from anounet_jax.errors import AnoUnetError

NAMES = list(FAMILIES)


def _check_image(x, shape):
    assert x.shape == shape and x.dtype == np.float32
    assert np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1


def test_families_and_split():
    assert len(FAMILIES) >= 8 and len(DEFECT_KINDS) >= 8
    assert not set(TUNING) & set(HELD_OUT)
    assert set(TUNING) | set(HELD_OUT) == set(FAMILIES)
    assert {"weave", "speckle", "fibres"} <= set(HELD_OUT)
    assert abs(len(TUNING) - len(HELD_OUT)) <= 1


@pytest.mark.parametrize("name", NAMES)
def test_family_shapes(name):
    gen = FAMILIES[name]
    _check_image(gen(np.random.default_rng(0), 64, 64), (64, 64, 3))
    _check_image(gen(np.random.default_rng(1), 80, 120), (80, 120, 3))
    _check_image(gen(np.random.default_rng(2), 120, 80), (120, 80, 3))


@pytest.mark.parametrize("name", ["weave", "cells"])
def test_family_large(name):
    x = FAMILIES[name](np.random.default_rng(0), 512, 512)
    _check_image(x, (512, 512, 3))
    assert x.std() > 0.05


def _features(x):
    """Mean colour, colour spread and horizontal gradient energy: a coarse texture signature."""
    return np.r_[x.mean((0, 1)), x.std((0, 1)), 2 * np.abs(np.diff(x, axis=1)).mean()]


def test_normal_samples_alike_families_differ():
    feats = {n: np.stack([_features(g(np.random.default_rng([i, k]), 64, 64)) for k in range(6)])
             for i, (n, g) in enumerate(FAMILIES.items())}
    centroids = {n: f[:4].mean(0) for n, f in feats.items()}
    for name, f in feats.items():
        assert np.abs(f - f.mean(0)).max() < 0.06, name  # samples share the family's statistics
        assert np.abs(f[0] - f[1]).max() > 0  # ... but are different samples
        for x in f[4:]:  # held-out samples land nearest their own family
            assert min(centroids, key=lambda n: np.abs(centroids[n] - x).max()) == name
    pairs = [(a, b) for a in NAMES for b in NAMES if a < b]
    assert min(np.abs(centroids[a] - centroids[b]).max() for a, b in pairs) > 0.1


@pytest.mark.parametrize("kind", list(DEFECT_KINDS))
@pytest.mark.parametrize("name", NAMES)
def test_defect_is_inside_its_mask(name, kind):
    gen = FAMILIES[name]
    rng = np.random.default_rng([NAMES.index(name), list(DEFECT_KINDS).index(kind)])
    x = gen(rng, 64, 64)
    y, mask = DEFECT_KINDS[kind](rng, x, gen)
    _check_image(y, x.shape)
    assert mask.dtype == bool and mask.shape == x.shape[:2] and mask.any()
    assert np.array_equal(y[~mask], x[~mask])  # untouched outside, bit for bit
    change = np.abs(y - x).max(-1)
    assert change[mask].min() > 0 and change[mask].max() > 0.05 and change[mask].mean() > 0.03


@pytest.mark.parametrize("kind", ["dark_spot", "bright_spot", "scratch"])
def test_small_defects_at_native_resolution(kind):
    gen = FAMILIES["tiles"]
    widths = []
    for k in range(8):
        rng = np.random.default_rng([99, k])
        x = gen(rng, 256, 256)
        y, mask = DEFECT_KINDS[kind](rng, x, gen)
        assert mask.any() and np.array_equal(y[~mask], x[~mask])
        ys, xs = np.nonzero(mask)  # width: sqrt(area) of a spot, area / extent of a scratch
        widths.append(np.sqrt(mask.sum()) if kind != "scratch" else mask.sum() / max(np.ptp(ys), np.ptp(xs), 1))
    assert min(widths) <= 7  # some defects are only a few pixels wide


def test_defects_on_non_square():
    gen = FAMILIES["bricks"]
    for k, fn in enumerate(DEFECT_KINDS.values()):
        rng = np.random.default_rng(k)
        x = gen(rng, 80, 120)
        y, mask = fn(rng, x, gen)
        assert y.shape == x.shape and mask.shape == (80, 120) and mask.any()
        assert np.array_equal(y[~mask], x[~mask])


def test_load_synthetic_layout():
    d = load_synthetic("grain", size=(48, 64), n_train=3, n_test_good=2, n_test_defect=9)
    train, test = d["train"], d["test"]
    assert train.images.shape == (3, 48, 64, 3) and train.ids == ["train/good/0000", "train/good/0001",
                                                                  "train/good/0002"]
    assert list(train.labels) == [0, 0, 0]
    assert test.ids[:3] == ["test/good/000", "test/good/001", "test/dark_spot/000"]
    assert test.ids[-1] == "test/dark_spot/001"  # kinds cycle, numbered within each kind
    assert list(test.labels) == [0, 0] + [1] * 9
    assert not test.masks[:2].any() and all(m.any() for m in test.masks[2:])
    for a in train.images:  # train and test are different samples
        assert all(np.abs(a - b).max() > 0.05 for b in test.images)


@pytest.mark.parametrize("name", ["weave", "leather"])
def test_defect_free_test_images_differ_only_inside_the_masks(name):
    kw = dict(size=(40, 48), n_test_good=2, n_test_defect=9, seed=5)
    test = load_synthetic(name, n_train=0, **kw)["test"]
    clean = defect_free_test_images(name, **kw)
    assert clean.shape == test.images.shape and clean.dtype == np.float32
    assert np.array_equal(clean[:2], test.images[:2])  # good images as they are
    for x, c, m in zip(test.images[2:], clean[2:], test.masks[2:]):
        assert np.array_equal(x[~m], c[~m])  # outside the mask: the very image the defect was planted in
        assert np.abs(x[m] - c[m]).max() > 0.5 / 255  # inside: the defect is gone


def test_kinds_and_applicability():
    assert "orientation" not in applicable_kinds("clouds")
    assert set(applicable_kinds("weave")) == set(DEFECT_KINDS)
    d = load_synthetic("clouds", size=32, n_train=0, n_test_good=0, n_test_defect=7)
    assert not any("orientation" in i for i in d["test"].ids)
    d = load_synthetic("weave", size=32, n_train=0, n_test_good=0, n_test_defect=4, kinds=["scratch"])
    assert d["test"].ids == [f"test/scratch/{i:03d}" for i in range(4)]
    with pytest.raises(AnoUnetError, match="unknown defect kinds"):
        load_synthetic("weave", size=32, kinds=["dent"])


def test_reproducible_and_independent_of_counts():
    kw = dict(size=40, n_test_good=2, n_test_defect=5)
    a = load_synthetic("cells", n_train=4, seed=3, **kw)
    b = load_synthetic("cells", n_train=4, seed=3, **kw)
    c = load_synthetic("cells", n_train=4, seed=4, **kw)
    d = load_synthetic("cells", n_train=1, seed=3, size=40, n_test_good=1, n_test_defect=8)
    for split in ("train", "test"):
        assert a[split].images.tobytes() == b[split].images.tobytes()
        assert not np.array_equal(a[split].images, c[split].images)
    assert a["test"].masks.tobytes() == b["test"].masks.tobytes()
    assert np.array_equal(a["train"].images[:1], d["train"].images)  # n_train changes nothing else
    assert np.array_equal(a["test"].images[:1], d["test"].images[:1])
    assert np.array_equal(a["test"].images[2:], d["test"].images[1:6])  # defects don't depend on n_good


def test_write_mvtec_round_trip(tmp_path):
    kw = dict(size=(48, 64), n_train=3, n_test_good=2, n_test_defect=8, seed=1)
    root = write_mvtec(tmp_path / "weave", "weave", **kw)
    assert (root / "train/good/0000.png").is_file() and (root / "ground_truth/scratch/000_mask.png").is_file()
    ref = load_synthetic("weave", **kw)
    train, test = load_mvtec(root, None, "train"), load_mvtec(root, None, "test")
    assert train.ids == ref["train"].ids
    assert np.abs(train.images - ref["train"].images).max() <= 0.5 / 255 + 1e-6
    index = {ident: i for i, ident in enumerate(ref["test"].ids)}
    assert sorted(test.ids) == sorted(index)
    for i, ident in enumerate(test.ids):
        j = index[ident]
        assert np.abs(test.images[i] - ref["test"].images[j]).max() <= 1 / 255
        assert np.array_equal(test.masks[i], ref["test"].masks[j])
        assert test.labels[i] == ref["test"].labels[j]


def test_parse_and_errors():
    assert parse_synthetic("synthetic:weave") == "weave"
    assert parse_synthetic("synthetic:tuning") == list(TUNING)
    assert parse_synthetic("synthetic:held-out") == list(HELD_OUT)
    with pytest.raises(AnoUnetError) as e:
        parse_synthetic("synthetic:velvet")
    assert "velvet" in str(e.value) and all(n in str(e.value) for n in NAMES)
    with pytest.raises(AnoUnetError, match="synthetic:NAME"):
        parse_synthetic("mvtec:weave")
    with pytest.raises(AnoUnetError, match="weave"):
        load_synthetic("velvet")
    with pytest.raises(AnoUnetError):
        load_synthetic("weave", size=8)
    with pytest.raises(AnoUnetError):
        load_synthetic("weave", size=None)


def test_make_synthetic_script(tmp_path, capsys):
    path = Path(__file__).resolve().parents[1] / "scripts" / "make_synthetic.py"
    spec = importlib.util.spec_from_file_location("make_synthetic", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = [str(tmp_path), "--families", "grid,speckle", "--size", "32x48", "--n-train", "2",
            "--n-good", "1", "--n-defect", "3"]
    assert script.main(argv) == 0
    for family in ("grid", "speckle"):
        test = load_mvtec(tmp_path / family, None, "test")
        assert test.images.shape == (4, 32, 48, 3) and test.masks[1:].any()
    assert script.main([str(tmp_path), "--families", "velvet"]) == 2
    assert "velvet" in capsys.readouterr().err
    assert script.parse_families("held-out") == list(HELD_OUT)

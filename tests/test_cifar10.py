"""CIFAR-10 anomaly split through tensorflow-datasets, fully offline under tfds mock data."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from anounet_jax.data.cifar10 import CIFAR10_CLASSES, load_cifar10_anomaly, reference_class_names
from anounet_jax.errors import AnoUnetError


def fake_source(n_train=40, n_test=20):
    """``as_data_source_fn`` for tfds mock_data: label = index % 10, every pixel = 20 * label."""

    def as_data_source(self, split, **kwargs):
        n = n_train if split == "train" else n_test
        return [
            {"image": np.full((32, 32, 3), 20 * (i % 10), np.uint8), "label": np.int64(i % 10), "id": str(i)}
            for i in range(n)
        ]

    return as_data_source


def test_paper_split_with_known_labels():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(as_data_source_fn=fake_source()):
        d = load_cifar10_anomaly(size=8, n_reference=12, seed=3)
        again = load_cifar10_anomaly(size=8, n_reference=12, seed=3)
        other = load_cifar10_anomaly(size=8, n_reference=12, seed=4)
    assert set(d) == {"train_normal", "reference", "test"}

    normal = d["train_normal"]
    assert normal.images.shape == (4, 8, 8, 3) and normal.images.dtype == np.float32
    assert normal.ids == ["train/00007", "train/00017", "train/00027", "train/00037"]
    assert (normal.labels == 0).all() and normal.masks is None
    np.testing.assert_allclose(normal.images, 140 / 255, atol=1e-6)  # horse pixels, resize of a constant

    ref = d["reference"]
    assert ref.images.shape == (12, 8, 8, 3) and len(set(ref.ids)) == 12
    original = np.array([int(i.split("/")[1]) % 10 for i in ref.ids])
    assert not np.isin(original, [4, 7]).any()
    names = reference_class_names()
    assert names == ["airplane", "automobile", "bird", "cat", "dog", "frog", "ship", "truck"]
    assert [names[k] for k in ref.labels] == [CIFAR10_CLASSES[c] for c in original]
    np.testing.assert_allclose(ref.images[:, 0, 0, 0], 20 * original / 255, atol=1e-6)
    assert ref.ids == again["reference"].ids and ref.ids != other["reference"].ids

    test = d["test"]
    assert test.ids == ["test/00004", "test/00007", "test/00014", "test/00017"]
    assert test.labels.tolist() == [1, 0, 1, 0] and test.masks is None
    assert test.images.shape == (4, 8, 8, 3)


def test_random_mock_data_shapes():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=40):
        d = load_cifar10_anomaly(size=(12, 10), n_reference=5, download=False)
    for s in d.values():
        assert s.images.dtype == np.float32 and s.images.shape[1:] == (12, 10, 3)
        assert 0.0 <= s.images.min() and s.images.max() <= 1.0
    assert len(d["reference"]) == 5 and d["reference"].labels.max() < 8


def test_errors():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(as_data_source_fn=fake_source()):
        with pytest.raises(AnoUnetError, match="n_reference=1000"):
            load_cifar10_anomaly(size=8, n_reference=1000)
    with pytest.raises(AnoUnetError, match="two different classes"):
        load_cifar10_anomaly(normal_class=3, anomaly_class=3)


def test_missing_tfds_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes `import` raise ImportError
    with pytest.raises(AnoUnetError, match=r"pip install anounet_jax\[tfds\]"):
        load_cifar10_anomaly(size=8, n_reference=1)

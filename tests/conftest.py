import dataclasses
import os

import jax
import numpy as np
import pytest

# the CLI keeps compiled programs in ~/.cache; tests stay hermetic (test_compile_cache.py tests it)
os.environ.setdefault("ANOUNET_CACHE_DIR", "off")
# Start JAX now, with its default devices: otherwise the first in-process `anounet ...` of a test
# worker splits the CPU into one device per core for every later test in that worker, and tests that
# count on one device (chunk sizes, shard shapes) pass or fail with pytest-xdist's file assignment.
# Several devices are tested in subprocesses (test_sharding.py, test_distributed.py).
jax.devices()

from anounet_jax.config import TINY
from anounet_jax.data.embedded import load_embedded
from anounet_jax.fnet.model import FrozenFNet
from anounet_jax.models.small_cnn import SmallCNN


@pytest.fixture(scope="session")
def tiny_data():
    return load_embedded(TINY.data, TINY.image_size, seed=0)


@pytest.fixture(scope="session")
def tiny_trained(tiny_data):
    """The tiny preset's f-Net trained once for the whole session, with its center."""
    from anounet_jax.fnet.train import train_fnet

    return train_fnet(TINY.fnet, tiny_data["train"], tiny_data["reference"], seed=0, progress=False)


@pytest.fixture(scope="session")
def random_fnet():
    """An untrained small CNN as f-Net: enough to exercise the engine's arithmetic."""
    m = SmallCNN(width=4, features=8)
    x = np.zeros((2, 32, 32, 3), np.float32)
    return FrozenFNet.from_module(m, m.init(jax.random.PRNGKey(0), x))


def stripes(n, seed=0, size=TINY.image_size):
    """Normal images for local-term tests: diagonal stripes of random phase, plus a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for _ in range(n):
        v = 0.5 + 0.35 * np.sin((xx + yy) * 0.8 + rng.uniform(0, 6.3))
        img = np.stack([v, 0.8 * v, 0.6 * v], -1) + rng.normal(0, 0.02, (size, size, 3))
        out.append(np.clip(img, 0, 1))
    return np.asarray(out, np.float32)


def tiny_fit(**changes):
    return dataclasses.replace(TINY.fit, **changes)


def make_tiles_diverge(monkeypatch, bad):
    """Engine.iter_fit with the tiles of global index in `bad` reported diverged (NaN map and
    reconstruction), as a fit that went non-finite leaves them."""
    from anounet_jax.engine.fit import Engine

    fit = Engine.iter_fit

    def diverging(self, chunks, seed=0):
        for idx, res in fit(self, chunks, seed):
            hit = np.isin(idx, bad)
            res.diverged = res.diverged | hit
            res.heatmap[hit], res.recon[hit] = np.nan, np.nan
            yield idx, res

    monkeypatch.setattr(Engine, "iter_fit", diverging)

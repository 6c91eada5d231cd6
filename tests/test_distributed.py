"""Multi-process shares (in one process: the share arithmetic and fit_share; the real two-process
`anounet score` run is in test_scoring.py) and the memory-sized default chunk."""

import numpy as np
import pytest

from anounet_jax import AnoUnetError, distributed
from anounet_jax.config import TINY
from anounet_jax.engine import memory
from anounet_jax.engine.fit import Engine
from tests.conftest import tiny_fit


@pytest.mark.parametrize("n", [0, 1, 10, 11])
@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_process_shares_partition_the_chunks(n, count):
    shares = [distributed.share(n, 3, index=p, count=count) for p in range(count)]
    everything = np.concatenate(shares)
    assert sorted(everything.tolist()) == list(range(n))  # every position once
    for p, idx in enumerate(shares):
        assert all(k % count == p for k in set((idx // 3).tolist()))  # whole chunks, dealt round robin
    with pytest.raises(AnoUnetError, match="outside"):
        distributed.share(n, 3, index=count, count=count)


def _engine(fnet, chunk_size=2):
    return Engine(TINY.unet, tiny_fit(steps=3, optimizer="sgd", lr=1e-2), fnet, np.full(8, 0.1, np.float32),
                  formulation="vmap_matmul", chunk_size=chunk_size)


def test_process_shares_of_a_fit_equal_the_one_process_fit(random_fnet):
    x = np.random.default_rng(0).random((5, 32, 32, 3), dtype=np.float32)
    whole = _engine(random_fnet).fit(x, seed=4)
    got = {}
    for p in (0, 1):
        idx, res = distributed.fit_share(_engine(random_fnet), x, seed=4, index=p, count=2)
        assert idx.tolist() == ([0, 1, 4] if p == 0 else [2, 3])
        for j, i in enumerate(idx.tolist()):
            got[i] = (res.recon[j], res.loss_c[j])
    for i in range(5):  # same chunks, same keys: bitwise the same
        np.testing.assert_array_equal(got[i][0], whole.recon[i])
        np.testing.assert_array_equal(got[i][1], whole.loss_c[i])


def test_chunk_for_memory_arithmetic():
    m = memory.StepMemory(per_image=100, fixed=50)
    assert m.for_chunk(3) == 350
    assert memory.chunk_for_memory(m, free_bytes=2 * 400, cap=16) == 3  # (400 - 50) // 100
    assert memory.chunk_for_memory(m, free_bytes=2 * 400, cap=2) == 2
    assert memory.chunk_for_memory(m, free_bytes=10, cap=16) == 1  # never less than one image
    assert memory.chunk_for_memory(m, free_bytes=2 * 2050, cap=128, n_devices=4) == 80  # 20 per device
    assert memory.chunk_for_memory(m, free_bytes=2 * 2050, cap=16, n_devices=4) == 16


def test_step_memory_is_measured_per_image(random_fnet):
    import jax

    eng = _engine(random_fnet)
    m = memory.step_memory(eng, (32, 32, 3))
    params, _ = eng._compiled()["init"](np.zeros((1, 2), np.uint32), np.zeros((1, 32, 32, 3), np.float32))
    weight_bytes = 4 * sum(a.size for a in jax.tree.leaves(params))
    assert m.per_image >= 2 * weight_bytes  # at least its parameters and their gradient
    two = memory._step_bytes(eng, 2, (32, 32, 3))
    assert two <= m.for_chunk(2) <= 1.2 * two  # fixed + n * per_image: exact or a slight overestimate
    assert memory.free_memory() > 0


def test_default_chunk_shrinks_to_the_free_memory(random_fnet, monkeypatch):
    x = np.random.default_rng(1).random((3, 32, 32, 3), dtype=np.float32)
    eng = Engine(TINY.unet, tiny_fit(steps=3, optimizer="sgd", lr=1e-2), random_fnet,
                 np.full(8, 0.1, np.float32), formulation="vmap_matmul")  # no chunk_size: the default
    m = memory.step_memory(eng, x.shape[1:])
    monkeypatch.setattr(memory, "free_memory", lambda device=None: int((m.fixed + 2.5 * m.per_image) * 2))
    assert eng.chunk_size == TINY.fit.chunk_size and eng.chunk_size_for(x.shape[1:]) == 2
    res = eng.fit(x, seed=4)
    ref = _engine(random_fnet, chunk_size=2).fit(x, seed=4)
    np.testing.assert_array_equal(res.recon, ref.recon)
    loop = Engine(TINY.unet, TINY.fit, random_fnet, np.zeros(8, np.float32), formulation="loop")
    assert loop.chunk_size_for(x.shape[1:]) == TINY.fit.chunk_size  # one image in flight: not measured

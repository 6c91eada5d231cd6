"""Multi-process shares (in one process: the share arithmetic and fit_share; the real two-process
`anounet score` run is in test_scoring.py) and the memory-sized default chunk."""

import numpy as np
import pytest

from anounet_jax import AnoUnetError
from anounet_jax.engine import distributed
from anounet_jax.config import TINY
from anounet_jax.engine import memory
from anounet_jax.engine.fit import Engine
from tests.conftest import tiny_fit


@pytest.mark.parametrize("n_chunks", [0, 1, 4, 11])
@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_process_shares_partition_the_chunks(n_chunks, count):
    shares = [distributed.owned_chunks(n_chunks, index=p, count=count) for p in range(count)]
    assert sorted(k for s in shares for k in s) == list(range(n_chunks))  # every chunk once
    for p, mine in enumerate(shares):
        assert all(k % count == p for k in mine)  # dealt round robin
    with pytest.raises(AnoUnetError, match="outside"):
        distributed.owned_chunks(n_chunks, index=count, count=count)


def test_the_coordination_client_is_where_this_jax_keeps_it():
    """barrier() reaches into jax._src for the coordination client (no public accessor): if a JAX
    release moves it, this fails loudly instead of multi-host jobs failing at their first barrier."""
    assert distributed.coordination_client() is None  # one process: no client, but the path exists


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
    args = (eng.spec, eng.mesh)
    m = memory.step_memory(*args, (32, 32, 3), random_fnet.variables, eng.target, len(eng.center))
    params, _ = eng.programs["init"](np.zeros((1, 2), np.uint32), np.zeros((1, 32, 32, 3), np.float32))
    weight_bytes = 4 * sum(a.size for a in jax.tree.leaves(params))
    assert m.per_image >= 2 * weight_bytes  # at least its parameters and their gradient
    four = memory._step_bytes(*args, 4, (32, 32, 3), random_fnet.variables, eng.target, len(eng.center))
    # measured on chunks of 1 and 2; a compiled chunk of 4 must match fixed + 4 * per_image
    assert 0.9 * four <= m.for_chunk(4) <= 1.2 * four
    assert memory.free_memory() > 0


def test_default_chunk_shrinks_to_the_free_memory(random_fnet, monkeypatch):
    x = np.random.default_rng(1).random((3, 32, 32, 3), dtype=np.float32)
    eng = Engine(TINY.unet, tiny_fit(steps=3, optimizer="sgd", lr=1e-2), random_fnet,
                 np.full(8, 0.1, np.float32), formulation="vmap_matmul",
                 default_chunk=TINY.engine.chunk_size)  # no chunk_size: the default, fitted to memory
    m = memory.step_memory(eng.spec, eng.mesh, x.shape[1:], random_fnet.variables, eng.target, len(eng.center))
    monkeypatch.setattr(memory, "free_memory", lambda device=None: int((m.fixed + 2.5 * m.per_image) * 2))
    assert eng.chunk_size == TINY.engine.chunk_size and eng.chunk_size_for(x.shape[1:]) == 2
    res = eng.fit(x, seed=4)
    ref = _engine(random_fnet, chunk_size=2).fit(x, seed=4)
    np.testing.assert_array_equal(res.recon, ref.recon)
    loop = Engine(TINY.unet, TINY.fit, random_fnet, np.zeros(8, np.float32), formulation="loop",
                  default_chunk=TINY.engine.chunk_size)
    assert loop.chunk_size_for(x.shape[1:]) == TINY.engine.chunk_size  # one image in flight: not measured

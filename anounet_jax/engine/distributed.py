"""Multi-host runs: every process fits its own share of the images, and nothing else is exchanged.

Per-image fits share no parameters, so a job splits over processes (hosts) like over chunks: process p
of P takes the chunks k with k % P == p (dealt round robin so that a short last chunk does not land
on one host more than once), fits them on its local devices (the engine shards each chunk over them),
and keys every image by its global position, so each image gets bitwise the result a one-process run
gives it. The only collective is a barrier at the end of a job (`barrier`).

    from anounet_jax.engine import distributed
    distributed.initialize()                      # on every host, before any JAX computation
    chunks = distributed.owned_chunks(n_chunks)   # the chunk numbers this process works on
    indices, result = distributed.fit_share(engine, images)

`initialize()` without arguments lets `jax.distributed.initialize` read the cluster's environment
(SLURM, Open MPI, Cloud TPU, ...); elsewhere pass the coordinator's address, the process count and
this process's id (`anounet score --coordinator HOST:PORT --num-processes N --process-id I`).
"""

from __future__ import annotations

import numpy as np

import jax

from anounet_jax.errors import AnoUnetError


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Join the multi-process job (jax.distributed.initialize); must run before any JAX computation."""
    try:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
    except (RuntimeError, ValueError) as e:
        raise AnoUnetError(f"cannot join the multi-process job ({e})") from None


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def owned_chunks(n_chunks: int, index: int | None = None, count: int | None = None) -> list[int]:
    """The chunk numbers this process works on: k with k % count == index."""
    index = process_index() if index is None else index
    count = process_count() if count is None else count
    if not 0 <= index < count:
        raise AnoUnetError(f"process index {index} is outside 0..{count - 1}")
    return list(range(index, n_chunks, count))


def fit_share(engine, images: np.ndarray, seed: int = 0, index: int | None = None,
              count: int | None = None):
    """Fit this process's share of `images` (every process passes the same list, or at least arrays of
    the same length whose owned rows are filled): the engine's chunks `owned_chunks` deals it. Returns
    (global positions, FitResult), with the same per-image results a one-process `engine.fit(images)`
    gives those positions (None when this process owns no chunk)."""
    from anounet_jax.engine.fit import FitResult

    images = np.asarray(images, np.float32)
    c = engine.chunk_size_for(images.shape[1:])
    mine = [np.arange(k * c, min((k + 1) * c, len(images)))
            for k in owned_chunks(-(-len(images) // c), index, count)]
    parts = [res for _, res in engine.iter_fit(((idx, images[idx]) for idx in mine), seed)]
    idx = np.concatenate(mine) if mine else np.zeros(0, np.int64)
    return idx, (FitResult.concatenate(parts) if parts else None)


BARRIER_TIMEOUT_S = 7 * 24 * 3600  # processes finish their shares up to a chunk's time apart; wait


def coordination_client():
    """The coordination-service client of `jax.distributed` (None in a one-process run). JAX has no
    public accessor for it: this is the one place that reaches into jax._src, and
    tests/test_distributed.py fails loudly when a JAX release moves it."""
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.client


def barrier(name: str, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
    """Wait until every process reaches this point (no-op in a one-process run).

    Uses the coordination service's barrier, which takes a timeout and fails (instead of hanging)
    when a process dies. multihost_utils.sync_global_devices is a collective whose CPU (gloo)
    implementation gives up after 30 s, far less than processes of a bulk job may drift apart.
    """
    if process_count() == 1:
        return
    client = coordination_client()
    if client is None:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
        return
    try:
        client.wait_at_barrier(name, int(timeout_s * 1000))
    except Exception as e:  # noqa: BLE001 -- jaxlib raises its own runtime error types
        raise AnoUnetError(f"multi-process barrier {name!r} failed ({e})") from None

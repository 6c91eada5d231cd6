"""The engine's per-image PRNG keys: image i of a job gets fold_in(PRNGKey(seed), i) whatever the
chunking, batch size, device count or process count (so results never depend on them)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def image_keys(seed: int, indices) -> np.ndarray:
    """uint32 (n, 2): the keys of the images at these global positions, on the host (slicing a
    device array would queue behind the fits already running there)."""
    base = jax.random.PRNGKey(seed)
    return np.asarray(jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(indices, jnp.uint32)))


def pad_keys(keys: np.ndarray, n: int) -> np.ndarray:
    """Keys padded to n rows by repeating the last (padded rows are fitted and thrown away)."""
    return keys if len(keys) >= n else np.concatenate([keys, np.repeat(keys[-1:], n - len(keys), 0)])

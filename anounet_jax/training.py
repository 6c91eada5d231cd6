"""The one epoch/minibatch loop shared by every network trained on a data set (the f-Net, the
reconstruction baselines, AnoGAN's GAN). The per-image Ano-Unet fit is not this: see engine/.

Each epoch visits a fresh permutation (numpy PCG64 seeded with `seed`) in batches of exactly
batch_size rows; the last partial batch is dropped so every step has one shape (one compilation).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from anounet_jax.errors import AnoUnetError


def run_epochs(step: Callable[..., tuple[Any, Any]], state: Any, arrays: Sequence[np.ndarray], *,
               batch_size: int, epochs: int, seed: int, desc: str, progress: bool = False,
               key: jax.Array | None = None) -> tuple[Any, list]:
    """Train: `state, loss = step(state, *batch)` (with `key` given: `step(state, subkey, *batch)`,
    a fresh subkey per step). Returns the final state and the mean loss per epoch (a loss may be a
    tuple of numbers; its mean is taken per entry)."""
    n = len(arrays[0])
    if n == 0:
        raise AnoUnetError(f"{desc}: no training images")
    bs = min(int(batch_size), n)
    per_epoch = max(n // bs, 1)
    rng = np.random.default_rng(seed)
    history = []
    with tqdm(total=epochs * per_epoch, desc=desc, unit="step", disable=not progress) as bar:
        for _ in range(epochs):
            order = rng.permutation(n)
            losses = []
            for s in range(per_epoch):
                idx = order[s * bs:(s + 1) * bs]
                batch = [a[idx] for a in arrays]
                if key is not None:
                    key, sub = jax.random.split(key)
                    state, loss = step(state, sub, *batch)
                else:
                    state, loss = step(state, *batch)
                losses.append(loss)
                bar.update(1)
            mean = np.mean(np.asarray(jax.device_get(losses), np.float64), 0)
            history.append(float(mean) if np.ndim(mean) == 0 else tuple(float(m) for m in mean))
            bar.set_postfix(loss=str(np.round(mean, 4)))
    return state, history

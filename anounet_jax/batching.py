"""Fixed-size batches: every batch padded to one shape, so one compilation serves any number of rows
and a row's result never depends on how many other rows were in its call."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np


def pad_rows(x: np.ndarray, n: int) -> np.ndarray:
    """x with its first axis zero-padded (at the end) to n rows."""
    x = np.asarray(x)
    if len(x) >= n:
        return x
    return np.concatenate([x, np.zeros((n - len(x), *x.shape[1:]), x.dtype)])


def map_in_batches(fn: Callable[[np.ndarray], Any], inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """fn over batches of exactly batch_size rows (the last one zero-padded), results concatenated."""
    bs = int(batch_size)
    if bs <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    out = [np.asarray(fn(pad_rows(inputs[s:s + bs], bs)))[:len(inputs[s:s + bs])]
           for s in range(0, len(inputs), bs)]
    return np.concatenate(out) if out else np.zeros((0,), np.float32)

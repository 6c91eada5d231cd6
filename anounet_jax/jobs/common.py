"""What every job does before its first expensive step: check where it will write."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from anounet_jax.errors import AnoUnetError


def prepare_out_dir(path) -> Path:
    """Create the output folder (and parents) and check that a file can be written there, so that a
    job fails in its first second, not after minutes of training."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise AnoUnetError("output path exists and is not a folder", out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise AnoUnetError(f"cannot write to the output folder ({e.strerror or e})", out) from None
    return out


def check_seed(seed) -> int:
    try:
        s = int(seed)
    except (TypeError, ValueError):
        raise AnoUnetError(f"seed must be a non-negative integer, got {seed!r}") from None
    if s < 0 or s != seed:
        raise AnoUnetError(f"seed must be a non-negative integer, got {seed!r}")
    return s

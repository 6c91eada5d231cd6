"""Process-wide JAX set-up: one JAX device per CPU core, and the on-disk compilation cache.

One JAX device per CPU core, so that a chunk's images run side by side on the host's cores.

XLA:CPU runs one program at a time per device and spreads each op over the cores itself; the U-Net's
ops are small (a 64x64 image, 16 channels), so much of that parallelism is lost to synchronization.
Splitting the host into one device per core and sharding the image axis over them (what the engine
does with any set of devices) keeps every core busy on its own images instead: measured in
benchmarks/throughput.py (README, "Engine formulations and speed").

The split must happen before JAX initializes its backends; `anounet` does it at start-up. Code that
imports anounet_jax as a library calls `split_cpu_into_devices()` right after `import jax`, or sets
`jax.config.update("jax_num_cpu_devices", n)` itself. Accelerator backends are not affected.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

ENV = "ANOUNET_CPU_DEVICES"  # overrides the count; 1 turns the split off


def split_cpu_into_devices(n: int | None = None) -> bool:
    """Make the CPU backend expose n devices (default: $ANOUNET_CPU_DEVICES, else one per core).

    Returns False (and changes nothing) when JAX's backends are already initialized, or when the
    count was already chosen through XLA_FLAGS (--xla_force_host_platform_device_count)."""
    if n is None and os.environ.get(ENV):
        n = int(os.environ[ENV])
    elif n is None:
        if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
            return False
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        jax.config.update("jax_num_cpu_devices", max(1, int(n)))
    except RuntimeError:  # backends already initialized: keep what there is
        return False
    return True


CACHE_ENV = "ANOUNET_CACHE_DIR"  # a folder, or "off"


def default_cache_dir() -> Path:
    """$ANOUNET_CACHE_DIR, else $XDG_CACHE_HOME/anounet_jax/xla, else ~/.cache/anounet_jax/xla."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "anounet_jax" / "xla"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Keep XLA's compiled programs on disk (JAX's persistent compilation cache), so a second run of
    the same job skips compilation (tens of seconds on CPU). Returns the folder, or None when it is
    turned off ($ANOUNET_CACHE_DIR=off) or cannot be created (a run then only compiles again)."""
    if path is None and os.environ.get(CACHE_ENV, "").lower() in ("off", "0", "none"):
        return None
    folder = Path(path).expanduser() if path is not None else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)  # skip trivial programs
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder

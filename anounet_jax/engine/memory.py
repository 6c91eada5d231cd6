"""How much memory an image in flight costs, and the chunk size that fits the device.

The fit streams images through fixed-size chunks, so its peak memory is `fixed + chunk * per_image`
whatever the job's length. Both terms come from XLA's own memory analysis of the compiled step
(arguments + outputs - donated aliases + temporaries) for a chunk of 1 and of 2 images, so they hold
for the backend, formulation and preset at hand, not for a hand count of activations.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp

from anounet_jax.engine.steps import programs
from anounet_jax.errors import AnoUnetError

# Share of the free memory a chunk may take: room for XLA's fragmentation, the f-Net, the input
# pipeline and whatever else the process holds.
MEMORY_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class StepMemory:
    per_image: int  # bytes each image in flight adds (its U-Net, optimizer state, activations)
    fixed: int  # bytes independent of the chunk (the f-Net's weights, C, ...)

    def for_chunk(self, n: int) -> int:
        return self.fixed + n * self.per_image


_MEASURED: dict = {}


def _step_bytes(spec, mesh, n: int, image_shape, fnet_vars, target, center_dim: int) -> int:
    fns = programs(spec, mesh)
    x = jax.ShapeDtypeStruct((n, *image_shape), jnp.float32)
    keys = jax.ShapeDtypeStruct((n, 2), jnp.uint32)
    center = jax.ShapeDtypeStruct((n, center_dim), jnp.float32)
    params, opt = jax.eval_shape(fns["init"], keys, x)
    compiled = fns["steps"].lower(params, opt, x, center, fnet_vars, target).compile()
    m = compiled.memory_analysis()
    if m is None:
        raise AnoUnetError(f"the {jax.default_backend()} backend gives no memory analysis")
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
               + m.temp_size_in_bytes)


def step_memory(spec, mesh, image_shape, fnet_vars, target, center_dim: int) -> StepMemory:
    """Bytes of one fit step on one device, per image in flight there and fixed, measured (compiles
    two shapes, cached). The chunk is split over the mesh's devices, so XLA's analysis of the
    per-device program is per device: chunks of 1 and 2 images per device are compared."""
    key = (spec, mesh, tuple(image_shape))
    if key not in _MEASURED:
        d = mesh.devices.size
        one = _step_bytes(spec, mesh, d, image_shape, fnet_vars, target, center_dim)
        two = _step_bytes(spec, mesh, 2 * d, image_shape, fnet_vars, target, center_dim)
        per = max(two - one, 1)
        _MEASURED[key] = StepMemory(per_image=per, fixed=max(one - per, 0))
    return _MEASURED[key]


def free_memory(device=None) -> int:
    """Bytes free on the device: the allocator's limit minus what it holds (GPU/TPU), or the host's
    available memory (CPU, where the allocator reports nothing)."""
    device = device or jax.local_devices()[0]
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # backends without allocator statistics
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def chunk_for_memory(mem: StepMemory, free_bytes: int, cap: int, n_devices: int = 1,
                     fraction: float = MEMORY_FRACTION) -> int:
    """The largest chunk (a multiple of n_devices, at most cap) whose step fits in fraction * free
    bytes of each device; at least one image per device."""
    budget = fraction * free_bytes - mem.fixed
    per_device = int(budget // mem.per_image) if budget > 0 else 0
    per_device = max(1, min(per_device, -(-cap // n_devices)))
    return per_device * n_devices

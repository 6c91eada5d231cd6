"""The batched per-image fit: one independent U-Net G_i per test image x_i, many fitted at once.

    L_i = mean|x_i - G_i(x_i)| + beta * mean|f(G_i(x_i)) - C|        heatmap_i = mean_c |x_i - G_i(x_i)|

Every image has its own parameters and optimizer state (a leading image axis on every leaf), its own
PRNG key (fold_in(seed, global index), so results do not depend on chunking or batch size), and its own
gradient: the gradient of the sum of per-image losses with respect to image i's parameters is exactly
dL_i (nothing is averaged across images), so an image that diverges (NaN/inf) is flagged and cannot
change any other image. Only the U-Nets are per image: the frozen f-Net sees the chunk's
reconstructions as one batch.

Formulations (same numbers, different arithmetic; chosen per backend, see FORMULATIONS):
  "vmap_matmul" -- vmap over per-image params; 3x3 convs as im2col @ kernel -> batched matmuls.
  "vmap_conv"   -- vmap over per-image params with library convs -> grouped convolutions.
  "unrolled"    -- the chunk's U-Nets unrolled inside one jitted step, each with batch-1 convs.
  "loop"        -- the original's structure: one image at a time per device, a jitted step per image;
                   with several devices (e.g. one per CPU core, engine/devices.py) they each fit their
                   own image at the same time.
The vmap formulations shard a chunk's image axis over all the engine's devices. On CPU the batch-1
programs (unrolled, loop) use the U-Net's "hybrid" convolutions (models/unet.py).
Steps run as a Python loop of jitted steps with donated buffers; `steps_per_call` > 1 unrolls that many
steps inside one call (fewer dispatches on accelerators). lax.scan is avoided: XLA:CPU does not rewrite
convs inside loop bodies to its fast path (jax #12868).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from anounet_jax.errors import AnoUnetError
from anounet_jax.fnet.model import FrozenFNet
from anounet_jax.models.unet import init_unet_params, unet_from_config

_COMPILED: dict = {}  # see Engine._compiled

FORMULATIONS = ("vmap_matmul", "vmap_conv", "unrolled", "loop")

# Fastest measured formulation per backend (benchmarks/throughput.py; figures in the README). GPU and
# TPU are not measured yet: formulation="measure" times the candidates there on the job's own shapes.
AUTO_FORMULATION = {"cpu": "loop", "gpu": "vmap_matmul", "tpu": "vmap_conv"}
MEASURE_CANDIDATES = {"cpu": ("loop", "vmap_matmul"), "gpu": ("vmap_matmul", "vmap_conv", "loop"),
                      "tpu": ("vmap_conv", "vmap_matmul")}
_MEASURED_CHOICE: dict = {}


def make_optimizer(fit_cfg, unet_cfg=None) -> optax.GradientTransformation:
    """The per-image optimizer. With BatchNorm, conv biases (kept for parity with the original's
    parameter count) are frozen: the normalization cancels them, so their gradient is pure rounding
    noise, which Adam would rescale into full-size steps that differ between formulations."""
    if fit_cfg.optimizer == "sgd":
        tx = optax.sgd(fit_cfg.lr, momentum=fit_cfg.momentum or None)
    elif fit_cfg.optimizer == "adam":
        tx = optax.adam(fit_cfg.lr)
    else:
        raise AnoUnetError(f"unknown optimizer {fit_cfg.optimizer!r}; use 'sgd' or 'adam'")
    if unet_cfg is None or unet_cfg.norm != "batch":
        return tx

    def labels(params):
        def label(path, _):
            keys = [getattr(k, "key", "") for k in path]
            dead = keys[-1] == "bias" and any(str(k).startswith("conv") for k in keys[-2:-1])
            return "frozen" if dead else "train"

        return jax.tree_util.tree_map_with_path(label, params)

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


@dataclasses.dataclass
class FitResult:
    """Per-image results, numpy, in input order."""

    recon: np.ndarray  # (N, H, W, 3) float32 G(x)
    heatmap: np.ndarray  # (N, H, W) float32 mean_c |x - G(x)| (smoothed if the config says so)
    loss_r: np.ndarray  # (N,) final mean|x - G(x)|
    loss_c: np.ndarray  # (N,) final mean|f(G(x)) - C|
    diverged: np.ndarray  # (N,) bool: non-finite loss or reconstruction

    @staticmethod
    def concatenate(parts: list["FitResult"]) -> "FitResult":
        return FitResult(*(np.concatenate([getattr(p, f.name) for p in parts])
                           for f in dataclasses.fields(FitResult)))


def resolve_formulation(name: str, backend: str | None = None) -> str:
    if name == "measure":
        raise AnoUnetError("formulation 'measure' needs the image shape: use build_engine(...) or "
                           "measure_formulation(...)")
    if name == "auto":
        return AUTO_FORMULATION.get(backend or jax.default_backend(), "vmap_matmul")
    if name not in FORMULATIONS:
        raise AnoUnetError(f"unknown formulation {name!r}; use 'auto' or one of {FORMULATIONS}")
    return name


class Engine:
    """Fits per-image U-Nets to chunks of images; see the module docstring.

    unet_cfg, fit_cfg: UNetConfig, FitConfig. fnet: the frozen feature network. center: C, (D,).
    chunk_size: images fitted at once. Default: the preset's fit.chunk_size, lowered where one chunk's
    step would take more than half the device's free memory (measured by XLA's memory analysis at the
    first fit; see engine/memory.py). An explicit value is used as given.
    devices: default all local devices. vmap formulations shard each chunk's image axis over them;
    loop fits one image per device at a time; unrolled uses the first.
    compute_dtype: jnp.bfloat16 runs the U-Net's convs in bfloat16 (for accelerators); parameters,
    optimizer state, normalization statistics, losses and the f-Net stay float32.
    """

    def __init__(self, unet_cfg, fit_cfg, fnet: FrozenFNet, center, *, formulation: str = "auto",
                 chunk_size: int | None = None, steps_per_call: int = 1, devices=None,
                 compute_dtype=jnp.float32):
        self.fit_cfg = fit_cfg
        self.fnet = fnet
        self.center = jnp.asarray(center, jnp.float32)
        self.formulation = resolve_formulation(formulation)
        self.steps_per_call = max(1, int(steps_per_call))
        if fit_cfg.steps % self.steps_per_call:
            raise AnoUnetError(f"steps ({fit_cfg.steps}) must be a multiple of steps_per_call "
                               f"({self.steps_per_call})")
        devices = list(devices) if devices is not None else jax.local_devices()
        # loop/unrolled run batch-1 convs: on CPU "hybrid" picks per layer what XLA:CPU runs fastest
        # there (models/unet.py); accelerators keep their library convs
        batch1 = "hybrid" if devices[0].platform == "cpu" else "lax"
        conv_impl = {"vmap_matmul": "matmul", "vmap_conv": "lax"}.get(self.formulation, batch1)
        self.unet = unet_from_config(unet_cfg, conv_impl=conv_impl, dtype=compute_dtype)
        self.tx = make_optimizer(fit_cfg, unet_cfg)
        if self.formulation == "unrolled":
            devices = devices[:1]
        # vmap formulations: one mesh, the chunk's image axis sharded over it. loop: one mesh per
        # device, each fitting its own image, all at once (dispatch is asynchronous).
        self.meshes = ([Mesh(np.array([d]), ("images",)) for d in devices] if self.formulation == "loop"
                       else [Mesh(np.array(devices), ("images",))])
        self.mesh = self.meshes[0]
        chunk = chunk_size or fit_cfg.chunk_size
        self.chunk_size = math.ceil(chunk / len(devices)) * len(devices)  # divisible over devices
        self._fit_to_memory = chunk_size is None and self.formulation != "loop"  # loop: 1 in flight
        self._chunks: dict = {}  # image shape -> chunk size used
        self._fns: dict = {}  # mesh number -> compiled functions
        self._placed: dict = {}  # mesh number -> (f-Net variables, C) on that mesh

    def chunk_size_for(self, image_shape) -> int:
        """The chunk size used for images of this (H, W, 3) shape (see the class docstring)."""
        shape = tuple(image_shape)
        if shape not in self._chunks:
            size = self.chunk_size
            if self._fit_to_memory:
                from anounet_jax.engine.memory import chunk_for_memory, free_memory, step_memory

                n_dev = self.mesh.devices.size
                size = chunk_for_memory(step_memory(self, shape), free_memory(self.mesh.devices.flat[0]),
                                        self.chunk_size, n_dev)
            self._chunks[shape] = size
        return self._chunks[shape]

    # ---- the maths, over a batch of images with one parameter set each ----
    def _recon_one(self, params, x):
        """G_i(x_i) for one image and its own parameters (normalization statistics per image)."""
        return self.unet.apply({"params": params}, x[None])[0]

    def _per_image(self, fn):
        """fn over the leading image axis of all its arguments: vmap, or unrolled inside the jit."""
        if self.formulation in ("vmap_matmul", "vmap_conv"):
            return jax.vmap(fn)

        def unrolled(*args):
            n = jax.tree.leaves(args[0])[0].shape[0]
            outs = [fn(*jax.tree.map(lambda a: a[i], args)) for i in range(n)]
            return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

        return unrolled

    def _losses(self, params, x, fnet_vars, center):
        """Per-image losses (N,). Only the U-Nets are per image; the frozen f-Net (inference mode:
        samples never interact) sees the whole batch of reconstructions at once, as a shared-weight
        network would."""
        recon = self._per_image(self._recon_one)(params, x)
        l_r = jnp.mean(jnp.abs(x - recon), axis=(1, 2, 3))
        feat = self.fnet.apply(fnet_vars, recon.astype(jnp.float32))
        l_c = jnp.mean(jnp.abs(feat - center), axis=-1)
        return l_r + self.fit_cfg.beta * l_c, (recon, l_r, l_c)

    def _init_one(self, key, x):
        params = init_unet_params(self.unet, key, x.shape)
        return params, self.tx.init(params)

    def _step(self, params, opt_state, x, fnet_vars, center):
        # Images share no parameters, so d(sum_j L_j)/d params_i = dL_i/d params_i exactly, and the
        # cotangent of a sum is 1 whatever the values: a NaN loss cannot reach another image.
        grads = jax.grad(lambda p: jnp.sum(self._losses(p, x, fnet_vars, center)[0]))(params)
        updates, opt_state = jax.vmap(self.tx.update)(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def _evaluate(self, params, x, fnet_vars, center):
        return self._losses(params, x, fnet_vars, center)[1]

    def _cache_key(self, k: int = 0):
        # steps, smoothing and chunk size do not enter the compiled functions
        return (self.unet, dataclasses.replace(self.fit_cfg, smoothing_sigma=0.0, chunk_size=0, steps=0),
                self.formulation, self.steps_per_call, self.fnet.apply,
                tuple(d.id for d in self.meshes[k].devices.flat))

    def _compiled(self, k: int = 0):
        """The jitted init/steps/evaluate on mesh k, shared by every Engine with the same
        configuration (so that tests and repeated jobs in one process compile once)."""
        if k not in self._fns:
            key = self._cache_key(k)
            if key not in _COMPILED:
                _COMPILED[key] = self._build(self.meshes[k])
            self._fns[k] = _COMPILED[key]
        return self._fns[k]

    def _build(self, mesh):
        shard = NamedSharding(mesh, P("images"))
        repl = NamedSharding(mesh, P())
        init = jax.vmap(self._init_one)

        def steps(params, opt_state, x, fnet_vars, center):
            for _ in range(self.steps_per_call):
                params, opt_state = self._step(params, opt_state, x, fnet_vars, center)
            return params, opt_state

        evaluate = self._evaluate
        return dict(
            init=jax.jit(init, out_shardings=shard),
            steps=jax.jit(steps, in_shardings=(shard, shard, shard, repl, repl),
                          out_shardings=(shard, shard), donate_argnums=(0, 1)),
            evaluate=jax.jit(evaluate, in_shardings=(shard, shard, repl, repl), out_shardings=shard),
            shard=shard, repl=repl,
        )

    def _fit_batches(self, batches):
        """Fit batches side by side, batch k on mesh k (its image axis sharded over that mesh);
        returns their (recon, l_r, l_c) as device arrays. Every call is dispatched asynchronously, so
        the meshes compute at the same time."""
        runs = []
        for k, (x, keys) in enumerate(batches):
            fns = self._compiled(k)
            if k not in self._placed:
                self._placed[k] = (jax.device_put(self.fnet.variables, fns["repl"]),
                                   jax.device_put(self.center, fns["repl"]))
            x = jax.device_put(x, fns["shard"])
            params, opt_state = fns["init"](jax.device_put(keys, fns["shard"]), x)
            runs.append([fns, params, opt_state, x, *self._placed[k]])
        for _ in range(self.fit_cfg.steps // self.steps_per_call):
            for r in runs:
                r[1], r[2] = r[0]["steps"](*r[1:])
        return [r[0]["evaluate"](r[1], *r[3:]) for r in runs]

    def fit_chunk(self, images: np.ndarray, indices: np.ndarray, seed: int = 0) -> FitResult:
        """Fit up to chunk_size images; `indices` are their global positions (they pick the PRNG keys)."""
        images = np.asarray(images, np.float32)
        n = len(images)
        chunk = self.chunk_size_for(images.shape[1:])
        if n > chunk:
            raise AnoUnetError(f"chunk of {n} images exceeds the chunk size {chunk}")
        base = jax.random.PRNGKey(seed)
        # on the host: slicing a device array would queue behind the fits already running there
        keys = np.asarray(jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(indices, jnp.uint32)))
        if self.formulation == "loop":  # one image per device at a time
            m = len(self.meshes)
            outs = []
            for g in range(0, n, m):
                outs += self._fit_batches([(images[i:i + 1], keys[i:i + 1]) for i in range(g, min(g + m, n))])
            recon, l_r, l_c = (np.concatenate([np.asarray(o[k]) for o in outs]) for k in range(3))
        else:
            pad = chunk - n  # fixed shapes: one compilation for every chunk
            if pad:
                images_p = np.concatenate([images, np.zeros((pad, *images.shape[1:]), np.float32)])
                keys = np.concatenate([keys, np.repeat(keys[-1:], pad, 0)])
            else:
                images_p = images
            recon, l_r, l_c = (np.asarray(a)[:n] for a in self._fit_batches([(images_p, keys)])[0])
        return self._result(images, recon, l_r, l_c)

    def _result(self, images, recon, l_r, l_c) -> FitResult:
        from anounet_jax.maps import residual_map, smooth

        recon = recon.astype(np.float32)
        diverged = ~(np.isfinite(l_r) & np.isfinite(l_c) & np.isfinite(recon).all((1, 2, 3)))
        heat = residual_map(images, recon)
        if self.fit_cfg.smoothing_sigma > 0:
            heat = smooth(heat, self.fit_cfg.smoothing_sigma)
        return FitResult(recon, heat.astype(np.float32), l_r.astype(np.float32),
                         l_c.astype(np.float32), diverged)

    def iter_fit(self, chunks: Iterable[tuple[np.ndarray, np.ndarray]], seed: int = 0
                 ) -> Iterator[tuple[np.ndarray, FitResult]]:
        """Stream (indices, images) chunks of any size; yields (indices, result) per chunk-size piece."""
        for indices, images in chunks:
            c = self.chunk_size_for(np.shape(images)[1:])
            for s in range(0, len(images), c):
                idx = np.asarray(indices[s:s + c])
                yield idx, self.fit_chunk(images[s:s + c], idx, seed)

    def fit(self, images: np.ndarray, seed: int = 0, progress: bool = False, desc: str = "Ano-Unet"
            ) -> FitResult:
        """Fit every image (any number), streamed through fixed-size chunks."""
        from tqdm.auto import tqdm

        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise AnoUnetError(f"images must be (N, H, W, 3), got {images.shape}")
        parts = []
        with tqdm(total=len(images), desc=desc, unit="img", disable=not progress) as bar:
            for _, res in self.iter_fit([(np.arange(len(images)), images)], seed):
                parts.append(res)
                bar.update(len(res.loss_r))
        return FitResult.concatenate(parts)


def measure_formulation(unet_cfg, fit_cfg, fnet, center, image_shape, candidates=None, chunk_size=None,
                        steps: int = 2, devices=None) -> tuple[str, dict]:
    """Time each candidate formulation on a chunk of random images of `image_shape` and return the
    fastest (and {formulation: ms per image-step}). The fit steps are timed apart from compilation,
    initialization and evaluation: a fit of 1 + steps steps minus a fit of 1 step. Costs one
    compilation per candidate (seconds on accelerators, tens of seconds on CPU); the choice is cached
    per configuration in the process."""
    backend = jax.default_backend()
    candidates = tuple(candidates or MEASURE_CANDIDATES.get(backend, FORMULATIONS))
    chunk = chunk_size or fit_cfg.chunk_size
    key = (unet_cfg, dataclasses.replace(fit_cfg, steps=0, smoothing_sigma=0.0), fnet.apply,
           tuple(image_shape), candidates, chunk, backend)
    if key not in _MEASURED_CHOICE:
        import time

        x = np.random.default_rng(0).random((chunk, *image_shape), dtype=np.float32)
        timings = {}
        for form in candidates:
            def run(n_steps):
                eng = Engine(unet_cfg, dataclasses.replace(fit_cfg, steps=n_steps, smoothing_sigma=0.0),
                             fnet, center, formulation=form, chunk_size=chunk, devices=devices)
                t = time.perf_counter()
                eng.fit(x)
                return time.perf_counter() - t

            run(1)  # compile
            t_long = min(run(1 + steps) for _ in range(2))  # best of two: less scheduling noise
            t_short = min(run(1) for _ in range(2))
            timings[form] = max(t_long - t_short, 0.0) / (steps * chunk) * 1e3
        _MEASURED_CHOICE[key] = (min(timings, key=timings.get), timings)
    return _MEASURED_CHOICE[key]


def build_engine(unet_cfg, fit_cfg, fnet, center, image_size: int, formulation: str = "auto",
                 **kw) -> Engine:
    """An Engine; formulation "measure" first times the backend's candidates on this image size."""
    if formulation == "measure":
        formulation, _ = measure_formulation(unet_cfg, fit_cfg, fnet, center, (image_size, image_size, 3),
                                             chunk_size=kw.get("chunk_size"), devices=kw.get("devices"))
    return Engine(unet_cfg, fit_cfg, fnet, center, formulation=formulation, **kw)

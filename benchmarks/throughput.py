"""Throughput of the batched per-image engine against a per-image loop and the shared-weight ceiling.

    python benchmarks/throughput.py [--preset small] [--images 16] [--steps 100] [--rounds 2]
        [--formulations loop,...] [--ceiling-impls ...] [--compute-dtype float32|bfloat16]
        [--no-one-device] [--cpu-devices N] [--quick]

Prints a table and one JSON object. All numbers come from one process on one machine:
  - per formulation: images/s and ms per image-step for fitting `--images` images for `--steps` steps
    (compilation excluded: a warm-up fit runs first; --rounds alternating rounds, each mode keeps its
    fastest, and the ratios to the loop and the ceiling are also given round by round, with
    medians). The vmap formulations shard the images over all devices; with more than one device
    they are also timed on one ("...@1dev"). "loop" (the original's structure: one image at a time,
    one device) is the baseline; "loop_per_device" runs one image per device at a time. "unrolled"
    runs on one device. On CPU the host is split into one JAX device per core (--cpu-devices,
    default: every core; what `anounet` does, see anounet_jax/engine/devices.py);
  - "shared[...]": one U-Net shared by the whole chunk (the same arithmetic per image-step with one
    weight set; what a per-image engine can at best approach), data-parallel over the same devices as
    the engine (gradients all-reduced), and on one device ("...@1dev"), once per conv implementation
    in CEILING_IMPLS. The fastest on all devices is the ceiling ("ceiling" in the JSON);
  - achieved GFLOP/s from XLA's cost analysis of one step, against a float32 matmul measured here;
  - peak resident memory of the process (ru_maxrss) and, where the backend reports it (GPU/TPU),
    the first device's peak allocation.
`--quick` is a smoke run for CI (tiny sizes, no claims).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from anounet_jax.config import get_preset
from anounet_jax.engine.fit import FORMULATIONS, Engine
from anounet_jax.engine.steps import make_optimizer
from anounet_jax.fnet.model import FrozenFNet, build_fnet_module
from anounet_jax.models.unet import unet_from_config


def matmul_gflops(n=1024, reps=10):
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        f(a).block_until_ready()
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def make_fnet(preset, image_size):
    module = build_fnet_module(preset.fnet)
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3)))
    return FrozenFNet.from_module(module, variables)


def time_engine(preset, fnet, center, images, formulation, steps, devices, dtype=jnp.float32):
    """Compiles, then returns a function that times one fit of `images` for `steps` steps."""
    fit = dataclasses.replace(preset.fit, steps=steps)
    kw = dict(formulation=formulation, chunk_size=len(images), devices=devices, compute_dtype=dtype)
    warm = dataclasses.replace(fit, steps=1)  # compiles the same functions (steps are a Python loop)
    Engine(preset.unet, warm, fnet, center, **kw).fit(images)
    eng = Engine(preset.unet, fit, fnet, center, **kw)

    def run():
        t = time.perf_counter()
        eng.fit(images)
        return time.perf_counter() - t

    return run


def step_flops(eng, images, fnet):
    """XLA's flop count for one step of the chunk (all images)."""
    eng.chunk_size_for(images.shape[1:])  # resolves the formulation
    fns = eng.programs
    params, opt = fns["init"](jax.random.split(jax.random.PRNGKey(0), len(images)), jnp.asarray(images))
    lowered = fns["steps"].lower(params, opt, jnp.asarray(images), eng.row_centers(len(images)),
                                 fnet.variables, eng.target)
    cost = lowered.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


# Shared-weight programs tried for the ceiling (conv_impl, upconv_impl); the fastest one is the ceiling.
CEILING_IMPLS = {"lax": ("lax", "lax"), "lax+matmul_upconv": ("lax", "matmul")}


def time_shared_ceiling(preset, fnet, center, images, steps, devices, impl=("lax", "lax"),
                        dtype=jnp.float32):
    """One weight set for the whole batch: same per-image loss and arithmetic, one set of weights.
    The batch is split over `devices` (data parallel: XLA all-reduces the gradient)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.array(devices), ("images",))
    unet = unet_from_config(preset.unet, conv_impl=impl[0], upconv_impl=impl[1], dtype=dtype)
    tx = make_optimizer(preset.fit.optimizer, preset.fit.lr, preset.fit.momentum, preset.unet.norm == "batch")
    x = jax.device_put(jnp.asarray(images), NamedSharding(mesh, P("images")))
    params = unet.init(jax.random.PRNGKey(0), x[:1])["params"]
    params = jax.device_put(params, NamedSharding(mesh, P()))
    opt = tx.init(params)
    beta = preset.fit.beta

    def loss(p, x):
        # vmap over images with shared p: BatchNorm statistics stay per image, as in the engine
        recon = jax.vmap(lambda xi: unet.apply({"params": p}, xi[None])[0])(x).astype(jnp.float32)
        l_r = jnp.mean(jnp.abs(x - recon), (1, 2, 3))
        l_c = jnp.mean(jnp.abs(fnet.apply(fnet.variables, recon) - center), -1)
        return jnp.sum(l_r + beta * l_c)

    @jax.jit
    def step(p, o, x):
        g = jax.grad(loss)(p, x)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    p, o = step(params, opt, x)  # compiles
    p, o = step(p, o, x)  # its outputs may carry other shardings than the inputs: compiles again once
    jax.block_until_ready(p)
    state = [p, o]

    def run():
        t = time.perf_counter()
        for _ in range(steps):
            state[0], state[1] = step(state[0], state[1], x)
        jax.block_until_ready(state[0])
        return time.perf_counter() - t

    return run


def _record(out, name, img_s, ms, gflops, n_devices):
    out["results"][name] = {"images_per_s": img_s, "ms_per_image_step": ms, "devices": n_devices}
    if gflops is not None:
        out["results"][name]["gflops"] = gflops
    print(f"{name:>28}: {img_s:8.3f} img/s  {ms:8.2f} ms/image-step  "
          + (f"{gflops:7.1f} GFLOP/s" if gflops is not None else ""), file=sys.stderr, flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--steps", type=int, default=None, help="default: the preset's steps")
    ap.add_argument("--formulations", default=",".join(FORMULATIONS))
    ap.add_argument("--rounds", type=int, default=2,
                    help="timed fits per mode, alternating the modes (every other round in reverse "
                         "order); each mode keeps its fastest, and ratios are also taken round by round")
    ap.add_argument("--ceiling-impls", default=",".join(CEILING_IMPLS),
                    help=f"shared-weight programs to time, from {','.join(CEILING_IMPLS)}")
    ap.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default="float32",
                    help="the U-Nets' conv dtype (Engine compute_dtype), for the engine and the ceiling")
    ap.add_argument("--no-one-device", action="store_true",
                    help="skip the one-device repeats of the vmap formulations and of the ceiling")
    ap.add_argument("--cpu-devices", type=int, default=None,
                    help="JAX devices the CPU is split into (default: one per core; 1 = no split)")
    ap.add_argument("--quick", action="store_true",
                    help="CI smoke: tiny preset, 4 images, 2 steps, no one-device repeats, one ceiling")
    args = ap.parse_args(argv)
    from anounet_jax.engine.devices import split_cpu_into_devices

    split_cpu_into_devices(args.cpu_devices)  # before any JAX computation
    unknown = set(args.ceiling_impls.split(",")) - set(CEILING_IMPLS)
    if unknown:
        ap.error(f"unknown --ceiling-impls {sorted(unknown)}; use some of {list(CEILING_IMPLS)}")
    ceiling_impls = {k: CEILING_IMPLS[k] for k in args.ceiling_impls.split(",")}
    if args.quick:  # every code path once, as few compilations as that takes
        args.preset, args.images, args.steps, args.rounds = "tiny", 4, 2, 1
        ceiling_impls = dict(list(CEILING_IMPLS.items())[-1:])
    preset = get_preset(args.preset)
    steps = args.steps or preset.fit.steps
    s = preset.image_size
    images = np.random.default_rng(0).random((args.images, s, s, 3), dtype=np.float32)
    fnet = make_fnet(preset, s)
    center = fnet.features(images).mean(0)
    devices = jax.local_devices()
    dtype = jnp.dtype(args.compute_dtype)
    out = {"preset": preset.name, "backend": jax.default_backend(), "device": str(devices[0]),
           "device_kind": devices[0].device_kind, "devices": len(devices), "cpu_cores": os.cpu_count(),
           "images": args.images, "steps": steps, "compute_dtype": args.compute_dtype, "image_size": s,
           "unet_width": preset.unet.width,
           "matmul_gflops": round(matmul_gflops(), 1), "results": {}}
    one_device_too = len(devices) > 1 and not (args.quick or args.no_one_device)
    runs = []  # (name, formulation, devices)
    for form in args.formulations.split(","):
        if form in ("vmap_matmul", "vmap_conv"):
            runs.append((form, form, devices))
            if one_device_too:
                runs.append((f"{form}@1dev", form, devices[:1]))
        else:  # "loop" on one device is the baseline: the original's structure
            runs.append((form, form, devices[:1]))
            if form == "loop" and len(devices) > 1:
                runs.append(("loop_per_device", form, devices))
    timers, flops, form_flops = {}, {}, {}  # compile everything first, then time the modes in rounds
    for name, form, devs in runs:
        timers[name] = (time_engine(preset, fnet, center, images, form, steps, devs, dtype), len(devs))
        if form not in form_flops:  # XLA's flop count of one image-step, from the one-device program
            one = Engine(preset.unet, preset.fit, fnet, center, formulation=form, chunk_size=len(images),
                         devices=devices[:1], compute_dtype=dtype)
            n_step = 1 if form == "loop" else args.images
            form_flops[form] = step_flops(one, images[:n_step], fnet) / n_step
        flops[name] = form_flops[form]  # same arithmetic on any number of devices
    for impl_name, impl in ceiling_impls.items():
        for suffix, devs in [("", devices)] + ([("@1dev", devices[:1])] if one_device_too else []):
            timers[f"shared[{impl_name}]{suffix}"] = (
                time_shared_ceiling(preset, fnet, center, images, steps, devs, impl, dtype), len(devs))
    # The machine's speed drifts (a shared VM): rounds alternate the modes, every other round in
    # reverse order so that no mode always follows the same one; each mode keeps its best round.
    times = {name: [] for name in timers}
    for r in range(args.rounds):
        for name in (list(timers) if r % 2 == 0 else list(timers)[::-1]):
            times[name].append(timers[name][0]())
            # as it comes, so that a run stopped by a time limit still leaves its timings
            print(f"round {r + 1}: {name} {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
    out["rounds"] = args.rounds
    for name, (_, n_dev) in timers.items():
        dt = min(times[name])
        gflops = flops[name] * steps * args.images / dt / 1e9 if name in flops else None
        _record(out, name, args.images / dt, dt / (args.images * steps) * 1e3, gflops, n_dev)
        out["results"][name]["seconds_per_round"] = [round(t, 2) for t in times[name]]
    loop = out["results"].get("loop", {}).get("images_per_s")
    # the ceiling: the fastest shared-weight program on all devices
    shared = [k for k in out["results"] if k.startswith("shared[") and not k.endswith("@1dev")]
    out["ceiling"] = max(shared, key=lambda k: out["results"][k]["images_per_s"])
    ceil = out["results"][out["ceiling"]]["images_per_s"]
    for r in out["results"].values():
        if loop:
            r["vs_loop"] = r["images_per_s"] / loop
        r["vs_ceiling"] = r["images_per_s"] / ceil
    # Ratios within each round (modes timed minutes apart, not hours): less exposed to the drift.
    out["per_round"] = {}
    for name in timers:
        pr = {}
        if "loop" in times:
            pr["vs_loop"] = [round(a / b, 3) for a, b in zip(times["loop"], times[name])]
        pr["vs_ceiling"] = [round(a / b, 3) for a, b in zip(times[out["ceiling"]], times[name])]
        for k in list(pr):
            pr[f"median_{k}"] = float(np.median(pr[k]))
        out["per_round"][name] = pr
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stats = devices[0].memory_stats() or {}  # None on CPU
    if "peak_bytes_in_use" in stats:
        out["device_peak_mib"] = stats["peak_bytes_in_use"] / 2 ** 20
    print("| mode | devices | images/s | ms / image-step | x loop | x ceiling |", file=sys.stderr)
    print("|---|---|---|---|---|---|", file=sys.stderr)
    for k, r in out["results"].items():
        print(f"| {k} | {r['devices']} | {r['images_per_s']:.3f} | {r['ms_per_image_step']:.2f} | "
              f"{r.get('vs_loop', float('nan')):.2f} | {r['vs_ceiling']:.2f} |", file=sys.stderr)
    print("\n| mode | x loop, round by round (median) | x ceiling, round by round (median) |",
          file=sys.stderr)
    print("|---|---|---|", file=sys.stderr)
    for k, pr in out["per_round"].items():
        cells = [f"{', '.join(f'{v:.2f}' for v in pr[m])} ({pr[f'median_{m}']:.2f})" if m in pr else ""
                 for m in ("vs_loop", "vs_ceiling")]
        print(f"| {k} | {cells[0]} | {cells[1]} |", file=sys.stderr)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()

"""Throughput of the batched per-image engine against a per-image loop and the shared-weight ceiling.

    python benchmarks/throughput.py [--preset small] [--images 16] [--steps 100] [--quick]

Prints a table and one JSON object. All numbers come from one process on one machine:
  - per formulation: images/s and ms per image-step for fitting `--images` images for `--steps` steps
    (compilation excluded: a warm-up fit runs first);
  - "shared_weight_ceiling": one U-Net shared by the whole chunk (the same arithmetic per image-step
    with one weight set; what a per-image engine can at best approach);
  - achieved GFLOP/s from XLA's cost analysis of one step, against a float32 matmul measured here;
  - peak resident memory of the process (ru_maxrss).
`--quick` is a smoke run for CI (tiny sizes, no claims).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from anounet_jax.config import get_preset
from anounet_jax.engine.fit import FORMULATIONS, Engine, make_optimizer
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


def time_engine(preset, fnet, center, images, formulation, steps):
    fit = dataclasses.replace(preset.fit, steps=steps, smoothing_sigma=0.0)
    eng = Engine(preset.unet, fit, fnet, center, formulation=formulation, chunk_size=len(images))
    eng.fit(images)  # compile
    t = time.perf_counter()
    eng.fit(images)
    return time.perf_counter() - t, eng


def step_flops(eng, images, fnet):
    """XLA's flop count for one step of the chunk (all images)."""
    fns = eng._compiled()
    params, opt = fns["init"](jax.random.split(jax.random.PRNGKey(0), len(images)), jnp.asarray(images))
    lowered = fns["steps"].lower(params, opt, jnp.asarray(images), fnet.variables, eng.center)
    cost = lowered.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def time_shared_ceiling(preset, fnet, center, images, steps):
    """One weight set for the whole batch: same per-image loss and arithmetic, one set of weights."""
    unet = unet_from_config(preset.unet)
    tx = make_optimizer(preset.fit, preset.unet)
    x = jnp.asarray(images)
    params = unet.init(jax.random.PRNGKey(0), x[:1])["params"]
    opt = tx.init(params)
    beta = preset.fit.beta

    def loss(p, x):
        # vmap over images with shared p: BatchNorm statistics stay per image, as in the engine
        recon = jax.vmap(lambda xi: unet.apply({"params": p}, xi[None])[0])(x)
        l_r = jnp.mean(jnp.abs(x - recon), (1, 2, 3))
        l_c = jnp.mean(jnp.abs(fnet.apply(fnet.variables, recon) - center), -1)
        return jnp.sum(l_r + beta * l_c)

    @jax.jit
    def step(p, o, x):
        g = jax.grad(loss)(p, x)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    p, o = step(params, opt, x)
    jax.block_until_ready(p)
    t = time.perf_counter()
    for _ in range(steps):
        p, o = step(p, o, x)
    jax.block_until_ready(p)
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--steps", type=int, default=None, help="default: the preset's steps")
    ap.add_argument("--formulations", default=",".join(FORMULATIONS))
    ap.add_argument("--quick", action="store_true", help="CI smoke: tiny preset, 4 images, 2 steps")
    args = ap.parse_args(argv)
    if args.quick:
        args.preset, args.images, args.steps = "tiny", 4, 2
    preset = get_preset(args.preset)
    steps = args.steps or preset.fit.steps
    s = preset.image_size
    images = np.random.default_rng(0).random((args.images, s, s, 3), dtype=np.float32)
    fnet = make_fnet(preset, s)
    center = fnet.features(images).mean(0)
    out = {"preset": preset.name, "backend": jax.default_backend(), "device": str(jax.devices()[0]),
           "devices": jax.device_count(), "images": args.images, "steps": steps,
           "image_size": s, "unet_width": preset.unet.width, "matmul_gflops": round(matmul_gflops(), 1),
           "results": {}}
    for form in args.formulations.split(","):
        dt, eng = time_engine(preset, fnet, center, images, form, steps)
        flops = step_flops(eng, images if form != "loop" else images[:1], fnet)
        per_step_images = args.images if form != "loop" else 1
        gflops = flops * steps * args.images / per_step_images / dt / 1e9
        out["results"][form] = {"images_per_s": args.images / dt,
                                "ms_per_image_step": dt / (args.images * steps) * 1e3,
                                "gflops": gflops}
        print(f"{form:>22}: {args.images / dt:8.3f} img/s  {dt / (args.images * steps) * 1e3:8.2f} "
              f"ms/image-step  {gflops:7.1f} GFLOP/s", file=sys.stderr, flush=True)
    dt = time_shared_ceiling(preset, fnet, center, images, steps)
    out["results"]["shared_weight_ceiling"] = {"images_per_s": args.images / dt,
                                               "ms_per_image_step": dt / (args.images * steps) * 1e3}
    loop = out["results"].get("loop", {}).get("images_per_s")
    ceil = args.images / dt
    for r in out["results"].values():
        if loop:
            r["vs_loop"] = r["images_per_s"] / loop
        r["vs_ceiling"] = r["images_per_s"] / ceil
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("| mode | images/s | ms / image-step | x loop | x ceiling |", file=sys.stderr)
    print("|---|---|---|---|---|", file=sys.stderr)
    for k, r in out["results"].items():
        print(f"| {k} | {r['images_per_s']:.3f} | {r['ms_per_image_step']:.2f} | "
              f"{r.get('vs_loop', float('nan')):.2f} | {r['vs_ceiling']:.2f} |", file=sys.stderr)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()

"""Peak memory of a fit job does not grow with the number of images; memory per image in flight.

    python benchmarks/memory.py [--preset small] [--images 100,10000] [--steps 1]
                                [--formulation vmap_matmul] [--analysis-presets tiny,small,paper]

1. For each count in --images, a fresh process (so that ru_maxrss is its own) streams that many
   images through `Engine.iter_fit` in the engine's default chunks. The images are made chunk by chunk
   (nothing holds all of them, as with a folder source) and results are dropped after a per-image
   score is kept. Prints the peak resident memory of each process. Peak memory depends on the chunk,
   not on the number of fit steps, so --steps 1 keeps a 10,000-image run short. The default
   formulation is the batched one (every image of a chunk in flight at once), where memory matters.
2. For each preset in --analysis-presets: XLA's memory analysis of the compiled fit step (bytes per
   image in flight and fixed; see anounet_jax/engine/memory.py) and the default chunk size it gives
   on this machine.
Prints a table and one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time


def _engine(preset, steps, formulation="auto"):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from anounet_jax.engine.fit import Engine
    from anounet_jax.fnet.model import FrozenFNet, build_fnet_module

    s = preset.image_size
    module = build_fnet_module(preset.fnet)
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, s, s, 3)))
    fnet = FrozenFNet.from_module(module, variables)
    center = np.zeros(fnet.features(np.zeros((1, s, s, 3), np.float32)).shape[-1], np.float32)
    fit = dataclasses.replace(preset.fit, steps=steps)
    return Engine(preset.unet, fit, fnet, center, formulation=formulation, default_chunk=preset.engine.chunk_size)


def worker(preset_name: str, n: int, steps: int, formulation: str) -> dict:
    import numpy as np

    from anounet_jax.config import get_preset

    preset = get_preset(preset_name)
    eng = _engine(preset, steps, formulation)
    s = preset.image_size
    chunk = eng.chunk_size_for((s, s, 3))

    def chunks():  # images made on the fly, like decoding a folder chunk by chunk
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            yield np.arange(lo, hi), np.random.default_rng(lo).random((hi - lo, s, s, 3), dtype=np.float32)

    t = time.perf_counter()
    done, maxima = 0, []
    rss_after_first = None
    for idx, res in eng.iter_fit(chunks()):
        maxima.append(float(res.heatmap.max()))  # what a job keeps per image: a score
        done += len(idx)
        if rss_after_first is None:
            rss_after_first = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    import jax

    return {"images": done, "chunk_size": chunk, "formulation": eng.formulation, "devices": len(jax.devices()),
            "steps": steps, "seconds": round(time.perf_counter() - t, 1),
            "peak_rss_mib_after_first_chunk": round(rss_after_first, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def analysis(preset_name: str, formulation: str) -> dict:
    import jax

    from anounet_jax.config import get_preset
    from anounet_jax.engine.memory import chunk_for_memory, free_memory, step_memory

    preset = get_preset(preset_name)
    eng = _engine(preset, preset.fit.steps, formulation)
    s = preset.image_size
    t = time.perf_counter()
    eng.chunk_size_for((s, s, 3))
    m = step_memory(eng.spec, eng.mesh, (s, s, 3), eng.fnet.variables, eng.target, len(eng.center))
    free = free_memory()
    return {"preset": preset_name, "formulation": eng.formulation, "backend": jax.default_backend(),
            "mib_per_image": round(m.per_image / 2 ** 20, 1), "mib_fixed": round(m.fixed / 2 ** 20, 1),
            "free_mib": round(free / 2 ** 20), "preset_chunk": preset.engine.chunk_size,
            "default_chunk": chunk_for_memory(m, free, preset.engine.chunk_size, len(jax.local_devices())),
            "analysis_seconds": round(time.perf_counter() - t, 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--images", default="100,10000", help="comma-separated image counts")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--formulation", default="vmap_matmul")
    ap.add_argument("--analysis-presets", default="tiny,small,paper")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--analysis", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    from anounet_jax.engine.devices import split_cpu_into_devices

    split_cpu_into_devices()  # as `anounet` does
    if args.worker is not None:
        print(json.dumps(worker(args.preset, args.worker, args.steps, args.formulation)))
        return
    if args.analysis is not None:
        print(json.dumps(analysis(args.analysis, args.formulation)))
        return

    def sub(*extra):
        out = subprocess.run([sys.executable, __file__, *extra], check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    out = {"preset": args.preset, "runs": [], "analysis": []}
    for n in [int(v) for v in args.images.split(",") if v]:
        r = sub("--preset", args.preset, "--steps", str(args.steps), "--formulation", args.formulation,
                "--worker", str(n))
        out["runs"].append(r)
        print(f"{n:>6} images: peak RSS {r['peak_rss_mib']:.0f} MiB (after the first chunk "
              f"{r['peak_rss_mib_after_first_chunk']:.0f} MiB), chunk {r['chunk_size']}, "
              f"{r['formulation']} on {r['devices']} device(s), {r['seconds']} s", file=sys.stderr, flush=True)
    for p in [v for v in args.analysis_presets.split(",") if v]:
        a = sub("--formulation", args.formulation, "--analysis", p)
        out["analysis"].append(a)
        print(f"{p}: {a['mib_per_image']} MiB per image in flight + {a['mib_fixed']} MiB fixed "
              f"({a['formulation']}, {a['backend']}); default chunk {a['default_chunk']} of "
              f"{a['free_mib']} MiB free", file=sys.stderr, flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

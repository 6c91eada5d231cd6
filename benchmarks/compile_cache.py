"""First run against second run of the same small job, with JAX's persistent compilation cache (what
`anounet` turns on): compilation is a large part of a small job on CPU.

    python benchmarks/compile_cache.py [--preset small] [--images 16] [--steps 100]

Each run is a fresh process (the cache folder is a new temporary one for the first run, kept for the
second): f-Net features of the images, then the engine's fit of every image. Prints both runs' wall
times (process start to result, and the fit alone) and their ratio as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JOB = """
import json, sys, time
t0 = time.perf_counter()
from anounet_jax.engine.devices import enable_compilation_cache, split_cpu_into_devices
split_cpu_into_devices(); enable_compilation_cache()
import dataclasses, jax, numpy as np
from anounet_jax.config import get_preset
from anounet_jax.data.embedded import load_test
from anounet_jax.engine.fit import Engine
from anounet_jax.fnet.model import FrozenFNet, build_fnet_module
preset = get_preset(sys.argv[1]); n, steps = int(sys.argv[2]), int(sys.argv[3])
module = build_fnet_module(preset.fnet)
s = preset.image_size
shapes = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x, train=False),
                        jax.ShapeDtypeStruct((1, s, s, 3), np.float32))
rng = np.random.default_rng(0)
def fill(path, a):  # random weights; BatchNorm variances near 1 (the maths, not the quality, is timed)
    v = rng.normal(0, 0.1, a.shape)
    return (np.abs(v) + 1 if "var" in jax.tree_util.keystr(path) else v).astype(np.float32)
variables = jax.tree_util.tree_map_with_path(fill, shapes)
fnet = FrozenFNet.from_module(module, variables)
x = load_test("brick", s, n // 4, n - n // 4).images
feats = fnet.features(x)
center = feats.mean(0)
scale = float(np.abs(feats - center).mean())  # L_C's unit (fit.lc_scale "normal")
t1 = time.perf_counter()
Engine.from_preset(preset.replace(fit={"steps": steps}), fnet, center, scale, start_params=None).fit(x)
t2 = time.perf_counter()
print(json.dumps({"total_s": round(t2 - t0, 1), "fit_s": round(t2 - t1, 1)}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args(argv)
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, ANOUNET_CACHE_DIR=cache, PYTHONPATH=str(repo))
        runs = []
        for label in ("first", "second"):
            t = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", JOB, args.preset, str(args.images), str(args.steps)],
                                 env=env, capture_output=True, text=True, check=True)
            runs.append({"run": label, "wall_s": round(time.perf_counter() - t, 1),
                         **json.loads(out.stdout.strip().splitlines()[-1])})
            print(json.dumps(runs[-1]), flush=True)
    print(json.dumps({"preset": args.preset, "images": args.images, "steps": args.steps, "runs": runs,
                      "second_over_first_wall": round(runs[1]["wall_s"] / runs[0]["wall_s"], 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

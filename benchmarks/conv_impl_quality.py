"""Do the U-Net's convolution implementations change the heatmaps? Ano-Unet on the embedded default
data with the engine's per-image convs as "hybrid" (the CPU default) and as library ("lax") convs,
for several fit seeds, one f-Net trained once.

    python benchmarks/conv_impl_quality.py [--preset small] [--seeds 0,1,2] [--impls hybrid,lax]

The implementations compute the same values and gradients up to float rounding (tests/test_unet.py);
over 60 Adam steps rounding differences grow into different fits, so the spread across seeds is the
scale against which an implementation's difference is judged. Prints a table and JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--impls", default="hybrid,lax")
    args = ap.parse_args(argv)
    from anounet_jax.engine.devices import split_cpu_into_devices

    split_cpu_into_devices()
    from anounet_jax.config import get_preset
    from anounet_jax.data.embedded import load_reference
    from anounet_jax.engine.fit import Engine
    from anounet_jax.evaluate import load_data
    from anounet_jax.maps import smooth
    from anounet_jax.metrics import aupro, pixel_auroc
    from anounet_jax.models.unet import unet_from_config
    from anounet_jax.pipeline import fit_fnet_and_center

    preset = get_preset(args.preset)
    ds = load_data("embedded", preset, 0)
    reference = load_reference(ds.category, preset.image_size, preset.data.n_reference_per_class, 0)
    trained = fit_fnet_and_center(preset, ds.train, reference, 0, False)
    fit_cfg = dataclasses.replace(preset.fit, smoothing_sigma=0.0)
    rows = []
    for impl in args.impls.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            eng = Engine(preset.unet, fit_cfg, trained.fnet, trained.center, formulation="loop")
            eng.unet = unet_from_config(preset.unet, conv_impl=impl)  # before the first compilation
            t = time.perf_counter()
            res = eng.fit(ds.test.images, seed=seed)
            maps = smooth(res.heatmap, preset.fit.smoothing_sigma)
            rows.append({"impl": impl, "seed": seed, "pixel_auroc": round(pixel_auroc(maps, ds.test.masks), 4),
                         "aupro": round(aupro(maps, ds.test.masks), 4),
                         "seconds": round(time.perf_counter() - t, 1)})
            print(rows[-1], file=sys.stderr, flush=True)
    print("| impl | seed | pixel AUROC | AUPRO | seconds |\n|---|---|---|---|---|", file=sys.stderr)
    for r in rows:
        print(f"| {r['impl']} | {r['seed']} | {r['pixel_auroc']:.3f} | {r['aupro']:.3f} | {r['seconds']} |",
              file=sys.stderr)
    for impl in args.impls.split(","):
        px = [r["pixel_auroc"] for r in rows if r["impl"] == impl]
        pro = [r["aupro"] for r in rows if r["impl"] == impl]
        print(f"{impl}: pixel AUROC mean {np.mean(px):.3f} (min {min(px):.3f}, max {max(px):.3f}); "
              f"AUPRO mean {np.mean(pro):.3f}", file=sys.stderr)
    print(json.dumps({"preset": preset.name, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

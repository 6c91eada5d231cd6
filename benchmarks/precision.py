"""bfloat16 against float32 compute in the U-Nets: the same fits, the heatmaps compared.

    python benchmarks/precision.py [--preset small] [--every 1] [--formulation auto]

Trains the preset's f-Net on the embedded default data once, then fits the same test images (every
--every-th one) twice with the same seeds: compute_dtype float32 and bfloat16 (parameters, optimizer
state, normalization statistics, losses and the f-Net stay float32). Prints, as a table and one
JSON object: pixel AUROC, AUPRO and image AUROC of each; the per-image Pearson correlation of the two
maps; the mean and 99th-percentile absolute difference of the maps relative to the float32 map's
range; and the seconds of each fit. Speed on CPU means little here (XLA:CPU has no fast bfloat16
convs); the point is the heatmap.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--every", type=int, default=1, help="use every n-th test image")
    ap.add_argument("--formulation", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from anounet_jax.engine.devices import split_cpu_into_devices

    split_cpu_into_devices()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from anounet_jax.config import get_preset
    from anounet_jax.data.embedded import load_embedded
    from anounet_jax.engine.fit import Engine
    from anounet_jax.fnet.train import train_fnet
    from anounet_jax.engine.warm_start import with_warm_start
    from anounet_jax.maps import smooth
    from anounet_jax.metrics import map_metrics

    preset = get_preset(args.preset)
    data = load_embedded(preset.data, preset.image_size, args.seed)
    test = data["test"].subset(np.arange(0, len(data["test"]), args.every))
    trained = train_fnet(preset.fnet, data["train"], data["reference"], args.seed, progress=False)
    trained = with_warm_start(preset, trained, data["train"].images, seed=args.seed)
    out = {"preset": preset.name, "images": len(test), "backend": jax.default_backend(),
           "device": str(jax.devices()[0]), "results": {}}
    maps = {}
    for name, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
        eng = Engine.for_trained(preset, trained, formulation=args.formulation, compute_dtype=dtype)
        t = time.perf_counter()
        res = eng.fit(test.images, seed=args.seed)
        seconds = time.perf_counter() - t
        maps[name] = smooth(res.heatmap, preset.maps.smoothing_sigma)
        m = map_metrics(maps[name], maps[name].reshape(len(test), -1).max(1), test.labels, test.masks)
        m.update(seconds=round(seconds, 1), diverged=int(res.diverged.sum()), formulation=eng.formulation)
        out["results"][name] = m
        print(f"{name}: {json.dumps(m)}", file=sys.stderr, flush=True)
    a, b = maps["float32"], maps["bfloat16"]
    flat_a, flat_b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    corr = [float(np.corrcoef(x, y)[0, 1]) for x, y in zip(flat_a, flat_b)]
    span = flat_a.max(1, keepdims=True) - flat_a.min(1, keepdims=True)
    rel = np.abs(flat_a - flat_b) / np.maximum(span, 1e-12)
    out["comparison"] = {"pearson_mean": float(np.mean(corr)), "pearson_min": float(np.min(corr)),
                         "abs_diff_mean_of_range": float(rel.mean()),
                         "abs_diff_p99_of_range": float(np.percentile(rel, 99))}
    print("| compute | pixel AUROC | AUPRO | image AUROC | fit seconds |", file=sys.stderr)
    print("|---|---|---|---|---|", file=sys.stderr)
    for k, r in out["results"].items():
        print(f"| {k} | {r['pixel_auroc']:.3f} | {r['aupro']:.3f} | {r['image_auroc']:.3f} | {r['seconds']} |",
              file=sys.stderr)
    print(f"maps: Pearson r mean {out['comparison']['pearson_mean']:.4f} (min "
          f"{out['comparison']['pearson_min']:.4f}); |difference| mean "
          f"{out['comparison']['abs_diff_mean_of_range']:.4f}, p99 {out['comparison']['abs_diff_p99_of_range']:.4f} "
          f"of the float32 map's range", file=sys.stderr)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()

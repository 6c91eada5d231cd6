"""Heatmap quality of Ano-Unet against the baselines on the embedded default data (no files needed).

    python benchmarks/quality.py [--preset small] [--methods ano-unet,autoencoder,doc-decoder,anogan]
                                 [--category brick] [--smoothing SIGMA] [--seed 0] [--out runs/quality]

Runs `anounet_jax.evaluate.evaluate("embedded", ...)` (the protocol is in that module's docstring: one
shared f-Net, one Gaussian smoothing for every method's maps, image AUROC from each method's own score and
from the map max, pixel AUROC, AUPRO), then prints the Markdown table and one JSON object (the metrics,
with a "settings" entry: sizes, seconds per stage, backend, machine). Panels go to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from anounet_jax.config import get_preset
from anounet_jax.errors import AnoUnetError
from anounet_jax.evaluate import EMBEDDED, METHODS, evaluate, markdown_table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", help="paper | small | tiny (default: %(default)s)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: all)")
    ap.add_argument("--category", default=None, help="embedded texture: brick | grass (default: the preset's)")
    ap.add_argument("--smoothing", type=float, default=None, help="default: the preset's fit.smoothing_sigma")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--formulation", default="auto", help="Ano-Unet engine formulation")
    ap.add_argument("--out", default="runs/quality", help="panels, metrics.json, metrics.md")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    from anounet_jax.engine.devices import split_cpu_into_devices

    split_cpu_into_devices()  # as `anounet` does: one CPU device per core
    try:
        preset = get_preset(args.preset)
        if args.category:
            preset = preset.replace(data={"category": args.category})
        t = time.perf_counter()
        m = evaluate(EMBEDDED, preset, args.methods, args.out, seed=args.seed, progress=not args.quiet,
                     smoothing=args.smoothing, formulation=args.formulation,
                     log=lambda *a: print(*a, file=sys.stderr))
        wall = time.perf_counter() - t
    except AnoUnetError as e:
        print(f"quality: error: {e}", file=sys.stderr)
        return 2
    print(markdown_table(m))
    print(f"wall time: {wall:.1f} s")
    print(json.dumps(m))
    return 0


if __name__ == "__main__":
    sys.exit(main())

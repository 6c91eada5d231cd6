"""Map steps compared offline on saved raw maps: which deviation (and low-side weight) finds the defects.

    python benchmarks/map_steps.py NAME=FILE.npz [NAME=FILE.npz ...] [--key raw] [--sigma 2] [--score top1]

Each FILE.npz holds one data set's raw maps (N, H, W) under --key (default "raw"; NAME=FILE.npz:KEY
overrides it for one file), its bool masks (N, H, W) and labels (N,): `benchmarks/warm_start.py
--save-maps` writes them. Every map step is `maps.finish` with a MapConfig (smoothing sigma, deviation,
low-side weight), so the numbers are the ones a job would report. Prints, per variant, pixel AUROC /
AUPRO / image AUROC per data set, the mean of pixel AUROC + AUPRO over the sets, and the mean image
AUROC with the variant's own image score and with the smoothed raw map's score (the score before the
deviation). Choose on tuning data only.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

VARIANTS = [("none", 1.0)] + [(how, low) for how in ("absolute", "relative") for low in (1.0, 0.75, 0.5, 0.25)]


def load(spec: str, key: str):
    name, _, path = spec.partition("=")
    if not path:
        raise SystemExit(f"expected NAME=FILE.npz, got {spec!r}")
    path, _, k = path.partition(":")
    d = np.load(path)
    return name, d[k or key], d["masks"].astype(bool), d["labels"]


def main(argv=None) -> int:
    from anounet_jax.config import MapConfig
    from anounet_jax.maps import describe_deviation, finish, map_score
    from anounet_jax.metrics import image_auroc, map_metrics

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sets", nargs="+", metavar="NAME=FILE.npz")
    ap.add_argument("--key", default="raw")
    ap.add_argument("--sigma", type=float, default=2.0)
    ap.add_argument("--score", default="top1", choices=("max", "top1"))
    args = ap.parse_args(argv)

    sets = [load(s, args.key) for s in args.sets]
    names = [s[0] for s in sets]
    # each set's image score before any deviation (the smoothed raw map's), the same for every variant
    before = [map_score(finish(raw, MapConfig(smoothing_sigma=args.sigma)), args.score) for _, raw, _, _ in sets]
    print("pixel AUROC / AUPRO / image AUROC per set; means over the sets\n")
    print("| map step | " + " | ".join(names) + " | mean pixel + AUPRO | mean image AUROC (own score / raw map's) |")
    print("|---|" + "---|" * (len(names) + 2))
    for how, low in VARIANTS:
        cfg = MapConfig(smoothing_sigma=args.sigma, deviation=how, deviation_low=low)
        cells, sums, img, img_raw = [], [], [], []
        for (_, raw, masks, labels), score_before in zip(sets, before):
            maps = finish(raw, cfg)
            m = map_metrics(maps, map_score(maps, args.score), labels, masks)
            img_raw.append(image_auroc(score_before, labels))
            cells.append(f"{m['pixel_auroc']:.3f} / {m['aupro']:.3f} / {m['image_auroc']:.3f}")
            sums.append(m["pixel_auroc"] + m["aupro"])
            img.append(m["image_auroc"])
        print(f"| {describe_deviation(how, low)} | " + " | ".join(cells)
              + f" | {np.mean(sums):.3f} | {np.mean(img):.3f} / {np.mean(img_raw):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Reproduce the original's DAGM 2007 experiment: one texture class (default 6) of either release.

f-Net on the class's normal images + the built-in reference images (bundled pictures and procedural
textures, `anounet_jax.data.embedded.load_reference`), then one Ano-Unet per defective test image
plus as many normal ones (for image AUROC), beta 80 and 200 SGD steps at 96x96 (the "paper" preset).
Writes <out>/metrics.json (image AUROC, pixel AUROC, AUPRO), <out>/scores.csv and <out>/panels/*.png
(image | reconstruction | heatmap overlay | true mask).

DAGM 2007 is downloaded by hand (the HCI Heidelberg page "Weakly Supervised Learning for Industrial
Optical Inspection"; see docs/data.md). --root is the folder holding Class6/ (+ Class6_def/ for the
original release)::

    python scripts/reproduce_dagm.py --root ~/data/DAGM --out runs/dagm6           # the paper's settings
    python scripts/reproduce_dagm.py --root ~/data/DAGM --preset small --n-test 60 --n-reference 1000
    python scripts/reproduce_dagm.py --root ~/data/DAGM --preset tiny --n-test 10 --n-reference 100 --steps 10

Original release: the ellipse rotations in labels.txt are read as radians (--rotation-unit); look at
the true-mask column of a few panels once to check that the ellipses sit on the defects.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--root", required=True, help="DAGM 2007 folder (holds Class1, Class2, ...)")
    p.add_argument("--class-id", type=int, default=6, help="DAGM class (default: %(default)s)")
    p.add_argument("--preset", default="paper", help="paper | small | tiny (default: %(default)s)")
    p.add_argument("--out", default=None, help="output folder (default: runs/reproduce_dagm_class<N>)")
    p.add_argument("--rotation-unit", default="radians", choices=["radians", "degrees"],
                   help="unit of the ellipse rotation in the original release's labels.txt "
                        "(default: %(default)s)")
    p.add_argument("--n-test", type=int, default=None,
                   help="fit a balanced random subset of this many test images "
                        "(default: every defective test image and as many normal ones)")
    p.add_argument("--n-reference", type=int, default=None,
                   help="total built-in reference images (default: the preset's per-class count x 23)")
    p.add_argument("--n-train", type=int, default=None, help="cap on the normal training images")
    p.add_argument("--steps", type=int, default=None, help="override the per-image fit steps")
    p.add_argument("--beta", type=float, default=None, help="override beta (weight of L_C)")
    p.add_argument("--fnet-weights", default=None,
                   help="MobileNetV2 ImageNet weights (.msgpack from scripts/import_keras_mobilenetv2.py)")
    p.add_argument("--panels", default="all", choices=["all", "flagged", "none"],
                   help="which test images get a panel; flagged = LOF score above the 0.95 quantile "
                        "of the training scores (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--formulation", default="auto",
                   help="engine formulation: auto | vmap_matmul | vmap_conv | unrolled | loop")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def preset_from_args(args):
    from anounet_jax.jobs.experiments import experiment_preset

    return experiment_preset("dagm", args.preset, steps=args.steps, beta=args.beta)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from anounet_jax.engine.devices import split_cpu_into_devices

    split_cpu_into_devices()  # as `anounet` does: one CPU device per core
    from anounet_jax.errors import AnoUnetError
    from anounet_jax.jobs.experiments import run_dagm

    out = args.out or f"runs/reproduce_dagm_class{args.class_id}"
    try:
        preset = preset_from_args(args)
        m = run_dagm(preset, args.root, out, class_id=args.class_id, rotation_unit=args.rotation_unit,
                     n_test=args.n_test, n_reference=args.n_reference, n_train=args.n_train,
                     seed=args.seed, formulation=args.formulation, panels=args.panels,
                     fnet_weights=args.fnet_weights, progress=not args.quiet,
                     log=(lambda *a: None) if args.quiet else print)
    except AnoUnetError as e:
        print(f"reproduce_dagm: error: {e}", file=sys.stderr)
        return 2
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"image AUROC {fmt(m.get('image_auroc'))}  pixel AUROC {fmt(m.get('pixel_auroc'))}  "
          f"AUPRO {fmt(m.get('aupro'))}  (LOF image AUROC {fmt(m['image_auroc_by_score']['lof'])})")
    print(f"{m['images']} test images ({m['anomalous']} defective), {m['diverged']} diverged, "
          f"{m['seconds']['total']} s; metrics.json, scores.csv and panels in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

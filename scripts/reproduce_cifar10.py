#!/usr/bin/env python
"""Reproduce the original's CIFAR-10 experiment: horse (normal, class 7) against deer (anomaly, class 4).

f-Net on the 5,000 training horses + 6,000 reference images of the other eight classes (no deer),
96x96, then one Ano-Unet per test horse and deer (beta 50, 150 SGD steps: the "paper" preset).
Writes <out>/metrics.json (image AUROC; CIFAR-10 has no masks), <out>/scores.csv and
<out>/panels/*.png (image | reconstruction | heatmap overlay).

Needs the tfds extra and, on the first run, internet (tfds downloads CIFAR-10 into --data-dir)::

    pip install "anounet_jax[tfds]"
    python scripts/reproduce_cifar10.py --out runs/cifar10            # the paper's settings (GPU)
    python scripts/reproduce_cifar10.py --preset small --n-test 200 --n-reference 2000 --n-train 1000
    python scripts/reproduce_cifar10.py --preset tiny --n-test 20 --n-reference 200 --n-train 100 --steps 10

"paper" applies beta 50 / 150 steps; "small" and "tiny" keep their own fit settings unless --beta or
--steps is given. --fnet-weights starts MobileNetV2 from ImageNet weights converted with
scripts/import_keras_mobilenetv2.py, as the original did.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--preset", default="paper", help="paper | small | tiny (default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="tfds data folder (default: ~/tensorflow_datasets)")
    p.add_argument("--out", default="runs/reproduce_cifar10", help="output folder (default: %(default)s)")
    p.add_argument("--n-test", type=int, default=None,
                   help="fit a balanced random subset of this many test images (default: all 2,000)")
    p.add_argument("--n-reference", type=int, default=6000,
                   help="reference images of the 8 other classes (default: %(default)s)")
    p.add_argument("--n-train", type=int, default=None, help="training horses to use (default: all 5,000)")
    p.add_argument("--steps", type=int, default=None, help="override the per-image fit steps")
    p.add_argument("--beta", type=float, default=None, help="override beta (weight of L_C)")
    p.add_argument("--fnet-weights", default=None,
                   help="MobileNetV2 ImageNet weights (.msgpack from scripts/import_keras_mobilenetv2.py)")
    p.add_argument("--panels", default="all", choices=["all", "flagged", "none"],
                   help="which test images get a panel; flagged = LOF score above the 0.95 quantile "
                        "of the training scores (default: %(default)s)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading CIFAR-10")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--formulation", default="auto",
                   help="engine formulation: auto | vmap_matmul | vmap_conv | unrolled | loop")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def preset_from_args(args):
    from anounet_jax.jobs.experiments import experiment_preset

    return experiment_preset("cifar10", args.preset, steps=args.steps, beta=args.beta)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from anounet_jax.engine.devices import split_cpu_into_devices

    split_cpu_into_devices()  # as `anounet` does: one CPU device per core
    from anounet_jax.errors import AnoUnetError
    from anounet_jax.jobs.experiments import run_cifar10

    try:
        preset = preset_from_args(args)
        m = run_cifar10(preset, args.out, data_dir=args.data_dir, n_test=args.n_test,
                        n_reference=args.n_reference, n_train=args.n_train, seed=args.seed,
                        download=not args.no_download, formulation=args.formulation, panels=args.panels,
                        fnet_weights=args.fnet_weights, progress=not args.quiet,
                        log=(lambda *a: None) if args.quiet else print)
    except AnoUnetError as e:
        print(f"reproduce_cifar10: error: {e}", file=sys.stderr)
        return 2
    by = m["image_auroc_by_score"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"image AUROC (heatmap max) {fmt(m.get('image_auroc'))}; "
          + ", ".join(f"{k} {fmt(v)}" for k, v in by.items() if k != "heatmap_max"))
    print(f"{m['images']} test images ({m['anomalous']} deer), {m['diverged']} diverged, "
          f"{m['seconds']['total']} s; metrics.json, scores.csv and panels in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`anounet ...` command line. User errors (AnoUnetError) print one line and exit 2, no traceback."""

from __future__ import annotations

import argparse
import json
import sys

from anounet_jax.errors import AnoUnetError


def _add_common(p: argparse.ArgumentParser, default_preset: str = "small") -> None:
    p.add_argument("--preset", default=default_preset, help="paper | small | tiny (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--formulation", default="auto",
                   help="engine formulation: auto | measure | vmap_matmul | vmap_conv | unrolled | loop")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_demo(args) -> int:
    from anounet_jax.config import get_preset
    from anounet_jax.pipeline import run_demo

    preset = get_preset(args.preset)
    if args.category:
        preset = preset.replace(data={"category": args.category})
    log = (lambda *a: None) if args.quiet else print
    m = run_demo(preset, args.out, seed=args.seed, formulation=args.formulation,
                 progress=not args.quiet, log=log)
    print(f"image AUROC {m['image_auroc']:.3f}  pixel AUROC {m['pixel_auroc']:.3f}  "
          f"AUPRO {m['aupro']:.3f}  ({m['images']} test images, {m['diverged']} diverged)")
    print(f"time: {json.dumps(m['seconds'])}; panels and metrics.json in {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    from anounet_jax.evaluate import evaluate, markdown_table

    m = evaluate(args.data, args.preset, args.methods, args.out, seed=args.seed, progress=not args.quiet,
                 smoothing=args.smoothing, formulation=args.formulation)
    print(markdown_table(m), end="")
    print(f"metrics.json, metrics.md and panels/ in {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anounet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train, fit and draw heatmaps on the embedded default data")
    _add_common(p)
    p.add_argument("--out", default="runs/demo", help="output folder (default: %(default)s)")
    p.add_argument("--category", default=None, help="embedded texture: brick | grass")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("evaluate", help="Ano-Unet and the baselines on an MVTec AD-style folder: metrics, panels")
    p.add_argument("data", metavar="DATA_DIR", help="MVTec AD category folder, or 'embedded' (built-in data)")
    _add_common(p)
    p.add_argument("--out", required=True, help="output folder: metrics.json, metrics.md, panels/")
    p.add_argument("--methods", default="ano-unet,autoencoder,doc-decoder,anogan",
                   help="comma-separated subset (default: %(default)s)")
    p.add_argument("--smoothing", type=float, default=None,
                   help="Gaussian sigma for every method's maps (default: the preset's fit.smoothing_sigma)")
    p.set_defaults(func=cmd_evaluate)
    from anounet_jax.scoring.commands import register as register_scoring  # train-fnet, score

    register_scoring(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from anounet_jax.engine.devices import split_cpu_into_devices

    split_cpu_into_devices()  # one CPU device per core (no-op once JAX has started, e.g. in tests)
    try:
        return args.func(args)
    except AnoUnetError as e:
        print(f"anounet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("anounet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

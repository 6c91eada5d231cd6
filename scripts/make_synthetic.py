#!/usr/bin/env python
"""Write the synthetic validation suite to disk: one MVTec-AD-style category folder per texture family.

    python scripts/make_synthetic.py runs/synthetic                        # every family, 64 px
    python scripts/make_synthetic.py runs/synthetic --families tuning --size 256
    python scripts/make_synthetic.py runs/synthetic --families weave,grid --n-train 50 --seed 1

Each OUT_ROOT/<family>/ holds train/good/0000.png, test/<good|kind>/000.png and
ground_truth/<kind>/000_mask.png, readable by `anounet_jax.data.mvtec.load_mvtec`. Tune presets and
methods on the "tuning" families only; the "held-out" ones are for reporting (see
`anounet_jax.data.synthetic`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from anounet_jax.data.synthetic import FAMILIES, SPLITS, write_mvtec
from anounet_jax.errors import AnoUnetError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("out_root", help="folder to write one category folder per family into")
    p.add_argument("--families", default="all",
                   help="tuning | held-out | all | a comma-separated list (default: %(default)s)")
    p.add_argument("--size", default="64", help="N or HxW, e.g. 64 or 80x120 (default: %(default)s)")
    p.add_argument("--n-train", type=int, default=200, help="normal training images (default: %(default)s)")
    p.add_argument("--n-good", type=int, default=10, help="normal test images (default: %(default)s)")
    p.add_argument("--n-defect", type=int, default=40, help="defective test images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="reproduces every byte (default: %(default)s)")
    return p


def parse_families(spec: str) -> list[str]:
    if spec in SPLITS:
        return list(SPLITS[spec])
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        raise AnoUnetError(f"unknown families {unknown}; use tuning, held-out, all or some of "
                           f"{', '.join(FAMILIES)}")
    return names


def parse_size(spec: str):
    try:
        parts = [int(v) for v in spec.lower().split("x")]
    except ValueError:
        raise AnoUnetError(f"--size must be N or HxW, got {spec!r}") from None
    if len(parts) not in (1, 2):
        raise AnoUnetError(f"--size must be N or HxW, got {spec!r}")
    return parts[0] if len(parts) == 1 else tuple(parts)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        families, size = parse_families(args.families), parse_size(args.size)
        for family in families:
            t = time.perf_counter()
            root = write_mvtec(Path(args.out_root) / family, family, size=size, n_train=args.n_train,
                               n_test_good=args.n_good, n_test_defect=args.n_defect, seed=args.seed)
            print(f"{family}: {root} ({time.perf_counter() - t:.1f} s)")
    except AnoUnetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

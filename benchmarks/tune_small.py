"""Hyperparameter sweep of the per-image fit for a preset, tuned on one texture, reported on another.

    python benchmarks/tune_small.py --tune-category grass --report-category brick

Trains the f-Net once per category, then fits the test images for each setting in the grid and prints
pixel AUROC / AUPRO / image AUROC (maps smoothed with the preset's sigma) as JSON lines + a table.
The demo reports on brick; the grid is chosen on grass so that the reported numbers are not tuned on
the images they are reported on.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time

from anounet_jax.config import get_preset
from anounet_jax.data.embedded import load_embedded
from anounet_jax.engine.fit import Engine
from anounet_jax.pipeline import evaluate_maps, fit_fnet_and_center, image_scores

GRID = {
    "beta": [0.0, 1.0, 10.0, 50.0],
    "opt": [("adam", 1e-2), ("adam", 3e-3), ("sgd", 1e-2)],
    "steps": [50, 100],
}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--category", default="grass")
    ap.add_argument("--n-test", type=int, default=30, help="test images (1/3 good)")
    ap.add_argument("--betas", default=None)
    ap.add_argument("--opts", default=None, help="e.g. adam:1e-2,sgd:1e-2")
    ap.add_argument("--steps", default=None, help="e.g. 50,100")
    args = ap.parse_args(argv)
    from anounet_jax.engine.devices import split_cpu_into_devices

    split_cpu_into_devices()  # as `anounet` does: one CPU device per core
    preset = get_preset(args.preset)
    preset = preset.replace(data={"category": args.category, "n_test_good": args.n_test // 3,
                                  "n_test_defect": args.n_test - args.n_test // 3})
    betas = [float(b) for b in args.betas.split(",")] if args.betas else GRID["beta"]
    opts = ([(o.split(":")[0], float(o.split(":")[1])) for o in args.opts.split(",")]
            if args.opts else GRID["opt"])
    steps_list = [int(s) for s in args.steps.split(",")] if args.steps else GRID["steps"]
    data = load_embedded(preset.data, preset.image_size, seed=1)
    t = time.perf_counter()
    trained = fit_fnet_and_center(preset, data["train"], data["reference"], seed=1, progress=False)
    print(json.dumps({"fnet_seconds": round(time.perf_counter() - t, 1), "fnet_arch": preset.fnet.arch,
                      "category": args.category, "final_fnet_loss": trained.history[-1]}), flush=True)
    rows = []
    for beta, (opt, lr), steps in itertools.product(betas, opts, steps_list):
        fit = dataclasses.replace(preset.fit, beta=beta, optimizer=opt, lr=lr, steps=steps)
        t = time.perf_counter()
        res = Engine(preset.unet, fit, trained.fnet, trained.center).fit(data["test"].images, seed=1)
        m = evaluate_maps(res.heatmap, image_scores(res), data["test"])
        row = {"beta": beta, "opt": opt, "lr": lr, "steps": steps, **{k: round(v, 4) for k, v in m.items()
               if isinstance(v, float)}, "seconds": round(time.perf_counter() - t, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| beta | optimizer | lr | steps | pixel AUROC | AUPRO | image AUROC |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -r["pixel_auroc"]):
        print(f"| {r['beta']} | {r['opt']} | {r['lr']} | {r['steps']} | {r['pixel_auroc']:.3f} | "
              f"{r['aupro']:.3f} | {r['image_auroc']:.3f} |")


if __name__ == "__main__":
    main()

"""Quality against steps per image: cold-started fits against fits warm-started from U-Net parameters
trained on the normal images (anounet_jax/engine/warm_start.py). Issue 17.

    python benchmarks/warm_start.py [--data embedded,synthetic:speckle,synthetic:cells] [--preset small]
                                    [--starts cold,shared,reptile] [--steps 5,10,20,40,60]
                                    [--start-steps 300] [--reptile-steps 100 --reptile-inner 10]
                                    [--test-every 1] [--set fit.beta=0 --label beta0] [--out runs/warm_start]

Per data set: one f-Net (as `anounet evaluate` trains it), each warm start ("shared": one U-Net trained
on the normal images; "reptile": a first-order meta-learned start; their training times are reported),
then for every K in --steps the same test images fitted K steps from a random start ("cold") and from
each warm start; pixel AUROC, AUPRO and image AUROC (the preset's map score) of the smoothed maps.
--test-every N keeps every N-th test image (fewer images, same mixture of good and defect kinds).
Maps get the preset's map step (`maps.finish`); --save-maps also keeps the raw maps (OUT/maps/*.npz).
--set SECTION.FIELD=VALUE changes the preset (as `anounet ... --set`); --label names that variant in the
results (its rows are keyed "DATA LABEL", so variants share one results file).
Writes OUT/results.json (resumable per data set and start) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="embedded,synthetic:speckle,synthetic:cells")
    ap.add_argument("--starts", default="cold,shared,reptile")
    ap.add_argument("--reptile-steps", type=int, default=100, help="outer iterations")
    ap.add_argument("--reptile-inner", type=int, default=10, help="inner steps K of each image's fit")
    ap.add_argument("--reptile-batch", type=int, default=8)
    ap.add_argument("--reptile-lr", type=float, default=1.0, help="outer step size (annealed to 0)")
    ap.add_argument("--test-every", type=int, default=1)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", default="5,10,20,40,60")
    ap.add_argument("--start-steps", type=int, default=300)
    ap.add_argument("--start-lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    ap.add_argument("--save-maps", action="store_true", help="also write each fit's raw maps to OUT/maps/*.npz")
    ap.add_argument("--label", default="", help="suffix of the results' data keys for this variant")
    ap.add_argument("--out", default="runs/warm_start")
    args = ap.parse_args(argv)
    from anounet_jax.engine.devices import enable_compilation_cache, split_cpu_into_devices

    split_cpu_into_devices()
    enable_compilation_cache()
    from anounet_jax.config import get_preset
    from anounet_jax.data.embedded import load_reference
    from anounet_jax.data.sources import load_labelled
    from anounet_jax.engine.fit import Engine
    from anounet_jax.engine.warm_start import train_reptile_start, train_start
    from anounet_jax.jobs.evaluate import _by_kind
    from anounet_jax.fnet.train import train_fnet
    from anounet_jax.maps import finish, map_score
    from anounet_jax.metrics import map_metrics

    from anounet_jax.settings import apply_overrides

    preset = apply_overrides(get_preset(args.preset), args.overrides)
    ks = [int(k) for k in args.steps.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    starts = [s.strip() for s in args.starts.split(",") if s.strip()]
    for source in [s.strip() for s in args.data.split(",") if s.strip()]:
        key = f"{source} {args.label}".strip()
        entry = results.setdefault(key, {"start_seconds": {}})
        todo = [name for name in starts if name not in entry]
        if not todo:
            continue
        ds = load_labelled(source, preset, args.seed)
        test = ds.test.subset(np.arange(0, len(ds.test), max(1, args.test_every)))
        entry["n_test"] = len(test)
        reference = load_reference(ds.category, preset.image_size, preset.data.n_reference_per_class, args.seed)
        trained = train_fnet(preset.fnet, ds.train, reference, seed=args.seed, progress=False)
        for name in todo:
            t0 = time.perf_counter()
            if name == "cold":
                kw = {"start_params": None}  # a random start per image, whatever the preset's fit.start
            elif name == "shared":
                kw = {"start_params": train_start(preset, trained, ds.train.images, steps=args.start_steps,
                                                  lr=args.start_lr, seed=args.seed)}
            elif name == "reptile":
                kw = {"start_params": train_reptile_start(
                    preset, trained, ds.train.images, steps=args.reptile_steps, inner_steps=args.reptile_inner,
                    batch_size=args.reptile_batch, outer_lr=args.reptile_lr, seed=args.seed)}
            else:
                raise SystemExit(f"unknown start {name!r}")
            if name != "cold":
                entry["start_seconds"][name] = round(time.perf_counter() - t0, 1)
            rows = {}
            for k in ks:
                p = preset.replace(fit={"steps": k})
                t0 = time.perf_counter()
                res = Engine.for_trained(p, trained, **kw).fit(test.images, seed=args.seed)
                maps = finish(res.heatmap, p.maps)
                if args.save_maps:  # the raw maps, to try other map steps offline
                    slug = "".join(c if c.isalnum() or c in "._-" else "_" for c in f"{key}_{name}_K{k}")
                    (out / "maps").mkdir(exist_ok=True)
                    np.savez_compressed(out / "maps" / f"{slug}.npz", raw=np.asarray(res.heatmap), masks=test.masks,
                                        labels=test.labels, ids=np.array(test.ids))
                score = map_score(maps, p.maps.image_score)
                m = map_metrics(maps, score, test.labels, test.masks)
                rows[k] = {"pixel_auroc": m["pixel_auroc"], "aupro": m["aupro"],
                           "image_auroc": m["image_auroc"], "seconds": round(time.perf_counter() - t0, 1),
                           "by_kind": {kind: round(v["pixel_auroc"], 4) for kind, v in
                                       _by_kind(maps, score, test).items()}}
                print(f"{source} {name} K={k}: pixel {m['pixel_auroc']:.3f} AUPRO {m['aupro']:.3f} image "
                      f"{m['image_auroc']:.3f} ({rows[k]['seconds']} s)", file=sys.stderr, flush=True)
            entry[name] = rows
            path.write_text(json.dumps(results, indent=1))
    lines = [f"pixel AUROC / AUPRO / image AUROC, preset {preset.name} (shared start: {args.start_steps} steps; "
             f"reptile: {args.reptile_steps} outer x {args.reptile_inner} inner steps, batch {args.reptile_batch})",
             "", "| data | start | " + " | ".join(f"K={k}" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
    for source, e in results.items():
        for name in [n for n in ("cold", "shared", "reptile") if n in e]:
            cells = [e[name].get(str(k)) or e[name].get(k) for k in ks]
            lines.append(f"| {source} ({e.get('n_test', '?')} test) | {name} | " + " | ".join(
                "n/a" if c is None else f"{c['pixel_auroc']:.3f} / {c['aupro']:.3f} / {c['image_auroc']:.3f}"
                for c in cells) + " |")
        for name, sec in e["start_seconds"].items():
            lines.append(f"| {source} | {name} start training | {sec} s |" + " |" * (len(ks) - 1))
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

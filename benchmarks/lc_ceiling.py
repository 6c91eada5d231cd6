"""How much can L_C give? The f-Net term's effect split into its two places, and its ceiling. Issue 15.

    python benchmarks/lc_ceiling.py --data tuning|held-out|FAMILY,... [--preset small] [--seed 0]
                                    [--ablation-start] [--knn 32] [--out runs/lc_ceiling]

The small preset's L_C acts twice: while its warm start is meta-learned on the normal images (the
Reptile inner fits carry L_C) and in every test image's own fit. Per synthetic family, with the f-Net
and the warm start built exactly as `anounet evaluate` builds them (`with_warm_start`), every test image
is fitted from the same start with these centers for L_C (the preset's beta):

  b0       no L_C in the fit (beta 0)
  global   C, the mean f-Net feature of the normal training images (the preset)
  knnK     the mean feature of the K normal training images nearest to f(x) (mean absolute distance,
           the metric of L_C): a C for this image's own kind of normal (fit.lc_center "nearest",
           fnet/nearest_centers.py)
  oracle   f(x_clean), the feature of the test image *before its defect was planted*
           (data.synthetic.defect_free_test_images): the best target any center could give; not a
           method (it reads the answer), the ceiling of a global-feature L_C with this f-Net
  oracleM  the oracle at M times the preset's beta

--ablation-start adds the same fits from a warm start trained at beta 0 (the start the preset's ablation
uses: "start 0 / b0" is exactly ano-unet[beta=0] of benchmarks/quality.py). Maps are finished by the
preset's map step. Also: the image AUROC of the f-Net's own distance |f(x) - center| per center.
Writes OUT/results.json (resumable per family) and prints Markdown tables.
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
    ap.add_argument("--data", default="tuning")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--knn", default="32", help="comma-separated K for the kNN centers ('' for none)")
    ap.add_argument("--oracle-mult", default="3", help="comma-separated beta multiples for the oracle")
    ap.add_argument("--ablation-start", action="store_true")
    ap.add_argument("--out", default="runs/lc_ceiling")
    args = ap.parse_args(argv)

    from anounet_jax.engine.devices import enable_compilation_cache, split_cpu_into_devices

    split_cpu_into_devices()  # as the jobs run (one device per core): the same arithmetic as `anounet evaluate`
    enable_compilation_cache()

    from anounet_jax.config import get_preset
    from anounet_jax.data.embedded import load_reference
    from anounet_jax.data.sources import load_labelled
    from anounet_jax.data.synthetic import SPLITS, defect_free_test_images
    from anounet_jax.engine.fit import Engine, FitResult
    from anounet_jax.engine.warm_start import with_warm_start
    from anounet_jax.fnet.nearest_centers import nearest_centers
    from anounet_jax.fnet.train import train_fnet
    from anounet_jax.maps import finish, map_score
    from anounet_jax.metrics import image_auroc, map_metrics

    preset = get_preset(args.preset)
    beta = preset.fit.beta
    families = list(SPLITS[args.data]) if args.data in SPLITS else [f.strip() for f in args.data.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    ks = [int(k) for k in args.knn.split(",") if k.strip()]
    mults = [float(m) for m in args.oracle_mult.split(",") if m.strip()]
    starts = ["preset"] + (["beta0"] if args.ablation_start else [])

    for fam in families:
        entry = results.setdefault(fam, {})
        if all(s in entry for s in starts):
            continue
        d = preset.data
        ds = load_labelled(f"synthetic:{fam}", preset, args.seed)
        test = ds.test
        clean = defect_free_test_images(fam, preset.image_size, d.n_test_good, d.n_test_defect, args.seed)
        reference = load_reference(ds.category, preset.image_size, d.n_reference_per_class, args.seed)
        fnet_stage = train_fnet(preset.fnet, ds.train, reference, seed=args.seed, progress=False)
        feats = fnet_stage.fnet.features
        f_train, f_test, f_clean = feats(ds.train.images), feats(test.images), feats(clean)
        centers = {"global": None, "oracle": f_clean}
        centers.update({f"knn{k}": nearest_centers(f_test, f_train, k) for k in ks})
        c_rows = {n: np.broadcast_to(fnet_stage.center, f_test.shape) if c is None else c for n, c in centers.items()}
        entry["fnet_image_auroc"] = {n: round(image_auroc(np.abs(f_test - c).mean(1), test.labels), 4)
                                     for n, c in c_rows.items()}
        for start in starts:
            if start in entry:
                continue
            t0 = time.perf_counter()
            p_start = preset if start == "preset" else preset.replace(fit={"beta": 0.0})
            trained = with_warm_start(p_start, fnet_stage, ds.train.images, seed=args.seed)
            start_s = time.perf_counter() - t0
            variants = [("b0", 0.0, None), ("global", beta, None), ("oracle", beta, f_clean)]
            if start == "preset":
                variants += [(f"knn{k}", beta, centers[f"knn{k}"]) for k in ks]
            variants += [(f"oracle{m:g}", beta * m, f_clean) for m in mults]
            rows = {"start_seconds": round(start_s, 1)}
            for name, b, c in variants:
                # lc_center "global": a variant's C is the one given here (None: the global C), whatever
                # the preset's own fit.lc_center
                p = preset.replace(fit={"beta": b, "lc_center": "global"})
                engine = Engine.for_trained(p, trained)
                chunk = (np.arange(len(test)), test.images) + (() if c is None else (c,))
                res = FitResult.concatenate([r for _, r in engine.iter_fit([chunk], seed=args.seed)])
                maps = finish(res.heatmap, p.maps)
                m = map_metrics(maps, map_score(maps, p.maps.image_score), test.labels, test.masks)
                rows[name] = [round(m["pixel_auroc"], 4), round(m["aupro"], 4), round(m["image_auroc"], 4)]
                print(f"{fam} start {start} {name}: {rows[name]}", file=sys.stderr, flush=True)
            entry[start] = rows
            path.write_text(json.dumps(results, indent=1))

    names = sorted({n for e in results.values() for s in starts for n in e.get(s, {}) if n != "start_seconds"},
                   key=lambda n: (n != "b0", n != "global", n.startswith("oracle"), n))
    lines = [f"pixel AUROC / AUPRO / image AUROC, preset {args.preset} (beta {beta}), seed {args.seed}", ""]
    for start in starts:
        lines += [f"start: {start}", "", "| fit | " + " | ".join(results) + " | mean |",
                  "|---|" + "---|" * (len(results) + 1)]
        for n in names:
            cells = [results[f].get(start, {}).get(n) for f in results]
            have = [c for c in cells if c]
            mean = np.mean(have, 0) if len(have) == len(cells) else None
            lines.append(f"| {n} | " + " | ".join("-" if c is None else " / ".join(f"{v:.3f}" for v in c)
                                                  for c in cells)
                         + " | " + ("-" if mean is None else " / ".join(f"{v:.3f}" for v in mean)) + " |")
        lines.append("")
    lines += ["f-Net distance to each center, image AUROC:", "",
              "| center | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    for n in next(iter(results.values()))["fnet_image_auroc"]:
        lines.append(f"| {n} | " + " | ".join(f"{e['fnet_image_auroc'].get(n, float('nan')):.3f}"
                                             for e in results.values()) + " |")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

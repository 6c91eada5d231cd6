"""Ano-Unet variants on a split of the synthetic families: one f-Net per family and f-Net variant,
many fit variants on it, every image score. For tuning (on "tuning" ONLY) and ablation tables.

    python benchmarks/tune_anounet.py --data tuning --variants VARIANTS.json [--preset small] [--out DIR]

VARIANTS.json: {"name": {"fnet": {...FNetConfig fields}, "fit": {...FitConfig fields},
"maps": {...}}, ...} applied to the preset (`Preset.replace`); the maps are finished as every job
finishes them (`maps.finish`: smoothing, then the preset's map deviation). Variants with equal f-Net settings
share one trained f-Net per family (trained with the same seed, so it is the same f-Net a full
`anounet evaluate` would train). Results are resumable per (family, variant): OUT/<family>.json.

Image scores reported for every variant (image AUROC): "max" (max of the smoothed map, the default
so far), "top1" (mean of the top 1% of the smoothed map), "fnet" (||f(x) - C||_2), "lof" (LOF on
f-Net features), "fit_lc" (the fit's final L_C: how far G(x) stays from C), "combo" (top1 and fnet,
each divided by its median over the test images, summed: no labels used).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def image_scores(maps, fnet_dist, lof, fit_lc) -> dict:
    flat = maps.reshape(len(maps), -1)
    k = max(1, flat.shape[1] // 100)
    top1 = np.sort(flat, 1)[:, -k:].mean(1)
    combo = top1 / np.median(top1) + fnet_dist / np.median(fnet_dist)
    return {"max": flat.max(1), "top1": top1, "fnet": fnet_dist, "lof": lof, "fit_lc": fit_lc, "combo": combo}


def run_family(source, preset, variants, seed, out_file, log):
    from anounet_jax.data.embedded import load_reference
    from anounet_jax.data.sources import load_labelled
    from anounet_jax.engine.fit import Engine
    from anounet_jax.engine.warm_start import start_params_for, with_warm_start
    from anounet_jax.jobs.evaluate import _by_kind
    from anounet_jax.fnet.scores import LOFScorer
    from anounet_jax.fnet.train import train_fnet
    from anounet_jax.maps import finish
    from anounet_jax.metrics import image_auroc, map_metrics

    done = json.loads(out_file.read_text()) if out_file.is_file() else {}
    todo = {k: v for k, v in variants.items() if k not in done}
    if not todo:
        return done
    ds = load_labelled(source, preset, seed)
    test = ds.test
    fnets = {}
    for name, v in todo.items():
        p = preset.replace(**{k: v[k] for k in ("fnet", "fit", "maps") if k in v})
        fkey = json.dumps(p.fnet.__dict__, sort_keys=True)
        if fkey not in fnets:
            t0 = time.perf_counter()
            reference = load_reference(ds.category, p.image_size, p.data.n_reference_per_class, seed)
            trained = train_fnet(p.fnet, ds.train, reference, seed=seed, progress=False)
            feats = trained.fnet.features(test.images)
            fdist = np.linalg.norm(feats - trained.center, axis=1)
            lof = LOFScorer().fit(trained.train_features).score(feats)
            fnets[fkey] = (trained, fdist, lof, time.perf_counter() - t0)
            log(f"  f-Net {source}: {fnets[fkey][3]:.0f} s, scale {trained.feature_scale:.4g}, "
                f"image AUROC fnet {image_auroc(fdist, test.labels):.3f} lof {image_auroc(lof, test.labels):.3f}")
        trained, fdist, lof, f_s = fnets[fkey]
        t0 = time.perf_counter()
        memory = None
        if p.fit.spatial_beta > 0:
            from anounet_jax.fnet.patch_memory import build_patch_memory

            mkey = fkey + "memory"
            if mkey not in fnets:
                fnets[mkey] = build_patch_memory(trained.fnet, p.fnet, ds.train.images, seed)
                log(f"  patch memory: {fnets[mkey].memory.shape}, scale {fnets[mkey].scale:.4g}, "
                    f"{time.perf_counter() - t0:.0f} s")
            memory = fnets[mkey]
        # the start depends on the fit's objective and optimizer, not on its steps or spatial term
        # (engine/warm_start.py): fit variants that differ only there share one start
        start_fit = {k: v for k, v in p.fit.__dict__.items() if k not in ("steps", "spatial_beta", "flaw_beta")}
        wkey = fkey + json.dumps(start_fit, sort_keys=True) + json.dumps(p.start.__dict__, sort_keys=True)
        if p.fit.start == "warm" and wkey not in fnets:
            fnets[wkey] = with_warm_start(p, trained, ds.train.images, seed=seed)
        start = start_params_for(p, fnets[wkey]) if p.fit.start == "warm" else None
        eng = Engine.from_preset(p, trained.fnet, trained.center, trained.feature_scale, memory,
                                 trained.flaw_head, start_params=start)
        res = eng.fit(test.images, seed=seed)
        maps = finish(res.heatmap, p.maps)
        scores = image_scores(maps, fdist, lof, res.loss_c)
        m = map_metrics(maps, scores["max"], test.labels, test.masks)
        m["image_auroc"] = {k: image_auroc(s, test.labels) for k, s in scores.items()}
        m["by_kind"] = {k: v["pixel_auroc"] for k, v in _by_kind(maps, scores["max"], test).items()}
        m["seconds_fit"] = round(time.perf_counter() - t0, 1)
        m["seconds_fnet"] = round(f_s, 1)
        m["diverged"] = int(res.diverged.sum())
        done[name] = m
        log(f"  {source} {name}: pixel AUROC {m['pixel_auroc']:.3f} AUPRO {m['aupro']:.3f} image "
            + " ".join(f"{k} {v:.3f}" for k, v in m["image_auroc"].items()) + f" ({m['seconds_fit']} s)")
        out_file.write_text(json.dumps(done, indent=1))
    return done


def table(results: dict, variants: list[str]) -> str:
    fams = list(results)
    lines = ["| variant | " + " | ".join(fams) + " | **mean px** | **mean AUPRO** | image AUROC mean (max / top1 / fnet / lof / fit_lc / combo) |",
             "|---|" + "---|" * (len(fams) + 3)]
    for v in variants:
        px = [results[f][v]["pixel_auroc"] for f in fams]
        pro = [results[f][v]["aupro"] for f in fams]
        img = {k: np.mean([results[f][v]["image_auroc"][k] for f in fams])
               for k in ("max", "top1", "fnet", "lof", "fit_lc", "combo")}
        lines.append(f"| {v} | " + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in zip(px, pro))
                     + f" | **{np.mean(px):.3f}** | **{np.mean(pro):.3f}** | "
                     + " / ".join(f"{x:.3f}" for x in img.values()) + " |")
    kinds = sorted({k for f in fams for k in results[f][variants[0]]["by_kind"]})
    lines += ["", "| variant | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for v in variants:
        cells = []
        for k in kinds:
            vals = [results[f][v]["by_kind"][k] for f in fams if k in results[f][v]["by_kind"]]
            cells.append(f"{np.mean(vals):.3f}")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="tuning", help="tuning | held-out | comma-separated families")
    ap.add_argument("--variants", required=True, help="a JSON file or a JSON string")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/tune_anounet")
    args = ap.parse_args(argv)
    from anounet_jax.config import get_preset
    from anounet_jax.data.synthetic import HELD_OUT, TUNING
    from anounet_jax.engine.devices import enable_compilation_cache, split_cpu_into_devices

    split_cpu_into_devices()
    enable_compilation_cache()
    text = Path(args.variants).read_text() if Path(args.variants).is_file() else args.variants
    variants = json.loads(text)
    fams = {"tuning": TUNING, "held-out": HELD_OUT}.get(args.data) or args.data.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    preset = get_preset(args.preset)
    results, t0 = {}, time.perf_counter()
    for fam in fams:
        results[fam] = run_family(f"synthetic:{fam}", preset, variants, args.seed, out / f"{fam}.json",
                                  lambda *a: print(*a, file=sys.stderr, flush=True))
        print(f"{fam} done, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    text = table(results, list(variants))
    (out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

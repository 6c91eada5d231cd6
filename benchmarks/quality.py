"""Heatmap quality of every method on a suite of data sets: one table, a mean row, per-defect rows.

    python benchmarks/quality.py --data held-out [--preset small] [--methods ano-unet,autoencoder,...]
                                 [--ablation] [--out runs/quality] [--seed 0]

--data: "tuning" or "held-out" (the fixed split of the synthetic families, data/synthetic.py: tune
presets and method choices ONLY on "tuning"; "held-out" is for reporting), or a comma-separated list
of data sources ("embedded", "synthetic:weave", an MVTec AD category folder).
--ablation adds Ano-Unet with beta, spatial_beta and flaw_beta 0 (the per-image fit alone, no f-Net term) as
"ano-unet[beta=0]"; with a warm-started preset it has its own start, trained at beta 0.

Every data set runs `anounet_jax.jobs.evaluate.evaluate` (one shared f-Net, the same smoothing for
every method's maps) into OUT/<name>/<methods>/ for the methods OUT/<name>/metrics.json does not hold
yet, and merges them there (resumable: rerun the same command after an interruption, or with more
methods; with the same seed an f-Net trained again is the same f-Net). Prints the Markdown tables and
writes OUT/summary.md and OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from anounet_jax.errors import AnoUnetError

ABLATION = "ano-unet[beta=0]"


def _sources(spec: str) -> list[str]:
    from anounet_jax.data.synthetic import HELD_OUT, TUNING

    split = {"tuning": TUNING, "held-out": HELD_OUT}
    if spec in split:
        return [f"synthetic:{f}" for f in split[spec]]
    return [s.strip() for s in spec.split(",") if s.strip()]


def _register_ablation() -> None:
    from anounet_jax.methods import METHODS, Method, register

    base = METHODS["ano-unet"]

    def without_term(inputs):
        """No f-Net term at all: not in the fits, and not in their warm start either (a start trained
        with L_C would carry the term into the ablation; it gets its own, trained at beta 0)."""
        import dataclasses

        from anounet_jax.engine.warm_start import with_warm_start

        preset = inputs.preset.replace(fit={"beta": 0.0, "spatial_beta": 0.0, "flaw_beta": 0.0})
        trained = inputs.trained
        if preset.fit.start == "warm" and trained is not None and inputs.preset.fit.beta != 0:
            # (the start's objective has L_C but not the local terms: at beta 0 it is the same start)
            trained = with_warm_start(preset, dataclasses.replace(trained, warm_start=None), inputs.train.images,
                                      seed=inputs.seed, progress=inputs.progress)
        return dataclasses.replace(inputs, preset=preset, trained=trained)

    register(Method(ABLATION, lambda inputs: base.run(without_term(inputs)), base.image_score, needs_fnet=True,
                    prepare=lambda inputs: base.prepare(without_term(inputs))))


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def tables(results: dict, methods: list[str]) -> str:
    """Pixel AUROC / AUPRO / image AUROC (each method's own image score) per data set and method, a
    mean row; image AUROC from the map maximum for every method; then per defect kind."""
    head = "| data | " + " | ".join(methods) + " |\n|---|" + "---|" * len(methods)
    fields = ("pixel_auroc", "aupro", "image_auroc")
    out = ["pixel AUROC / AUPRO / image AUROC (each method's own image score, settings.image_score)", "", head]
    for name, m in results.items():
        out.append(f"| {name} | " + " | ".join(" / ".join(_fmt(m[k][f]) for f in fields) for k in methods) + " |")
    mean = {k: [np.mean([m[k][f] for m in results.values() if m[k][f] is not None]) for f in fields]
            for k in methods}
    out.append("| **mean** | " + " | ".join(" / ".join(f"**{v:.3f}**" for v in mean[k]) for k in methods) + " |")
    out += ["", "image AUROC from the smoothed map's maximum, every method", "", head]
    for name, m in results.items():
        out.append(f"| {name} | " + " | ".join(_fmt(m[k]["image_auroc_map_max"]) for k in methods) + " |")
    out.append("| **mean** | " + " | ".join(
        f"**{np.mean([m[k]['image_auroc_map_max'] for m in results.values() if m[k]['image_auroc_map_max'] is not None]):.3f}**"
        for k in methods) + " |")
    kinds = sorted({kind for m in results.values() for kind in m[methods[0]].get("by_kind", {})})
    out += ["", "pixel AUROC per defect kind (mean over data sets that have it)", "", head.replace("data", "kind")]
    for kind in kinds:
        cells = []
        for k in methods:
            vals = [m[k]["by_kind"][kind]["pixel_auroc"] for m in results.values()
                    if kind in m[k].get("by_kind", {}) and m[k]["by_kind"][kind]["pixel_auroc"] is not None]
            cells.append(_fmt(float(np.mean(vals))) if vals else "n/a")
        out.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="held-out", help="tuning | held-out | comma-separated sources")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--methods", default="ano-unet,autoencoder,feature-memory")
    ap.add_argument("--ablation", action="store_true", help=f"also {ABLATION}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/quality")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    from anounet_jax.engine.devices import enable_compilation_cache, split_cpu_into_devices

    split_cpu_into_devices()  # as `anounet` does: one CPU device per core
    enable_compilation_cache()
    from anounet_jax.jobs.evaluate import evaluate
    from anounet_jax.methods import parse_methods

    if args.ablation:
        _register_ablation()
    try:
        methods = parse_methods(args.methods) + ([ABLATION] if args.ablation else [])
        results, t0 = {}, time.perf_counter()
        for source in _sources(args.data):
            name = source.replace("synthetic:", "").replace("/", "_")
            out = Path(args.out) / name
            merged = out / "metrics.json"
            done = json.loads(merged.read_text()) if merged.is_file() else {}
            missing = [k for k in methods if k not in done]
            if missing:  # only the methods not run yet (a method needing the f-Net trains it again)
                part = evaluate(source, args.preset, missing, out / "+".join(missing), seed=args.seed,
                                progress=not args.quiet, log=lambda *a: print(*a, file=sys.stderr))
                done = {**done, **{k: part[k] for k in missing}, "settings": done.get("settings", part["settings"])}
                out.mkdir(parents=True, exist_ok=True)
                merged.write_text(json.dumps(done, indent=2))
            results[name] = done
            print(f"{name}: done ({time.perf_counter() - t0:.0f} s so far)", file=sys.stderr, flush=True)
    except AnoUnetError as e:
        print(f"quality: error: {e}", file=sys.stderr)
        return 2
    text = tables(results, methods)
    seconds = {n: {k: m[k]["seconds"] for k in methods} for n, m in results.items()}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "summary.md").write_text(text + f"\nseconds per method and data set: {json.dumps(seconds)}\n")
    (Path(args.out) / "summary.json").write_text(json.dumps({"methods": methods, "preset": args.preset,
                                                             "results": results}, indent=2))
    print(text)
    print(f"wall time: {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

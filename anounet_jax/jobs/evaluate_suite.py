"""`anounet evaluate ROOT` over a whole benchmark: every category of ROOT, one summary table.

    from anounet_jax.jobs.evaluate_suite import evaluate_suite
    s = evaluate_suite("mvtec_anomaly_detection", "small", ["ano-unet", "autoencoder"], "runs/all")
    s["mean"]      # one row per method: the mean over the categories
    s["rows"]      # one row per (category, method)

ROOT holds categories when it is not one itself (`find_categories`):
  - an MVTec AD root: folders each holding train/good, test/<group> and ground_truth/<defect>
    (any folder of MVTec-style categories, e.g. `scripts/make_synthetic.py`'s output);
  - a DAGM 2007 root: Class1 ... Class10 (later release: ClassN/Train, ClassN/Test; original release:
    ClassN beside ClassN_def), each class one category (`data.dagm.load_dagm_evaluation`);
  - both kinds side by side.
A folder that is itself a category (train/, test/ or ground_truth/ inside, or a DAGM ClassN folder),
`embedded[:CATEGORY]` and `synthetic:FAMILY` are one data set: `jobs/evaluate.py` as before.

Each category is evaluated by `jobs.evaluate.evaluate` into OUT/<category>/ (its metrics.json,
panels/, per_image.json, curves and report.html). Resumable: a category whose metrics.json already
holds every requested method, computed with the same settings (the preset's sections other than
`engine`, which never changes a map; the seed, the smoothing, the baseline configs), is kept as it
is; rerunning the same command after an interruption continues with the next unfinished category
(an unfinished one is computed again from its start). At OUT: metrics.json (per-category rows, one
mean row per method, the settings), metrics.md, metrics.csv and the summary report.html.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
import time
from pathlib import Path

from anounet_jax.config import Preset
from anounet_jax.errors import AnoUnetError
from anounet_jax.jobs.score.files import atomic_write

METRIC_KEYS = ("image_auroc", "image_auroc_map_max", "pixel_auroc", "aupro", "seconds")
COUNT_KEYS = ("images", "diverged")
_EXPECTED = ("expected an MVTec AD category folder (train/good, test/<group>, ground_truth/<defect>), "
             "a folder of such categories, or a DAGM 2007 root (Class1, Class2, ...)")


@dataclasses.dataclass(frozen=True)
class Category:
    name: str  # the folder name: OUT/<name>
    path: Path
    kind: str  # "mvtec" | "dagm"


def _natural(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _looks_like_mvtec(folder: Path) -> bool:
    return any((folder / d).is_dir() for d in ("train", "test", "ground_truth"))


def is_category(folder) -> bool:
    """A folder `evaluate` takes as one data set: an MVTec-style category or a DAGM class folder."""
    from anounet_jax.data.dagm import class_folder

    folder = Path(folder)
    return _looks_like_mvtec(folder) or class_folder(folder) is not None


def _check_mvtec(folder: Path) -> None:
    for sub in ("train/good", "test"):
        if not (folder / sub).is_dir():
            raise AnoUnetError(f"category folder has no {sub}/ ({_EXPECTED})", folder)


def find_categories(spec) -> list[Category] | None:
    """The categories of a benchmark root, in natural name order (Class2 before Class10); None when
    `spec` is one data set (a category folder, a named source) or no folder at all (then `evaluate`
    reports it). Raises AnoUnetError, naming the folder, for a folder that holds no category or a
    category folder without train/good or test."""
    from anounet_jax.data.dagm import class_folder
    from anounet_jax.data.sources import parse_source

    kind, path = parse_source(spec)
    if kind != "folder" or not path.is_dir() or is_category(path):
        return None
    found = []
    for d in sorted((d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")),
                    key=lambda d: _natural(d.name)):
        if class_folder(d) is not None:
            found.append(Category(d.name, d, "dagm"))
        elif _looks_like_mvtec(d):
            _check_mvtec(d)
            found.append(Category(d.name, d, "mvtec"))
    if not found:
        raise AnoUnetError(f"holds no category: {_EXPECTED}", path)
    return found


def _comparable(preset_config: dict) -> dict:
    return {k: v for k, v in preset_config.items() if k != "engine"}


def finished_metrics(folder: Path, methods: list[str], preset: Preset, seed: int, sigma: float,
                     baseline_config: dict) -> dict | None:
    """The metrics of an earlier, finished evaluation in `folder` with these settings, else None."""
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    s = metrics.get("settings") if isinstance(metrics, dict) else None
    if not isinstance(s, dict) or not all(isinstance(metrics.get(m), dict) for m in methods):
        return None
    same = (s.get("seed") == seed and s.get("smoothing_sigma") == sigma
            and _comparable(s.get("preset_config") or {}) == _comparable(json.loads(json.dumps(preset.to_dict())))
            and s.get("baseline_config") == json.loads(json.dumps(baseline_config)))
    if not same or not (folder / "per_image.json").is_file():
        return None
    return metrics


# --------------------------------------------------------------------------------------------------
# the summary
# --------------------------------------------------------------------------------------------------


def _number(x):
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def summarize(per_category: dict[str, dict], methods: list[str]) -> tuple[list[dict], list[dict], list[str]]:
    """(rows, mean rows, extra keys): a row per (category, method) with METRIC_KEYS, COUNT_KEYS and any
    other number a metrics entry has (read defensively: entries may gain keys); a mean row per method
    (metrics: the mean over the categories where defined; counts: the total; "categories": how many)."""
    rows = []
    extras: set[str] = set()
    for category, metrics in per_category.items():
        for m in methods:
            entry = metrics.get(m) or {}
            row = {"category": category, "method": m}
            row.update({k: _number(entry.get(k)) for k in METRIC_KEYS + COUNT_KEYS})
            for k, v in entry.items():
                if k not in row and _number(v) is not None:
                    row[k] = v
                    extras.add(k)
            rows.append(row)
    extra = sorted(extras)
    means = []
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        mean = {"category": "mean", "method": m}
        for k in METRIC_KEYS + tuple(extra):
            vals = [r[k] for r in mine if r.get(k) is not None]
            mean[k] = round(sum(vals) / len(vals), 6) if vals else None
        for k in COUNT_KEYS:
            mean[k] = sum(r[k] or 0 for r in mine)
        mean["categories"] = len(mine)
        means.append(mean)
    return rows, means, extra


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def summary_markdown(summary: dict) -> str:
    """The summary as a Markdown table: a row per (category, method), then the mean rows (bold)."""
    s = summary.get("settings", {})
    lines = [f"data: {s.get('data')} ({len(summary['categories'])} categories: {', '.join(summary['categories'])}), "
             f"preset {s.get('preset')}, smoothing sigma {s.get('smoothing_sigma')}, seed {s.get('seed')}", "",
             "| category | method | image AUROC | image AUROC (map max) | pixel AUROC | AUPRO | seconds | images |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"] + summary["mean"]:
        mean = r["category"] == "mean"
        b = "**" if mean else ""
        secs = "n/a" if r.get("seconds") is None else f"{r['seconds']:.1f}"
        lines.append(f"| {b}{r['category']}{b} | {b}{r['method']}{b} | {_fmt(r.get('image_auroc'))} | "
                     f"{_fmt(r.get('image_auroc_map_max'))} | {_fmt(r.get('pixel_auroc'))} | "
                     f"{_fmt(r.get('aupro'))} | {secs} | {r.get('images')} |")
    lines += ["", "mean: over the categories where the metric is defined (seconds: the mean per category; "
                  "images: the total). Per category: <category>/metrics.md, <category>/report.html. Image AUROC "
                  "is each method's own image score, image AUROC (map max) the max of the smoothed map; pixel "
                  "AUROC and AUPRO (FPR <= 0.3) on the smoothed maps."]
    return "\n".join(lines) + "\n"


def summary_csv(summary: dict) -> str:
    cols = ["category", "method", *METRIC_KEYS, *COUNT_KEYS, *summary.get("extra_keys", [])]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in summary["rows"] + summary["mean"]:
        w.writerow({k: "" if r.get(k) is None else r.get(k) for k in cols})
    return buf.getvalue()


def write_summary(out_dir, summary: dict) -> None:
    out = Path(out_dir)
    atomic_write(out / "metrics.json", json.dumps(summary, indent=2).encode())
    atomic_write(out / "metrics.md", summary_markdown(summary).encode())
    atomic_write(out / "metrics.csv", summary_csv(summary).encode())


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------


def evaluate_suite(root, preset="small", methods=None, out_dir="runs/evaluate", seed: int = 0,
                   progress: bool = True, *, smoothing: float | None = None, baselines=None, log=None,
                   categories: list[Category] | None = None) -> dict:
    """Evaluate every category of `root` (module docstring) into out_dir/<category>/ and write the
    summary (metrics.json, metrics.md, metrics.csv, report.html) at out_dir; returns the summary dict
    ({"categories", "methods", "rows", "mean", "extra_keys", "settings"}). Arguments as
    `jobs.evaluate.evaluate`; categories: `find_categories(root)` when None.

    Every argument and every category folder's layout is checked before the output folder is created.
    """
    from anounet_jax.jobs import evaluate as evaluate_job
    from anounet_jax.jobs.common import prepare_out_dir
    from anounet_jax.jobs.evaluate_report import write_single_report, write_suite_report

    t_start = time.perf_counter()
    log = log or (print if progress else (lambda *a, **k: None))
    methods, seed, preset, sigma, baselines = evaluate_job.check_arguments(methods, seed, preset, smoothing,
                                                                           baselines)
    baseline_dict = {f.name: dataclasses.asdict(getattr(baselines, f.name)) for f in dataclasses.fields(baselines)}
    if categories is None:
        categories = find_categories(root)
        if categories is None:
            raise AnoUnetError(f"not a folder of categories ({_EXPECTED}); evaluate one data set with "
                               f"jobs.evaluate.evaluate", root)
    from anounet_jax.jobs.evaluate_tiled import tiling_for

    if tiling_for(preset, None) is not None:  # (bad tiling settings fail here, before any output)
        dagm = [c.name for c in categories if c.kind == "dagm"]
        if dagm:
            raise AnoUnetError(f"tiled evaluation does not support DAGM classes ({', '.join(dagm)}); "
                               f"evaluate them resized", root)
    out = prepare_out_dir(out_dir)

    per_category: dict[str, dict] = {}
    kept, seconds = [], {}
    n = len(categories)
    log(f"{n} categories in {root}: {', '.join(c.name for c in categories)}; methods {', '.join(methods)}")
    for i, c in enumerate(categories, 1):
        folder = out / c.name
        metrics = finished_metrics(folder, methods, preset, seed, sigma, baseline_dict)
        if metrics is not None:
            log(f"[{i}/{n}] {c.name}: finished before, kept ({folder / 'metrics.json'})")
            kept.append(c.name)
            if not (folder / "report.html").is_file():
                write_single_report(folder)
        else:
            log(f"[{i}/{n}] {c.name} ({c.kind}): {c.path}")
            t0 = time.perf_counter()
            prefix = f"[{i}/{n} {c.name}]"
            metrics = evaluate_job.evaluate(
                c.path, preset, methods, folder, seed=seed, progress=progress, smoothing=sigma,
                baselines=baselines, log=lambda *a, **k: log(prefix, *a))
            seconds[c.name] = round(time.perf_counter() - t0, 1)
        per_category[c.name] = metrics

    rows, means, extra = summarize(per_category, methods)
    summary = {
        "categories": [c.name for c in categories],
        "methods": methods,
        "rows": rows,
        "mean": means,
        "extra_keys": extra,
        "settings": {
            "data": str(root),
            "categories": {c.name: {"path": str(c.path), "kind": c.kind} for c in categories},
            "preset": preset.name,
            "image_size": preset.image_size,
            "smoothing_sigma": sigma,
            "deviation": preset.maps.deviation,
            "deviation_low": preset.maps.deviation_low,
            "seed": seed,
            "methods": methods,
            "kept_from_before": kept,
            "seconds": {"categories_run": seconds, "total": round(time.perf_counter() - t_start, 1)},
            "preset_config": preset.to_dict(),
            "baseline_config": baseline_dict,
        },
    }
    write_summary(out, summary)
    write_suite_report(out)
    return summary

"""`anounet evaluate`: Ano-Unet and the baselines on one data set, under one protocol, in one table.

    from anounet_jax.evaluate import evaluate
    m = evaluate("mvtec_anomaly_detection/carpet", "small", ["ano-unet", "autoencoder"], "runs/carpet")
    m = evaluate("embedded", "small", None, "runs/embedded")     # the embedded default data, all methods
    m["ano-unet"]["pixel_auroc"], m["settings"]

The protocol, the same for every method:

  data       DATA_DIR is an MVTec AD category folder (train/good, test/<group>, ground_truth/<defect>;
             `load_mvtec`), read at the preset's image size; or the literal "embedded": the embedded
             default textures of `preset.data` (what `load_embedded(preset.data, ...)` returns).
  training   from the normal training images only. The f-Net (Ano-Unet's L_C target and the DOC
             decoder's input) is trained once, on the normal images + the built-in reference images
             (`load_reference`), and shared by both; C is the mean f-Net feature of the normal images.
  maps       every method gives a raw map mean_c |x - recon| per test image; the harness smooths all
             of them with one Gaussian sigma (`smoothing`, default the preset's fit.smoothing_sigma).
             The Engine is built with smoothing_sigma = 0, so Ano-Unet's maps are not smoothed twice.
  image      "image_auroc": each method's own image score. Ano-Unet: the max of its smoothed map (as
             `pipeline.image_scores`). Autoencoder, DOC decoder: the sum of the raw map. AnoGAN: the
             latent-search loss L(z*) (`BaselineResult.score`). "image_auroc_map_max": the max of the
             smoothed map for every method, so the methods are comparable on one score (for Ano-Unet
             the two are the same number).
  pixel      "pixel_auroc" and "aupro" (FPR limit 0.3) of the smoothed maps against the masks.
  seconds    wall time the method needs on its own: its training and its maps, plus the shared f-Net
             training for ano-unet and doc-decoder ("seconds_parts" splits it).
  diverged   images whose raw map or score is not finite (a diverged fit); those values count as +inf
             (most anomalous), so one bad image cannot abort the evaluation.

Outputs in out_dir: metrics.json (one entry per method + "settings"), metrics.md (a Markdown table),
panels/<id>.png (image | true mask | one overlay per method; each method's overlays share one colour
scale: 0 to the 99.5th percentile of all its smoothed maps).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

from anounet_jax.config import Preset, get_preset
from anounet_jax.data.types import ImageSet
from anounet_jax.errors import AnoUnetError

METHODS = ("ano-unet", "autoencoder", "doc-decoder", "anogan")
FNET_METHODS = ("ano-unet", "doc-decoder")  # the methods that need the (shared) f-Net
EMBEDDED = "embedded"

IMAGE_SCORES = {
    "ano-unet": "max of the smoothed map",
    "autoencoder": "sum of the raw map",
    "doc-decoder": "sum of the raw map",
    "anogan": "latent-search loss L(z*)",
}
_ALIASES = {"anounet": "ano-unet", "ano-u-net": "ano-unet", "docdecoder": "doc-decoder",
            "doc": "doc-decoder", "ae": "autoencoder"}


def parse_methods(methods) -> list[str]:
    """Method names from a list or a comma-separated string (None = all), in the given order, without
    repeats. Case, "_" for "-" and a few aliases ("anounet", "doc", "ae") are accepted."""
    if methods is None:
        return list(METHODS)
    if isinstance(methods, str):
        methods = methods.split(",")
    out = []
    for m in methods:
        key = str(m).strip().lower().replace("_", "-")
        if not key:
            continue
        key = _ALIASES.get(key, key)
        if key not in METHODS:
            raise AnoUnetError(f"unknown method {str(m).strip()!r}; choose from {','.join(METHODS)}")
        if key not in out:
            out.append(key)
    if not out:
        raise AnoUnetError(f"no method given; choose from {','.join(METHODS)}")
    return out


@dataclasses.dataclass
class EvalData:
    name: str  # "embedded brick" or the folder path
    category: str  # the reference set leaves out this embedded texture (if it is one)
    train: ImageSet
    test: ImageSet


def load_data(data, preset: Preset, seed: int = 0) -> EvalData:
    """The normal training images and the test images (with masks) of `data` at the preset's size."""
    size = preset.image_size
    if str(data) == EMBEDDED:
        from anounet_jax.data.embedded import load_normal, load_test

        d = preset.data
        train = load_normal(d.category, size, d.n_train, seed)
        test = load_test(d.category, size, d.n_test_good, d.n_test_defect, seed)
        return EvalData(f"embedded {d.category}", d.category, train, test)
    from anounet_jax.data.mvtec import load_mvtec

    root = Path(data)
    if not root.is_dir():
        raise AnoUnetError("data folder not found (give an MVTec AD category folder or 'embedded')", root)
    train = load_mvtec(root, size, "train")
    test = load_mvtec(root, size, "test")
    return EvalData(str(root), root.name, train, test)


def _finite_or_inf(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float32)
    return np.where(np.isfinite(a), a, np.float32(np.inf))


def _num(x):
    """JSON-safe float: NaN (an undefined metric) -> None."""
    x = float(x)
    return None if math.isnan(x) else round(x, 6)


def _method_metrics(maps: np.ndarray, own_score: np.ndarray, test: ImageSet) -> dict:
    from anounet_jax.metrics import aupro, image_auroc, pixel_auroc

    map_max = maps.reshape(len(maps), -1).max(1)
    out = {"images": int(len(test))}
    if test.labels is not None:
        out["image_auroc"] = _num(image_auroc(own_score, test.labels))
        out["image_auroc_map_max"] = _num(image_auroc(map_max, test.labels))
    if test.masks is not None:
        out["pixel_auroc"] = _num(pixel_auroc(maps, test.masks))
        out["aupro"] = _num(aupro(maps, test.masks))
    return out


def _write_panels(out_dir: Path, test: ImageSet, maps: dict[str, np.ndarray]) -> int:
    from anounet_jax.maps import overlay, save_panel

    vmax = {}
    for name, m in maps.items():
        finite = m[np.isfinite(m)]
        vmax[name] = float(np.percentile(finite, 99.5)) if finite.size else 1.0
    for i, ident in enumerate(test.ids):
        cols = [("image", test.images[i])]
        if test.masks is not None:
            cols.append(("true mask", test.masks[i]))
        cols += [(name, overlay(test.images[i], m[i], vmin=0.0, vmax=vmax[name])) for name, m in maps.items()]
        save_panel(out_dir / "panels" / (ident.replace("/", "_") + ".png"), cols)
    return len(test.ids)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def markdown_table(metrics: dict) -> str:
    """The methods of a metrics dict (as `evaluate` returns) as a Markdown table with a legend."""
    s = metrics.get("settings", {})
    lines = []
    if s:
        lines.append(f"data: {s['data']} ({s['n_train']} normal training images; {s['n_test']} test images: "
                     f"{s['n_test_good']} good, {s['n_test_defect']} defective; {s['image_size']}x"
                     f"{s['image_size']}), preset {s['preset']}, smoothing sigma {s['smoothing_sigma']}, "
                     f"seed {s['seed']}")
        lines.append("")
    lines += ["| method | image AUROC | image AUROC (map max) | pixel AUROC | AUPRO | seconds | images |",
              "|---|---|---|---|---|---|---|"]
    for name, m in metrics.items():
        if name == "settings":
            continue
        lines.append(f"| {name} | {_fmt(m.get('image_auroc'))} | {_fmt(m.get('image_auroc_map_max'))} | "
                     f"{_fmt(m.get('pixel_auroc'))} | {_fmt(m.get('aupro'))} | {m['seconds']:.1f} | "
                     f"{m['images']} |")
    lines.append("")
    scores = "; ".join(f"{k}: {v}" for k, v in IMAGE_SCORES.items() if k in metrics)
    lines.append(f"image AUROC: each method's own image score ({scores}). image AUROC (map max): the max of "
                 f"the smoothed map, for every method. Pixel AUROC and AUPRO (FPR <= 0.3) on the smoothed "
                 f"maps. seconds: training + maps of the method alone (for ano-unet and doc-decoder "
                 f"including the shared f-Net training"
                 + (f", {s['seconds']['fnet']:.1f} s" if s.get("seconds", {}).get("fnet") is not None else "")
                 + ").")
    return "\n".join(lines) + "\n"


def evaluate(data, preset="small", methods=None, out_dir="runs/evaluate", seed: int = 0,
             progress: bool = True, *, smoothing: float | None = None, formulation: str = "auto",
             baselines=None, log=None) -> dict:
    """Train and evaluate `methods` on `data` under one protocol (module docstring); write metrics.json,
    metrics.md and panels/ into out_dir and return the metrics dict.

    data: an MVTec AD category folder or "embedded". preset: a name or a `Preset`. methods: a list or a
    comma-separated string of "ano-unet", "autoencoder", "doc-decoder", "anogan" (None = all).
    smoothing: Gaussian sigma of the maps (None = preset.fit.smoothing_sigma). formulation: the Engine's.
    baselines: a `BaselineConfigs` (None = `baseline_config(preset.name)`). log: a print-like function
    for progress lines (None = print when `progress`).

    Raises AnoUnetError for an unknown method or preset, a bad sigma, or a missing / malformed folder,
    before anything is trained or written.
    """
    t_start = time.perf_counter()
    log = log or (print if progress else (lambda *a, **k: None))
    methods = parse_methods(methods)
    if not isinstance(preset, Preset):
        preset = get_preset(str(preset))
    sigma = preset.fit.smoothing_sigma if smoothing is None else float(smoothing)
    if not sigma >= 0.0:
        raise AnoUnetError(f"smoothing sigma must be >= 0, got {smoothing!r}")
    if baselines is None and any(m not in ("ano-unet",) for m in methods):
        from anounet_jax.baselines import baseline_config

        baselines = baseline_config(preset.name)

    t0 = time.perf_counter()
    ds = load_data(data, preset, seed)
    train, test = ds.train, ds.test
    if test.masks is None or test.labels is None:
        raise AnoUnetError(f"test images of {ds.name} have no masks / labels")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_defect = int(np.sum(test.labels == 1))
    log(f"data: {ds.name}: {len(train)} normal training images, {len(test)} test images "
        f"({len(test) - n_defect} good, {n_defect} defective) at {preset.image_size}x{preset.image_size}; "
        f"preset {preset.name}, methods {','.join(methods)}, smoothing sigma {sigma}")
    seconds = {"data": time.perf_counter() - t0}

    from anounet_jax.maps import smooth

    fnet = center = None
    n_reference = 0
    if any(m in FNET_METHODS for m in methods):
        from anounet_jax.data.embedded import load_reference
        from anounet_jax.pipeline import fit_fnet_and_center

        t0 = time.perf_counter()
        reference = load_reference(ds.category, preset.image_size, preset.data.n_reference_per_class, seed)
        n_reference = len(reference)
        log(f"f-Net ({preset.fnet.arch}, {preset.fnet.method}): {len(train)} normal + {n_reference} "
            f"reference images ({len(set(reference.labels.tolist()))} classes)")
        trained = fit_fnet_and_center(preset, train, reference, seed, progress)
        fnet, center = trained.fnet, trained.center
        del reference
        seconds["fnet"] = time.perf_counter() - t0

    results: dict[str, dict] = {}
    smoothed: dict[str, np.ndarray] = {}
    engine_formulation = None
    for name in methods:
        t0 = time.perf_counter()
        log(f"{name}: training and maps")
        if name == "ano-unet":
            from anounet_jax.engine.fit import build_engine

            fit_cfg = dataclasses.replace(preset.fit, smoothing_sigma=0.0)  # smoothed below, once
            engine = build_engine(preset.unet, fit_cfg, fnet, center, preset.image_size, formulation)
            engine_formulation = engine.formulation
            res = engine.fit(test.images, seed=seed, progress=progress)
            raw, score, diverged = res.heatmap, None, res.diverged
        else:
            from anounet_jax.baselines import anogan, autoencoder, doc_decoder

            if name == "autoencoder":
                model = autoencoder.train(train, baselines.autoencoder, seed=seed, progress=progress)
                res = model.score_maps(test.images)
            elif name == "doc-decoder":
                model = doc_decoder.train(train, fnet, baselines.doc_decoder, seed=seed, progress=progress)
                res = model.score_maps(test.images)
            else:
                model = anogan.train(train, baselines.anogan, seed=seed, progress=progress)
                res = model.score_maps(test.images, seed=seed, progress=progress)
            raw, score, diverged = res.heatmap, res.score, res.diverged
        elapsed = time.perf_counter() - t0
        raw = _finite_or_inf(raw)
        diverged = np.asarray(diverged) | ~np.isfinite(raw).reshape(len(raw), -1).all(1)
        maps = smooth(raw, sigma) if sigma > 0 else raw
        map_max = maps.reshape(len(maps), -1).max(1)
        score = map_max if score is None else _finite_or_inf(score)
        m = _method_metrics(maps, score, test)
        parts = {"fnet": round(seconds["fnet"], 1)} if name in FNET_METHODS else {}
        parts.update(train_and_maps=round(elapsed, 1))
        m.update(seconds=round(sum(parts.values()), 1), seconds_parts=parts,
                 image_score=IMAGE_SCORES[name], diverged=int(diverged.sum()))
        results[name] = m
        smoothed[name] = maps
        log(f"{name}: image AUROC {_fmt(m['image_auroc'])} (map max {_fmt(m['image_auroc_map_max'])}), "
            f"pixel AUROC {_fmt(m['pixel_auroc'])}, AUPRO {_fmt(m['aupro'])}, {elapsed:.1f} s")

    t0 = time.perf_counter()
    n_panels = _write_panels(out_dir, test, smoothed)
    seconds["panels"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start

    import jax

    results["settings"] = {
        "data": ds.name,
        "preset": preset.name,
        "methods": methods,
        "image_size": preset.image_size,
        "smoothing_sigma": sigma,
        "seed": seed,
        "n_train": len(train),
        "n_reference": n_reference,
        "n_test": len(test),
        "n_test_good": len(test) - n_defect,
        "n_test_defect": n_defect,
        "aupro_fpr_limit": 0.3,
        "image_score": {k: v for k, v in IMAGE_SCORES.items() if k in methods},
        "image_score_map_max": "max of the smoothed map (every method)",
        "engine_formulation": engine_formulation,
        "panels": n_panels,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "backend": jax.default_backend(),
        "devices": jax.local_device_count(),
        "jax": jax.__version__,
        "machine": machine_description(),
        "preset_config": preset.to_dict(),
        "baseline_config": _baselines_dict(baselines),
    }
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    (out_dir / "metrics.md").write_text(markdown_table(results))
    return results


def machine_description() -> str:
    """CPU model and core count (no host name), e.g. "Intel Xeon ... (2 cores, x86_64)"."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores, {platform.machine()})"


def _baselines_dict(baselines) -> dict | None:
    if baselines is None:
        return None
    return {f.name: dataclasses.asdict(getattr(baselines, f.name)) for f in dataclasses.fields(baselines)}

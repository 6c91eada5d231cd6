"""`anounet evaluate`: Ano-Unet and the baselines on one data set, under one protocol, in one table.

    from anounet_jax.jobs.evaluate import evaluate
    m = evaluate("mvtec_anomaly_detection/carpet", "small", ["ano-unet", "autoencoder"], "runs/carpet")
    m = evaluate("embedded", "small", None, "runs/embedded")     # the embedded default data, all methods
    m["ano-unet"]["pixel_auroc"], m["settings"]

The protocol, the same for every method:

  data       DATA is a data source (data/sources.py): an MVTec AD category folder (train/good,
             test/<group>, ground_truth/<defect>), "embedded[:CATEGORY]" or "synthetic:FAMILY", read
             at the preset's image size.
  tiling     off by default (every image resized to the preset's square size, as above). With
             `native=True` / `anounet evaluate --native`, or when the preset's tiles section sets a
             tile, stride or scale (`--tile`, `--stride`, `--scale`, `--set tiles.tile=64`): the test
             images and masks are read at their native size (MVTec-style folders; DAGM class folders
             at 512 x 512 with the ellipses rasterised there; "embedded" is then crops of the 512-px
             photograph at its own scale with planted defects of 2-6 and 12-28 px, data/native.py;
             "synthetic:FAMILY" is generated at a test size of 2 x 3 tiles; "aligned" is an aligned
             object with missing parts, data/aligned.py); every method gets the same tiles
             (data/tiling.py grid) and the same stitching (`stitch`), maps are smoothed at the tiled
             resolution and resized to the native size if scaled (jobs/evaluate_tiled.py). Training
             (f-Net and every baseline) is on up to data.n_train tiles of the normal images drawn
             from their grids, the reference set at the tile size; C is the mean f-Net feature of the
             normal tiles, or with tiles.center "position" the mean feature of each tile position
             over the normal images (fnet/tile_centers.py; they must have the test size). Test images
             must share one size; a mask whose size differs from its image is an error naming it.
  training   from the normal training images only. The f-Net (Ano-Unet's L_C target and the DOC
             decoder's input) is trained once, on the normal images + the built-in reference images
             (`load_reference`), and shared by every method that needs it (Ano-Unet, DOC decoder,
             feature memory); C is the mean f-Net feature of the normal images.
  maps       every method (anounet_jax.methods) gives a raw map per test image; the harness smooths all
             of them with one Gaussian sigma (`smoothing`, default the preset's maps.smoothing_sigma).
  image      "image_auroc": each method's own image score. Ano-Unet: the preset's map score of its
             smoothed map (maps.image_score: "max" or "top1", the mean of the top 1%; as the demo).
             Autoencoder, DOC decoder: the sum of the raw map. AnoGAN: the latent-search loss L(z*)
             (`BaselineResult.score`). Feature memory: the largest patch distance. Tiled: the map
             score of the stitched smoothed map for Ano-Unet, the max over the image's tiles for the
             methods with their own score. "by_kind": the metrics per defect kind (that kind's images
             against the good). "image_auroc_map_max": the max of the smoothed map for every method,
             so the methods are comparable on one score (for Ano-Unet the same number when
             maps.image_score is "max"). "image_auroc_fnet" (Ano-Unet): the f-Net's own score,
             mean|f(x) - C| of the test image (tiled: the max over its tiles, each against its C).
  pixel      "pixel_auroc" and "aupro" (FPR limit 0.3) of the smoothed maps against the masks (tiled:
             at the native mask size).
  seconds    wall time the method needs on its own: its training and its maps, plus the shared f-Net
             training for the methods that use it ("seconds_parts" splits it).
  diverged   images whose raw map or score is not finite (a diverged fit); those values count as +inf
             (most anomalous), so one bad image cannot abort the evaluation. Tiled: an image with any
             diverged tile; the tile is left out of the stitching and pixels only it covered are +inf.

Outputs in out_dir: metrics.json (one entry per method + "settings"; written last of the numbers, so
its presence marks a finished evaluation; settings["tiling"]: tile, stride, scale, native size, tiles
per image and training tiles, None when resized), metrics.md (a Markdown table), panels/<id>.png (image | one
overlay per method | true mask; each method's overlays share one colour scale: 0 to the 99.5th
percentile of all its smoothed maps), per_image.json, curves.json, curves/*.png and report.html (the
evaluation report: jobs/evaluate_report.py). A folder of several categories: jobs/evaluate_suite.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from anounet_jax.config import Preset, get_preset
from anounet_jax.errors import AnoUnetError
from anounet_jax.methods import METHODS, MethodInputs, parse_methods


def defect_kind(ident: str) -> str:
    """"test/scratch/003" -> "scratch" (MVTec AD, embedded and synthetic ids)."""
    parts = ident.split("/")
    return parts[-2] if len(parts) >= 2 else "unknown"


def _by_kind(maps, score, test) -> dict:
    """Metrics per defect kind: the images of that kind against the good ones."""
    from anounet_jax.metrics import map_metrics

    kinds = np.array([defect_kind(i) for i in test.ids])
    good = test.labels == 0
    out = {}
    for kind in sorted(set(kinds[~good].tolist())):
        idx = np.flatnonzero(good | (kinds == kind))
        out[kind] = map_metrics(maps[idx], score[idx], test.labels[idx], test.masks[idx])
    return out


def _finite_or_inf(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float32)
    return np.where(np.isfinite(a), a, np.float32(np.inf))


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def markdown_table(metrics: dict) -> str:
    """The methods of a metrics dict (as `evaluate` returns) as a Markdown table with a legend."""
    from anounet_jax.maps import describe_deviation
    s = metrics.get("settings", {})
    lines = []
    if s:
        t = s.get("tiling")
        if t:
            size = (f"native {t['native_hw'][0]}x{t['native_hw'][1]}, {t['tiles_per_image']} tiles of "
                    f"{t['tile']}x{t['tile']}, stride {t['stride']}, scale {t['scale']}; training on "
                    f"{t['n_train_tiles']} tiles of {t['n_train_images']} normal images")
        else:
            size = f"{s['image_size']}x{s['image_size']}"
        lines.append(f"data: {s['data']} ({s['n_train']} normal training {'tiles' if t else 'images'}; "
                     f"{s['n_test']} test images: {s['n_test_good']} good, {s['n_test_defect']} defective; "
                     f"{size}), preset {s['preset']}, smoothing sigma {s['smoothing_sigma']}, "
                     f"map deviation {describe_deviation(s.get('deviation', 'none'), s.get('deviation_low', 1.0))}, "
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
    scores = "; ".join(f"{k}: {v.image_score}" for k, v in METHODS.items() if k in metrics)
    lines.append(f"image AUROC: each method's own image score ({scores}). image AUROC (map max): the max of "
                 f"the smoothed map, for every method. Pixel AUROC and AUPRO (FPR <= 0.3) on the smoothed "
                 f"maps. seconds: training + maps of the method alone (for ano-unet and doc-decoder "
                 f"including the shared f-Net training"
                 + (f", {s['seconds']['fnet']:.1f} s" if s.get("seconds", {}).get("fnet") is not None else "")
                 + ").")
    return "\n".join(lines) + "\n"


def check_arguments(methods, seed, preset, smoothing, baselines):
    """The evaluation's arguments checked and resolved, before anything is read or trained:
    (method names, seed, Preset, smoothing sigma, BaselineConfigs). One-line AnoUnetError otherwise."""
    from anounet_jax.baselines.configs import baseline_config
    from anounet_jax.engine.fit import check_formulation
    from anounet_jax.engine.warm_start import check_start
    from anounet_jax.jobs.common import check_seed

    methods = parse_methods(methods)
    seed = check_seed(seed)
    if not isinstance(preset, Preset):
        preset = get_preset(str(preset))
    sigma = preset.maps.smoothing_sigma if smoothing is None else float(smoothing)
    if not sigma >= 0.0:
        raise AnoUnetError(f"smoothing sigma must be >= 0, got {smoothing!r}")
    check_formulation(preset.engine.formulation)
    check_start(preset)
    return methods, seed, preset, sigma, baselines or baseline_config(preset.name)


def evaluate(data, preset="small", methods=None, out_dir="runs/evaluate", seed: int = 0,
             progress: bool = True, *, smoothing: float | None = None, baselines=None, log=None,
             native: bool | None = None, maps_out: dict | None = None) -> dict:
    """Train and evaluate `methods` on `data` under one protocol (module docstring); write metrics.json,
    metrics.md and panels/ into out_dir and return the metrics dict.

    data: a data source (data/sources.py). preset: a name or a `Preset` (its engine section picks the
    Ano-Unet formulation). methods: a list or a comma-separated string of `anounet_jax.methods`
    names (None = all). smoothing: Gaussian sigma of the maps (None = preset.maps.smoothing_sigma).
    baselines: a `BaselineConfigs` (None = `baseline_config(preset.name)`). log: a print-like function
    for progress lines (None = print when `progress`). native: tiled evaluation at the images' native
    size (None: when the preset's tiles section sets a tile, stride or scale; see "tiling" above).
    maps_out: a dict to receive {method: smoothed maps (N, H, W)} and "masks" (for tests, benchmarks).

    Raises AnoUnetError for an unknown method or preset, a bad sigma or seed, an unwritable out_dir, or
    a missing / malformed folder, before anything is trained.
    """
    from anounet_jax.data.embedded import load_reference
    from anounet_jax.data.sources import load_labelled
    from anounet_jax.engine.warm_start import with_warm_start
    from anounet_jax.fnet.train import describe, train_fnet
    from anounet_jax.jobs.common import prepare_out_dir
    from anounet_jax.jobs.evaluate_report import plot_curves, write_evaluation_record, write_single_report
    from anounet_jax.maps import finish, map_score, write_panels
    from anounet_jax.metrics import image_auroc, map_metrics

    t_start = time.perf_counter()
    log = log or (print if progress else (lambda *a, **k: None))
    methods, seed, preset, sigma, baselines = check_arguments(methods, seed, preset, smoothing, baselines)

    from anounet_jax.jobs import evaluate_tiled as tiled

    spec = tiled.tiling_for(preset, native)
    t0 = time.perf_counter()
    tiling = None
    if spec is None:
        ds = load_labelled(data, preset, seed)
        data_name, category, train, test = ds.name, ds.category, ds.train, ds.test
        if test.masks is None or test.labels is None:
            raise AnoUnetError(f"test images of {ds.name} have no masks / labels")
        where = f"at {preset.image_size}x{preset.image_size}"
    else:
        data_name, category, native_train, native_test = tiled.load_native(data, preset, seed)
        test = tiled.stacked(native_test)
        train = tiled.train_tiles(native_train, spec, preset.data.n_train, seed)
        h, w = test.images.shape[1:3]
        per = spec.n_tiles(h, w)
        tiling = {"tile": spec.tile, "stride": spec.stride, "scale": spec.scale, "native_hw": [h, w],
                  "tiles_per_image": per, "n_train_images": len(native_train), "n_train_tiles": len(train),
                  "center": preset.tiles.center}
        where = (f"at native {h}x{w}, {per} tiles of {spec.tile}x{spec.tile} (stride {spec.stride}"
                 + (f", scale {spec.scale}" if spec.scale != 1.0 else "") + ") each; training on "
                 f"{len(train)} tiles of {len(native_train)} normal images")
        del native_test
    out_dir = prepare_out_dir(out_dir)
    n_defect = int(np.sum(test.labels == 1))
    log(f"data: {data_name}: {len(train)} normal training {'tiles' if spec else 'images'}, {len(test)} test images "
        f"({len(test) - n_defect} good, {n_defect} defective) {where}; "
        f"preset {preset.name}, methods {','.join(methods)}, smoothing sigma {sigma}")
    seconds = {"data": time.perf_counter() - t0}
    input_size = spec.tile if spec else preset.image_size

    trained, n_reference, tile_centers = None, 0, None
    if spec is None and preset.tiles.center != "global":
        raise AnoUnetError("tiles.center 'position' (a C per tile position) needs tiled evaluation (--native)")
    if any(METHODS[m].needs_fnet for m in methods):
        t0 = time.perf_counter()
        reference = load_reference(category, input_size, preset.data.n_reference_per_class, seed)
        n_reference = len(reference)
        log(f"f-Net ({describe(preset.fnet)}): {len(train)} normal + {n_reference} "
            f"reference images ({len(set(reference.labels.tolist()))} classes)")
        trained = train_fnet(preset.fnet, train, reference, seed=seed, progress=progress)
        del reference
        if spec is not None and preset.tiles.center == "position":
            from anounet_jax.fnet.tile_centers import position_centers

            grid = spec.grid(*test.images.shape[1:3])
            tile_centers = position_centers(trained.fnet, (tiled.scaled(x, spec) for x in native_train.images),
                                            grid)
            log(f"C per tile position: {len(tile_centers)} centers from {len(native_train)} normal images")
        seconds["fnet"] = time.perf_counter() - t0
        if "ano-unet" in methods:  # its fits' warm start (fit.start "warm"), trained where the f-Net was
            t0 = time.perf_counter()
            trained = with_warm_start(preset, trained, train.images, seed=seed, progress=progress, log=log)
            seconds["warm_start"] = time.perf_counter() - t0

    results: dict[str, dict] = {}
    smoothed: dict[str, np.ndarray] = {}
    scores: dict[str, np.ndarray] = {}
    info: dict = {}
    inputs = MethodInputs(train, test.images, preset, baselines, trained, seed, progress, tile_centers)
    for name in methods:
        method = METHODS[name]
        t0 = time.perf_counter()
        log(f"{name}: training and maps")
        if spec is None:
            out = method.run(inputs)
            info.update(out.info)
            raw = _finite_or_inf(out.heatmap)
            diverged = np.asarray(out.diverged) | ~np.isfinite(raw).reshape(len(raw), -1).all(1)
            maps = finish(raw, preset.maps, sigma)
            score = map_score(maps, preset.maps.image_score) if out.score is None else _finite_or_inf(out.score)
            fnet_score = out.fnet_score
        else:
            res = tiled.tiled_maps(method.prepare(inputs), test, spec, sigma, preset.maps)
            maps, diverged, fnet_score = res.maps, res.diverged, res.fnet_scores
            info.update(res.info)
            score = _finite_or_inf(res.scores)
        elapsed = time.perf_counter() - t0
        m = map_metrics(maps, score, test.labels, test.masks)
        if fnet_score is not None:  # the f-Net's own distance to C (tiled: max over tiles)
            auc = image_auroc(_finite_or_inf(fnet_score), test.labels)
            m["image_auroc_fnet"] = None if np.isnan(auc) else round(float(auc), 6)
        m["by_kind"] = _by_kind(maps, score, test)
        parts = {"fnet": round(seconds["fnet"], 1)} if method.needs_fnet else {}
        if name == "ano-unet" and trained.warm_start is not None:
            parts["warm_start"] = round(seconds["warm_start"], 1)
        parts.update(train_and_maps=round(elapsed, 1))
        m.update(seconds=round(sum(parts.values()), 1), seconds_parts=parts,
                 image_score=method.image_score, diverged=int(diverged.sum()))
        results[name] = m
        smoothed[name] = maps
        if maps_out is not None:
            maps_out[name], maps_out["masks"] = maps, test.masks
        scores[name] = score
        log(f"{name}: image AUROC {_fmt(m['image_auroc'])} (map max {_fmt(m['image_auroc_map_max'])}), "
            f"pixel AUROC {_fmt(m['pixel_auroc'])}, AUPRO {_fmt(m['aupro'])}, {elapsed:.1f} s")

    t0 = time.perf_counter()
    n_panels = write_panels(out_dir, test.images, test.ids, smoothed, masks=test.masks)
    seconds["panels"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    curves = write_evaluation_record(out_dir, test.ids, test.labels, test.masks, smoothed, scores)
    plot_curves(out_dir, curves, results, category)
    seconds["report"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start

    import jax

    results["settings"] = {
        "data": data_name,
        "preset": preset.name,
        "methods": methods,
        "image_size": preset.image_size,
        "tiling": tiling,
        "smoothing_sigma": sigma,
        "deviation": preset.maps.deviation,
        "deviation_low": preset.maps.deviation_low,
        "seed": seed,
        "n_train": len(train),
        "n_reference": n_reference,
        "n_test": len(test),
        "n_test_good": len(test) - n_defect,
        "n_test_defect": n_defect,
        "aupro_fpr_limit": 0.3,
        "image_score": {k: METHODS[k].image_score for k in methods},
        "image_score_map_max": "max of the smoothed map (every method)",
        "engine_formulation": info.get("engine_formulation"),
        "panels": n_panels,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "backend": jax.default_backend(),
        "devices": jax.local_device_count(),
        "jax": jax.__version__,
        "machine": machine_description(),
        "preset_config": preset.to_dict(),
        "baseline_config": {f.name: dataclasses.asdict(getattr(baselines, f.name))
                            for f in dataclasses.fields(baselines)},
    }
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    (out_dir / "metrics.md").write_text(markdown_table(results))
    write_single_report(out_dir)
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

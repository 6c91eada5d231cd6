"""The main job end to end: data -> f-Net -> C -> batched per-image fit -> maps, metrics, panels."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from anounet_jax.config import Preset
from anounet_jax.data.embedded import load_embedded
from anounet_jax.data.types import ImageSet
from anounet_jax.engine.fit import FitResult, build_engine
from anounet_jax.fnet.model import FrozenFNet, compute_center
from anounet_jax.fnet.train import train_fnet
from anounet_jax.maps import overlay, save_panel
from anounet_jax.metrics import aupro, image_auroc, pixel_auroc


@dataclasses.dataclass
class TrainedFNet:
    fnet: FrozenFNet
    center: np.ndarray
    train_features: np.ndarray
    history: list[float]


def fit_fnet_and_center(preset: Preset, train: ImageSet, reference: ImageSet, seed: int = 0,
                        progress: bool = True) -> TrainedFNet:
    """Train the f-Net on normal + reference images, freeze it, and compute C on the normal images."""
    res = train_fnet(preset.fnet, train, reference, seed=seed, progress=progress)
    feats = res.fnet.features(train.images)
    return TrainedFNet(res.fnet, compute_center(feats), feats, res.history)


def image_scores(result: FitResult) -> np.ndarray:
    """Image score from the heatmap: its maximum (after the preset's smoothing)."""
    return result.heatmap.reshape(len(result.heatmap), -1).max(1)


def evaluate_maps(heatmap: np.ndarray, scores: np.ndarray, test: ImageSet) -> dict:
    out = {"images": int(len(test))}
    if test.labels is not None:
        out["image_auroc"] = image_auroc(scores, test.labels)
    if test.masks is not None:
        out["pixel_auroc"] = pixel_auroc(heatmap, test.masks)
        out["aupro"] = aupro(heatmap, test.masks)
    return out


def write_panels(out_dir: Path, test: ImageSet, result: FitResult) -> list[Path]:
    """One PNG per test image: image | reconstruction | heatmap overlay | true mask.

    Overlays share one colour scale (the 99.5th percentile of all maps), so a hot normal image and a
    cold defect look different, as they should."""
    finite = result.heatmap[np.isfinite(result.heatmap)]
    vmax = float(np.percentile(finite, 99.5)) if finite.size else 1.0
    paths = []
    for i, name in enumerate(test.ids):
        cols = [("image", test.images[i]), ("reconstruction", result.recon[i]),
                ("heatmap", overlay(test.images[i], result.heatmap[i], vmin=0.0, vmax=vmax))]
        if test.masks is not None:
            cols.append(("true mask", test.masks[i]))
        path = out_dir / "panels" / (name.replace("/", "_") + ".png")
        save_panel(path, cols)
        paths.append(path)
    return paths


def run_demo(preset: Preset, out_dir, seed: int = 0, formulation: str = "auto",
             progress: bool = True, log=print) -> dict:
    """The `anounet demo` job on the embedded default data; returns (and writes) the metrics."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = load_embedded(preset.data, preset.image_size, seed)
    log(f"data: {len(data['train'])} normal, {len(data['reference'])} reference "
        f"({len(set(data['reference'].labels.tolist()))} classes), {len(data['test'])} test images "
        f"of {preset.image_size}x{preset.image_size} ({preset.data.category})")
    t1 = time.perf_counter()
    trained = fit_fnet_and_center(preset, data["train"], data["reference"], seed, progress)
    t2 = time.perf_counter()
    engine = build_engine(preset.unet, preset.fit, trained.fnet, trained.center, preset.image_size, formulation)
    test = data["test"]
    result = engine.fit(test.images, seed=seed, progress=progress)
    t3 = time.perf_counter()
    metrics = evaluate_maps(result.heatmap, image_scores(result), test)
    write_panels(out_dir, test, result)
    metrics.update(
        preset=preset.name, formulation=engine.formulation, diverged=int(result.diverged.sum()),
        seconds={"data": round(t1 - t0, 1), "fnet": round(t2 - t1, 1), "fit": round(t3 - t2, 1),
                 "total": round(time.perf_counter() - t0, 1)},
        fit_images_per_s=round(len(test) / (t3 - t2), 3),
    )
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics

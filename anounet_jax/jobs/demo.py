"""`anounet demo`: the whole pipeline on the embedded default data.

data -> f-Net (train, freeze, C) -> batched per-image fit -> smoothed maps -> metrics, panels.
"""

from __future__ import annotations

import json
import time

from anounet_jax.config import Preset
from anounet_jax.data.embedded import load_reference
from anounet_jax.data.sources import load_labelled
from anounet_jax.engine.fit import Engine
from anounet_jax.fnet.train import train_fnet
from anounet_jax.jobs.common import check_seed, prepare_out_dir
from anounet_jax.maps import map_score, smooth, write_panels
from anounet_jax.metrics import map_metrics


def run_demo(preset: Preset, out_dir, seed: int = 0, progress: bool = True, log=print) -> dict:
    """The `anounet demo` job; returns (and writes) the metrics. The preset's `data` section names the
    embedded texture and the counts, its `engine` section the formulation and chunk size."""
    seed = check_seed(seed)
    out_dir = prepare_out_dir(out_dir)
    t0 = time.perf_counter()
    data = load_labelled("embedded", preset, seed)
    reference = load_reference(data.category, preset.image_size, preset.data.n_reference_per_class, seed)
    train, test = data.train, data.test
    log(f"data: {len(train)} normal, {len(reference)} reference "
        f"({len(set(reference.labels.tolist()))} classes), {len(test)} test images "
        f"of {preset.image_size}x{preset.image_size} ({data.category})")
    t1 = time.perf_counter()
    trained = train_fnet(preset.fnet, train, reference, seed=seed, progress=progress)
    t2 = time.perf_counter()
    engine = Engine.for_trained(preset, trained)
    result = engine.fit(test.images, seed=seed, progress=progress)
    t3 = time.perf_counter()
    maps = smooth(result.heatmap, preset.maps.smoothing_sigma)
    metrics = map_metrics(maps, map_score(maps, preset.maps.image_score), test.labels, test.masks)
    write_panels(out_dir, test.images, test.ids, {"heatmap": maps}, masks=test.masks, recon=result.recon)
    metrics.update(
        preset=preset.name, formulation=engine.formulation, diverged=int(result.diverged.sum()),
        seconds={"data": round(t1 - t0, 1), "fnet": round(t2 - t1, 1), "fit": round(t3 - t2, 1),
                 "total": round(time.perf_counter() - t0, 1)},
        fit_images_per_s=round(len(test) / (t3 - t2), 3),
    )
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics

"""`anounet demo`: the whole pipeline on the embedded default data.

data -> f-Net (train, freeze, C) -> batched per-image fit -> smoothed maps -> metrics, panels.

Then one full-size photograph at native resolution (`photo_demo`): the whole embedded 512 x 512
photograph with planted defects (6 small ones of 2-6 px, 3 large ones of 12-28 px; data/native.py),
cut into tiles of the preset's size (tiles.tile) with stride tiles.stride, default 7/8 of the tile
(64 / 56 on the small preset: 9 x 9 = 81 tiles, an 8-px overlap; stride 48 was 121 tiles and 127 s
on the shared 2-core CPU, bringing the whole demo to 4 min 51 s; stride 32 would be 225 tiles), one
U-Net per tile, stitched back to 512 x 512 (tiles.scale < 1 shrinks the photograph first, for speed;
the map is resized back). Outputs: photo/overlay.png (the map over the
photograph, full size), photo/panel.png (photograph | overlay | true mask), photo/heatmap.npz and
"photo" in metrics.json (pixel AUROC and AUPRO over the photograph, and the pixel AUROC of the small
defects alone against the defect-free pixels). The photograph includes the band the training
patches were cut from: it is a picture of what native resolution shows, not a held-out test.
"""

from __future__ import annotations

import json
import time

from anounet_jax.config import Preset
from anounet_jax.data.embedded import load_reference
from anounet_jax.data.sources import load_labelled
from anounet_jax.engine.fit import Engine
from anounet_jax.engine.warm_start import check_start, with_warm_start
from anounet_jax.errors import AnoUnetError
from anounet_jax.fnet.train import train_fnet
from anounet_jax.jobs.common import check_seed, prepare_out_dir
from anounet_jax.maps import finish, map_score, write_panels
from anounet_jax.metrics import map_metrics


def run_demo(preset: Preset, out_dir, seed: int = 0, progress: bool = True, log=print) -> dict:
    """The `anounet demo` job; returns (and writes) the metrics. The preset's `data` section names the
    embedded texture and the counts, its `engine` section the formulation and chunk size."""
    seed = check_seed(seed)
    check_start(preset)
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
    t_fnet = time.perf_counter()
    trained = with_warm_start(preset, trained, train.images, seed=seed, progress=progress, log=log)
    t2 = time.perf_counter()
    engine = Engine.for_trained(preset, trained)
    result = engine.fit(test.images, seed=seed, progress=progress)
    t3 = time.perf_counter()
    maps = finish(result.heatmap, preset.maps)
    metrics = map_metrics(maps, map_score(maps, preset.maps.image_score), test.labels, test.masks)
    write_panels(out_dir, test.images, test.ids, {"heatmap": maps}, masks=test.masks, recon=result.recon)
    metrics.update(
        preset=preset.name, formulation=engine.formulation, diverged=int(result.diverged.sum()),
        warm_start=None if trained.warm_start is None else trained.warm_start.describe(),
        seconds={"data": round(t1 - t0, 1), "fnet": round(t_fnet - t1, 1), "warm_start": round(t2 - t_fnet, 1),
                 "fit": round(t3 - t2, 1),
                 "total": round(time.perf_counter() - t0, 1)},
        fit_images_per_s=round(len(test) / (t3 - t2), 3),
    )
    t4 = time.perf_counter()
    metrics["photo"] = photo_demo(preset, engine, out_dir, seed, data.category, log)
    metrics["seconds"]["photo"] = round(time.perf_counter() - t4, 1)
    metrics["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def photo_demo(preset: Preset, engine, out_dir, seed: int, category: str, log=print) -> dict:
    """The full photograph with planted defects, mapped at native resolution by tiles (module docstring)."""
    import numpy as np
    from PIL import Image

    from anounet_jax.data.native import SMALL, full_photo
    from anounet_jax.data.tiling import TiledImage, TileSpec, fit_tiled, resize_image, resize_map
    from anounet_jax.jobs.score.model import resolve_tiles
    from anounet_jax.maps import overlay
    from anounet_jax.metrics import aupro, pixel_auroc

    t0 = time.perf_counter()
    image, mask, planted, small = full_photo(category, seed)
    h, w = image.shape[:2]
    tile = resolve_tiles(preset.replace(tiles={"resize": False})).tile  # (a bad tile size: one line)
    spec = TileSpec(tile, preset.tiles.stride or max(1, 7 * tile // 8), preset.tiles.scale)
    scaled = resize_image(image, spec.scaled_hw(h, w)) if spec.scale != 1.0 else image
    grid = spec.grid(h, w)
    log(f"photo: {category} {h}x{w} with {len(planted)} planted defects "
        f"({sum(1 for p in planted if p[1] <= SMALL[1])} of 2-6 px), {grid.n_tiles} tiles of {tile}x{tile} "
        f"(stride {spec.stride}" + (f", scale {spec.scale}" if spec.scale != 1.0 else "") + ")")
    chunk = engine.chunk_size_for((tile, tile, 3))
    [s] = list(fit_tiled(lambda c: engine.iter_fit(c, seed), [TiledImage("photo", scaled, grid, 0)], chunk))
    if s.heatmap is None:
        raise AnoUnetError(f"every one of the photograph's {grid.n_tiles} tile fits diverged; lower fit.lr")
    heat = resize_map(finish(s.heatmap, preset.maps), (h, w))
    fit_s = time.perf_counter() - t0
    finite = np.where(np.isfinite(heat), heat, np.float32(np.nanmax(heat)))
    keep = ~mask | small
    out = {"size": [h, w], "tiles": grid.n_tiles, "tile": tile, "stride": spec.stride, "scale": spec.scale,
           "defects": [{"kind": k, "size_px": int(z), "y": int(y), "x": int(x)} for k, z, y, x in planted],
           "diverged_tiles": len(s.diverged),
           "pixel_auroc": round(float(pixel_auroc(finite[None], mask[None])), 6),
           "aupro": round(float(aupro(finite[None], mask[None])), 6),
           "pixel_auroc_small_defects": round(float(pixel_auroc(finite[keep][None], small[keep][None])), 6),
           "seconds": round(fit_s, 1), "tiles_per_s": round(grid.n_tiles / fit_s, 3)}
    d = out_dir / "photo"
    d.mkdir(exist_ok=True)
    vmax = float(np.percentile(finite, 99.9))
    ov = overlay(image, finite, vmax=vmax)
    Image.fromarray(ov).save(d / "overlay.png")
    photo_u8 = np.round(image * 255).astype(np.uint8)
    mask_u8 = np.repeat((mask * 255).astype(np.uint8)[:, :, None], 3, 2)
    gap = np.full((h, 8, 3), 255, np.uint8)
    Image.fromarray(np.concatenate([photo_u8, gap, ov, gap, mask_u8], 1)).save(d / "panel.png")
    np.savez_compressed(d / "heatmap.npz", heatmap=heat.astype(np.float16), mask=mask)
    log(f"photo: pixel AUROC {out['pixel_auroc']:.3f}, AUPRO {out['aupro']:.3f}, small defects "
        f"{out['pixel_auroc_small_defects']:.3f}; {grid.n_tiles} tiles in {fit_s:.1f} s; {d / 'panel.png'}")
    return out

"""`anounet train-fnet`: normal images -> trained f-Net, C, image scorer -> one orbax checkpoint.

Normal images: a folder or a named source (data/sources.py: "embedded", "synthetic:FAMILY", "aligned":
its normal training images). Reference images: always the built-in `load_reference(...)` set for the
preset's data category, n_reference_per_class and input size.

Tiles (the default: the score job maps tiles at the images' native size, preset.tiles). The f-Net, C,
its feature scale and the warm start learn from what the fits will see: up to data.n_train tiles of
the normal images at their own size (drawn from their grids, seeded, as `anounet evaluate --native`
draws them; only the images a tile comes from are read), the reference set at the tile size. With
tiles.center "position" the checkpoint also stores one C per tile position (fnet/tile_centers.py),
from normal images that must share one size. The scorer (the score job's image score and flags) is
fitted on the f-Net features of the whole normal images resized to the preset's size, as the score
job computes them (its threshold = their 95% quantile, see fnet/scores.py). With tiles.resize
(`--set tiles.resize=true`) everything is on the resized images, as before tiling.

The checkpoint stores the preset the f-Net was trained with, `--method` applied; scoring with it
needs nothing else (`anounet score ... --ckpt CKPT`).

Warm start (fit.start "warm", issue 17): U-Net parameters trained on the same normal images with the
per-image objective (engine/warm_start.py, the preset's `start` section) are stored in the checkpoint,
trained once here instead of once per job.
"""

from __future__ import annotations

import time
from pathlib import Path

from anounet_jax.config import get_preset
from anounet_jax.errors import AnoUnetError


def train_fnet_checkpoint(data, out, *, preset="small", method: str | None = None, scorer: str = "lof",
                          seed: int = 0, recursive: bool = False, overwrite: bool = False,
                          progress: bool = True, log=print) -> dict:
    """Train, score-fit and save; returns {"fingerprint", "threshold", "normal", "reference", "path",
    "warm_start_seconds" (None without a warm start)}. Every argument and the output place are checked
    before training starts. With the preset's fit.start "warm" the fits' warm start (its `start`
    section's recipe) is trained on the f-Net's inputs and stored too."""
    from anounet_jax.checkpoint import save_checkpoint
    from anounet_jax.data.embedded import load_reference
    from anounet_jax.data.sources import load_normal_images
    from anounet_jax.engine.warm_start import check_start, with_warm_start
    from anounet_jax.fnet.scores import make_scorer
    from anounet_jax.fnet.train import describe, train_fnet
    from anounet_jax.jobs.common import check_seed, prepare_out_dir
    from anounet_jax.jobs.evaluate_tiled import scaled, train_tiles
    from anounet_jax.jobs.score.model import resolve_tiles

    p = get_preset(preset) if isinstance(preset, str) else preset
    if method is not None:
        if method not in ("l2softmax", "doc"):
            raise AnoUnetError(f"unknown f-Net method {method!r}; use 'l2softmax' or 'doc'")
        p = p.replace(fnet={"method": method})
    seed = check_seed(seed)
    check_start(p)
    out = Path(out)
    if out.exists() and not overwrite:  # fail before training, not after
        raise AnoUnetError("a checkpoint (or file) already exists here; pass --overwrite to replace it", out)
    prepare_out_dir(out.parent)
    sc = make_scorer(scorer)
    spec = resolve_tiles(p)
    tile_centers = None
    if spec is None:
        normal = load_normal_images(data, p, seed, recursive)
        fit_inputs, size, what = normal, p.image_size, "normal images"
    else:
        native = load_native_normal(data, p, seed, recursive)
        if p.tiles.center == "position":
            sizes = sorted(set(native.sizes()))
            if len(sizes) != 1:
                raise AnoUnetError(f"tiles.center 'position' needs normal images of one size (tile k must show "
                                   f"the same place), got {len(sizes)} sizes: "
                                   + ", ".join(f"{h}x{w}" for h, w in sizes[:4]), data)
        normal = resized_set(native, p.image_size)
        fit_inputs = train_tiles(native, spec, p.data.n_train, seed)
        size, what = spec.tile, f"tiles of {len(native)} normal images"
    if len(normal) < 2:
        raise AnoUnetError(f"the f-Net and the {scorer} scorer need at least 2 normal images, found "
                           f"{len(normal)}", data)
    reference = load_reference(p.data.category, size, p.data.n_reference_per_class, seed)
    log(f"f-Net ({describe(p.fnet)}): {len(fit_inputs)} {what}, {len(reference)} reference images "
        f"of {size}x{size}")
    trained = train_fnet(p.fnet, fit_inputs, reference, seed=seed, progress=progress)
    n_reference = len(reference)
    del reference
    if spec is None:
        features = trained.train_features
    else:  # the scorer reads whole images at the preset's size, as the score job does
        features = trained.fnet.features(normal.images)
        if p.tiles.center == "position":
            from anounet_jax.fnet.tile_centers import TileCenters, position_centers

            grid = spec.grid(*native.sizes()[0])
            centers = position_centers(trained.fnet, (scaled(x, spec) for x in native.images), grid)
            tile_centers = TileCenters(centers, native.sizes()[0], spec.tile, spec.stride, spec.scale)
            log(f"C per tile position: {len(centers)} centers ({grid.rows} x {grid.cols} tiles)")
    if sc.kind == "distance":
        sc.fit(features, center=features.mean(0) if spec is not None else trained.center)
    else:
        sc.fit(features)
    t0 = time.perf_counter()
    trained = with_warm_start(p, trained, fit_inputs.images, seed=seed, progress=progress, log=log)
    seconds = None if trained.warm_start is None else time.perf_counter() - t0
    digest = save_checkpoint(out, p, trained.fnet, trained.center, sc, overwrite=overwrite,
                             feature_scale=trained.feature_scale, patch_memory=trained.patch_memory,
                             warm_start=trained.warm_start, tile_centers=tile_centers,
                             flaw_head=trained.flaw_head,
                             normal_features=trained.train_features if p.fit.lc_center == "nearest" else None)
    return {"fingerprint": digest, "threshold": sc.threshold, "normal": len(normal),
            "tiles": None if spec is None else len(fit_inputs), "reference": n_reference, "path": str(out),
            "warm_start_seconds": seconds}


def load_native_normal(data, preset, seed: int = 0, recursive: bool = False):
    """Normal images at their own size (a NativeSet): a folder's files read on demand, or a named
    source's normal training images as tiled evaluation loads them."""
    from anounet_jax.data.native import native_folder
    from anounet_jax.data.sources import parse_source
    from anounet_jax.jobs.evaluate_tiled import load_native

    kind, path = parse_source(data)
    if kind == "folder":
        return native_folder(path, recursive)
    return load_native(data, preset, seed)[2]


def resized_set(native, size: int):
    """The normal images resized (squashed) to size x size, one image read at a time."""
    import numpy as np

    from anounet_jax.data.tiling import resize_image
    from anounet_jax.data.types import ImageSet

    x = np.stack([resize_image(img, (size, size)) for img in native.images])
    return ImageSet(x, labels=np.zeros(len(x), np.int64), ids=list(native.ids))

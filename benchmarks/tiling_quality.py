"""Tiled Ano-Unet against the same method on images resized to the tile size (issue 16, quality).

Data: crops of the embedded photograph at its own scale (data/native.py: training crops from the top
3/4, test crops of HxW from the bottom 1/4), the defective ones with small defects of 2-6 px and
large ones of 12-28 px planted, exact masks. One f-Net, trained once on the normal images as both
paths see them (tiles of the native crops + the crops resized to the preset's size, half each) with
the reference set at the preset's size, C their mean feature; one engine (Engine.for_trained).

  tiled    every test image cut into tiles of the preset's size (stride --stride), one U-Net each,
           stitched (data/tiling.py), smoothed with the preset's sigma at native resolution.
  resized  every test image squashed to the preset's square size (evaluate's default path), one
           U-Net, the smoothed map resized back to the native size (bilinear).

Metrics at the native mask size: pixel AUROC and AUPRO (FPR <= 0.3) over every test image; the
pixel AUROC of the small defects alone (large-defect pixels left out) and of the large ones alone;
image AUROC of the map max.

    python benchmarks/tiling_quality.py --out benchmarks/results/tiling_quality_small.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("KERAS_BACKEND", "jax")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--category", default="brick")
    p.add_argument("--good", type=int, default=2)
    p.add_argument("--defect", type=int, default=4)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--stride", type=int, default=32)
    p.add_argument("--n-train", type=int, default=400, help="normal training inputs per path (tiles, resized)")
    p.add_argument("--small", type=int, default=3, help="small defects per defective image")
    p.add_argument("--large", type=int, default=1, help="large defects per defective image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="Markdown file to write (default: print only)")
    a = p.parse_args(argv)

    import jax

    from anounet_jax.config import get_preset
    from anounet_jax.data.embedded import load_reference
    from anounet_jax.data.native import load_native_embedded
    from anounet_jax.data.tiling import TileSpec, resize_image, resize_map
    from anounet_jax.data.types import ImageSet
    from anounet_jax.engine.fit import Engine
    from anounet_jax.engine.warm_start import with_warm_start
    from anounet_jax.fnet.train import train_fnet
    from anounet_jax.jobs.evaluate_tiled import stacked, tiled_maps, train_tiles
    from anounet_jax.maps import smooth
    from anounet_jax.methods import METHODS, MethodInputs
    from anounet_jax.metrics import aupro, image_auroc, pixel_auroc

    started = datetime.datetime.now(datetime.timezone.utc)
    load = os.getloadavg()
    preset = get_preset(a.preset)
    size = preset.image_size
    spec = TileSpec(size, a.stride)
    t0 = time.perf_counter()
    n_crops = max(8, -(-a.n_train // spec.n_tiles(2 * size, 2 * size)))
    train, test_native = load_native_embedded(a.category, n_crops, a.good, a.defect, a.seed,
                                              train_hw=(2 * size, 2 * size), test_hw=(a.height, a.width),
                                              n_small=a.small, n_large=a.large)
    test = stacked(test_native)
    small = np.stack(test_native.small)
    tiles = train_tiles(train, spec, a.n_train, a.seed)
    resized_train = np.stack([resize_image(x, (size, size)) for x in train.images])
    rng = np.random.default_rng(a.seed)
    idx = rng.integers(0, len(resized_train), a.n_train)
    both = ImageSet(np.concatenate([tiles.images, resized_train[idx]]), labels=np.zeros(len(tiles) + a.n_train, np.int64))
    reference = load_reference(a.category, size, preset.data.n_reference_per_class, a.seed)
    trained = with_warm_start(preset, train_fnet(preset.fnet, both, reference, seed=a.seed, progress=False),
                              both.images, seed=a.seed)
    t_fnet = time.perf_counter() - t0
    sigma = preset.maps.smoothing_sigma
    per = spec.n_tiles(a.height, a.width)

    results = {}
    t0 = time.perf_counter()
    maps_fn = METHODS["ano-unet"].prepare(MethodInputs(both, None, preset, None, trained, a.seed))
    res = tiled_maps(maps_fn, test, spec, sigma, preset.maps)
    tiled, diverged = res.maps, res.diverged
    results["tiled"] = (tiled, time.perf_counter() - t0, int(diverged.sum()), len(test) * per)
    t0 = time.perf_counter()
    engine = Engine.for_trained(preset, trained)
    small_imgs = np.stack([resize_image(x, (size, size)) for x in test.images])
    res = engine.fit(small_imgs, seed=a.seed)
    sm = smooth(np.where(np.isfinite(res.heatmap), res.heatmap, np.inf), sigma)
    back = np.stack([resize_map(m, (a.height, a.width)) for m in sm])
    results["resized"] = (back, time.perf_counter() - t0, int(res.diverged.sum()), len(test))

    large = test.masks & ~small
    rows = []
    for name, (maps, secs, div, n_fits) in results.items():
        m = np.where(np.isfinite(maps), maps, np.float32(np.finfo(np.float32).max))
        keep_s = ~large  # small defects against every defect-free pixel
        keep_l = ~small
        rows.append((name, pixel_auroc(m, test.masks), aupro(m, test.masks),
                     pixel_auroc(m[keep_s][None], small[keep_s][None]),
                     pixel_auroc(m[keep_l][None], large[keep_l][None]),
                     image_auroc(m.reshape(len(m), -1).max(1), test.labels), secs, n_fits, div))
        print(f"{name}: pixel AUROC {rows[-1][1]:.3f} AUPRO {rows[-1][2]:.3f} small {rows[-1][3]:.3f} "
              f"large {rows[-1][4]:.3f} image {rows[-1][5]:.3f}, {secs:.1f} s, {n_fits} fits", flush=True)

    n_small = sum(1 for d in test_native.defects for k in d if k[1] <= 6)
    n_large = sum(1 for d in test_native.defects for k in d if k[1] > 6)
    lines = [
        "# Tiling quality: tiled Ano-Unet against the same method on images resized to the tile size",
        "",
        f"Command ({started:%Y-%m-%d %H:%M} UTC, load average at the start {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}):",
        "",
        "    python benchmarks/tiling_quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "",
        f"Machine: {_machine()}, Python {platform.python_version()}, jax {jax.__version__}. Other engineers' "
        f"benchmarks shared the 2 cores during the run, so the seconds are pessimistic.",
        "",
        f"Data: embedded {a.category} photograph at its own scale; {len(test)} test crops of {a.height}x{a.width} "
        f"({a.good} good, {a.defect} defective with {a.small} small defects of 2-6 px and {a.large} large of "
        f"12-28 px each: {n_small} small and {n_large} large in all, {int(small.sum())} and {int(large.sum())} "
        f"pixels); preset {preset.name} ({preset.fit.steps} steps, tile {size}, smoothing sigma {sigma}). "
        f"One f-Net for both paths, trained on {len(tiles)} normal tiles + {a.n_train} normal crops resized to "
        f"{size}x{size} ({t_fnet:.0f} s with data). Tiled: {per} tiles of {size}x{size} per image, stride "
        f"{spec.stride}. Resized: each image squashed to {size}x{size}, its map resized back.",
        "",
        "| path | pixel AUROC | AUPRO | pixel AUROC, small defects (2-6 px) | pixel AUROC, large defects | "
        "image AUROC (map max) | fit s | U-Net fits | diverged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, pa, ap, ps, pl, ia, secs, n_fits, div in rows:
        lines.append(f"| {name} | {pa:.3f} | {ap:.3f} | {ps:.3f} | {pl:.3f} | {ia:.3f} | {secs:.1f} | {n_fits} | {div} |")
    lines += ["", "Metrics at the native mask size. Small-defect AUROC: the small defects' pixels against every "
              "defect-free pixel (large-defect pixels left out); large likewise. With so few images the "
              "numbers move by up to a tenth between seeds.", ""]
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


def _machine() -> str:
    from anounet_jax.jobs.evaluate import machine_description

    return machine_description()


if __name__ == "__main__":
    sys.exit(main())

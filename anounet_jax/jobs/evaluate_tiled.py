"""Tiled evaluation: the pieces `evaluate` uses when the preset's tiling is on (see jobs/evaluate.py).

Every method sees the same tiles and the same stitching: the test images are read at their native
size, cut on one `TileSpec` grid (data/tiling.py), each method maps the tiles (`Method.prepare` in
methods.py), and the tile maps are stitched back with `stitch` (same window, same grid), smoothed at
the tiled resolution with the harness's one sigma and resized to the native size if `scale` != 1.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from anounet_jax.data.native import NativeSet
from anounet_jax.data.tiling import TileSpec, cut, resize_image, resize_map, stitch
from anounet_jax.data.types import ImageSet
from anounet_jax.errors import AnoUnetError

GROUP_TILES = 256  # tiles of consecutive test images mapped in one call (bounded memory, full chunks)


def tiling_for(preset, native: bool | None) -> TileSpec | None:
    """The TileSpec of a tiled evaluation, or None (every image resized to the preset's size).

    native None: tiled when the preset's `tiles` section asks for a tile, stride or scale (e.g.
    `--set tiles.tile=64`, `--tile 64`) and not `tiles.resize`; True: tiled (at the preset's image
    size unless tiles.tile says otherwise); False: resized."""
    from anounet_jax.jobs.score.model import resolve_tiles

    t = preset.tiles
    if t.resize:
        resolve_tiles(preset)  # resize with a tile size, stride or scale: a one-line error
    if native is None:
        native = not t.resize and bool(t.tile or t.stride or t.scale != 1.0)
    if not native:
        return None
    if t.resize:
        raise AnoUnetError("tiled evaluation and tiles.resize (--resize) exclude each other")
    return resolve_tiles(preset)


def load_native(spec_data, preset, seed: int) -> tuple[str, str, NativeSet, NativeSet]:
    """(name, category, train, test) at native size: an MVTec-style folder, a DAGM class folder (512 x
    512), the embedded photograph, a synthetic family or the aligned object (generated at 2 x 3 tiles)."""
    from pathlib import Path

    from anounet_jax.data.native import load_native_embedded, load_native_mvtec
    from anounet_jax.data.sources import ALIGNED, EMBEDDED, SYNTHETIC, load_aligned, parse_source
    from anounet_jax.jobs.score.model import resolve_tiles

    kind, name = parse_source(spec_data)
    d = preset.data
    spec = resolve_tiles(preset.replace(tiles={"resize": False}))
    if kind in (EMBEDDED, SYNTHETIC):
        side = max(2 * spec.tile, 64)
        per = spec.n_tiles(side, side)  # training tiles per image at the chosen stride and scale
        n_train = int(min(64, max(4, -(-d.n_train // per))))
        test_hw = (min(128, 2 * side), 3 * side // 2)
    if kind == EMBEDDED:
        category = name or d.category
        train, test = load_native_embedded(category, n_train, d.n_test_good, d.n_test_defect, seed,
                                           train_hw=(side, side), test_hw=test_hw)
        return f"embedded {category} (native)", category, train, test
    if kind == SYNTHETIC:  # generated at the test size directly: the texture's scale is the resized set's
        from anounet_jax.data.synthetic import load_synthetic

        sets = load_synthetic(name, size=test_hw, n_train=n_train, n_test_good=d.n_test_good,
                              n_test_defect=d.n_test_defect, seed=seed)
        return f"synthetic {name} (native)", name, _as_native(sets["train"]), _as_native(sets["test"])
    if kind == ALIGNED:
        train, test = load_aligned(preset.data, seed)
        return "aligned object (native)", "aligned", train, test
    if kind != "folder" or not Path(name).is_dir():
        raise AnoUnetError(f"tiled evaluation reads an MVTec-style category or DAGM class folder, 'embedded', "
                           f"'synthetic:FAMILY' or 'aligned', not {spec_data!r}")
    from anounet_jax.data.dagm import class_folder, load_dagm_evaluation

    root = Path(name)
    dagm = class_folder(root)
    if dagm is not None:  # DAGM images are 512 x 512 (size None keeps it)
        train, test = load_dagm_evaluation(dagm[0], dagm[1], None, seed)
        return str(root), root.name, _as_native(train), _as_native(test)
    return str(root), root.name, load_native_mvtec(root, "train"), load_native_mvtec(root, "test")


def _as_native(s: ImageSet) -> NativeSet:
    """An ImageSet (one size) as a NativeSet (a list of images)."""
    n = len(s)
    return NativeSet(list(s.images), None if s.masks is None else list(np.asarray(s.masks, bool)),
                     None if s.labels is None else np.asarray(s.labels), list(s.ids or [f"{i:04d}" for i in range(n)]))


def check_one_size(test: NativeSet) -> tuple[int, int]:
    sizes = sorted(set(test.sizes()))
    if len(sizes) != 1:
        raise AnoUnetError(f"tiled evaluation needs test images of one size (the metrics pool their pixels), "
                           f"got {len(sizes)} sizes: {', '.join(f'{h}x{w}' for h, w in sizes[:4])}")
    return sizes[0]


def stacked(test: NativeSet) -> ImageSet:
    """The native test set as one ImageSet (images of one size, see `check_one_size`)."""
    check_one_size(test)
    return ImageSet(np.stack(test.images).astype(np.float32), masks=np.stack(test.masks),
                    labels=np.asarray(test.labels), ids=list(test.ids))


def scaled(image: np.ndarray, spec: TileSpec) -> np.ndarray:
    """The image resized by the tiling's scale (itself at scale 1)."""
    return resize_image(image, spec.scaled_hw(*image.shape[:2])) if spec.scale != 1.0 else image


def train_tiles(train: NativeSet, spec: TileSpec, n: int, seed: int) -> ImageSet:
    """Up to n tiles of the normal images (the grid's tiles, drawn without replacement, seeded): what
    the f-Net and every baseline train on when tiling, at the tile size."""
    pairs = [(i, k) for i, hw in enumerate(train.sizes()) for k in range(spec.n_tiles(*hw))]
    if not pairs:
        raise AnoUnetError("no normal training images")
    rng = np.random.default_rng([seed, 21])
    take = sorted(rng.choice(len(pairs), min(int(n), len(pairs)), replace=False).tolist())
    by_image: dict[int, list[int]] = {}
    for j in take:
        i, k = pairs[j]
        by_image.setdefault(i, []).append(k)
    tiles, ids = [], []
    for i, ks in by_image.items():  # only the images a tile is drawn from are read
        native = train.images[i]
        x = scaled(native, spec)
        grid = spec.grid(*native.shape[:2])
        all_tiles = cut(x, grid)
        tiles.append(all_tiles[ks])
        ids += [f"{train.ids[i]}#{k}" for k in ks]
    x = np.concatenate(tiles).astype(np.float32)
    return ImageSet(x, labels=np.zeros(len(x), np.int64), ids=ids)


class TiledMaps(NamedTuple):
    maps: np.ndarray  # (N, H, W) smoothed, +inf where only diverged tiles lie
    scores: np.ndarray  # (N,) image scores
    diverged: np.ndarray  # (N,) bool: any tile diverged
    info: dict
    tiles_per_image: int
    fnet_scores: np.ndarray | None  # (N,) max over the image's tiles of the f-Net's tile distance, or None


def tiled_maps(maps_fn, test: ImageSet, spec: TileSpec, sigma: float, maps_cfg) -> TiledMaps:
    """Every test image cut into tiles, mapped by `maps_fn(tiles, first_index, positions)` (a
    `Method.prepare` result) in groups of about GROUP_TILES tiles, stitched, finished (`maps.finish`: smoothed with
    `sigma`, the deviation of maps_cfg, a config.MapConfig) and brought to the
    native size. Image score: the method's own score as the max over the image's tiles, else the
    preset's map score (`map_score(.., maps_cfg.image_score)`) of the stitched finished map. The f-Net score
    (methods that give one) is the max over the image's tiles of each tile's distance to its C."""
    from anounet_jax.maps import finish, map_score

    n = len(test)
    hw = test.images.shape[1:3]
    grid = spec.grid(*hw)
    per = grid.n_tiles
    maps = np.empty((n, *hw), np.float32)
    scores = np.full(n, np.nan, np.float32)
    fnet_scores = np.full(n, np.nan, np.float32)
    own = [None] * n
    diverged = np.zeros(n, bool)
    info: dict = {}
    group = max(1, GROUP_TILES // per)
    has_fnet = True
    for lo in range(0, n, group):
        hi = min(lo + group, n)
        tiles = np.concatenate([cut(scaled(test.images[i], spec), grid) for i in range(lo, hi)])
        out = maps_fn(tiles, lo * per, np.tile(np.arange(per), hi - lo))
        info.update(out.info)
        heat = np.asarray(out.heatmap, np.float32)
        bad = np.asarray(out.diverged, bool) | ~np.isfinite(heat.reshape(len(heat), -1)).all(1)
        has_fnet = has_fnet and out.fnet_score is not None
        for j, i in enumerate(range(lo, hi)):
            sl = slice(j * per, (j + 1) * per)
            raw = stitch(heat[sl], grid, valid=~bad[sl])
            diverged[i] = bool(bad[sl].any())
            m = resize_map(finish(raw, maps_cfg, sigma), hw)
            maps[i] = np.where(np.isnan(m), np.float32(np.inf), m)
            if out.score is not None:
                s = np.asarray(out.score, np.float32)[sl]
                own[i] = float(np.max(np.where(np.isfinite(s), s, np.inf)))
            if out.fnet_score is not None:
                f = np.asarray(out.fnet_score, np.float32)[sl]
                fnet_scores[i] = float(np.max(np.where(np.isfinite(f), f, np.inf)))
    if all(s is not None for s in own):
        scores[:] = own
    else:
        scores = map_score(maps, maps_cfg.image_score).astype(np.float32)
    return TiledMaps(maps, scores, diverged, info, per, fnet_scores if has_fnet else None)

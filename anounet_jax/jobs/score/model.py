"""What the CLI job and the Python API share: a checkpoint + a preset -> scores, flags and maps per chunk.

Per image (global position i, so its U-Net key is fold_in(seed, i) whatever the chunking):

    features  = f(x)                          the checkpoint's frozen f-Net (FrozenFNet.features)
    score     = scorer(features)              LOF or distance to C, as stored in the checkpoint
    flagged   = score > threshold             the checkpoint scorer's threshold unless overridden
    maps      = Engine.for_trained(preset, checkpoint.trained), smoothed by preset.maps, for every image ("all"),
                the flagged ones ("flagged") or none ("none")

Status of a row: "ok" (maps made), "not visualized" (scored, no maps asked for), "diverged" (the
fit went non-finite; no maps written), or the problem text of a file that could not be used.

Preset. The checkpoint fixes the f-Net (architecture and weights), C, the scorer and the image size.
A preset passed for scoring only chooses the U-Net, the per-image fit and the tiling; it must have the
checkpoint's image size. `None` scores with the checkpoint's own preset.

Tiling (preset.tiles, data/tiling.py). By default maps are made at each image's native size: the image
(scaled by tiles.scale first, if set) is cut into overlapping tiles of tiles.tile pixels (default the
preset's image size) with stride tiles.stride (default half the tile), each tile gets its own U-Net,
and the tile maps are stitched back, smoothed by preset.maps at the tiled resolution and resized to
the native size if scaled. Tile k of the image at global position i has the engine index
offsets[i] + k (`tile_offsets` over every image's size), so its U-Net does not depend on chunking,
resuming or processes. The checkpoint's f-Net and C were trained on tiles (jobs/train_fnet.py); with
tiles.center "position" each tile is fitted toward its own position's C from the checkpoint, and an
image of another size than the one those centers were made for is a row problem ("image is HxW; the
checkpoint's per-position centers ... are for ..."), not a failed job. The image score stays the
f-Net's score of the whole image resized to the preset's size (as the checkpoint's scorer was
fitted). tiles.resize = True is the path before tiling: every image resized to the preset's square
size, maps at that size.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from anounet_jax.config import Preset, get_preset
from anounet_jax.data.tiling import TiledImage, TileSpec, float_pixels, resize_image, resize_map
from anounet_jax.errors import AnoUnetError
from anounet_jax.maps import finish, smooth_map

VISUALIZE = ("all", "flagged", "none")
STATUS_OK, STATUS_NOT_VISUALIZED, STATUS_DIVERGED = "ok", "not visualized", "diverged"
NONFINITE_FEATURES = "f-Net features are not finite"


def is_failure(status: str) -> bool:
    """True for a row whose image could not be scored or whose fit diverged."""
    return status not in (STATUS_OK, STATUS_NOT_VISUALIZED)


def is_diverged(status: str) -> bool:
    """True for "diverged" (every tile) and "diverged: k of n tiles (...)" (some tiles; map written)."""
    return status == STATUS_DIVERGED or status.startswith(STATUS_DIVERGED + ":")


def resolve_tiles(preset: Preset) -> TileSpec | None:
    """The preset's tiling (None: tiles.resize, every image resized to the preset's size)."""
    from anounet_jax.fnet.tile_centers import check_center

    t = preset.tiles
    check_center(t.center)
    if t.resize:
        if t.tile not in (0, preset.image_size) or t.stride or t.scale != 1.0 or t.center != "global":
            raise AnoUnetError("resize (every image resized to the preset's square size) cannot be combined "
                               "with a tile size, stride, scale or per-position center")
        return None
    tile = t.tile or preset.image_size
    step = 2 ** preset.unet.depth
    if tile <= 0 or tile % step:
        raise AnoUnetError(f"tile size must be a positive multiple of {step} (the U-Net halves a tile "
                           f"{preset.unet.depth} times), got {tile}")
    return TileSpec(tile, t.stride, t.scale)


# ---------------------------------------------------------------------------------------- the model
def resolve_preset(checkpoint_preset: Preset, preset: Preset | str | None) -> Preset:
    """The preset a scoring run uses (see the module docstring)."""
    if preset is None:
        return checkpoint_preset
    if isinstance(preset, str):
        preset = get_preset(preset)
    if preset.image_size != checkpoint_preset.image_size:
        raise AnoUnetError(f"preset {preset.name!r} works at {preset.image_size}x{preset.image_size}, the "
                           f"checkpoint's f-Net and scorer at {checkpoint_preset.image_size}x"
                           f"{checkpoint_preset.image_size}; use a preset of the checkpoint's image size")
    return dataclasses.replace(preset, fnet=checkpoint_preset.fnet)


def check_threshold(threshold) -> float:
    """A flagging threshold: a finite number >= 0 (every image score, LOF or a distance, is >= 0)."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise AnoUnetError(f"threshold must be a number, got {threshold!r}") from None
    if not np.isfinite(t) or t < 0:
        raise AnoUnetError(f"threshold must be a finite number >= 0 (image scores are LOF factors or "
                           f"distances), got {threshold!r}")
    return t


def check_visualize(visualize: str) -> str:
    if visualize not in VISUALIZE:
        raise AnoUnetError(f"visualize must be one of {VISUALIZE}, got {visualize!r}")
    return visualize


@dataclasses.dataclass
class ChunkOutcome:
    """Results for the n loaded images of a chunk (row j = indices[j])."""

    scores: np.ndarray  # float32 (n,), NaN where the features were not finite
    flagged: np.ndarray  # bool (n,)
    problems: list  # (n,) None or a problem text
    fitted: np.ndarray  # int (m,) rows (into the chunk) that were fitted, ascending
    fit: object | None  # FitResult for those m rows (None when m == 0)

    def fit_row(self) -> dict[int, int]:
        return {int(r): k for k, r in enumerate(self.fitted)}

    def fit_info(self) -> dict[int, tuple]:
        """{row j: (L_R, L_C, status)} for the fitted rows (the resize path's FitResult)."""
        if self.fit is None:
            return {}
        return {int(r): (self.fit.loss_r[k], self.fit.loss_c[k],
                         STATUS_DIVERGED if self.fit.diverged[k] else STATUS_OK) for k, r in enumerate(self.fitted)}


@dataclasses.dataclass
class TiledMaps:
    """One image's maps at its native size (tiling). heatmap float32 (H, W) smoothed, NaN where only
    diverged tiles lay; recon float32 (H, W, 3); None when every tile diverged. loss_r / loss_c: the
    mean of its healthy tiles' final losses. status: "ok", "diverged" (every tile) or "diverged: k of n
    tiles (row r col c at y y0:y1 x x0:x1; ...)" in native pixels."""

    key: object
    image: np.ndarray  # the native image (for the overlay): float32, or uint8 / uint16 (tiling.float_pixels)
    heatmap: np.ndarray | None
    recon: np.ndarray | None
    loss_r: np.float32
    loss_c: np.float32
    status: str
    n_tiles: int
    sink: object = None  # fit_tiled(bands=...): the image's sink, which got heatmap and recon in bands


class ScoringModel:
    """Checkpoint (path or loaded `Checkpoint`) + preset -> `process(images, indices, visualize)`."""

    tile_centers = None  # fnet.tile_centers.TileCenters when tiles.center is "position" (set in __init__)

    def __init__(self, checkpoint, preset: Preset | str | None = None, *, threshold: float | None = None,
                 seed: int = 0, formulation: str | None = None):
        from anounet_jax.checkpoint import Checkpoint, load_checkpoint
        from anounet_jax.engine.fit import check_formulation
        from anounet_jax.jobs.common import check_seed

        self.seed = check_seed(seed)
        if formulation is not None:
            check_formulation(formulation)
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        self.checkpoint = ckpt
        self.preset = resolve_preset(ckpt.preset, preset)
        if formulation is not None:
            self.preset = self.preset.replace(engine={"formulation": formulation})
        self.fnet = ckpt.fnet
        self.scorer = ckpt.scorer
        self.threshold = check_threshold(ckpt.scorer.threshold if threshold is None else threshold)
        self.threshold_overridden = threshold is not None
        self.tiles = resolve_tiles(self.preset)
        if self.tiles is not None and self.preset.tiles.center == "position":
            if ckpt.tile_centers is None:
                raise AnoUnetError("tiles.center 'position' needs a checkpoint with per-position centers; "
                                   "train it with `anounet train-fnet ... --set tiles.center=position`", ckpt.path)
            ckpt.tile_centers.check_tiling(self.tiles)
            self.tile_centers = ckpt.tile_centers
        self._engine = None

    @property
    def image_size(self) -> int:
        return self.preset.image_size

    @property
    def formulation(self) -> str:
        return self.preset.engine.formulation

    @property
    def engine(self):
        if self._engine is None:
            from anounet_jax.engine.fit import Engine

            self._engine = Engine.for_trained(self.preset, self.checkpoint.trained)
        return self._engine

    def score(self, images: np.ndarray, visualize: str) -> ChunkOutcome:
        """Score every image (at the preset's size); `fitted`: the rows to map (no fit yet)."""
        n = len(images)
        scores = np.full(n, np.nan, np.float32)
        problems: list = [None] * n
        if n:
            feats = self.fnet.features(images)
            good = np.isfinite(feats).all(1)
            if good.any():
                scores[good] = self.scorer.score(feats[good])
            for j in np.flatnonzero(~good):
                problems[j] = NONFINITE_FEATURES
        flagged = np.isfinite(scores) & (scores > self.threshold)
        if visualize == "all":
            fit_mask = np.isfinite(scores)
        elif visualize == "flagged":
            fit_mask = flagged
        else:
            fit_mask = np.zeros(n, bool)
        return ChunkOutcome(scores, flagged, problems, np.flatnonzero(fit_mask), None)

    def process(self, images: np.ndarray, indices: np.ndarray, visualize: str) -> ChunkOutcome:
        """Score every image; fit maps for all / the flagged / none of them at the preset's size (the
        resize path; `fit_tiled` is the tiled one)."""
        from anounet_jax.engine.fit import FitResult

        outcome = self.score(images, visualize)
        fitted = outcome.fitted
        if len(fitted):
            idx = np.asarray(indices)[fitted]
            parts = [r for _, r in self.engine.iter_fit([(idx, images[fitted])], self.seed)]
            fit = FitResult.concatenate(parts)
            fit.heatmap = finish(fit.heatmap, self.preset.maps)
            outcome.fit = fit
        return outcome

    # -------------------------------------------------------------------------------- tiling
    def tiled_image(self, key, native: np.ndarray, first_index: int) -> TiledImage:
        """The tile stream's item for one native image (scaled first if tiles.scale != 1). native:
        float32 in [0, 1], or uint8 / uint16 pixels (`read_pixels`; kept as they are when not scaled,
        converted tile by tile)."""
        spec = self.tiles
        h, w = native.shape[:2]
        centers = None if self.tile_centers is None else self.tile_centers.for_image((h, w))
        scaled = resize_image(float_pixels(native), spec.scaled_hw(h, w)) if spec.scale != 1.0 else native
        return TiledImage(key, scaled, spec.grid(h, w), int(first_index), payload=native, centers=centers)

    def fit_tiled(self, items, on_tiles=None, bands=None, stream_out: list | None = None):
        """TiledMaps per item (TiledImage from `tiled_image`), in order, each as soon as its last tile
        is fitted. on_tiles(n): called after every engine chunk of n tiles (progress).

        bands: a function item -> sink with `recon(y0, rows)` and `heat(y0, rows)`: the image's maps
        then go to its sink in row bands, as soon as they are final, instead of whole (TiledMaps.heatmap
        / recon are None, TiledMaps.sink is the sink). heat rows are float32 (n, W), smoothed, with the
        same values `smooth_map` of the whole stitched map gives (`BandSmoother`); recon rows float32
        (n, W, 3); both in order, covering the image once (also when every tile diverged: the status
        says so). Memory per image: one tile row of sums and a few bands instead of H x W x 5 floats.
        With tiles.scale != 1 the maps must be resized back to the native size, which is not banded:
        the whole-image path runs and each sink gets its maps as one band. stream_out: the TileStream
        is appended to it (for its counters)."""
        from anounet_jax.data.tiling import TileStream, fit_tiled

        t = self.tiles.tile
        chunk = self.engine.chunk_size_for((t, t, 3))
        banded = bands is not None and self.tiles.scale == 1.0
        sigma = self.preset.maps.smoothing_sigma
        make = (lambda item: BandSmoother(item.grid.height, sigma, bands(item))) if banded else None
        stream = TileStream(items, chunk, recon=True, bands=make)
        if stream_out is not None:
            stream_out.append(stream)

        def fits(chunks):
            for idx, res in self.engine.iter_fit(chunks, self.seed):
                if on_tiles is not None:
                    on_tiles(len(idx))
                yield idx, res

        for s in fit_tiled(fits, None, chunk, stream=stream):
            maps = self._finish_tiled(s)
            s.heatmap = s.recon = None  # the unsmoothed map is not kept while the caller writes
            if banded:
                s.sink.close()
                maps.sink = s.sink.out
            elif bands is not None:  # scaled: the whole maps as one band
                maps.sink = bands(s.item)
                maps.sink.deviation = "none"  # the whole map was finished (maps.finish) already
                if maps.heatmap is not None:
                    maps.sink.recon(0, maps.recon)
                    maps.sink.heat(0, maps.heatmap)
                    maps.heatmap = maps.recon = None
            yield maps

    def _finish_tiled(self, s) -> TiledMaps:
        native = s.item.payload
        h, w = native.shape[:2]
        n = s.n_tiles
        heat = recon = None
        if s.all_diverged:
            status = STATUS_DIVERGED
        else:
            if s.sink is None:  # whole-image stitching (banded: the sink smoothed the rows)
                heat = resize_map(finish(s.heatmap, self.preset.maps), (h, w))
                recon = resize_map(s.recon, (h, w))
            status = STATUS_OK
            if s.diverged:
                sy, sx = s.item.grid.height / h, s.item.grid.width / w
                where = []
                for d in s.diverged[:3]:
                    y0, y1, x0, x1 = d.box
                    box = (int(y0 / sy), min(h, int(np.ceil(y1 / sy))), int(x0 / sx), min(w, int(np.ceil(x1 / sx))))
                    where.append(f"row {d.row} col {d.col} at y {box[0]}:{box[1]} x {box[2]}:{box[3]}")
                more = f"; {len(s.diverged) - 3} more" if len(s.diverged) > 3 else ""
                status = f"{STATUS_DIVERGED}: {len(s.diverged)} of {n} tiles ({'; '.join(where)}{more})"
        return TiledMaps(s.key, native, heat, recon, np.float32(s.loss_r), np.float32(s.loss_c), status, n)


def smoothing_radius(sigma: float) -> int:
    """Rows on each side that `maps.smooth` reads for one output row (scipy's kernel radius:
    int(4 sigma + 0.5), the filter truncated at 4 sigma)."""
    return int(4.0 * float(sigma) + 0.5)


class BandSmoother:
    """`smooth_map` of a map that arrives in row bands, sent on in row bands, with the same values.

    band(y0, heat, recon) takes the stitched rows y0..y0+n-1 (in order, covering 0..height-1; a
    TileStream sink). Output row y of a Gaussian of radius R reads input rows y-R..y+R (reflected at
    the image's top and bottom only), so once rows up to E are in, rows up to E - R are final: they
    are smoothed on a window reaching R rows above them (or the image top) and R below, and the
    window's own edges (reflected) touch only rows that are not kept. scipy computes each output
    value from the same inputs in the same order whatever the window, and `smooth_map`'s two cases
    agree away from NaN holes (the weight sum there is exactly 1), so every row equals the whole-image
    result. Sends out.recon(y0, rows) at once and out.heat(y0, rows) when smoothed. Holds at most
    2 R rows plus one band (max_rows). seconds: time spent smoothing."""

    def __init__(self, height: int, sigma: float, out):
        self.height, self.sigma, self.out = int(height), float(sigma), out
        self.radius = smoothing_radius(sigma)
        self.buf = np.zeros((0, 0), np.float32)  # raw rows [self.buf_top, self.buf_top + len(buf))
        self.buf_top = 0
        self.done = 0  # rows 0..done-1 were sent smoothed
        self.seconds = 0.0
        self.max_rows = 0  # the most raw rows held at once

    def band(self, y0: int, heat: np.ndarray, recon: np.ndarray | None = None) -> None:
        import time

        t0 = time.perf_counter()
        if recon is not None:
            self.out.recon(y0, recon)
        if y0 != self.buf_top + len(self.buf):
            raise AssertionError(f"band at row {y0}, expected row {self.buf_top + len(self.buf)}")
        self.buf = np.concatenate([self.buf, heat]) if len(self.buf) else np.asarray(heat, np.float32)
        self.max_rows = max(self.max_rows, len(self.buf))
        end = y0 + len(heat)
        upto = self.height if end >= self.height else end - self.radius
        if upto > self.done:
            a = max(0, self.done - self.radius)
            window = self.buf[a - self.buf_top:]
            smoothed = smooth_map(window, self.sigma)
            rows = smoothed[self.done - a:upto - a]
            t1 = time.perf_counter()
            self.out.heat(self.done, rows)
            t0 += time.perf_counter() - t1
            self.done = upto
            cut = max(0, self.done - self.radius) - self.buf_top
            if cut > 0:
                self.buf = self.buf[cut:].copy()
                self.buf_top += cut
        self.seconds += time.perf_counter() - t0

    def close(self) -> None:
        if self.done != self.height:
            raise AssertionError(f"{self.done} of {self.height} rows smoothed")


# ---------------------------------------------------------------------------------------- sources
class NativeImages:
    """Native-size access to the images of a score source (for tiling): `size(i)` -> (H, W) or None
    (from the file header only, for folders), `load(i)` -> float32 (H, W, 3) in [0, 1] (io.py's
    conversions: grayscale and 16-bit to RGB, alpha composited over black) or AnoUnetError naming
    the file."""

    def __init__(self, paths=None, arrays=None):
        self.paths, self.arrays = paths, arrays

    def __len__(self):
        return len(self.paths if self.paths is not None else self.arrays)

    def size(self, i: int) -> tuple[int, int] | None:
        if self.arrays is not None:
            return tuple(np.shape(self.arrays[i])[:2])
        from anounet_jax.data.io import image_size

        try:
            return image_size(self.paths[i])
        except AnoUnetError:
            return None

    def load(self, i: int) -> np.ndarray:
        if self.arrays is not None:
            return np.asarray(self.arrays[i], np.float32)
        from anounet_jax.data.io import load_image

        return load_image(self.paths[i])

    def load_pixels(self, i: int) -> np.ndarray:
        """Like `load`, in the file's own type (uint8 / uint16, `io.read_pixels`): float_pixels of it is
        `load(i)`. A quarter of the memory for 8-bit files."""
        if self.arrays is not None:
            return np.asarray(self.arrays[i], np.float32)
        from anounet_jax.data.io import read_pixels

        return read_pixels(self.paths[i])


def _float_image(x) -> np.ndarray:
    a = np.asarray(x)
    a = a.astype(np.float32) / np.float32(255.0) if a.dtype == np.uint8 else np.asarray(a, np.float32)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise AnoUnetError(f"images must be (H, W, 3), got {a.shape}")
    return a


def open_score_source(inputs, model: "ScoringModel", recursive: bool = False):
    """(source, natives): the chunked source of the images at the preset's size (for the f-Net score
    and the resize path) and, when tiling, their native pixels (NativeImages; else None). Arrays may
    then be of any size: one (N, H, W, 3) array or a list of (H, W, 3) arrays of different sizes."""
    import os

    from anounet_jax.data.sources import ArraySource, FolderSource, open_source
    from anounet_jax.data.types import ImageSet

    size = model.image_size
    if model.tiles is None or isinstance(inputs, (ImageSet, str, os.PathLike)):
        source = open_source(inputs, size, model.preset, recursive)
        if model.tiles is None:
            return source, None
        if isinstance(source, FolderSource):
            return source, NativeImages(paths=source.folder.paths)
        return source, NativeImages(arrays=source.images)
    if isinstance(inputs, np.ndarray) and inputs.ndim == 3:
        inputs = inputs[None]
    natives = [_float_image(x) for x in inputs]
    scoring = np.stack([resize_image(x, (size, size)) for x in natives]) if natives else \
        np.zeros((0, size, size, 3), np.float32)
    return ArraySource(scoring, None, size), NativeImages(arrays=natives)


def ids_digest(ids) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()

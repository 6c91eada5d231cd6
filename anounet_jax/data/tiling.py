"""Native resolution by tiling: cut an image of any H x W into overlapping tiles, stitch tile maps back.

The engine fits one U-Net per row of a chunk; here a row is a tile, so one large image becomes many
independent fits and its heatmap comes back at the image's own size. Pure numpy (Pillow only for
resizing); nothing here knows about JAX.

Grid (`tile_grid`). Along an axis of length L, tiles of size T start at 0, S, 2S, ... and the last one
is shifted to start at L - T, so it ends exactly at the border: every pixel is covered, no tile sticks
out, and two neighbours overlap by at least T - S pixels (more where the last one was shifted). The
default stride is T // 2. A stride <= 0 or > T is an `AnoUnetError` (a stride above T would leave
gaps).

Images smaller than the tile. A side shorter than T is **padded by reflection** (numpy "reflect",
repeated for sides much shorter than T) at the bottom / right up to T; the tile map is cropped back to
the image, so the map has the image's own size. Nothing is refused; a one-pixel-high strip becomes
its own mirror image. (`--scale` upsamples small images instead, if that is wanted.)

Stitching (`Accumulator`, `stitch`). Each tile map is weighted by a separable window
w(y, x) = v(y) v(x), v(t) = floor + (1 - floor) sin^2(pi (t + 0.5) / T), which falls from 1 in the
middle to `floor` (0.01) at the tile's edges; the image map is sum(w m) / sum(w) over the tiles that
cover a pixel. A pixel near one tile's edge is thus taken from the neighbour that sees it in its middle
(a U-Net reconstructs worst at its borders), a constant map stitches to the same constant (no seam),
and pixels at the image border, covered by edge pixels only, keep a positive weight.

Streaming (`TileStream`, `fit_tiled`). Images (any sizes, from any iterable, read lazily) are cut into
fixed-size chunks of tiles for `Engine.iter_fit`; tiles of consecutive images share chunks. Tile k of
an image gets the global index `first_index + k` (the engine's PRNG key for it), so results do not
depend on the chunk size; `first_index` defaults to a running tile counter, and a job that must give
the same keys whatever subset it fits passes per-image offsets. Results come back in order; an image's
stitched map is emitted as soon as its last tile is back, and its accumulator is dropped. Memory:
the chunk of tiles, ONE image accumulator (the image whose tiles continue into the next chunk; H x W
floats for the map and, with recon, 3 more per pixel, plus the weights) and the pixels of the images
that have tiles in the current chunk. No image ever has all its tiles, tile maps or U-Nets in memory.

Banded stitching (`TileStream(..., bands=...)`, `BandAccumulator`). Tiles go out in row-major order,
so once the last tile of tile row r is back, the pixel rows above tile row r + 1's start are final:
they are divided and handed to the image's sink as a band, and the accumulator keeps only the T rows
(one tile row) still open instead of the whole image. The bands hold exactly the values of the whole
image's stitch. Pixels may be kept as uint8 / uint16 (`float_pixels` converts each tile as it is
cut), so an image costs its file's bytes per pixel, not 12.

Diverged tiles. A tile whose fit went non-finite (`FitResult.diverged`) is left out of the weighted
sums, so it changes no neighbour, and is reported as a `DivergedTile` (image, tile row / column,
pixel box). Pixels that only diverged tiles cover are **NaN** in the stitched map (not filled from
neighbours: a hole is visible, an invented value is not); with the default overlap only pixels near
the image border can be covered by a single tile.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from anounet_jax.errors import AnoUnetError

WINDOW_FLOOR = 0.01
MAX_INDEX = 2 ** 32  # the engine folds tile indices into PRNG keys as uint32


# ---------------------------------------------------------------------------------------- the grid
def check_tiling(tile: int, stride: int | None = None, scale: float = 1.0) -> tuple[int, int, float]:
    """(tile, stride, scale) checked; stride None or 0 -> tile // 2. One-line AnoUnetError otherwise."""
    tile = int(tile)
    if tile <= 0:
        raise AnoUnetError(f"tile size must be a positive number of pixels, got {tile}")
    stride = max(1, tile // 2) if stride is None or stride == 0 else int(stride)
    if stride <= 0 or stride > tile:
        raise AnoUnetError(f"tile stride must be in 1..{tile} (the tile size; a larger stride leaves pixels "
                           f"uncovered), got {stride}")
    scale = float(scale)
    if not (np.isfinite(scale) and scale > 0):
        raise AnoUnetError(f"tiling scale must be a positive number, got {scale!r}")
    return tile, stride, scale


def positions(length: int, tile: int, stride: int) -> tuple[int, ...]:
    """Tile starts along one axis: 0, stride, 2*stride, ..., and length - tile (the last tile ends at
    the border). One tile at 0 when length <= tile (the image is padded up to the tile)."""
    if length <= tile:
        return (0,)
    n = -(-(length - tile) // stride) + 1
    return tuple(i * stride for i in range(n - 1)) + (length - tile,)


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one image (height x width) lie. Tile k is at row k // cols, column k % cols;
    its top-left corner is (ys[row], xs[col]) in the image padded to `padded_hw`."""

    height: int
    width: int
    tile: int
    stride: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def rows(self) -> int:
        return len(self.ys)

    @property
    def cols(self) -> int:
        return len(self.xs)

    @property
    def n_tiles(self) -> int:
        return len(self.ys) * len(self.xs)

    @property
    def padded_hw(self) -> tuple[int, int]:
        return max(self.height, self.tile), max(self.width, self.tile)

    def position(self, k: int) -> tuple[int, int]:
        """(row, column) of tile k."""
        return divmod(int(k), self.cols)

    def corner(self, k: int) -> tuple[int, int]:
        r, c = self.position(k)
        return self.ys[r], self.xs[c]

    def box(self, k: int) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1): the image pixels tile k covers (padding left out)."""
        y, x = self.corner(k)
        return y, min(y + self.tile, self.height), x, min(x + self.tile, self.width)


def tile_grid(height: int, width: int, tile: int, stride: int | None = None) -> TileGrid:
    """The grid of `tile` x `tile` tiles over a height x width image (see the module docstring)."""
    tile, stride, _ = check_tiling(tile, stride)
    height, width = int(height), int(width)
    if height <= 0 or width <= 0:
        raise AnoUnetError(f"image size must be positive, got {height}x{width}")
    return TileGrid(height, width, tile, stride, positions(height, tile, stride), positions(width, tile, stride))


def scaled_hw(height: int, width: int, scale: float) -> tuple[int, int]:
    """The size an image is resized to before tiling (aspect ratio kept, rounded, at least 1)."""
    if scale == 1.0:
        return int(height), int(width)
    return max(1, int(np.floor(height * scale + 0.5))), max(1, int(np.floor(width * scale + 0.5)))


@dataclasses.dataclass(frozen=True)
class TileSpec:
    """How images are tiled: tile size, stride and the pre-scale factor (see `check_tiling`)."""

    tile: int
    stride: int = 0
    scale: float = 1.0

    def __post_init__(self):
        tile, stride, scale = check_tiling(self.tile, self.stride, self.scale)
        object.__setattr__(self, "stride", stride)
        object.__setattr__(self, "scale", scale)

    def scaled_hw(self, height: int, width: int) -> tuple[int, int]:
        return scaled_hw(height, width, self.scale)

    def grid(self, height: int, width: int) -> TileGrid:
        """The grid over an image of this NATIVE size (after the scale)."""
        return tile_grid(*self.scaled_hw(height, width), self.tile, self.stride)

    def n_tiles(self, height: int, width: int) -> int:
        return self.grid(height, width).n_tiles


def tile_offsets(sizes: Iterable[tuple[int, int] | None], spec: TileSpec) -> np.ndarray:
    """int64 (N + 1,): first global tile index of each image when every image's tiles are numbered
    one after the other (an image of unknown size, None, gets none). Gives every tile of a job a
    unique index that does not depend on which images are fitted, in which chunks or processes."""
    counts = [0 if hw is None else spec.n_tiles(*hw) for hw in sizes]
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    if offsets[-1] > MAX_INDEX:
        raise AnoUnetError(f"{offsets[-1]} tiles in one job exceed the engine's 2**32 tile indices; "
                           f"split the input or use a larger stride or a smaller scale")
    return offsets


# ---------------------------------------------------------------------------------------- cutting
def pad_to_grid(image: np.ndarray, grid: TileGrid) -> np.ndarray:
    """The image reflect-padded at the bottom / right to grid.padded_hw (itself when no padding)."""
    ph, pw = grid.padded_hw
    h, w = image.shape[:2]
    if (h, w) != (grid.height, grid.width):
        raise AnoUnetError(f"image is {h}x{w}, the tile grid was made for {grid.height}x{grid.width}")
    if (ph, pw) == (h, w):
        return image
    pad = [(0, ph - h), (0, pw - w)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, pad, mode="reflect")


def cut(image: np.ndarray, grid: TileGrid, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Tiles start..stop-1 of `image` (H, W[, C]) as one array (n, T, T[, C]), same dtype."""
    padded = pad_to_grid(np.asarray(image), grid)
    stop = grid.n_tiles if stop is None else stop
    t = grid.tile
    out = np.empty((max(stop - start, 0), t, t, *padded.shape[2:]), padded.dtype)
    for j, k in enumerate(range(start, stop)):
        y, x = grid.corner(k)
        out[j] = padded[y:y + t, x:x + t]
    return out


def float_pixels(pixels: np.ndarray) -> np.ndarray:
    """float32 pixels in [0, 1] from an image's stored pixels, exactly as `data.io.load_image` converts
    them: uint8 * (1 / 255), uint16 * (1 / 65535) clipped to [0, 1], anything else as float32. Lets an
    image be kept in its 1 or 2 bytes per value and converted one tile or row band at a time."""
    a = np.asarray(pixels)
    if a.dtype == np.uint8:
        return a.astype(np.float32) * np.float32(1.0 / 255.0)
    if a.dtype.kind == "u" and a.dtype.itemsize == 2:
        return np.clip(a.astype(np.float32) * np.float32(1.0 / 65535.0), 0.0, 1.0)
    return np.asarray(a, np.float32)


def window(tile: int, floor: float = WINDOW_FLOOR) -> np.ndarray:
    """float32 (T, T): the stitching weight of each tile pixel (separable Hann with a floor)."""
    t = (np.arange(tile, dtype=np.float64) + 0.5) / tile
    v = floor + (1.0 - floor) * np.sin(np.pi * t) ** 2
    return np.outer(v, v).astype(np.float32)


# ---------------------------------------------------------------------------------------- stitching
class Accumulator:
    """The weighted sums of one image's tile maps (and, with `channels`, its reconstructions)."""

    def __init__(self, grid: TileGrid, channels: int = 0, floor: float = WINDOW_FLOOR):
        self.grid = grid
        self.weight = window(grid.tile, floor)
        ph, pw = grid.padded_hw
        self.num = np.zeros((ph, pw), np.float32)
        self.den = np.zeros((ph, pw), np.float32)
        self.rnum = np.zeros((ph, pw, channels), np.float32) if channels else None
        self.rows = ph  # pixel rows held

    def add(self, k: int, heat: np.ndarray, recon: np.ndarray | None = None) -> None:
        y, x = self.grid.corner(k)
        t = self.grid.tile
        self.num[y:y + t, x:x + t] += self.weight * heat
        self.den[y:y + t, x:x + t] += self.weight
        if self.rnum is not None:
            self.rnum[y:y + t, x:x + t] += self.weight[:, :, None] * recon

    def result(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(heat (H, W), recon (H, W, C) or None), NaN where no tile was added; computed in place (the
        accumulator is spent afterwards)."""
        h, w = self.grid.height, self.grid.width
        covered = self.den > 0
        np.divide(self.num, self.den, out=self.num, where=covered)
        self.num[~covered] = np.nan
        recon = None
        if self.rnum is not None:
            np.divide(self.rnum, self.den[:, :, None], out=self.rnum, where=covered[:, :, None])
            self.rnum[~covered] = np.nan
            recon = self.rnum[:h, :w]
        heat = self.num[:h, :w]
        self.den = None
        return heat, recon


class BandAccumulator:
    """`Accumulator` for tiles that come back in row-major order, holding one tile row of pixels.

    Once the last tile of tile row r is added, no later tile covers the pixel rows above the next tile
    row's start ys[r + 1] (the image's bottom after the last row): `row_done(r)` divides those rows
    exactly as `Accumulator.result` does (the same float32 sums, added in the same tile order) and
    returns them as a band, then shifts the buffer so that it starts at ys[r + 1]. The buffer is T
    (tile) rows high: the rows tile row r + 1 adds to, [ys[r + 1], ys[r + 1] + T), include what is left
    open of row r. Tiles must be added in tile order (`add` refuses a tile outside the buffer)."""

    def __init__(self, grid: TileGrid, channels: int = 0, floor: float = WINDOW_FLOOR):
        self.grid = grid
        self.weight = window(grid.tile, floor)
        t, pw = grid.tile, grid.padded_hw[1]
        self.rows = t  # pixel rows held
        self.top = 0  # image row of buffer row 0; rows above it were returned by row_done
        self.num = np.zeros((t, pw), np.float32)
        self.den = np.zeros((t, pw), np.float32)
        self.rnum = np.zeros((t, pw, channels), np.float32) if channels else None

    def add(self, k: int, heat: np.ndarray, recon: np.ndarray | None = None) -> None:
        y, x = self.grid.corner(k)
        y -= self.top
        t = self.grid.tile
        if y < 0 or y + t > self.rows:
            raise AssertionError(f"tile {k} (rows {y + self.top}..{y + self.top + t - 1}) is outside the open "
                                 f"rows {self.top}..{self.top + self.rows - 1}: tiles out of order")
        self.num[y:y + t, x:x + t] += self.weight * heat
        self.den[y:y + t, x:x + t] += self.weight
        if self.rnum is not None:
            self.rnum[y:y + t, x:x + t] += self.weight[:, :, None] * recon

    def row_done(self, r: int) -> tuple[int, np.ndarray, np.ndarray | None] | None:
        """(y0, heat (n, W), recon (n, W, C) or None): the image rows y0..y0+n-1 that tile row r made
        final (NaN where no tile was added; padding cropped), or None when they are all padding."""
        g = self.grid
        last = r + 1 >= g.rows
        stop = g.padded_hw[0] if last else g.ys[r + 1]
        n = stop - self.top
        y0, keep = self.top, min(stop, g.height) - self.top
        band = None
        if keep > 0:
            w = g.width
            den = self.den[:keep, :w]
            covered = den > 0
            heat = np.full((keep, w), np.nan, np.float32)
            np.divide(self.num[:keep, :w], den, out=heat, where=covered)
            recon = None
            if self.rnum is not None:
                recon = np.full((keep, w, self.rnum.shape[2]), np.nan, np.float32)
                np.divide(self.rnum[:keep, :w], den[:, :, None], out=recon, where=covered[:, :, None])
            band = (y0, heat, recon)
        if not last:  # shift the open rows to the top of the buffer
            for a in (self.num, self.den, self.rnum):
                if a is not None:
                    a[:self.rows - n] = a[n:]
                    a[self.rows - n:] = 0
        self.top = stop
        return band


def stitch(maps: np.ndarray, grid: TileGrid, valid: np.ndarray | None = None,
           floor: float = WINDOW_FLOOR) -> np.ndarray:
    """Eager stitching: tile maps (n_tiles, T, T[, C]) -> (H, W[, C]); `valid` (n_tiles,) bool leaves
    tiles out (their pixels NaN where nothing else covers them)."""
    maps = np.asarray(maps, np.float32)
    if len(maps) != grid.n_tiles:
        raise AnoUnetError(f"{len(maps)} tile maps for a grid of {grid.n_tiles} tiles")
    channels = maps.shape[3] if maps.ndim == 4 else 0
    acc = Accumulator(grid, channels, floor)
    for k in range(grid.n_tiles):
        if valid is None or valid[k]:
            if channels:
                acc.add(k, np.zeros(maps.shape[1:3], np.float32), maps[k])
            else:
                acc.add(k, maps[k])
    heat, recon = acc.result()
    return recon if channels else heat


# ---------------------------------------------------------------------------------------- streaming
@dataclasses.dataclass
class TiledImage:
    """One image for the tile stream. image: (H, W, C), the pixels the tiles are cut from (already scaled):
    float32 in [0, 1], or uint8 / uint16 converted one tile at a time by `float_pixels`; grid: its TileGrid; first_index: global index of its tile 0 (None: the running counter);
    key / payload: anything the caller wants back with the stitched map (an id, the native image)."""

    key: Any
    image: np.ndarray
    grid: TileGrid
    first_index: int | None = None
    payload: Any = None
    # (n_tiles, D): each tile's own C (tiles.center "position", fnet/tile_centers.py); None: the engine's C
    centers: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class DivergedTile:
    key: Any  # the image's key
    row: int
    col: int
    box: tuple[int, int, int, int]  # (y0, y1, x0, x1) in the tiled (scaled) image
    index: int  # global tile index

    def describe(self) -> str:
        y0, y1, x0, x1 = self.box
        return f"row {self.row} col {self.col} at y {y0}:{y1} x {x0}:{x1}"


@dataclasses.dataclass
class StitchedImage:
    """An image's stitched results. heatmap: float32 (H, W) raw |x - G(x)| (NaN where only diverged tiles
    lie); recon: float32 (H, W, 3) or None; loss_r / loss_c: mean of its healthy tiles' final losses
    (NaN if none); diverged: its diverged tiles, in tile order."""

    item: TiledImage
    heatmap: np.ndarray | None
    recon: np.ndarray | None
    loss_r: float
    loss_c: float
    diverged: list[DivergedTile]
    sink: Any = None  # banded stream: the image's sink, which got its rows (heatmap and recon are None)

    @property
    def key(self):
        return self.item.key

    @property
    def n_tiles(self) -> int:
        return self.item.grid.n_tiles

    @property
    def all_diverged(self) -> bool:
        return len(self.diverged) == self.n_tiles


class _Entry:
    __slots__ = ("item", "first", "received", "acc", "sums", "diverged", "sink")

    def __init__(self, item: TiledImage, first: int):
        self.item, self.first = item, first
        self.received = 0
        self.acc = None
        self.sink = None
        self.sums = [0.0, 0.0, 0]  # loss_r, loss_c, healthy tiles
        self.diverged: list[DivergedTile] = []


class TileStream:
    """Images -> fixed-size (indices, tiles) chunks -> (after the fits) stitched images, in order.

        stream = TileStream(images, chunk_size)
        for indices, result in engine.iter_fit(stream.chunks(), seed):
            for stitched in stream.add(indices, result):
                ...                       # one StitchedImage as soon as its last tile is back
        stream.close()                    # every tile sent came back

    `images` is consumed lazily: the next image is only taken when a chunk needs its tiles. Chunks
    hold exactly `chunk_size` tiles (the last fewer). recon: also stitch the reconstructions.

    Banded (`bands`, a function TiledImage -> sink): an image is stitched in row bands instead of
    whole. Each image gets a `BandAccumulator` (one tile row of pixels, not the image) and a sink,
    `bands(item)`; as soon as the last tile of a tile row is back, the pixel rows it made final go to
    `sink.band(y0, heat, recon)` (heat float32 (n, W) with NaN holes, recon (n, W, C) or None), in
    order, covering rows 0..H-1 exactly once, the same values `Accumulator.result` gives. The emitted
    StitchedImage then has heatmap = recon = None and `sink` set. Rows are sent even when every tile
    of the image diverged (all NaN): the sink learns that from the StitchedImage.

    Counters for tests and benchmarks: live_accumulators / max_live_accumulators, max_accumulator_rows
    (pixel rows held by the largest accumulator), max_in_flight (images with tiles out), cut_seconds,
    stitch_seconds, sink_seconds (time in the sinks' band calls, not in stitch_seconds).
    """

    def __init__(self, images: Iterable[TiledImage], chunk_size: int, recon: bool = True,
                 floor: float = WINDOW_FLOOR, first_index: int = 0,
                 bands: Callable[[TiledImage], Any] | None = None):
        if int(chunk_size) <= 0:
            raise AnoUnetError(f"chunk size must be positive, got {chunk_size}")
        self._images = iter(images)
        self.chunk_size = int(chunk_size)
        self.recon = recon
        self.floor = floor
        self._counter = int(first_index)
        self._sent: deque = deque()  # (entry, k) per tile sent and not yet back, in order
        self._entries: deque = deque()  # images with tiles out or still to be cut, in order
        self.bands = bands
        self.live_accumulators = self.max_live_accumulators = 0
        self.max_accumulator_rows = 0
        self.max_in_flight = 0
        self.cut_seconds = self.stitch_seconds = self.sink_seconds = 0.0
        self.images_emitted = 0

    # -- cutting
    def _next_entry(self) -> _Entry | None:
        try:
            item = next(self._images)
        except StopIteration:
            return None
        if not isinstance(item, TiledImage):
            raise TypeError(f"TileStream takes TiledImage items, got {type(item).__name__}")
        first = self._counter if item.first_index is None else int(item.first_index)
        if first < 0 or first + item.grid.n_tiles > MAX_INDEX:
            raise AnoUnetError(f"tile indices {first}..{first + item.grid.n_tiles - 1} are outside 0..2**32-1")
        self._counter = first + item.grid.n_tiles
        if item.centers is not None and len(item.centers) != item.grid.n_tiles:
            raise AnoUnetError(f"image {item.key!r}: {len(item.centers)} per-tile centers for "
                               f"{item.grid.n_tiles} tiles")
        entry = _Entry(item, first)
        self._entries.append(entry)
        self.max_in_flight = max(self.max_in_flight, len(self._entries))
        return entry

    def chunks(self) -> Iterator[tuple]:
        """(indices int64 (n,), tiles float32 (n, T, T, C)) with n = chunk_size (the last chunk fewer);
        when the images carry per-tile centers (`TiledImage.centers`), (indices, tiles, centers (n, D))."""
        entry, k = None, 0
        with_centers = None
        while True:
            t0 = time.perf_counter()
            idx, parts, n, cparts = [], [], 0, []
            while n < self.chunk_size:
                if entry is None or k >= entry.item.grid.n_tiles:
                    entry, k = self._next_entry(), 0
                    if entry is None:
                        break
                    padded = pad_to_grid(np.asarray(entry.item.image), entry.item.grid)
                    tile = entry.item.grid.tile
                    if parts and parts[0].shape[1:] != (tile, tile, padded.shape[2]):
                        raise AnoUnetError(f"image {entry.item.key!r} is cut into {tile}x{tile} tiles, "
                                           f"the stream's other tiles are {parts[0].shape[1]}x{parts[0].shape[2]}")
                take = min(self.chunk_size - n, entry.item.grid.n_tiles - k)
                if with_centers is None:
                    with_centers = entry.item.centers is not None
                if with_centers != (entry.item.centers is not None):
                    raise AnoUnetError(f"image {entry.item.key!r}: either every image of a tile stream has "
                                       f"per-tile centers or none has")
                if with_centers:
                    cparts.append(np.asarray(entry.item.centers[k:k + take], np.float32))
                block = np.empty((take, tile, tile, padded.shape[2]), np.float32)
                for j in range(take):
                    y, x = entry.item.grid.corner(k + j)
                    block[j] = float_pixels(padded[y:y + tile, x:x + tile])
                    self._sent.append((entry, k + j))
                idx.extend(range(entry.first + k, entry.first + k + take))
                parts.append(block)
                k += take
                n += take
            if entry is not None and k >= entry.item.grid.n_tiles:
                padded = None  # the last image's pixels stay with its entry only
            self.cut_seconds += time.perf_counter() - t0
            if not n:
                return
            tiles = parts[0] if len(parts) == 1 else np.concatenate(parts)
            if with_centers:
                yield np.asarray(idx, np.int64), tiles, np.concatenate(cparts)
            else:
                yield np.asarray(idx, np.int64), tiles

    # -- stitching
    def add(self, indices, result) -> Iterator[StitchedImage]:
        """Take one FitResult for the next len(indices) tiles sent; yield the images it completes."""
        t0 = time.perf_counter()
        indices = np.asarray(indices)
        for j, g in enumerate(indices.tolist()):
            if not self._sent:
                raise AssertionError(f"result for tile index {g}, but no tile is out")
            entry, k = self._sent.popleft()
            if entry.first + k != g:
                raise AssertionError(f"results out of order: got tile index {g}, expected {entry.first + k}")
            grid = entry.item.grid
            healthy = not bool(result.diverged[j])
            if entry.acc is None and (healthy or self.bands is not None):
                self._open(entry)
            if not healthy:
                r, c = grid.position(k)
                entry.diverged.append(DivergedTile(entry.item.key, r, c, grid.box(k), g))
            else:
                entry.acc.add(k, result.heatmap[j], result.recon[j] if self.recon else None)
                entry.sums[0] += float(result.loss_r[j])
                entry.sums[1] += float(result.loss_c[j])
                entry.sums[2] += 1
            if self.bands is not None and (k + 1) % grid.cols == 0:  # tile row k // cols is complete
                band = entry.acc.row_done(k // grid.cols)
                if band is not None:
                    t1 = time.perf_counter()
                    entry.sink.band(*band)
                    t2 = time.perf_counter()
                    self.sink_seconds += t2 - t1
                    t0 += t2 - t1
            entry.received += 1
            if entry.received == grid.n_tiles:
                if self._entries[0] is not entry:
                    raise AssertionError("images completed out of order")
                self._entries.popleft()
                done = self._finish(entry)
                self.stitch_seconds += time.perf_counter() - t0
                yield done
                del done
                t0 = time.perf_counter()
        self.stitch_seconds += time.perf_counter() - t0

    def _open(self, entry: _Entry) -> None:
        grid, channels = entry.item.grid, 3 if self.recon else 0
        if self.bands is not None:
            entry.acc = BandAccumulator(grid, channels, self.floor)
            entry.sink = self.bands(entry.item)
        else:
            entry.acc = Accumulator(grid, channels, self.floor)
        self.live_accumulators += 1
        self.max_live_accumulators = max(self.max_live_accumulators, self.live_accumulators)
        self.max_accumulator_rows = max(self.max_accumulator_rows, entry.acc.rows)

    def _finish(self, entry: _Entry) -> StitchedImage:
        heat = recon = None
        if entry.acc is not None:
            if self.bands is None:
                heat, recon = entry.acc.result()
            entry.acc = None
            self.live_accumulators -= 1
        n = entry.sums[2]
        lr, lc = (entry.sums[0] / n, entry.sums[1] / n) if n else (float("nan"), float("nan"))
        self.images_emitted += 1
        return StitchedImage(entry.item, heat, recon, lr, lc, entry.diverged, entry.sink)

    def close(self) -> None:
        """Check that every tile sent came back (a stream abandoned half-way raises)."""
        if self._sent:
            entry, k = self._sent[0]
            raise AssertionError(f"{len(self._sent)} tiles never came back (first: image {entry.item.key!r} "
                                 f"tile {k})")


def fit_tiled(fit_chunks: Callable[[Iterable], Iterator], images: Iterable[TiledImage], chunk_size: int,
              recon: bool = True, stream: TileStream | None = None) -> Iterator[StitchedImage]:
    """Stitched images, in input order, from `fit_chunks` (e.g. `lambda c: engine.iter_fit(c, seed)`),
    which turns (indices, tiles) chunks into (indices, FitResult) pieces in the same order."""
    stream = stream or TileStream(images, chunk_size, recon)
    for idx, res in fit_chunks(stream.chunks()):
        yield from stream.add(idx, res)
    stream.close()


# ---------------------------------------------------------------------------------------- resizing
def resize_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """float32 (H, W, C) in [0, 1] resized to hw = (height, width) with Pillow's bicubic filter per
    channel (antialiased when shrinking), clipped to [0, 1]."""
    from PIL import Image

    x = np.asarray(image, np.float32)
    if x.shape[:2] == tuple(hw):
        return x
    size = (int(hw[1]), int(hw[0]))
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(x[:, :, c])).resize(size, Image.Resampling.BICUBIC))
             for c in range(x.shape[2])]
    return np.clip(np.stack(chans, axis=2), 0.0, 1.0).astype(np.float32, copy=False)


def resize_map(m: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """float32 (H, W) or (H, W, C) map resized to hw with Pillow's bilinear filter (no overshoot); NaN
    pixels stay NaN (nearest-neighbour) and do not bleed into their neighbours."""
    from PIL import Image

    m = np.asarray(m, np.float32)
    if m.shape[:2] == tuple(hw):
        return m
    if m.ndim == 3:
        return np.stack([resize_map(m[:, :, c], hw) for c in range(m.shape[2])], axis=2)
    size = (int(hw[1]), int(hw[0]))

    def resize(a):
        return np.array(Image.fromarray(a.astype(np.float32)).resize(size, Image.Resampling.BILINEAR), np.float32)

    nan = np.isnan(m)
    if not nan.any():
        return resize(m)
    # normalized interpolation: the holes' neighbours are averaged over valid pixels only
    num, den = resize(np.where(nan, 0.0, m)), resize(~nan)
    out = np.divide(num, den, out=np.full_like(num, np.nan), where=den > 1e-6)
    holes = np.asarray(Image.fromarray(nan.astype(np.uint8)).resize(size, Image.Resampling.NEAREST)) != 0
    out[holes] = np.nan
    return out

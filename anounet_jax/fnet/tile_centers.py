"""C on tiles: one global center, or one center per tile position (tiles.center).

With tiling, L_C compares a tile's reconstruction with C. For a texture every tile shows the same
kind of thing and one global C (the mean f-Net feature of normal tiles) is right. For an aligned
object (a board or a bottle seen by the same camera) what is normal depends on where the tile is:
bare plate is normal at one place and a missing part at another. `position_centers` gives tile k of
the grid its own center, the mean f-Net feature of tile k over the normal images (which must have the
test images' size, so that tile k shows the same place). The fit then pulls each tile toward what
normally lies there (`Engine.iter_fit` with per-tile centers), and `tile_distances` scores a tile by
its own distance, mean|f(tile) - C_k| (L_C's measure), whose maximum over an image's tiles is the
f-Net's image score.

L_C's unit (lc_scale "normal") stays the f-Net's feature scale from training: per-position centers
sit closer to their few normal tiles than to new ones, so an in-sample scale would inflate beta.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from anounet_jax.data.tiling import TileGrid, cut
from anounet_jax.errors import AnoUnetError

CENTER_CHOICES = ("global", "position")


def check_center(kind: str) -> str:
    if kind not in CENTER_CHOICES:
        raise AnoUnetError(f"unknown tiles.center {kind!r}; use one of {', '.join(CENTER_CHOICES)}")
    return kind


def position_centers(fnet, images, grid: TileGrid) -> np.ndarray:
    """float32 (n_tiles, D): the mean f-Net feature of tile k over the normal `images` (each (H, W, 3)
    of the grid's size, already scaled); one image's tiles in memory at a time."""
    total, n = None, 0
    for x in images:
        if tuple(x.shape[:2]) != (grid.height, grid.width):
            raise AnoUnetError(f"tiles.center 'position' needs normal images of the test images' size "
                               f"({grid.height}x{grid.width}: tile k must show the same place), got one of "
                               f"{x.shape[0]}x{x.shape[1]}")
        f = np.asarray(fnet.features(cut(np.asarray(x, np.float32), grid)), np.float64)
        total = f if total is None else total + f
        n += 1
    if not n:
        raise AnoUnetError("tiles.center 'position' needs normal training images")
    return (total / n).astype(np.float32)


def tile_distances(fnet, tiles: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """float32 (n,): mean|f(tile_i) - centers_i| for tiles (n, T, T, 3) and their centers (n, D)."""
    feats = fnet.features(np.asarray(tiles, np.float32))
    return np.mean(np.abs(feats - np.asarray(centers, np.float32)), axis=1).astype(np.float32)


@dataclasses.dataclass
class TileCenters:
    """C per tile position as a checkpoint stores it: the centers (n_tiles, D) of the grid that
    (tile, stride, scale) make over images of native size `hw` = (height, width)."""

    centers: np.ndarray
    hw: tuple[int, int]
    tile: int
    stride: int
    scale: float

    def describe(self) -> dict:
        return {"native_hw": [int(v) for v in self.hw], "tile": int(self.tile), "stride": int(self.stride),
                "scale": float(self.scale)}

    @classmethod
    def from_description(cls, centers, d: dict) -> "TileCenters":
        return cls(np.asarray(centers, np.float32), tuple(int(v) for v in d["native_hw"]), int(d["tile"]),
                   int(d["stride"]), float(d["scale"]))

    def check_tiling(self, spec) -> None:
        """A one-line error unless `spec` (a TileSpec) is the tiling these centers were made for."""
        if (spec.tile, spec.stride, spec.scale) != (self.tile, self.stride, self.scale):
            raise AnoUnetError(f"the checkpoint's per-position centers were made for tiles of {self.tile} "
                               f"(stride {self.stride}, scale {self.scale}), not {spec.tile} (stride "
                               f"{spec.stride}, scale {spec.scale}); score with the checkpoint's tiling")

    def for_image(self, hw) -> np.ndarray:
        """The centers for an image of native size hw, or a one-line error (another size)."""
        if tuple(hw) != tuple(self.hw):
            raise AnoUnetError(f"image is {hw[0]}x{hw[1]}; the checkpoint's per-position centers "
                               f"(tiles.center 'position') are for {self.hw[0]}x{self.hw[1]} images")
        return self.centers

"""A plain folder of unlabelled images, for bulk scoring of many files.

`ImageFolder` is lazy: it lists the files once and decodes them chunk by chunk, so a folder of
100,000 images never has to fit in memory. `load_folder` is the eager variant for small folders.

Chunk convention (the bulk scoring job writes one row per file from it):

* Chunk ``k`` covers the folder positions ``[start + k*chunk_size, start + (k+1)*chunk_size)``
  (the last one may be shorter). Every position in that range appears **exactly once**, either in
  ``indices`` (it loaded) or in ``errors`` (it did not).
* ``indices``: int64 ``(n,)`` folder positions of the images that loaded, ascending.
* ``ids``: the ``n`` matching ids (paths relative to the root, ``/``-separated, with extension).
* ``images``: float32 ``(n, H, W, 3)`` in ``[0, 1]``, row ``j`` is ``indices[j]``. ``n`` may be 0 when
  every file of a chunk failed; the array then has shape ``(0, H, W, 3)``.
* ``errors``: ``{folder position: problem}`` for each file of the chunk that could not be used. The
  problem is the text of the `AnoUnetError` without the path (the path is ``folder.paths[i]``), e.g.
  ``"unreadable or truncated image (OSError: image file is truncated)"``. A bad file never stops the
  iteration.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from anounet_jax.data.io import Size, _map, image_size, list_images, load_image, load_images, normalize_size
from anounet_jax.data.types import ImageSet
from anounet_jax.errors import AnoUnetError


class Chunk(NamedTuple):
    """One chunk of an `ImageFolder`: see the module docstring for the exact convention."""

    indices: np.ndarray
    ids: list[str]
    images: np.ndarray
    errors: dict[int, str]


class ImageFolder:
    """Lazy source over the image files of ``root`` (sorted; see `list_images`).

    Args:
      root: the folder. Missing or without image files -> `AnoUnetError`.
      size: ``int`` or ``(height, width)`` every image is resized to. ``None`` keeps file sizes; then
        every image must have the size of the first file whose header can be read, and a file of
        another size is reported in a chunk's ``errors`` (or raised by `load`).
      recursive: also take images from subfolders (ids then contain ``sub/dir/name.png``).
      num_workers: decode with this many threads in `iter_chunks` (0 or 1: in the calling thread).
    """

    def __init__(self, root: str | os.PathLike, size: Size, recursive: bool = False, num_workers: int = 0):
        self.root = Path(root)
        self.size = normalize_size(size)
        self.recursive = recursive
        self.num_workers = int(num_workers)
        self.paths: list[Path] = list_images(self.root, recursive=recursive)
        self.ids: list[str] = [p.relative_to(self.root).as_posix() for p in self.paths]
        self._hw: tuple[int, int] | None = self.size

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"ImageFolder({str(self.root)!r}, size={self.size}, n={len(self)})"

    @property
    def image_hw(self) -> tuple[int, int] | None:
        """``(H, W)`` of every image this source yields (``None`` only if no header is readable)."""
        if self._hw is None:
            for p in self.paths:
                try:
                    self._hw = image_size(p)
                    break
                except AnoUnetError:
                    continue
        return self._hw

    def load(self, i: int) -> np.ndarray:
        """Image ``i`` as float32 ``(H, W, 3)``; raises `AnoUnetError` naming the file on failure."""
        path = self.paths[i]
        x = load_image(path, self.size)
        hw = self.image_hw
        if x.shape[:2] != hw:
            raise AnoUnetError(
                f"image is {x.shape[0]}x{x.shape[1]}, the other images are {hw[0]}x{hw[1]}; "
                "pass size= to resize them all",
                path,
            )
        return x

    def _try_load(self, i: int) -> np.ndarray | str:
        try:
            return self.load(i)
        except AnoUnetError as e:
            return e.problem

    def iter_chunks(self, chunk_size: int, start: int = 0) -> Iterator[Chunk]:
        """Yield `Chunk` ``(indices, ids, images, errors)`` over positions ``start, start+1, ...``.

        A file that cannot be read is reported in ``errors`` and left out of ``images``; iteration
        goes on. ``start`` lets a job resume after the last position it finished.
        """
        if chunk_size <= 0:
            raise AnoUnetError(f"chunk_size must be positive, got {chunk_size}")
        if not 0 <= start <= len(self):
            raise AnoUnetError(f"start must be in [0, {len(self)}], got {start}")
        for lo in range(start, len(self), chunk_size):
            positions = list(range(lo, min(lo + chunk_size, len(self))))
            results = _map(self._try_load, positions, self.num_workers)
            good = [(i, r) for i, r in zip(positions, results) if not isinstance(r, str)]
            errors = {i: r for i, r in zip(positions, results) if isinstance(r, str)}
            if good:
                images = np.stack([r for _, r in good])
            else:
                h, w = self.image_hw or (0, 0)
                images = np.zeros((0, h, w, 3), np.float32)
            yield Chunk(
                indices=np.array([i for i, _ in good], dtype=np.int64),
                ids=[self.ids[i] for i, _ in good],
                images=images,
                errors=errors,
            )


def load_folder(
    root: str | os.PathLike, size: Size, recursive: bool = False, num_workers: int = 0
) -> ImageSet:
    """Every image of ``root`` eagerly as an `ImageSet` (no labels, no masks).

    ids are the paths relative to ``root`` (as in `ImageFolder`). The first unreadable file raises
    `AnoUnetError` naming it; with ``size=None`` all files must share one size.
    """
    root = Path(root)
    paths = list_images(root, recursive=recursive)
    ids = [p.relative_to(root).as_posix() for p in paths]
    return load_images(paths, size, ids=ids, num_workers=num_workers)

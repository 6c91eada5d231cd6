"""Output files whose bytes depend only on their content, written by temp file + rename."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

from anounet_jax.errors import AnoUnetError

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `<path>.tmp`, then rename it over `path`: readers (and a resumed job) see the
    old file or the complete new one, never a part. A `.tmp` left by a killed job is overwritten by
    the next write of the same file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:  # disk full, permissions, a folder in the way: the user's to fix
        raise AnoUnetError(f"cannot write output file ({type(e).__name__}: {e})", path) from None


def open_npz_entry(zf: zipfile.ZipFile, name: str, nbytes: int):
    """A writable stream for the entry `name`.npy of an .npz being written (fixed timestamp, deflated;
    zip64 when the array is over 1 GiB). Its bytes may be written in any pieces: the compressed
    entry is the same."""
    info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    return zf.open(info, "w", force_zip64=nbytes > 2 ** 30)


def write_npz_entry(zf: zipfile.ZipFile, name: str, a: np.ndarray) -> None:
    with open_npz_entry(zf, name, a.nbytes) as out:
        np.lib.format.write_array(out, np.ascontiguousarray(a), allow_pickle=False)


def _write_npz(f, arrays: dict) -> None:
    with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, a in arrays.items():
            write_npz_entry(zf, name, a)


def npz_bytes(**arrays) -> bytes:
    """An .npz (np.load reads it) whose bytes depend only on the arrays: fixed zip timestamps."""
    buf = io.BytesIO()
    _write_npz(buf, arrays)
    return buf.getvalue()


def atomic_write_with(path: Path, write) -> None:
    """Like `atomic_write`, with the bytes written by `write(file)` into `<path>.tmp` (a file that is
    never whole in memory)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except OSError as e:
        raise AnoUnetError(f"cannot write output file ({type(e).__name__}: {e})", path) from None


def atomic_write_npz(path: Path, **arrays) -> None:
    """`atomic_write(path, npz_bytes(**arrays))` without holding the compressed file in memory (large
    native-size maps): the zip is written straight into `<path>.tmp`, then renamed."""
    atomic_write_with(path, lambda f: _write_npz(f, arrays))


def png_bytes(rgb_uint8: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb_uint8).save(buf, format="PNG")
    return buf.getvalue()

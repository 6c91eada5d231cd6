"""Reading image and mask files with Pillow into the project's array conventions.

Conventions (every loader in `anounet_jax.data` goes through these functions):

* **Images** come back as float32 ``(H, W, 3)`` in ``[0, 1]``:

  - ``RGB`` (and ``RGBX``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``): converted to RGB by Pillow, divided by 255.
  - ``L`` (8-bit grayscale) and ``1`` (bilevel): the gray channel is copied to R, G and B.
  - ``I;16`` / ``I;16B`` / ``I;16L`` (16-bit grayscale PNG/TIFF): divided by 65535 (full 16-bit precision
    is kept through the resize), copied to three channels.
  - ``I`` (32-bit integer; Pillow's mode for some 16-bit files): read as 16-bit data, divided by 65535
    and clipped to ``[0, 1]``.
  - ``RGBA``, ``LA``, ``PA`` and ``P`` with a transparent palette entry: **composited over black**
    (``rgb * alpha``), i.e. the image as it looks on a black background. Colours hidden under fully
    transparent pixels (often garbage) therefore never reach the model.
  - ``P`` (palette) without transparency: converted to RGB through its palette.
  - ``F`` (32-bit float) and other modes: rejected with `AnoUnetError` (no safe value range to assume).
  - 16-bit-per-channel *colour* PNGs are reduced to 8 bits by Pillow itself.

* **Resizing** (when ``size`` is given) uses Pillow's ``BICUBIC`` filter. Pillow widens the filter
  support by the scale factor when shrinking, so downscaling (1024 -> 256 for MVTec AD, 512 -> 128 for
  DAGM) averages over the covered area without aliasing, and upscaling (32 -> 96 for CIFAR-10) is smooth.
  The bicubic overshoot is clipped back to ``[0, 1]``. 8-bit images are resized in 8 bits (rounding error
  at most 1/510); 16-bit images are resized in float32.

* ``size`` is ``None`` (keep the file's size), an ``int`` (square ``size x size``) or a
  ``(height, width)`` tuple — height first, like the arrays, not Pillow's ``(width, height)``.

* **Masks** come back as bool ``(H, W)``: any nonzero pixel value (in any colour channel; an alpha
  channel is ignored, palette images are judged by their displayed colour) is a defect. Masks are resized
  with ``NEAREST`` so they stay binary.

* Every problem with a file (missing, not an image, truncated — the pixels are decoded eagerly with
  ``img.load()`` so truncation is caught here — unsupported mode, size mismatch) raises
  `AnoUnetError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from anounet_jax.data.types import ImageSet
from anounet_jax.errors import AnoUnetError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""File extensions `list_images` accepts (compared case-insensitively: ``.PNG`` counts)."""

Size = int | tuple[int, int] | None

_RESAMPLE = Image.Resampling.BICUBIC
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_TO_RGB = ("RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
_WITH_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")


# --------------------------------------------------------------------------------------------------
# sizes and opening
# --------------------------------------------------------------------------------------------------


def normalize_size(size: Size) -> tuple[int, int] | None:
    """``None`` -> ``None``; ``n`` -> ``(n, n)``; ``(h, w)`` -> ``(h, w)``. Non-positive sizes raise."""
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        hw = (int(size), int(size))
    else:
        try:
            h, w = size  # type: ignore[misc]
            hw = (int(h), int(w))
        except (TypeError, ValueError):
            raise AnoUnetError(f"size must be an int or a (height, width) pair, got {size!r}") from None
    if hw[0] <= 0 or hw[1] <= 0:
        raise AnoUnetError(f"size must be positive, got {size!r}")
    return hw


def _open_loaded(path: Path) -> Image.Image:
    """Open ``path`` and decode all its pixels now; any failure becomes an AnoUnetError."""
    try:
        img = Image.open(path)
    except FileNotFoundError:
        raise AnoUnetError("file not found", path) from None
    except IsADirectoryError:
        raise AnoUnetError("is a folder, not an image file", path) from None
    except PermissionError:
        raise AnoUnetError("permission denied", path) from None
    except UnidentifiedImageError:
        raise AnoUnetError("not an image file (Pillow cannot identify its format)", path) from None
    except Image.DecompressionBombError as e:
        raise AnoUnetError(f"image too large to open safely ({e})", path) from None
    except OSError as e:
        raise AnoUnetError(f"cannot open file ({e})", path) from None
    try:
        img.load()
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError, EOFError, ...
        img.close()
        raise AnoUnetError(f"unreadable or truncated image ({type(e).__name__}: {e})", path) from None
    return img


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` of an image file, read from its header only (no pixel decoding)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
    except FileNotFoundError:
        raise AnoUnetError("file not found", path) from None
    except UnidentifiedImageError:
        raise AnoUnetError("not an image file (Pillow cannot identify its format)", path) from None
    except Exception as e:  # noqa: BLE001
        raise AnoUnetError(f"cannot open file ({type(e).__name__}: {e})", path) from None
    return h, w


# --------------------------------------------------------------------------------------------------
# conversion
# --------------------------------------------------------------------------------------------------


def _resize_8bit(img: Image.Image, hw: tuple[int, int] | None) -> np.ndarray:
    if hw is not None and (img.height, img.width) != hw:
        img = img.resize((hw[1], hw[0]), _RESAMPLE)
    return np.asarray(img, dtype=np.float32) * np.float32(1.0 / 255.0)


def _resize_float(gray: np.ndarray, hw: tuple[int, int] | None) -> np.ndarray:
    if hw is not None and gray.shape != hw:
        gray = np.asarray(Image.fromarray(gray.astype(np.float32)).resize((hw[1], hw[0]), _RESAMPLE))
    return np.clip(gray, 0.0, 1.0).astype(np.float32, copy=False)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def _over_black(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(black, rgba).convert("RGB")


def _to_float_rgb(img: Image.Image, hw: tuple[int, int] | None, path: Path) -> np.ndarray:
    mode = img.mode
    if mode in _SIXTEEN_BIT or mode == "I":
        gray = np.asarray(img).astype(np.float32) * np.float32(1.0 / 65535.0)
        out = _gray_to_rgb(_resize_float(gray, hw))
    elif mode in ("L", "1"):
        out = _gray_to_rgb(_resize_8bit(img.convert("L"), hw))
    elif mode in _WITH_ALPHA or (mode == "P" and "transparency" in img.info):
        out = _resize_8bit(_over_black(img), hw)
    elif mode == "P" or mode in _TO_RGB:
        out = _resize_8bit(img if mode == "RGB" else img.convert("RGB"), hw)
    else:
        raise AnoUnetError(
            f"unsupported image mode {mode!r} (use 8- or 16-bit grayscale, RGB, RGBA or palette images)",
            path,
        )
    return out.astype(np.float32, copy=False)


def _mask_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "P":
        img = img.convert("RGB")
    elif mode in _WITH_ALPHA:
        img = img.convert("RGBA")
    a = np.asarray(img)
    if a.ndim == 3:
        a = (a[:, :, :3] if img.mode == "RGBA" else a).any(axis=2)  # colour channels only, not alpha
    return a != 0


def resize_mask(mask: np.ndarray, size: Size) -> np.ndarray:
    """Resize a bool ``(H, W)`` mask with nearest-neighbour sampling (stays binary)."""
    hw = normalize_size(size)
    mask = np.asarray(mask, dtype=bool)
    if hw is None or mask.shape == hw:
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * np.uint8(255))
    return np.asarray(img.resize((hw[1], hw[0]), Image.Resampling.NEAREST)) != 0


# --------------------------------------------------------------------------------------------------
# public loaders
# --------------------------------------------------------------------------------------------------


def read_image(path: str | os.PathLike, size: Size = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Like `load_image`, and also returns the file's original ``(height, width)`` before resizing."""
    path = Path(path)
    hw = normalize_size(size)
    img = _open_loaded(path)
    try:
        orig = (img.height, img.width)
        return _to_float_rgb(img, hw, path), orig
    except AnoUnetError:
        raise
    except Exception as e:  # noqa: BLE001 - a conversion Pillow cannot do is a problem with the file
        raise AnoUnetError(f"cannot convert image ({type(e).__name__}: {e})", path) from None
    finally:
        img.close()


def load_image(path: str | os.PathLike, size: Size = None) -> np.ndarray:
    """Read one image file as float32 ``(H, W, 3)`` in ``[0, 1]``, resized to ``size`` if given.

    See the module docstring for the mode conversions (grayscale and 16-bit replicated to RGB, alpha
    composited over black) and the resize filter (antialiased bicubic). Raises `AnoUnetError` naming
    the file if it is missing, not an image, truncated or of an unsupported mode.
    """
    return read_image(path, size)[0]


def read_mask(path: str | os.PathLike, size: Size = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Like `load_mask`, and also returns the file's original ``(height, width)`` before resizing."""
    path = Path(path)
    hw = normalize_size(size)
    img = _open_loaded(path)
    try:
        orig = (img.height, img.width)
        mask = _mask_array(img)
    except Exception as e:  # noqa: BLE001
        raise AnoUnetError(f"cannot read mask ({type(e).__name__}: {e})", path) from None
    finally:
        img.close()
    return resize_mask(mask, hw), orig


def _array_in_bands(img: Image.Image, band: int = 256) -> np.ndarray:
    """np.asarray(img), copied `band` rows at a time: Pillow's whole-image `tobytes` joins a list of
    chunks, a transient of twice the image's bytes on top of the array."""
    h, w = img.height, img.width
    out = None
    for y in range(0, h, band):
        part = np.asarray(img.crop((0, y, w, min(h, y + band))))
        if out is None:
            out = np.empty((h, *part.shape[1:]), part.dtype)
        out[y:y + len(part)] = part
    return out


def read_pixels(path: str | os.PathLike) -> np.ndarray:
    """One image file's pixels at its own size in the narrowest type that holds them: uint8 (H, W, 3)
    for 8-bit images, uint16 (H, W, 3) for 16-bit grayscale (grayscale as a read-only broadcast view
    of one plane: 1 or 2 bytes per pixel), float32 otherwise (mode "I"). `tiling.float_pixels` of
    it, or of any band of its rows, is exactly `load_image(path)` (the same conversions), so a large
    image can be kept at its file's bytes per pixel and converted where it is used. Same errors as
    `load_image`."""
    path = Path(path)
    img = _open_loaded(path)
    try:
        mode = img.mode
        if mode in _SIXTEEN_BIT:
            gray = _array_in_bands(img).astype(np.uint16, copy=False)
            return np.broadcast_to(gray[:, :, None], (*gray.shape, 3))
        if mode in ("L", "1"):
            gray = _array_in_bands(img.convert("L"))
            return np.broadcast_to(gray[:, :, None], (*gray.shape, 3))
        if mode in _WITH_ALPHA or (mode == "P" and "transparency" in img.info):
            return _array_in_bands(_over_black(img))
        if mode == "P" or mode in _TO_RGB:
            return _array_in_bands(img if mode == "RGB" else img.convert("RGB"))
        return _to_float_rgb(img, None, path)  # mode "I" (float32), or the unsupported-mode error
    except AnoUnetError:
        raise
    except Exception as e:  # noqa: BLE001
        raise AnoUnetError(f"cannot convert image ({type(e).__name__}: {e})", path) from None
    finally:
        img.close()


def load_mask(path: str | os.PathLike, size: Size = None) -> np.ndarray:
    """Read a ground-truth mask as bool ``(H, W)``: nonzero = defect; resized with ``NEAREST``."""
    return read_mask(path, size)[0]


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a non-hidden file name ending in one of `IMAGE_EXTENSIONS` (any case)."""
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files in ``folder``, sorted by their path relative to ``folder`` (plain string order).

    Files are recognised by extension (`IMAGE_EXTENSIONS`, any case). Hidden files and folders (name
    starting with ``.``, e.g. macOS ``._x.png`` resource forks) are skipped. With ``recursive=True``
    subfolders are searched too. A missing folder, a file in place of the folder, or a folder with no
    image files raises `AnoUnetError`.
    """
    folder = Path(folder)
    if not folder.exists():
        raise AnoUnetError("folder not found", folder)
    if not folder.is_dir():
        raise AnoUnetError("is a file, not a folder", folder)
    found: list[Path] = []
    has_subfolders = False
    if recursive:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            found.extend(Path(dirpath) / f for f in filenames if is_image_file(f))
    else:
        for entry in folder.iterdir():
            if entry.is_dir():
                has_subfolders = True
            elif is_image_file(entry.name):
                found.append(entry)
    if not found:
        hint = " (subfolders were not searched: pass recursive=True)" if has_subfolders else ""
        exts = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        raise AnoUnetError(f"no image files ({exts}) in folder{hint}", folder)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _map(fn, items: Sequence, num_workers: int) -> list:
    if num_workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=num_workers) as pool:  # Pillow releases the GIL while decoding
        return list(pool.map(fn, items))


def stack_images(arrays: Sequence[np.ndarray], paths: Sequence[Path]) -> np.ndarray:
    """Stack ``(H, W, 3)`` arrays into ``(N, H, W, 3)``; a size differing from the first names its file."""
    if not arrays:
        raise AnoUnetError("no images to stack")
    shape = arrays[0].shape
    for a, p in zip(arrays, paths):
        if a.shape != shape:
            raise AnoUnetError(
                f"image is {a.shape[0]}x{a.shape[1]} but {paths[0].name} is {shape[0]}x{shape[1]}; "
                "pass size= to resize all images to one size",
                p,
            )
    return np.stack(arrays).astype(np.float32, copy=False)


def load_images(
    paths: Iterable[str | os.PathLike],
    size: Size = None,
    ids: Sequence[str] | None = None,
    labels: Sequence[int] | np.ndarray | None = None,
    num_workers: int = 0,
) -> ImageSet:
    """Load many image files eagerly into an `ImageSet` (no masks).

    Raises `AnoUnetError` naming the first bad file. With ``size=None`` all files must share one size.
    ``ids`` default to the file stems; ``num_workers > 1`` decodes in that many threads.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise AnoUnetError("no image files given")
    hw = normalize_size(size)
    arrays = _map(lambda p: load_image(p, hw), paths, num_workers)
    return ImageSet(
        images=stack_images(arrays, paths),
        labels=None if labels is None else np.asarray(labels, dtype=np.int32),
        ids=list(ids) if ids is not None else [p.stem for p in paths],
    )

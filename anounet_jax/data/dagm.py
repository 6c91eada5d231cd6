"""DAGM 2007 (weakly supervised industrial optical inspection), both public releases.

The images are 512x512 8-bit grayscale; they are resized to ``size`` (bicubic) and copied to three
channels. `load_dagm` detects the release from the folder layout under ``root``:

**Original competition release** (development set, classes 1-6)::

    <root>/ClassN/0001.PNG ...            normal images
    <root>/ClassN_def/1.PNG ... 150.PNG   defective images
    <root>/ClassN_def/labels.txt          one line per ellipse:
        image_number  semi_major  semi_minor  rotation  x_center  y_center

  File numbers are matched by value, so ``1.png``, ``001.png`` and ``0001.PNG`` all are image 1.
  Each ellipse is rasterised at the image's own resolution with `skimage.draw.ellipse`, then the mask
  is resized with nearest sampling like any other mask. Geometry conventions:

  - centres are **1-based** pixel coordinates (MATLAB style): ``x`` is the column, ``y`` the row;
    pixel ``(row, col) = (y - 1, x - 1)`` is the centre;
  - ``semi_major`` lies along the x (column) axis at rotation 0, ``semi_minor`` along y;
  - the rotation turns the ellipse **counter-clockwise as displayed** (rows growing downward), which
    is skimage's convention;
  - ``rotation_unit="radians"`` is the default because the published values are small fractional
    numbers (e.g. ``1.94``) spanning about ``[0, pi]``, and the open-source DAGM readers treat them as
    radians; ``"degrees"`` is there for relabelled copies that store degrees. Look at an overlay once
    when you start with a new copy of the data.
  - Several lines for one image are united into one mask. A defective image without any line, or a
    line for an image that does not exist, raises `AnoUnetError`.

  Splits: ``"train"`` = the normal images of ``ClassN/`` (label 0, empty masks); ``"test"`` = the
  defective images of ``ClassN_def/`` (label 1, ellipse masks; the original release has no held-out
  normal images, so take some from ``"train"`` with `ImageSet.subset` for image-level AUROC);
  ``"all"`` = both, normal first.

**Later release** (classes 1-10, with pixel masks)::

    <root>/ClassN/Train/0576.PNG ...      <root>/ClassN/Test/...
    <root>/ClassN/Train/Label/Labels.txt  header line, then rows (tab or space separated):
        index  defective(0/1)  image_name  0  label_name (0 when there is none)
    <root>/ClassN/Train/Label/0576_label.PNG

  ``"train"`` = ``Train/``, ``"test"`` = ``Test/``, ``"all"`` = both. Both folders hold normal *and*
  defective images (labels 0/1); train Ano-Unet on ``s.subset(s.labels == 0)``. Masks come from the
  label images (nonzero = defect; empty for normal images). When ``Labels.txt`` is missing, an image
  counts as defective exactly when ``Label/<stem>_label.PNG`` exists. Every image in the folder must
  appear in ``Labels.txt`` and every listed image must exist.

ids: ``"ClassN/0001"``, ``"ClassN_def/1"``, ``"ClassN/Train/0576"`` (no extension).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from skimage.draw import ellipse as draw_ellipse

from anounet_jax.data.io import Size, list_images, normalize_size, read_image, read_mask, resize_mask, stack_images
from anounet_jax.data.types import ImageSet
from anounet_jax.errors import AnoUnetError

ROTATION_UNITS = ("radians", "degrees")


# --------------------------------------------------------------------------------------------------
# ellipses (original release)
# --------------------------------------------------------------------------------------------------


def ellipse_mask(
    shape: tuple[int, int],
    semi_major: float,
    semi_minor: float,
    rotation: float,
    x_center: float,
    y_center: float,
    rotation_unit: str = "radians",
) -> np.ndarray:
    """Rasterise one DAGM ellipse (1-based centre, see the module docstring) as bool ``shape`` mask."""
    if rotation_unit not in ROTATION_UNITS:
        raise AnoUnetError(f"rotation_unit must be one of {ROTATION_UNITS}, got {rotation_unit!r}")
    theta = float(rotation) if rotation_unit == "radians" else np.deg2rad(float(rotation))
    # skimage wants theta in (-pi, pi]; an ellipse is symmetric under a half turn, so wrap modulo pi.
    theta = (theta + np.pi / 2) % np.pi - np.pi / 2
    mask = np.zeros(shape, bool)
    rr, cc = draw_ellipse(
        float(y_center) - 1.0,
        float(x_center) - 1.0,
        float(semi_minor),
        float(semi_major),
        shape=shape,
        rotation=theta,
    )
    mask[rr, cc] = True
    return mask


def parse_ellipse_labels(path: Path) -> dict[int, list[tuple[float, ...]]]:
    """``labels.txt`` of the original release -> ``{image_number: [(a, b, rot, x, y), ...]}``."""
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise AnoUnetError(f"cannot read label file ({e})", path) from None
    out: dict[int, list[tuple[float, ...]]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) < 6:
                raise ValueError
            number = int(float(fields[0]))
            values = tuple(float(v) for v in fields[1:6])
        except ValueError:
            raise AnoUnetError(
                f"line {lineno}: expected 'image_number semi_major semi_minor rotation x_center y_center', "
                f"got {line.strip()!r}",
                path,
            ) from None
        out.setdefault(number, []).append(values)
    return out


def _number(p: Path) -> int | None:
    return int(p.stem) if p.stem.isdigit() else None


def _load_original_normal(class_dir: Path, hw) -> tuple[list, list, list, list, list]:
    paths = list_images(class_dir)
    images = [read_image(p, hw)[0] for p in paths]
    masks = [np.zeros(x.shape[:2], bool) for x in images]
    return images, masks, [0] * len(paths), [f"{class_dir.name}/{p.stem}" for p in paths], paths


def _load_original_defective(def_dir: Path, hw, rotation_unit: str):
    candidates = [p for p in def_dir.iterdir() if p.name.lower() == "labels.txt"] if def_dir.is_dir() else []
    label_file = candidates[0] if candidates else None
    if label_file is None:
        raise AnoUnetError("labels.txt (ellipse labels) not found in the defect folder", def_dir)
    ellipses = parse_ellipse_labels(label_file)
    paths = list_images(def_dir)
    by_number: dict[int, Path] = {}
    for p in paths:
        n = _number(p)
        if n is None:
            raise AnoUnetError("defective image name is not a number (expected e.g. 1.png)", p)
        if n in by_number:
            raise AnoUnetError(f"two files for image number {n}: {by_number[n].name} and {p.name}", p)
        by_number[n] = p
    for n in ellipses:
        if n not in by_number:
            raise AnoUnetError(f"labels.txt lists image {n}, but no such image is in {def_dir}", label_file)
    images, masks, ids = [], [], []
    paths = sorted(by_number.values(), key=_number)
    for p in paths:
        n = _number(p)
        if n not in ellipses:
            raise AnoUnetError(f"no ellipse for this defective image in {label_file.name}", p)
        image, orig_hw = read_image(p, hw)
        mask = np.zeros(orig_hw, bool)
        for a, b, rot, x, y in ellipses[n]:
            mask |= ellipse_mask(orig_hw, a, b, rot, x, y, rotation_unit)
        images.append(image)
        masks.append(resize_mask(mask, hw))
        ids.append(f"{def_dir.name}/{p.stem}")
    return images, masks, [1] * len(paths), ids, paths


# --------------------------------------------------------------------------------------------------
# later release
# --------------------------------------------------------------------------------------------------


def parse_labels_table(path: Path) -> dict[str, tuple[int, str | None]]:
    """``Label/Labels.txt`` of the later release -> ``{image_name: (defective, label_name | None)}``.

    Lines that are not rows ``index defective image_name ...`` (the header) are skipped only before the
    first row; after it, a malformed line raises `AnoUnetError`.
    """
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise AnoUnetError(f"cannot read label file ({e})", path) from None
    out: dict[str, tuple[int, str | None]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        ok = len(fields) >= 3 and fields[0].isdigit() and fields[1] in ("0", "1")
        if not ok:
            if not out:
                continue  # header line(s)
            raise AnoUnetError(
                f"line {lineno}: expected 'index defective(0/1) image_name 0 label_name', got {line.strip()!r}",
                path,
            )
        label_name = fields[4] if len(fields) >= 5 and fields[4] != "0" else None
        out[fields[2]] = (int(fields[1]), label_name)
    return out


def _load_release2_split(split_dir: Path, class_name: str, hw):
    if not split_dir.is_dir():
        raise AnoUnetError("DAGM split folder not found", split_dir)
    label_dir = split_dir / "Label"
    label_files = {p.name.lower(): p for p in label_dir.iterdir()} if label_dir.is_dir() else {}
    table_path = label_files.get("labels.txt")
    table = parse_labels_table(table_path) if table_path is not None else None
    paths = list_images(split_dir)
    if table is not None:
        names = {p.name for p in paths}
        for name in table:
            if name not in names:
                raise AnoUnetError(f"Labels.txt lists {name}, but it is not in {split_dir}", table_path)
    images, masks, labels, ids = [], [], [], []
    for p in paths:
        if table is not None:
            if p.name not in table:
                raise AnoUnetError(f"image is not listed in {table_path}", p)
            defective, label_name = table[p.name]
        else:
            label_name = None
            defective = int(f"{p.stem}_label.png".lower() in label_files)
        image, image_hw = read_image(p, hw)
        if defective:
            name = label_name or f"{p.stem}_label.PNG"
            mask_path = label_files.get(name.lower(), label_dir / name)
            if not mask_path.is_file():
                raise AnoUnetError(f"missing label image for defective image {p}", mask_path)
            mask, mask_hw = read_mask(mask_path, hw)
            if mask_hw != image_hw:
                raise AnoUnetError(
                    f"label image is {mask_hw[0]}x{mask_hw[1]} but its image {p} is {image_hw[0]}x{image_hw[1]}",
                    mask_path,
                )
        else:
            mask = np.zeros(image.shape[:2], bool)
        images.append(image)
        masks.append(mask)
        labels.append(defective)
        ids.append(f"{class_name}/{split_dir.name}/{p.stem}")
    return images, masks, labels, ids, paths


# --------------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------------


def detect_release(root: str | os.PathLike, class_id: int) -> str:
    """``"later"`` (``ClassN/Train`` + ``ClassN/Test``) or ``"original"`` (``ClassN`` + ``ClassN_def``)."""
    root = Path(root)
    if not root.is_dir():
        raise AnoUnetError("DAGM folder not found", root)
    cls = root / f"Class{class_id}"
    if (cls / "Train").is_dir() or (cls / "Test").is_dir():
        return "later"
    if (root / f"Class{class_id}_def").is_dir():
        return "original"
    raise AnoUnetError(
        f"no DAGM class {class_id} here: expected Class{class_id}/Train and Class{class_id}/Test "
        f"(later release) or Class{class_id}/ and Class{class_id}_def/ (original release)",
        root,
    )


def load_dagm(
    root: str | os.PathLike,
    class_id: int,
    size: Size,
    split: str = "train",
    rotation_unit: str = "radians",
) -> ImageSet:
    """Load one DAGM 2007 class as an `ImageSet` (labels 0/1, bool masks); release auto-detected.

    Args:
      root: the folder that holds ``Class1``, ``Class2``, ... (and ``ClassN_def`` for the original).
      class_id: the class number N.
      size: ``int`` or ``(height, width)`` (images bicubic, masks nearest); ``None`` keeps 512x512.
      split: ``"train"``, ``"test"`` or ``"all"`` (meaning per release in the module docstring).
      rotation_unit: unit of the ellipse rotation in the original release's ``labels.txt``.
    """
    if split not in ("train", "test", "all"):
        raise AnoUnetError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if rotation_unit not in ROTATION_UNITS:
        raise AnoUnetError(f"rotation_unit must be one of {ROTATION_UNITS}, got {rotation_unit!r}")
    root = Path(root)
    hw = normalize_size(size)
    release = detect_release(root, class_id)
    parts = []
    if release == "later":
        cls = root / f"Class{class_id}"
        if split in ("train", "all"):
            parts.append(_load_release2_split(cls / "Train", cls.name, hw))
        if split in ("test", "all"):
            parts.append(_load_release2_split(cls / "Test", cls.name, hw))
    else:
        if split in ("train", "all"):
            normal_dir = root / f"Class{class_id}"
            if not normal_dir.is_dir():
                raise AnoUnetError("folder of normal images not found", normal_dir)
            parts.append(_load_original_normal(normal_dir, hw))
        if split in ("test", "all"):
            parts.append(_load_original_defective(root / f"Class{class_id}_def", hw, rotation_unit))
    images = [x for part in parts for x in part[0]]
    masks = [m for part in parts for m in part[1]]
    labels = [y for part in parts for y in part[2]]
    ids = [i for part in parts for i in part[3]]
    paths = [p for part in parts for p in part[4]]
    return ImageSet(
        images=stack_images(images, paths),
        masks=np.stack(masks),
        labels=np.asarray(labels, np.int32),
        ids=ids,
    )


# --------------------------------------------------------------------------------------------------
# one class as an evaluation set (`anounet evaluate`)
# --------------------------------------------------------------------------------------------------

_CLASS_RE = re.compile(r"^Class(\d+)$")


def class_folder(path: str | os.PathLike) -> tuple[Path, int] | None:
    """(root, N) when `path` is the folder of DAGM class N (``Class6`` holding ``Train``/``Test``, or
    ``Class6`` beside ``Class6_def``), else None."""
    path = Path(path)
    m = _CLASS_RE.match(path.name)
    if m is None or not path.is_dir():
        return None
    root = path.parent
    try:
        detect_release(root, int(m.group(1)))
    except AnoUnetError:
        return None
    return root, int(m.group(1))


def load_dagm_evaluation(root: str | os.PathLike, class_id: int, size: Size, seed: int = 0,
                         rotation_unit: str = "radians") -> tuple[ImageSet, ImageSet]:
    """(normal training images, labelled test images) of one DAGM class, as `anounet evaluate` uses it.

    Later release: the normal images of ``Train/`` for training, all of ``Test/`` for testing.
    Original release (no held-out normal images): as many normal images of ``ClassN/`` as there are
    defective ones are held out for testing (drawn with ``default_rng([seed, 12])``, as
    `anounet_jax.jobs.experiments.run_dagm` does; at least 2 stay for training), the rest train.
    ids are MVTec-style, ``train/good/<stem>``, ``test/good/<stem>`` and ``test/defect/<stem>``
    (DAGM has one defect kind per class).
    """
    release = detect_release(root, class_id)
    if release == "later":
        train = load_dagm(root, class_id, size, "train", rotation_unit)
        train = train.subset(train.labels == 0)
        test = load_dagm(root, class_id, size, "test", rotation_unit)
    else:
        normal = load_dagm(root, class_id, size, "train", rotation_unit)
        defects = load_dagm(root, class_id, size, "test", rotation_unit)
        n_norm = min(len(defects), len(normal) - 2)
        if n_norm < 1:
            raise AnoUnetError(f"only {len(normal)} normal images: none can be held out for testing",
                               Path(root) / f"Class{class_id}")
        held = np.sort(np.random.default_rng([seed, 12]).choice(len(normal), n_norm, replace=False))
        train = normal.subset(np.setdiff1d(np.arange(len(normal)), held))
        good = normal.subset(held)
        test = ImageSet(np.concatenate([good.images, defects.images]),
                        masks=np.concatenate([good.masks, defects.masks]),
                        labels=np.concatenate([good.labels, defects.labels]), ids=good.ids + defects.ids)
    if len(train) < 2:
        raise AnoUnetError(f"only {len(train)} normal training images (need at least 2)",
                           Path(root) / f"Class{class_id}")
    stem = lambda ident: ident.rsplit("/", 1)[-1]  # noqa: E731
    train.ids = [f"train/good/{stem(i)}" for i in train.ids]
    test.ids = [f"test/{'defect' if y else 'good'}/{stem(i)}" for i, y in zip(test.ids, test.labels)]
    return train, test

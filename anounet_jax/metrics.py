"""Image AUROC, pixel AUROC and AUPRO (area under the per-region-overlap curve).

Conventions: heatmaps are float (N, H, W), higher = more anomalous; masks are bool (N, H, W),
True = anomalous pixel; image labels are 0 = normal, 1 = anomalous.

Undefined metrics. AUROC needs both classes: with only normal (or only anomalous) images/pixels
there is no pair to rank, so the functions return NaN instead of raising (an all-good test split
is a legitimate input; the caller reports "n/a"). AUPRO likewise returns NaN when there is no
anomalous region or no normal pixel.

Non-finite scores. NaN has no place in a ranking and usually means a fit diverged, so any NaN in
scores or maps raises `AnoUnetError` naming the first offending image. +inf / -inf are ordered
like any other value (the most / least anomalous possible) and are accepted.

Pixel metrics share one exact, sort-based curve (`_roc_points`): the normal scores are sorted once
(float32, in place on a single copy) and every distinct anomalous score is located in them with
`np.searchsorted`. Memory is about 5 bytes per pixel plus about 40 bytes per anomalous pixel; there
is no float64 copy of the whole set and no pass over all pixels per threshold. Ties between a
normal and an anomalous score count one half, which is what sklearn's `roc_auc_score` does.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from anounet_jax.errors import AnoUnetError

__all__ = ["image_auroc", "pixel_auroc", "pixel_roc_curve", "aupro", "pro_curve", "thin_curve", "region_labels",
           "map_metrics"]

# 8-connectivity within one image and none across images of the stack. anomalib labels regions
# with cv2.connectedComponents (default connectivity 8; kornia's GPU labelling also grows through
# a 3x3 window) and the MVTec AD reference code uses scipy.ndimage.label with a 3x3 block of ones.
_STRUCTURE_8 = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE_8[1] = True


# ----------------------------------------------------------------------------- input checks


def _as_labels(labels, n: int) -> np.ndarray:
    y = np.asarray(labels).reshape(-1)
    if len(y) != n:
        raise AnoUnetError(f"{len(y)} labels for {n} scores")
    if y.dtype != bool:
        bad = ~np.isin(y, (0, 1))
        if bad.any():
            raise AnoUnetError(f"labels must be 0 (normal) or 1 (anomalous), got {y[bad][0]!r}")
        y = y.astype(bool)
    return y


def _check_no_nan(values: np.ndarray, what: str) -> None:
    """Raise if any value is NaN; `values` is (N, ...) and the first bad index is reported."""
    per_item = np.isnan(values).reshape(len(values), -1).any(axis=1)
    if per_item.any():
        first = int(np.flatnonzero(per_item)[0])
        raise AnoUnetError(
            f"{what} contain NaN ({int(per_item.sum())} of {len(values)} affected, first at "
            f"index {first}); a diverged fit? NaN cannot be ranked"
        )


def _maps_masks(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    """float32 (N, H, W) maps and bool masks of the same shape; (H, W) is taken as N = 1."""
    m = np.asarray(maps)
    if not np.issubdtype(m.dtype, np.floating) or m.dtype.itemsize > 4:
        m = m.astype(np.float32)  # float32 input (the convention) is used without a copy
    g = np.asarray(masks)
    if m.ndim == 2:
        m = m[None]
    if g.ndim == 2:
        g = g[None]
    if m.ndim != 3:
        raise AnoUnetError(f"maps must be (N, H, W), got shape {np.shape(maps)}")
    if g.shape != m.shape:
        raise AnoUnetError(f"masks {np.shape(masks)} do not match maps {np.shape(maps)}")
    if g.dtype != bool:
        bad = ~np.isin(g, (0, 1))
        if bad.any():
            raise AnoUnetError(f"masks must be bool (or 0/1), found value {g[bad][0]!r}")
        g = g.astype(bool)
    _check_no_nan(m, "maps")
    return m, g


# ----------------------------------------------------------------------------- image level


def image_auroc(scores, labels) -> float:
    """Area under the ROC curve of image scores against image labels (1 = anomalous).

    Computed with `sklearn.metrics.roc_auc_score`; tied scores of a normal and an anomalous image
    count one half. Returns NaN when the labels hold only one class: the ROC curve needs at least
    one normal and one anomalous image (sklearn would raise), and a split of only good images is a
    valid input whose AUROC is simply undefined.

    Raises AnoUnetError on a length mismatch, labels other than 0/1, or NaN scores.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = _as_labels(labels, len(s))
    _check_no_nan(s, "scores")
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, s))


# ----------------------------------------------------------------------------- pixel level


def _roc_points(neg_sorted: np.ndarray, pos: np.ndarray, pos_weight: np.ndarray | None):
    """Exact (weighted) ROC curve from sorted negative scores and positive scores.

    Each threshold t keeps the pixels with score >= t. x = fraction of negatives kept; y = kept
    share of the positives' weight (uniform weights: TPR; weights 1 / (K |region|): PRO). For each
    distinct positive value v, in decreasing order, the curve gets the point just above v (nothing
    equal to v kept) and the point at v (everything equal kept); in between only negatives change,
    so y is constant there and those points add no area. Adjacent points are joined by straight
    lines, so ties between classes give a diagonal (counted one half).

    Returns (x, y) float64, x non-decreasing from 0 to 1, y from 0 to 1.
    """
    order = np.argsort(pos, kind="stable")[::-1]
    vals = pos[order]
    if pos_weight is None:
        cum = np.arange(1, len(vals) + 1, dtype=np.float64)
    else:
        cum = np.cumsum(pos_weight[order], dtype=np.float64)
    last = np.flatnonzero(np.append(vals[1:] != vals[:-1], True))  # end of each run of ties
    vals = vals[last]
    y_ge = cum[last] / cum[-1]
    y_gt = np.concatenate(([0.0], y_ge[:-1]))
    n_neg = len(neg_sorted)
    x_ge = (n_neg - np.searchsorted(neg_sorted, vals, side="left")) / n_neg
    x_gt = (n_neg - np.searchsorted(neg_sorted, vals, side="right")) / n_neg
    x = np.concatenate(([0.0], np.stack([x_gt, x_ge], axis=1).reshape(-1), [1.0]))
    y = np.concatenate(([0.0], np.stack([y_gt, y_ge], axis=1).reshape(-1), [1.0]))
    return x, y


def _split_sorted(m: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted normal scores, anomalous scores), both float32; one copy each, sorted in place."""
    neg = m[~g]
    neg.sort()
    return neg, m[g]


def pixel_auroc(maps, masks) -> float:
    """AUROC over every pixel of the set (each pixel a sample, mask True = anomalous).

    Exact (equal to `sklearn.metrics.roc_auc_score` on the flattened arrays, ties counting one
    half) but sort-based on float32 copies, so thousands of 96x96 maps (tens of millions of
    pixels) stay within a few hundred MB. Returns NaN when the masks hold no anomalous pixel or no
    normal pixel. NaN map values raise AnoUnetError; +-inf are ranked normally.
    """
    m, g = _maps_masks(maps, masks)
    n_pos = int(np.count_nonzero(g))
    if n_pos == 0 or n_pos == g.size:
        return float("nan")
    neg, pos = _split_sorted(m, g)
    x, y = _roc_points(neg, pos, None)
    return float(np.trapezoid(y, x))


def pixel_roc_curve(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    """The pixel-level ROC curve (FPR, TPR) whose area `pixel_auroc` is: every distinct score a
    threshold (>=), points in order of decreasing threshold, FPR and TPR from 0 to 1. The same curve
    as `sklearn.metrics.roc_curve(masks.ravel(), maps.ravel())` (every corner of sklearn's is a point
    here; thresholds between two anomalous scores, where only FPR moves, add no point), without its
    float64 copy of every pixel.

    Returns (fpr, tpr) float64, or two empty arrays when there is no anomalous or no normal pixel.
    """
    m, g = _maps_masks(maps, masks)
    n_pos = int(np.count_nonzero(g))
    if n_pos == 0 or n_pos == g.size:
        return np.zeros(0), np.zeros(0)
    neg, pos = _split_sorted(m, g)
    return _roc_points(neg, pos, None)


def thin_curve(x, y, resolution: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """A monotone curve (x and y non-decreasing, as the ROC and PRO curves here) with the points that
    a plot at `resolution` x `resolution` cells can tell apart: a point is kept when it falls in
    another grid cell than the point kept before it; the first and last points are always kept.
    At most 2 * resolution + 2 points; every dropped point lies in the cell of a kept neighbour, so
    the drawn curve moves by less than 1 / resolution. For storing and drawing curves of millions of
    pixels; areas are computed on the full curves (`pixel_auroc`, `aupro`).
    """
    x = np.asarray(x, np.float64).reshape(-1)
    y = np.asarray(y, np.float64).reshape(-1)
    if len(x) != len(y):
        raise AnoUnetError(f"curve has {len(x)} x values but {len(y)} y values")
    if len(x) <= 2:
        return x.copy(), y.copy()
    cell = np.floor(x * resolution) * (resolution + 1) + np.floor(y * resolution)
    keep = np.append(True, cell[1:] != cell[:-1])  # the first point of every run in one cell
    keep[-1] = True
    return x[keep], y[keep]


def region_labels(masks) -> tuple[np.ndarray, int]:
    """Connected anomalous regions of each mask, numbered 1..K across the whole set (0 = normal).

    8-connectivity (diagonal neighbours join a region), as anomalib (cv2.connectedComponents,
    connectivity 8) and the MVTec AD evaluation code (3x3 structuring element) use; regions never
    span two images. Returns (int32 labels (N, H, W), K).
    """
    g = np.asarray(masks)
    if g.ndim == 2:
        g = g[None]
    if g.ndim != 3:
        raise AnoUnetError(f"masks must be (N, H, W), got shape {np.shape(masks)}")
    lab, k = ndimage.label(g, structure=_STRUCTURE_8)
    return lab.astype(np.int32, copy=False), int(k)


def pro_curve(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    """The per-region-overlap curve (FPR, PRO) over all thresholds (Bergmann et al., MVTec AD).

    For a threshold t: FPR = fraction of normal pixels (mask False, in any image) with map >= t;
    PRO = mean over all connected anomalous regions R of the set of |{p in R: map >= t}| / |R|.
    PRO is a weighted TPR (each anomalous pixel weighs 1 / (K |R|)), so the curve is computed
    exactly with one sort, at every distinct score. Points are in order of decreasing threshold,
    joined by straight lines (ties move diagonally); FPR runs from 0 to 1.

    Returns (fpr, pro) float64, or two empty arrays when there is no region or no normal pixel.
    """
    m, g = _maps_masks(maps, masks)
    lab, k = region_labels(g)
    if k == 0 or np.count_nonzero(g) == g.size:
        return np.zeros(0), np.zeros(0)
    region = lab[g]  # region of every anomalous pixel, in the order of m[g]
    del lab
    sizes = np.bincount(region)
    weight = 1.0 / (k * sizes[region].astype(np.float64))
    neg, pos = _split_sorted(m, g)
    return _roc_points(neg, pos, weight)


def aupro(maps, masks, fpr_limit: float = 0.3) -> float:
    """Normalized area under the PRO curve for FPR in [0, fpr_limit]; in [0, 1], higher is better.

    The curve is `pro_curve` (8-connected regions, FPR over all normal pixels of the set, PRO the
    mean overlap over all regions of the set). It is cut at `fpr_limit`, the PRO there linearly
    interpolated between the two neighbouring curve points, integrated with the trapezoidal rule
    and divided by `fpr_limit` (the MVTec AD protocol; anomalib's AUPRO does the same). A perfect
    map gives 1, a perfectly inverted one 0, a constant map fpr_limit / 2.

    Returns NaN when the masks contain no anomalous region or no normal pixel. NaN map values and
    fpr_limit outside (0, 1] raise AnoUnetError.
    """
    limit = float(fpr_limit)
    if not 0.0 < limit <= 1.0:
        raise AnoUnetError(f"fpr_limit must be in (0, 1], got {fpr_limit!r}")
    x, y = pro_curve(maps, masks)
    if len(x) == 0:
        return float("nan")
    k = int(np.searchsorted(x, limit, side="right"))  # points with fpr <= limit (x[0] = 0)
    xs, ys = x[:k], y[:k]
    if xs[-1] < limit:  # then x[k] > limit exists, because x[-1] = 1 >= limit
        t = (limit - x[k - 1]) / (x[k] - x[k - 1])
        xs = np.append(xs, limit)
        ys = np.append(ys, y[k - 1] + t * (y[k] - y[k - 1]))
    return float(np.trapezoid(ys, xs) / limit)


def map_metrics(maps, scores, labels=None, masks=None) -> dict:
    """The metrics every job reports for a set of maps, as JSON-safe numbers (None = undefined):
    "image_auroc" of `scores`, "image_auroc_map_max" of each map's maximum, "pixel_auroc" and
    "aupro" (FPR <= 0.3) of the maps against the masks."""
    def num(x):
        x = float(x)
        return None if np.isnan(x) else round(x, 6)

    maps = np.asarray(maps)
    out = {"images": int(len(maps))}
    if labels is not None:
        out["image_auroc"] = num(image_auroc(scores, labels))
        out["image_auroc_map_max"] = num(image_auroc(maps.reshape(len(maps), -1).max(1), labels))
    if masks is not None:
        out["pixel_auroc"] = num(pixel_auroc(maps, masks))
        out["aupro"] = num(aupro(maps, masks))
    return out

import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from anounet_jax.errors import AnoUnetError
from anounet_jax.metrics import aupro, image_auroc, pixel_auroc, pro_curve, region_labels

# ----------------------------------------------------------------------------- image AUROC


def test_image_auroc_known_ranking():
    # 4 normal-anomalous pairs, 3 ordered correctly
    assert image_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert image_auroc([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]) == 1.0
    assert image_auroc([0.4, 0.3, 0.2, 0.1], [0, 0, 1, 1]) == 0.0


def test_image_auroc_ties_count_half():
    assert image_auroc([0.5, 0.5], [0, 1]) == 0.5
    # pairs: (0.2 vs 0.5) 1, (0.2 vs 0.2) 1/2 -> 1.5 / 2
    assert image_auroc([0.2, 0.5, 0.2], [0, 1, 1]) == pytest.approx(0.75)


def test_image_auroc_one_class_is_nan():
    assert math.isnan(image_auroc([0.1, 0.2], [0, 0]))
    assert math.isnan(image_auroc([0.1, 0.2], [True, True]))


def test_image_auroc_bad_input():
    with pytest.raises(AnoUnetError, match="labels"):
        image_auroc([0.1, 0.2], [0, 2])
    with pytest.raises(AnoUnetError, match="3 labels for 2"):
        image_auroc([0.1, 0.2], [0, 1, 1])
    with pytest.raises(AnoUnetError, match="NaN"):
        image_auroc([0.1, float("nan")], [0, 1])


# ----------------------------------------------------------------------------- pixel AUROC


def _random_set(rng, n=6, h=12, w=12, levels=None):
    masks = np.zeros((n, h, w), bool)
    for i in range(n - 2):  # last two images are good
        for _ in range(rng.integers(1, 3)):
            y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
            masks[i, y : y + rng.integers(1, 4), x : x + rng.integers(1, 4)] = True
    maps = rng.random((n, h, w)).astype(np.float32) + 0.7 * masks
    if levels:  # coarse values -> many ties across classes
        maps = np.round(maps * levels) / levels
    return maps.astype(np.float32), masks


@pytest.mark.parametrize("levels", [None, 4])
def test_pixel_auroc_matches_sklearn(levels):
    maps, masks = _random_set(np.random.default_rng(0), levels=levels)
    want = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(want, abs=1e-12)


def test_pixel_auroc_perfect_inverted_constant():
    masks = np.zeros((2, 4, 4), bool)
    masks[0, 1:3, 1:3] = True
    assert pixel_auroc(masks.astype(np.float32), masks) == 1.0
    assert pixel_auroc(1 - masks.astype(np.float32), masks) == 0.0
    assert pixel_auroc(np.zeros((2, 4, 4), np.float32), masks) == 0.5


def test_pixel_auroc_hand_case():
    # positives 0.9, 0.2, 0.5 vs negatives 0.8, 0.1, 0.0: 3 + 2 + 2 of 9 pairs
    maps = np.array([[[0.9, 0.2, 0.8, 0.1, 0.0, 0.5]]], np.float32)
    masks = np.array([[[1, 1, 0, 0, 0, 1]]], bool)
    assert pixel_auroc(maps, masks) == pytest.approx(7 / 9)


def test_pixel_auroc_edge_cases():
    maps = np.random.default_rng(1).random((2, 3, 3)).astype(np.float32)
    assert math.isnan(pixel_auroc(maps, np.zeros((2, 3, 3), bool)))
    assert math.isnan(pixel_auroc(maps, np.ones((2, 3, 3), bool)))
    masks = np.zeros((2, 3, 3), bool)
    masks[0, 0, 0] = True
    # 0/1 integer masks and a single (H, W) map are accepted
    assert pixel_auroc(maps, masks.astype(np.uint8)) == pixel_auroc(maps, masks)
    assert pixel_auroc(maps[0], masks[0]) == pytest.approx(
        roc_auc_score(masks[0].ravel(), maps[0].ravel())
    )
    with pytest.raises(AnoUnetError, match="do not match"):
        pixel_auroc(maps, masks[:1])
    with pytest.raises(AnoUnetError, match="bool"):
        pixel_auroc(maps, masks * 2)


def test_non_finite_maps():
    masks = np.zeros((3, 4, 4), bool)
    masks[:, 0, 0] = True
    maps = masks.astype(np.float32)
    bad = maps.copy()
    bad[2, 3, 3] = np.nan
    for fn in (pixel_auroc, aupro):
        with pytest.raises(AnoUnetError, match="NaN.*first at index 2"):
            fn(bad, masks)
    # +inf is the most anomalous value there is, -inf the least: ranked, not rejected
    inf = maps.copy()
    inf[masks] = np.inf
    inf[~masks] = -np.inf
    assert pixel_auroc(inf, masks) == 1.0
    assert aupro(inf, masks) == 1.0


# ----------------------------------------------------------------------------- regions / AUPRO


def test_region_labels_8_connected_per_image():
    m = np.zeros((2, 4, 4), bool)
    m[0, 0, 0] = m[0, 1, 1] = True  # diagonal neighbours: one region
    m[0, 3, 3] = True
    m[1, 0, 0] = True  # same place in the next image: its own region
    lab, k = region_labels(m)
    assert k == 3
    assert lab[0, 0, 0] == lab[0, 1, 1] != lab[0, 3, 3]
    assert lab[1, 0, 0] not in (lab[0, 0, 0], lab[0, 3, 3], 0)


def test_aupro_perfect_inverted_constant():
    masks = np.zeros((3, 8, 8), bool)
    masks[0, 1:3, 1:3] = True
    masks[1, 5:8, 0:6] = True
    m = masks.astype(np.float32)
    assert aupro(m, masks) == 1.0
    assert aupro(1 - m, masks) == 0.0
    # a constant map: one diagonal from (0, 0) to (1, 1); mean PRO on [0, L] is L / 2
    assert aupro(np.zeros_like(m), masks, fpr_limit=0.3) == pytest.approx(0.15)
    assert aupro(np.zeros_like(m), masks, fpr_limit=1.0) == pytest.approx(0.5)


def test_aupro_two_regions_by_hand():
    # one row: region A = pixels 0-1 (size 2), region B = pixel 5 (size 1), normals 2, 3, 4
    maps = np.array([[[0.9, 0.2, 0.8, 0.1, 0.0, 0.5]]], np.float32)
    masks = np.array([[[1, 1, 0, 0, 0, 1]]], bool)
    # thresholds 0.9: PRO (1/2 + 0)/2 = 1/4, FPR 0;  0.8: FPR 1/3;  0.5: PRO 3/4;  0.2: PRO 1;
    # 0.1: FPR 2/3;  0.0: FPR 1.  Curve: (0,1/4) -> (1/3,1/4) -> (1/3,1) -> (1,1)
    fpr, pro = pro_curve(maps, masks)
    assert np.all(np.diff(fpr) >= 0)
    # (thresholds where only normal pixels change, like 0.1, lie on a flat stretch: not listed)
    for point in [(0, 0.25), (1 / 3, 0.25), (1 / 3, 0.75), (1 / 3, 1.0), (1.0, 1.0)]:
        assert np.any(np.isclose(fpr, point[0]) & np.isclose(pro, point[1])), point
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(1 / 12 + 2 / 3)
    assert aupro(maps, masks, fpr_limit=0.5) == pytest.approx((1 / 12 + 1 / 6) / 0.5)
    assert aupro(maps, masks, fpr_limit=0.3) == pytest.approx(0.25)  # cut before the jump
    # pixel AUROC weighs pixels, not regions: 7/9, while AUPRO(1.0) = 3/4
    assert pixel_auroc(maps, masks) == pytest.approx(7 / 9)


def test_aupro_uses_8_connectivity():
    # a=(0,0) and b=(1,1) touch diagonally -> one region {a, b}; c=(3,3) alone.
    # 8-conn weights a: 1/4, 4-conn (three regions) would give 1/3.
    maps = np.zeros((1, 4, 4), np.float32)
    masks = np.zeros((1, 4, 4), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 3, 3] = True
    maps[0, 0, 0] = 1.0
    maps[0, 1, 1] = maps[0, 3, 3] = 0.5
    maps[0, 0, 3] = 0.7  # one of 13 normal pixels sits between a and b, c
    # curve (0, 1/4) -> (1/13, 1/4) -> (1/13, 1): the mean PRO on [0, 1/13] is a's weight
    assert aupro(maps, masks, fpr_limit=1 / 13) == pytest.approx(0.25)
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(0.25 / 13 + 12 / 13)


def _aupro_brute_force(maps, masks, limit):
    """Definition, threshold by threshold: FPR on normal pixels, mean overlap of 8-conn regions."""
    lab, k = ndimage.label(masks, structure=np.pad(np.ones((1, 3, 3)), ((1, 1), (0, 0), (0, 0))))
    normal = ~masks
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        xs.append((above & normal).sum() / normal.sum())
        ys.append(np.mean([above[lab == r].mean() for r in range(1, k + 1)]))
    xs, ys = np.array(xs), np.array(ys)
    cut = np.interp(limit, xs, ys)  # xs is non-decreasing; limit is never at a jump here
    keep = xs < limit
    return np.trapezoid(np.append(ys[keep], cut), np.append(xs[keep], limit)) / limit


@pytest.mark.parametrize("levels,limit", [(None, 0.3), (5, 0.3), (None, 0.05), (3, 1.0)])
def test_aupro_matches_definition(levels, limit):
    maps, masks = _random_set(np.random.default_rng(3), n=5, h=10, w=10, levels=levels)
    got = aupro(maps, masks, fpr_limit=limit)
    assert 0.0 <= got <= 1.0
    assert got == pytest.approx(_aupro_brute_force(maps, masks, limit), abs=1e-9)


def test_aupro_edge_cases():
    maps = np.random.default_rng(2).random((2, 5, 5)).astype(np.float32)
    assert math.isnan(aupro(maps, np.zeros((2, 5, 5), bool)))
    assert math.isnan(aupro(maps, np.ones((2, 5, 5), bool)))
    masks = np.zeros((2, 5, 5), bool)
    masks[1, 2, 2] = True
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(AnoUnetError, match="fpr_limit"):
            aupro(maps, masks, fpr_limit=bad)
    with pytest.raises(AnoUnetError, match=r"\(N, H, W\)"):
        aupro(maps[None], masks[None])


def test_pixel_metrics_scale():
    """~1.5 M pixels (160 float32 maps of 96x96) give exact values (their speed: benchmarks/)."""
    rng = np.random.default_rng(4)
    masks = np.zeros((160, 96, 96), bool)
    masks[::2, 30:50, 40:60] = True  # 80 regions of 20x20 pixels
    maps = rng.random(masks.shape, dtype=np.float32) + np.float32(0.3) * masks
    assert maps.dtype == np.float32
    a = pixel_auroc(maps, masks)
    assert a == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9)
    # normal pixels U(0, 1), anomalous U(0.3, 1.3): AUROC = P(U + 0.3 > V) = 1 - 0.7^2 / 2
    assert a == pytest.approx(0.755, abs=0.005)
    # FPR f is reached at threshold 1 - f, where a region keeps a share 0.3 + f of its pixels:
    # the mean of PRO over FPR in [0, 0.3] is 0.3 + 0.15
    assert aupro(maps, masks) == pytest.approx(0.45, abs=0.005)
    # all regions have the same size, so PRO is the pixel TPR: over the whole FPR range the two
    # areas are the same number
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(a, abs=1e-9)


@pytest.mark.parametrize("levels", [None, 7])
def test_pixel_roc_curve_is_sklearns_and_its_area_pixel_auroc(levels):
    from sklearn.metrics import roc_curve

    from anounet_jax.metrics import pixel_roc_curve

    rng = np.random.default_rng(3)
    maps = rng.random((4, 9, 9)).astype(np.float32)
    if levels:
        maps = np.round(maps * levels) / levels  # ties between the classes
    masks = rng.random((4, 9, 9)) < 0.2
    fpr, tpr = pixel_roc_curve(maps, masks)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(pixel_auroc(maps, masks), abs=1e-12)
    ref_f, ref_t, _ = roc_curve(masks.ravel(), maps.ravel().astype(np.float64))
    for f, t in zip(ref_f, ref_t):  # every point of sklearn's lies on one of our segments
        i = np.flatnonzero((fpr[:-1] <= f + 1e-12) & (f <= fpr[1:] + 1e-12))
        lo, hi = np.minimum(tpr[i], tpr[i + 1]), np.maximum(tpr[i], tpr[i + 1])
        x0, x1, y0, y1 = fpr[i], fpr[i + 1], tpr[i], tpr[i + 1]
        on = np.where(x1 > x0, np.abs(y0 + (y1 - y0) * (f - x0) / np.where(x1 > x0, x1 - x0, 1) - t) < 1e-9,
                      (lo - 1e-12 <= t) & (t <= hi + 1e-12))
        assert on.any(), (f, t)
    empty = pixel_roc_curve(maps, np.zeros_like(masks))
    assert len(empty[0]) == len(empty[1]) == 0


def test_thin_curve_keeps_the_shape_within_one_cell():
    from anounet_jax.metrics import thin_curve

    rng = np.random.default_rng(0)
    x = np.concatenate(([0.0], np.sort(rng.random(20000)), [1.0]))
    y = np.concatenate(([0.0], np.sort(rng.random(20000)) ** 0.3, [1.0]))
    tx, ty = thin_curve(x, y, resolution=100)
    assert len(tx) <= 2 * 100 + 2 and (tx[0], ty[0], tx[-1], ty[-1]) == (0, 0, 1, 1)
    # every dropped point lies within one grid cell (1/100) of the thinned curve's points
    idx = np.searchsorted(tx, x, side="right") - 1
    assert np.all(np.abs(x - tx[idx]) <= 0.01 + 1e-12)
    assert np.all(np.abs(y - ty[idx]) <= 0.01 + 1e-12)
    short = thin_curve([0.0, 1.0], [0.0, 1.0])
    assert short[0].tolist() == [0.0, 1.0]
    with pytest.raises(AnoUnetError, match="2 x values but 3 y values"):
        thin_curve([0, 1], [0, 0.5, 1])

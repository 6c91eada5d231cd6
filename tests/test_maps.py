import warnings

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from anounet_jax.errors import AnoUnetError
from anounet_jax.maps import overlay, panel, residual_map, save_panel, smooth


def test_residual_map_is_channel_mean_of_abs_difference():
    x = np.zeros((2, 3, 4, 3), np.float32)
    r = np.zeros_like(x)
    r[0, 1, 2] = [0.3, -0.6, 0.0]  # |.| averaged: 0.3
    r[1, 0, 0] = [0.9, 0.9, 0.9]
    m = residual_map(x, r)
    assert m.shape == (2, 3, 4) and m.dtype == np.float32
    assert m[0, 1, 2] == pytest.approx(0.3)
    assert m[1, 0, 0] == pytest.approx(0.9)
    assert np.count_nonzero(m) == 2
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 5, 5, 3), dtype=np.float32), rng.random((2, 5, 5, 3), dtype=np.float32)
    np.testing.assert_allclose(residual_map(a, b), np.abs(a - b).mean(-1), rtol=1e-6)
    assert residual_map(a[0], b[0]).shape == (5, 5)
    with pytest.raises(AnoUnetError, match="does not match"):
        residual_map(a, b[:1])


def test_smooth_identity_at_zero_and_per_map():
    rng = np.random.default_rng(1)
    maps = rng.random((3, 16, 16), dtype=np.float32)
    out = smooth(maps, 0)
    np.testing.assert_array_equal(out, maps)
    assert out is not maps
    s = smooth(maps, 2.0)
    assert s.shape == maps.shape and s.dtype == np.float32
    np.testing.assert_allclose(s.mean(axis=(1, 2)), maps.mean(axis=(1, 2)), rtol=0.02)
    assert s.std() < maps.std()  # smoother
    # no leakage across maps: a spike in map 0 leaves map 1 (all zero) untouched
    spike = np.zeros((2, 9, 9), np.float32)
    spike[0, 4, 4] = 1.0
    sm = smooth(spike, 1.0)
    assert sm[1].max() == 0.0
    assert sm[0].sum() == pytest.approx(1.0, rel=1e-4)  # kernel normalized, far from borders
    assert sm[0].argmax() == 4 * 9 + 4
    assert smooth(spike[0], 1.0).shape == (9, 9)
    with pytest.raises(AnoUnetError, match="sigma"):
        smooth(maps, -1)


def test_overlay_shape_dtype_and_jet_colours():
    img = np.full((8, 10, 3), 0.5, np.float32)
    heat = np.zeros((8, 10), np.float32)
    heat[3, 4] = 2.0
    out = overlay(img, heat)
    assert out.shape == (8, 10, 3) and out.dtype == np.uint8
    r, g, b = out[3, 4].astype(int)
    assert r > 120 and r > g + 40 and r > b + 40  # hottest pixel: red (jet(1) = dark red)
    r0, g0, b0 = out[0, 0].astype(int)
    assert b0 > r0 + 40 and b0 > g0 + 40  # coldest: blue
    # alpha 0 -> the image; alpha 1 on black -> pure colormap
    np.testing.assert_array_equal(overlay(img, heat, alpha=0.0), np.full((8, 10, 3), 128, np.uint8))
    pure = overlay(np.zeros_like(img), heat, alpha=1.0)
    np.testing.assert_array_equal(pure[3, 4], [128, 0, 0])  # jet(1.0) = (0.5, 0, 0)
    # uint8 and grey images are accepted
    assert overlay((img * 255).astype(np.uint8), heat).shape == (8, 10, 3)
    assert overlay(img[..., 0], heat).shape == (8, 10, 3)


def test_overlay_fixed_vmax_makes_maps_comparable():
    img = np.zeros((4, 4, 3), np.float32)
    weak = np.zeros((4, 4), np.float32)
    weak[0, 0] = 0.1
    # per-image max: the weak peak is as red as any peak
    assert overlay(img, weak, alpha=1.0)[0, 0, 0] == 128
    # fixed vmax = 1: a 0.1 peak is still blue-ish
    px = overlay(img, weak, vmax=1.0, alpha=1.0)[0, 0].astype(int)
    assert px[2] > px[0]
    # flat map and NaN pixels do not crash; NaN shows the image only
    assert overlay(img, np.zeros((4, 4), np.float32)).dtype == np.uint8
    nan = weak.copy()
    nan[1, 1] = np.nan
    np.testing.assert_array_equal(overlay(img + 0.2, nan)[1, 1], [51, 51, 51])
    with pytest.raises(AnoUnetError, match="does not match"):
        overlay(img, np.zeros((3, 4), np.float32))


def _columns():
    img = np.random.default_rng(2).random((64, 64, 3), dtype=np.float32)
    mask = np.zeros((64, 64), bool)
    mask[10:20, 30:40] = True
    heat = mask.astype(np.float32)
    return img, mask, [
        ("image", img),
        ("reconstruction", (img * 255).astype(np.uint8)),
        ("heatmap overlay", overlay(img, heat)),
        ("a very long title that cannot fit above a tile", mask),
    ]


def test_panel_size_and_mask_drawn_white_on_black():
    img, mask, cols = _columns()
    p = panel(cols)
    assert isinstance(p, Image.Image) and p.mode == "RGB"
    scale = 3  # 64 px tiles -> 192 px
    w, h = p.size
    assert w == 4 + 4 * (64 * scale + 4)
    assert 64 * scale + 8 < h < 64 * scale + 40  # tile + a small title band
    a = np.asarray(p)
    title_h = h - 8 - 64 * scale
    x0 = 4 + 3 * (64 * scale + 4)  # fourth tile (the mask)
    tile = a[4 + title_h : 4 + title_h + 64 * scale, x0 : x0 + 64 * scale]
    np.testing.assert_array_equal(tile[::scale, ::scale, 0] == 255, mask)
    np.testing.assert_array_equal(tile[::scale, ::scale, 0][~mask], 0)
    # title band has some dark text pixels above the first tile
    assert a[4 : 4 + title_h, 4 : 4 + 64 * scale].min() < 128
    assert panel(cols[:1], scale=1).size == (64 + 8, 64 + 8 + title_h)


def test_save_panel_writes_valid_png(tmp_path):
    _, _, cols = _columns()
    path = save_panel(tmp_path / "sub" / "0001.png", cols, scale=2)
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (4 + 4 * (128 + 4), im.size[1])
    assert save_panel(tmp_path / "noext", cols[:1]).endswith("noext")
    with Image.open(tmp_path / "noext") as im:
        assert im.format == "PNG"


def test_panel_errors(tmp_path):
    with pytest.raises(AnoUnetError, match="at least one"):
        panel([])
    with pytest.raises(AnoUnetError, match="'bad'"):
        panel([("bad", np.zeros((4, 4, 5), np.float32))])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(AnoUnetError, match="cannot write") as e:
        save_panel(blocker / "p.png", [("m", np.zeros((4, 4), bool))])
    assert str(blocker) in str(e.value)


def test_map_score_top1_weighs_a_hot_region_over_one_hot_pixel():
    from anounet_jax.maps import map_score

    pixel = np.zeros((20, 20), np.float32)
    pixel[3, 3] = 1.0  # one hot pixel of noise
    region = np.zeros((20, 20), np.float32)
    region[5:7, 5:7] = 0.6  # a small hot region (4 px = the top 1% of 400 is 4 px)
    maps = np.stack([pixel, region])
    np.testing.assert_allclose(map_score(maps, "max"), [1.0, 0.6])
    np.testing.assert_allclose(map_score(maps, "top1"), [0.25, 0.6])
    with pytest.raises(AnoUnetError, match="top1"):
        map_score(maps, "mean")


def test_deviation_makes_a_patch_that_lost_its_detail_the_hottest_place():
    """A reconstruction that cannot reproduce fine texture has its error spread over the texture and
    none where the texture was smoothed away: the raw map is coldest on that defect, its deviation
    hottest; a bright spot (more error) stays hot in both directions' map."""
    from anounet_jax.config import MapConfig
    from anounet_jax.maps import deviation, finish

    rng = np.random.default_rng(0)
    x = rng.random((2, 48, 48, 3), dtype=np.float32)
    patch = (slice(10, 22), slice(10, 22))
    x[0][patch] = ndimage.uniform_filter(x[0], size=(9, 9, 1))[patch]  # detail lost
    x[1, 30:36, 30:36] = 1.0  # a bright spot
    recon = ndimage.uniform_filter(x, size=(1, 5, 5, 1))  # reproduces smooth things only
    raw = residual_map(x, recon)
    cfg = MapConfig(smoothing_sigma=2.0, deviation="relative")
    plain, dev = smooth(raw, 2.0), finish(raw, cfg)
    inside = np.zeros((48, 48), bool)
    inside[12:20, 12:20] = True
    assert plain[0][inside].max() < plain[0][~inside].mean()  # the raw map misses it: coldest there
    assert dev[0][inside].min() > np.quantile(dev[0][~inside], 0.95)  # its deviation finds it
    assert dev[1, 31:35, 31:35].min() > np.quantile(dev[1], 0.9)
    # the definitions: |m - median(m)|, over the median for "relative"; per map, never across a batch
    med = np.median(plain.reshape(2, -1), 1)[:, None, None]
    np.testing.assert_allclose(deviation(plain, "absolute"), np.abs(plain - med), rtol=1e-6)
    np.testing.assert_allclose(dev, np.abs(plain - med) / med, rtol=1e-5)
    np.testing.assert_array_equal(finish(raw[1], cfg), dev[1])
    np.testing.assert_array_equal(finish(raw, MapConfig(smoothing_sigma=2.0)), plain)  # "none": smoothing only


def test_deviation_keeps_holes_and_rejects_unknown_names():
    from anounet_jax.maps import deviation

    m = np.random.default_rng(1).random((16, 16)).astype(np.float32)
    m[:3] = np.nan
    d = deviation(m, "relative")
    assert np.isnan(d[:3]).all() and np.isfinite(d[3:]).all()
    c = np.median(m[3:])
    np.testing.assert_allclose(d[3:], np.abs(m[3:] - c) / c, rtol=1e-5)  # the median of the finite pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(deviation(np.full((4, 4), np.nan, np.float32), "absolute")).all()
    with pytest.raises(AnoUnetError, match="unknown map deviation 'median'"):
        deviation(m, "median")
    with pytest.raises(AnoUnetError, match="low-side weight must be >= 0"):
        deviation(m, "absolute", low=-0.5)


def test_the_low_side_weight_scales_only_what_lies_below_the_median():
    """low=0.5: a smooth normal region (colder than the median) counts half, a defect's extra error in
    full; low=1 is |m - c|, low=0 the high side alone. The banded writer's centre gives the same map."""
    from anounet_jax.config import MapConfig
    from anounet_jax.maps import deviation, describe_deviation, finish

    m = np.full((2, 8, 8), 0.4, np.float32)
    m[:, :2] = 0.1  # a cold band (mortar reproduced better than the texture)
    m[:, 6, 6] = 1.0  # a defect
    half = deviation(m, "absolute", low=0.5)
    assert half[0, 6, 6] == pytest.approx(0.6) and half[0, 0, 0] == pytest.approx(0.15)
    assert (half[:, 2:6] == 0).all()
    np.testing.assert_array_equal(deviation(m, "absolute", low=1.0), np.abs(m - 0.4))
    np.testing.assert_array_equal(deviation(m, "absolute", low=0.0), np.maximum(m - 0.4, 0))
    np.testing.assert_allclose(deviation(m, "relative", low=0.5), half / 0.4, rtol=1e-6)
    np.testing.assert_array_equal(deviation(m, "absolute", center=[0.4, 0.4], low=0.5), half)
    cfg = MapConfig(smoothing_sigma=0.0, deviation="absolute", deviation_low=0.5)
    np.testing.assert_array_equal(finish(m, cfg), half)
    assert describe_deviation("absolute", 0.5) == "absolute (low side x 0.5)"
    assert describe_deviation("relative", 1.0) == "relative" and describe_deviation("none", 0.5) == "none"

"""Banded maps (issue 16, memory): a tiled image is stitched, smoothed, coloured and written in row
bands as its tile rows come back, and the files equal those of the whole-image path (stitch the whole
map, `smooth_map`, `_overlay`, `_thumbnail`, `atomic_write_npz`), on non-square images whose sizes
are not multiples of the tile, with diverged tiles (NaN holes); the accumulator holds one tile row."""

import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anounet_jax.data.tiling import TiledImage, TileSpec, TileStream, fit_tiled, float_pixels, tile_grid
from anounet_jax.jobs.score.files import atomic_write_npz, png_bytes
from anounet_jax.jobs.score.job import (_MapWriter, _overlay, _thumbnail, map_path, overlay_path,
                                        thumb_path)
from anounet_jax.jobs.score.model import BandSmoother, ScoringModel, smooth_map, smoothing_radius
from tests.conftest import make_tiles_diverge
from tests.test_tiling import identity_fit


class Rows:
    """A sink that keeps what it is sent, checking the order."""

    def __init__(self):
        self.heat, self.recon, self.calls = [], [], 0

    def band(self, y0, heat, recon=None):
        assert y0 == sum(len(h) for h in self.heat)
        self.heat.append(heat)
        if recon is not None:
            self.recon.append(recon)
        self.calls += 1

    def recon_rows(self, y0, rows):
        assert y0 == sum(len(r) for r in self.recon)
        self.recon.append(rows)

    def heat_rows(self, y0, rows):
        assert y0 == sum(len(h) for h in self.heat)
        self.heat.append(rows)


def _stream(images, tile, stride, chunk, diverge, bands):
    items = [TiledImage(i, x, tile_grid(*x.shape[:2], tile, stride)) for i, x in enumerate(images)]
    stream = TileStream(iter(items), chunk, bands=bands)
    out = list(fit_tiled(lambda c: identity_fit(c, attenuate_edges=3, diverge=diverge), None, chunk,
                         stream=stream))
    return out, stream


@pytest.mark.parametrize("sizes,tile,stride,chunk", [
    ([(150, 97), (20, 45), (33, 260)], 32, None, 7),  # non-square, not multiples; one lower than the tile
    ([(101, 77)], 32, 7, 5),  # stride 7: many tile rows, uneven last step
    ([(64, 64), (97, 33)], 32, 32, 3),  # no overlap
    ([(70, 90)], 16, 12, 11),
])
def test_banded_stitch_equals_the_whole_image_stitch(sizes, tile, stride, chunk):
    rng = np.random.default_rng(1)
    images = [rng.random((h, w, 3), dtype=np.float32) for h, w in sizes]
    grids = [tile_grid(h, w, tile, stride) for h, w in sizes]
    firsts = np.cumsum([0] + [g.n_tiles for g in grids])
    # image 0: its corner tile (a NaN hole) and an interior one; the last image: its last tile
    diverge = {0, grids[0].cols + 1, int(firsts[-1]) - 1}
    whole, s_whole = _stream(images, tile, stride, chunk, diverge, None)
    sinks = {}
    banded, s_banded = _stream(images, tile, stride, chunk, diverge, lambda item: sinks.setdefault(item.key, Rows()))
    for a, b, (h, w) in zip(whole, banded, sizes):
        assert b.heatmap is None and b.recon is None and b.sink is sinks[b.key]
        heat, recon = np.concatenate(b.sink.heat), np.concatenate(b.sink.recon)
        assert heat.shape == (h, w) and recon.shape == (h, w, 3)
        np.testing.assert_array_equal(heat, a.heatmap)  # NaN holes in the same places, values bit-equal
        np.testing.assert_array_equal(recon, a.recon)
        assert (b.loss_r, b.loss_c, b.diverged) == (a.loss_r, a.loss_c, a.diverged)
        assert b.sink.calls == len(tile_grid(h, w, tile, stride).ys)  # one band per tile row
    assert np.isnan(whole[0].heatmap).any()
    # memory: one tile row of sums per image, not the image
    assert s_banded.max_accumulator_rows == tile
    assert s_whole.max_accumulator_rows == max(max(h, tile) for h, _ in sizes)
    assert s_banded.max_live_accumulators == 1


def test_all_diverged_image_in_bands_gives_nan_rows_and_no_map():
    x = np.random.default_rng(0).random((50, 40, 3), dtype=np.float32)
    sinks = []
    (s,), stream = _stream([x], 32, None, 4, set(range(100)), lambda item: sinks.append(Rows()) or sinks[-1])
    assert s.all_diverged and s.heatmap is None and np.isnan(np.concatenate(s.sink.heat)).all()


def test_uint8_pixels_are_cut_into_the_same_tiles_as_their_float32_image():
    u8 = np.random.default_rng(2).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    f32 = float_pixels(u8)
    assert f32.dtype == np.float32 and np.array_equal(f32, u8.astype(np.float32) * np.float32(1 / 255))
    g = tile_grid(45, 70, 32)
    a = list(TileStream([TiledImage(0, u8, g)], 5).chunks())
    b = list(TileStream([TiledImage(0, f32, g)], 5).chunks())
    for (ia, ta), (ib, tb) in zip(a, b):
        assert np.array_equal(ia, ib) and ta.dtype == np.float32 and np.array_equal(ta, tb)


@pytest.mark.parametrize("sigma", [0.0, 0.8, 2.0, 4.0])
def test_band_smoother_equals_smooth_map_of_the_whole_map(sigma):
    rng = np.random.default_rng(3)
    for h, w, holes in [(150, 97, True), (150, 97, False), (5, 40, False), (41, 30, True), (300, 13, True)]:
        heat = rng.random((h, w), dtype=np.float32)
        if holes:
            heat[:9, :12] = np.nan  # a corner hole, an interior one, one at the bottom
            heat[h // 2:h // 2 + 3, 5:9] = np.nan
            heat[-2:, -4:] = np.nan
        whole = smooth_map(heat, sigma)
        for cuts in ([h], [1] * h, [16, 3, 40, 1, 7] * 40):
            out = Rows()
            sm = BandSmoother(h, sigma, types.SimpleNamespace(heat=out.heat_rows, recon=out.recon_rows))
            y = 0
            for n in cuts:
                if y >= h:
                    break
                sm.band(y, heat[y:y + n])
                y += n
            sm.close()
            np.testing.assert_array_equal(np.concatenate(out.heat), whole)
            r = smoothing_radius(sigma)
            assert sm.max_rows <= min(h, 2 * r + max(cuts))


def _old_job_outputs(out: Path, fid, image, heat, recon, loss_r, loss_c, status):
    """What `_fit_tiled` wrote before banding, from whole maps (kept here as the reference)."""
    from anounet_jax.jobs.score.files import atomic_write

    rgb = _overlay(image, heat)
    atomic_write(out / overlay_path(fid), png_bytes(rgb))
    thumb = _thumbnail(rgb)
    if thumb is not None:
        atomic_write(out / thumb_path(fid), png_bytes(thumb))
    atomic_write_npz(out / map_path(fid), heatmap=heat.astype(np.float16), recon=recon.astype(np.float16),
                     losses=np.array([loss_r, loss_c], np.float32), status=np.array([status]))


def _same_files(a: Path, b: Path, fid, thumb: bool):
    with np.load(a / map_path(fid)) as za, np.load(b / map_path(fid)) as zb:
        assert list(za.keys()) == list(zb.keys()) == ["heatmap", "recon", "losses", "status"]
        for k in za:
            np.testing.assert_array_equal(za[k], zb[k])
    # the same bytes: the streamed entries compress exactly like whole arrays
    assert (a / map_path(fid)).read_bytes() == (b / map_path(fid)).read_bytes()
    for p in [overlay_path(fid)] + ([thumb_path(fid)] if thumb else []):
        assert np.array_equal(np.asarray(Image.open(a / p)), np.asarray(Image.open(b / p))), p
    assert (a / thumb_path(fid)).exists() == thumb == (b / thumb_path(fid)).exists()


@pytest.mark.parametrize("h,w,band", [(300, 170, 37), (41, 260, 5), (100, 90, 100)])
def test_map_writer_from_bands_writes_the_whole_path_files(tmp_path, h, w, band):
    rng = np.random.default_rng(4)
    u8 = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    heat = (rng.random((h, w), dtype=np.float32) * 3 - 0.5).astype(np.float32)
    heat[:10, :20] = np.nan
    recon = rng.random((h, w, 3), dtype=np.float32)
    status = "diverged: 1 of 9 tiles (row 0 col 0 at y 0:10 x 0:20)"
    _old_job_outputs(tmp_path / "old", "x/a.png", float_pixels(u8), heat, recon, 0.5, 0.25, status)
    wr = _MapWriter(tmp_path / "new", "x/a.png", u8)
    for y in range(0, h, band):
        wr.recon(y, recon[y:y + band])
        wr.heat(y, heat[y:y + band])
    wr.write(np.float32(0.5), np.float32(0.25), status)
    wr.close()
    _same_files(tmp_path / "old", tmp_path / "new", "x/a.png", max(h, w) > 256)
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["maps", "overlays"] + (["thumbs"] if max(h, w) > 256 else [])


class _FakeEngine:
    """Stands in for the model's engine: identity fits (tests/test_tiling.py) with diverged tiles."""

    def __init__(self, chunk, diverge):
        self.chunk, self.diverge = chunk, diverge

    def chunk_size_for(self, shape):
        return self.chunk

    def iter_fit(self, chunks, seed=0):
        return identity_fit(chunks, attenuate_edges=4, diverge=self.diverge)


@pytest.mark.parametrize("scale,deviation,low", [(1.0, "none", 1.0), (0.5, "none", 1.0), (1.0, "relative", 1.0),
                                                 (0.5, "absolute", 1.0), (1.0, "absolute", 0.5)])
def test_fit_tiled_in_bands_writes_what_the_whole_image_path_wrote(tmp_path, scale, deviation, low):
    from anounet_jax.config import TINY
    from anounet_jax.maps import deviation as map_deviation

    model = ScoringModel.__new__(ScoringModel)  # only what fit_tiled uses: preset, tiles, engine, seed
    model.preset, model.seed = TINY.replace(maps={"deviation": deviation, "deviation_low": low}), 0
    model.tiles = TileSpec(32, 0, scale)
    model._engine = _FakeEngine(6, diverge={0, 9, 40})
    rng = np.random.default_rng(5)
    natives = [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in [(130, 301), (45, 70), (20, 50)]]
    offsets = np.cumsum([0] + [model.tiles.n_tiles(*x.shape[:2]) for x in natives])

    def items(as_float):
        for i, x in enumerate(natives):
            yield model.tiled_image(i, float_pixels(x) if as_float else x, int(offsets[i]))

    whole = list(model.fit_tiled(items(True)))
    streams = []
    banded = list(model.fit_tiled(items(False), bands=lambda item: _MapWriter(tmp_path / "new", str(item.key),
                                                                               item.payload, deviation, low),
                                  stream_out=streams))
    assert "diverged: " in whole[0].status
    for a, b in zip(whole, banded):
        assert (a.status, a.loss_r, a.loss_c) == (b.status, b.loss_r, b.loss_c)
        _old_job_outputs(tmp_path / "old", str(a.key), a.image, a.heatmap, a.recon, a.loss_r, a.loss_c, a.status)
        b.sink.write(b.loss_r, b.loss_c, b.status)
        b.sink.close()
        _same_files(tmp_path / "old", tmp_path / "new", str(a.key), max(a.heatmap.shape) > 256)
    if scale == 1.0:  # a deviation too: the writer finds the median in two passes over the spilled bands
        assert streams[0].max_accumulator_rows == 32  # one tile row, for a 130-row image
    else:
        assert streams[0].bands is None  # scaled: the whole-image path (documented)
    if deviation != "none" and scale == 1.0:  # each finished map is the deviation of its smoothed map
        model.preset = TINY
        for a, plain in zip(whole, model.fit_tiled(items(True))):
            np.testing.assert_allclose(a.heatmap, map_deviation(plain.heatmap, deviation, low=low), rtol=1e-6)


def test_score_job_maps_equal_the_whole_image_path(tmp_path, monkeypatch):
    """`anounet score` (banded, uint8 pixels, real engine) on one non-square image with two diverged
    tiles writes the files the whole-image path writes from the same fits."""
    from anounet_jax import cli
    from anounet_jax.config import TINY
    from anounet_jax.data.io import load_image
    from anounet_jax.jobs.score.job import read_scores_csv
    from tests.test_score_tiled import _args

    pytest.importorskip("png")
    ck = _checkpoint(tmp_path)
    photo = (np.random.default_rng(6).random((70, 300, 3)) * 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(photo).save(tmp_path / "in" / "p.png")
    bad = [0, 25]
    make_tiles_diverge(monkeypatch, bad)
    assert cli.main(_args(tmp_path / "in", ck, tmp_path / "new")) == 1  # partly diverged: a failure
    [row] = read_scores_csv(tmp_path / "new" / "scores.csv")
    assert row["status"].startswith("diverged: 2 of ")
    model = ScoringModel(ck, TINY.replace(fit={"steps": 3}), threshold=0.0)
    [m] = list(model.fit_tiled([model.tiled_image(0, load_image(tmp_path / "in" / "p.png"), 0)]))
    assert m.status == row["status"] and np.isnan(m.heatmap).any()
    _old_job_outputs(tmp_path / "old", "p.png", m.image, m.heatmap, m.recon, m.loss_r, m.loss_c, m.status)
    _same_files(tmp_path / "old", tmp_path / "new", "p.png", True)


def _checkpoint(tmp_path):
    from anounet_jax import cli
    from anounet_jax.config import TINY
    from anounet_jax.data.embedded import load_normal
    from tests.test_scoring import _untrained_fnet, _write_images

    d = tmp_path / "ckpt"
    normal = load_normal("brick", TINY.image_size, 16, seed=0)
    _write_images(d / "normal", normal.images, [f"{i:02d}.png" for i in range(16)])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("anounet_jax.fnet.train.train_fnet", _untrained_fnet)
        assert cli.main(["train-fnet", str(d / "normal"), "--preset", "tiny", "--out", str(d / "ck"), "--quiet"]) == 0
    return d / "ck"


def test_read_pixels_keeps_the_files_bytes_and_converts_like_load_image(tmp_path):
    from anounet_jax.data.io import load_image, read_pixels

    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
    files = {"rgb.png": Image.fromarray(rgb), "gray.png": Image.fromarray(rgb[:, :, 0]),
             "rgba.png": Image.fromarray(np.dstack([rgb, rgb[:, :, :1]]), "RGBA"),
             "pal.png": Image.fromarray(rgb).convert("P"), "bw.png": Image.fromarray(rgb[:, :, 0] > 128),
             "g16.png": Image.fromarray((rng.random((23, 31)) * 65535).astype(np.uint16)),
             "rgb.jpg": Image.fromarray(rgb)}
    kinds = {"g16.png": np.uint16}
    for name, img in files.items():
        img.save(tmp_path / name)
        raw = read_pixels(tmp_path / name)
        assert raw.shape == (23, 31, 3) and raw.dtype == kinds.get(name, np.uint8), name
        np.testing.assert_array_equal(float_pixels(raw), load_image(tmp_path / name), err_msg=name)
        np.testing.assert_array_equal(float_pixels(raw[5:9]), load_image(tmp_path / name)[5:9])


def test_malloc_bound_is_opt_in_for_thresholds_and_leaves_user_settings_alone(monkeypatch):
    import platform

    from anounet_jax.jobs.score.job import bound_malloc

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # the user's own glibc settings win
    assert bound_malloc(low_memory=True) is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert bound_malloc(low_memory=False) is True


@pytest.mark.parametrize("h,w,kind", [(37, 50, "uniform"), (40, 50, "spiky"), (9, 8, "constant"), (64, 33, "holes")])
def test_map_writer_median_is_np_median_of_the_finite_values(tmp_path, h, w, kind):
    """The banded writer's median (two passes over its spilled bands) is exactly np.median's: odd and
    even counts, values piled into one histogram bin, a constant map, NaN holes."""
    rng = np.random.default_rng(h * w)
    heat = rng.random((h, w), dtype=np.float32)
    if kind == "spiky":  # nearly all values within 1e-7 of each other, a few far away
        heat = np.float32(0.5) + np.float32(1e-7) * heat
        heat[0, :3] = [0.0, 10.0, 1e-3]
    elif kind == "constant":
        heat[:] = 0.25
    elif kind == "holes":
        heat[5:20, 3:9] = np.nan
    sink = _MapWriter(tmp_path, "x", np.zeros((h, w, 3), np.uint8), "relative")
    for y in range(0, h, 7):
        sink.heat(y, heat[y:y + 7])
    finite = heat[np.isfinite(heat)]
    assert sink._median() == float(np.median(finite))
    sink.close()

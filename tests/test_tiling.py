"""Tiling (data/tiling.py): grids over any H x W, seamless stitching, streaming with bounded memory,
diverged tiles, and chunk-size invariance with the real engine (tiny preset)."""

import types

import numpy as np
import pytest

from anounet_jax import AnoUnetError
from anounet_jax.data.tiling import (TiledImage, TileSpec, TileStream, cut, fit_tiled, resize_map, stitch,
                                     tile_grid, tile_offsets, window)

SIZES = [(1, 1), (2, 97), (5, 70), (31, 32), (32, 32), (33, 33), (97, 101), (127, 64), (65, 200), (211, 37)]


def _result(tiles, diverged=None):
    """A FitResult-like object for an identity fit: recon = the tile, map = its first channel."""
    n = len(tiles)
    return types.SimpleNamespace(heatmap=tiles[..., 0].copy(), recon=tiles.copy(),
                                 loss_r=np.full(n, 0.5, np.float32), loss_c=np.full(n, 0.25, np.float32),
                                 diverged=np.zeros(n, bool) if diverged is None else diverged)


def identity_fit(chunks, seed=0, attenuate_edges=0, diverge=()):
    """Stands in for Engine.iter_fit: the map of a tile is its own channel 0 (optionally halved within
    `attenuate_edges` pixels of the tile's border, as a U-Net reconstructs worst there); tiles whose
    global index is in `diverge` come back non-finite and flagged."""
    for idx, tiles in chunks:
        tiles = np.asarray(tiles, np.float32)
        res = _result(tiles, np.isin(idx, list(diverge)))
        if attenuate_edges:
            t, e = tiles.shape[1], attenuate_edges
            gain = np.ones((t, t), np.float32)
            gain[:e], gain[-e:], gain[:, :e], gain[:, -e:] = 0.5, 0.5, 0.5, 0.5
            res.heatmap *= gain
        res.heatmap[res.diverged] = np.nan
        res.recon[res.diverged] = np.nan
        yield idx, res


def _images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((h, w, 3), dtype=np.float32) for h, w in sizes]


def _stream(images, tile=32, stride=None, chunk=5, **fit):
    items = [TiledImage(i, x, tile_grid(*x.shape[:2], tile, stride)) for i, x in enumerate(images)]
    stream = TileStream(iter(items), chunk)
    out = list(fit_tiled(lambda c: identity_fit(c, **fit), None, chunk, stream=stream))
    return out, stream


# ---------------------------------------------------------------------------------------- grids
@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("stride", [1, 7, 16, 32])
def test_every_pixel_is_covered_for_any_size(h, w, stride):
    g = tile_grid(h, w, 32, stride)
    for starts, length in ((g.ys, h), (g.xs, w)):
        assert starts[0] == 0 and starts[-1] + 32 == max(length, 32)  # the last tile ends at the border
        assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:]))  # no gap, no repeat
    count = np.zeros(g.padded_hw, int)
    for k in range(g.n_tiles):
        y0, y1, x0, x1 = g.box(k)
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
        count[y0:y1, x0:x1] += 1
    assert count[:h, :w].min() >= 1


@pytest.mark.parametrize("h,w", SIZES)
def test_identity_tiles_stitch_back_to_the_image(h, w):
    (x,) = _images([(h, w)])
    g = tile_grid(h, w, 32)
    tiles = cut(x, g)
    assert tiles.shape == (g.n_tiles, 32, 32, 3)
    np.testing.assert_allclose(stitch(tiles[..., 0], g), x[..., 0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(stitch(tiles, g), x, rtol=0, atol=1e-6)


def test_smaller_than_the_tile_is_reflect_padded_and_cropped_back():
    x = np.arange(5 * 7 * 3, dtype=np.float32).reshape(5, 7, 3) / 105
    g = tile_grid(5, 7, 16)
    assert g.n_tiles == 1 and g.padded_hw == (16, 16)
    (t,) = cut(x, g)
    np.testing.assert_array_equal(t[:5, :7], x)
    np.testing.assert_array_equal(t[5, :7], x[3])  # row 5 mirrors row 3 (reflect, edge not repeated)
    np.testing.assert_array_equal(t[:5, 7], x[:, 5])
    assert np.isfinite(t).all()
    assert stitch(t[None, ..., 0], g).shape == (5, 7)


def test_bad_tiling_settings_are_one_line_errors():
    for kw, text in ((dict(tile=32, stride=33), "stride must be in 1..32"),
                     (dict(tile=32, stride=-4), "stride must be in 1..32"),
                     (dict(tile=0), "tile size must be a positive"),
                     (dict(tile=32, scale=0.0), "scale must be a positive"),
                     (dict(tile=32, scale=float("nan")), "scale must be a positive")):
        with pytest.raises(AnoUnetError, match=text) as e:
            TileSpec(**kw)
        assert "\n" not in str(e.value)
    assert TileSpec(32).stride == 16 and TileSpec(32, 0).stride == 16  # 0: half the tile
    with pytest.raises(AnoUnetError, match="stride"):
        tile_grid(40, 40, 16, 17)


def test_scale_keeps_the_aspect_ratio_and_offsets_number_every_tile():
    spec = TileSpec(32, 16, scale=0.5)
    assert spec.scaled_hw(101, 64) == (51, 32) and spec.scaled_hw(1, 1) == (1, 1)
    assert spec.grid(101, 64).n_tiles == 3
    offsets = tile_offsets([(101, 64), None, (32, 32), (128, 128)], spec)
    assert offsets.tolist() == [0, 3, 3, 4, 13]


# ---------------------------------------------------------------------------------------- stitching
@pytest.mark.parametrize("h,w", [(100, 100), (97, 131), (64, 300)])
@pytest.mark.parametrize("stride", [None, 10, 32])
def test_constant_map_stitches_without_a_seam(h, w, stride):
    g = tile_grid(h, w, 32, stride)
    out = stitch(np.full((g.n_tiles, 32, 32), 0.37, np.float32), g)
    assert out.shape == (h, w)
    assert np.abs(out - 0.37).max() < 1e-6


def test_window_falls_off_toward_the_edges_and_keeps_a_floor():
    v = window(32)
    assert v.dtype == np.float32 and v.shape == (32, 32)
    assert v.max() == v[15, 15] and v.max() > 0.99
    assert 1e-4 <= v.min() < 1e-3  # corners: floor**2, never zero
    np.testing.assert_allclose(v, v.T)


def test_defect_across_a_tile_boundary_is_as_hot_as_one_in_a_tile_middle():
    x = np.full((96, 96, 3), 0.2, np.float32)
    g = tile_grid(96, 96, 32)
    y0, x0 = g.ys[1], g.xs[1] + 32  # the right edge of tile (1, 1): pixels 47 | 48
    x[y0 + 14:y0 + 18, x0 - 2:x0 + 2] = 1.0  # straddles that boundary
    x[14:18, 14:18] = 1.0  # in the middle of tile (0, 0)
    (exact,), _ = _stream([x])
    np.testing.assert_allclose(exact.heatmap, x[..., 0], atol=1e-6)  # identity fit: the image's map exactly
    # a fit that reconstructs worst at tile borders: the weights take each pixel from the tile that
    # sees it in its middle, so the boundary defect stays as hot as the one in a middle ...
    (edgy,), _ = _stream([x], attenuate_edges=3)
    straddling = edgy.heatmap[y0 + 14:y0 + 18, x0 - 2:x0 + 2]
    middle = edgy.heatmap[14:18, 14:18]
    assert straddling.min() > 0.98 * middle.min() and straddling.max() > 0.98 * middle.max()
    assert middle.min() > 0.95
    # ... where a plain average of the overlapping tiles would halve part of it
    flat = stitch(cut(x, g)[..., 0] * _edge_gain(32, 3), g, floor=1.0)
    assert flat[y0 + 14:y0 + 18, x0 - 2:x0 + 2].min() < 0.8


def _edge_gain(t, e):
    gain = np.ones((t, t), np.float32)
    gain[:e], gain[-e:], gain[:, :e], gain[:, -e:] = 0.5, 0.5, 0.5, 0.5
    return gain


# ---------------------------------------------------------------------------------------- streaming
def test_stream_reproduces_every_image_in_order_whatever_the_chunk():
    images = _images([(70, 45), (32, 32), (3, 90), (128, 96), (31, 33)], seed=1)
    ref = None
    for chunk in (1, 4, 7, 64):
        out, stream = _stream(images, chunk=chunk)
        assert [s.key for s in out] == list(range(len(images)))
        for s, x in zip(out, images):
            np.testing.assert_allclose(s.heatmap, x[..., 0], atol=1e-6)
            np.testing.assert_allclose(s.recon, x, atol=1e-6)
            assert s.loss_r == 0.5 and s.loss_c == 0.25 and s.diverged == []
        if ref is not None:
            for a, b in zip(out, ref):
                np.testing.assert_array_equal(a.heatmap, b.heatmap)
        ref = out


def test_chunks_have_a_fixed_size_and_running_tile_indices():
    images = _images([(70, 45), (32, 32), (128, 96)])
    grids = [tile_grid(*x.shape[:2], 32) for x in images]
    stream = TileStream((TiledImage(i, x, g) for i, (x, g) in enumerate(zip(images, grids))), 4)
    chunks = list(stream.chunks())
    total = sum(g.n_tiles for g in grids)
    assert [len(i) for i, _ in chunks] == [4] * (total // 4) + ([total % 4] if total % 4 else [])
    assert np.concatenate([i for i, _ in chunks]).tolist() == list(range(total))
    assert all(t.shape[1:] == (32, 32, 3) and t.dtype == np.float32 for _, t in chunks)


def test_memory_is_one_accumulator_and_a_chunk_whatever_the_image_size():
    """Huge images (many chunks each) and tiny ones (many per chunk): never more than one accumulator
    alive, images are read only when a chunk needs their tiles, and the first image's map comes out
    before the last image is read."""
    sizes = [(300, 200), (16, 16), (20, 18), (250, 260), (8, 40), (200, 300)]
    pulled, emitted_when_pulled = [], []
    done = []

    def source():
        for i, x in enumerate(_images(sizes, seed=2)):
            pulled.append(i)
            emitted_when_pulled.append(len(done))
            yield TiledImage(i, x, tile_grid(*x.shape[:2], 16))

    chunk = 6
    stream = TileStream(source(), chunk)
    for idx, res in identity_fit(stream.chunks()):
        assert len(idx) <= chunk
        done += list(stream.add(idx, res))
        assert stream.live_accumulators <= 1
    stream.close()
    assert [s.key for s in done] == list(range(len(sizes)))
    assert stream.max_live_accumulators == 1
    assert stream.max_in_flight <= chunk + 1
    # the big images are read one after another: image 3 (250x260) only after 0 (300x200) was stitched
    assert emitted_when_pulled[3] >= 1 and emitted_when_pulled[5] >= 3


def test_diverged_tile_is_named_and_spoils_no_neighbour():
    images = _images([(80, 80), (64, 100)], seed=3)
    g0 = tile_grid(80, 80, 32)  # 4 x 4 tiles
    interior, corner = 1 * 4 + 2, 0  # tile (1, 2) and tile (0, 0) of image 0
    out, _ = _stream(images, diverge={interior, corner, g0.n_tiles + 1})
    a, b = out
    assert [(d.key, d.row, d.col) for d in a.diverged] == [(0, 0, 0), (0, 1, 2)]
    assert a.diverged[1].box == (16, 48, 32, 64) and "row 1 col 2 at y 16:48 x 32:64" == a.diverged[1].describe()
    assert [(d.key, d.row, d.col, d.index) for d in b.diverged] == [(1, 0, 1, g0.n_tiles + 1)]
    # the interior tile is covered by its neighbours: nothing lost there, the others' values exact
    hole = np.isnan(a.heatmap)
    ok = ~hole
    np.testing.assert_allclose(a.heatmap[ok], images[0][..., 0][ok], atol=1e-6)
    # only the corner tile covered the image's top-left corner: NaN there, nowhere else
    assert hole[:16, :16].all() and hole.sum() == 16 * 16
    assert not np.isnan(b.heatmap).any()
    np.testing.assert_allclose(b.heatmap, images[1][..., 0], atol=1e-6)
    assert not a.all_diverged and a.loss_r == 0.5


def test_all_tiles_diverged_gives_no_map():
    (x,) = _images([(40, 40)])
    out, stream = _stream([x], diverge=set(range(100)))
    assert out[0].all_diverged and out[0].heatmap is None and np.isnan(out[0].loss_r)
    assert stream.max_live_accumulators == 0


def test_resize_map_keeps_holes_without_bleeding():
    m = np.full((10, 20), 0.5, np.float32)
    m[:5, :5] = np.nan
    r = resize_map(m, (20, 40))
    assert r.shape == (20, 40)
    assert np.isnan(r[:10, :10]).all() and np.isfinite(r[10:, 10:]).all()
    assert np.nanmax(np.abs(r - 0.5)) < 1e-6


# ---------------------------------------------------------------------------------------- the engine
def test_real_engine_tile_results_do_not_depend_on_the_chunk_size(random_fnet):
    from anounet_jax.config import TINY
    from anounet_jax.engine.fit import Engine
    from tests.conftest import tiny_fit

    images = _images([(40, 56), (32, 32), (48, 33)], seed=4)
    offsets = tile_offsets([x.shape[:2] for x in images], TileSpec(32))
    center = np.full(8, 0.1, np.float32)
    results = {}
    for chunk in (2, 5):
        eng = Engine(TINY.unet, tiny_fit(steps=3), random_fnet, center, formulation="loop", chunk_size=chunk)
        items = [TiledImage(i, x, tile_grid(*x.shape[:2], 32), first_index=int(offsets[i]) + 1000)
                 for i, x in enumerate(images)]
        stream = TileStream(iter(items), chunk)
        results[chunk] = list(fit_tiled(lambda c: eng.iter_fit(c, seed=5), None, chunk, stream=stream))
    for a, b, x in zip(results[2], results[5], images):
        assert a.heatmap.shape == x.shape[:2] and np.isfinite(a.heatmap).all()
        np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-4)
        np.testing.assert_allclose(a.recon, b.recon, atol=1e-4)
        assert a.loss_r == pytest.approx(b.loss_r, abs=1e-5)
    # each tile's map is its own fit's: every tile of image 0 fitted alone with its global index, then
    # stitched eagerly, gives the streamed map
    g = tile_grid(40, 56, 32)
    alone = [eng.fit_chunk(cut(images[0], g, k, k + 1), np.array([1000 + k]), seed=5) for k in range(g.n_tiles)]
    eager = stitch(np.concatenate([r.heatmap for r in alone]), g)
    np.testing.assert_allclose(results[5][0].heatmap, eager, atol=1e-4)
    other = eng.fit_chunk(cut(images[0], g, 0, 1), np.array([7]), seed=5)  # another index, another U-Net
    assert np.abs(other.heatmap - alone[0].heatmap).max() > 1e-3

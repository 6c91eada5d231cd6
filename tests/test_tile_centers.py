"""C on tiles: one global center or one per tile position (tiles.center), on an aligned object whose
defects are missing parts (data/aligned.py)."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from anounet_jax import AnoUnetError
from anounet_jax.config import TINY
from anounet_jax.data.aligned import aligned_set
from anounet_jax.data.tiling import TileSpec, cut
from anounet_jax.data.types import ImageSet
from anounet_jax.fnet.tile_centers import position_centers, tile_distances

HW = (64, 96)  # 3 x 5 tiles of 32 at stride 16


def test_position_centers_are_each_positions_mean_feature(random_fnet):
    train, _ = aligned_set(3, 0, 0, hw=HW, seed=2)
    grid = TileSpec(32).grid(*HW)
    centers = position_centers(random_fnet, train.images, grid)
    feats = np.stack([random_fnet.features(cut(x, grid)) for x in train.images])  # (3, P, D)
    assert centers.shape == (grid.n_tiles, feats.shape[2])
    np.testing.assert_allclose(centers, feats.mean(0), rtol=1e-5, atol=1e-6)
    assert np.abs(centers - feats.mean((0, 1))).max() > 1e-3  # positions differ: not one center repeated
    d = tile_distances(random_fnet, cut(train.images[0], grid), centers)
    np.testing.assert_allclose(d, np.abs(feats[0] - centers).mean(1), rtol=1e-5)
    with pytest.raises(AnoUnetError, match=r"test images' size \(64x96.*got one of 64x64"):
        position_centers(random_fnet, [train.images[0][:, :64]], grid)


def test_a_center_per_position_finds_a_missing_part_that_a_global_center_misses():
    """Tiles of a board whose parts sit at fixed places; a defect is a missing part, which leaves bare
    plate, common elsewhere on the board. Distance of a tile to ITS position's center finds the image
    and the tile; distance to the one global center does not."""
    from anounet_jax.data.embedded import load_reference
    from anounet_jax.fnet.train import train_fnet

    train, test = aligned_set(16, 8, 14, hw=HW, seed=1)
    grid = TileSpec(TINY.image_size).grid(*HW)
    tiles = np.concatenate([cut(x, grid) for x in train.images])
    trained = train_fnet(TINY.fnet, ImageSet(tiles, labels=np.zeros(len(tiles), np.int64)),
                         load_reference("brick", TINY.image_size, 8, 0), seed=0)
    per_position = position_centers(trained.fnet, train.images, grid)
    found = {}
    for name, centers in (("global", np.broadcast_to(trained.center, per_position.shape)),
                          ("position", per_position)):
        scores, on_part = [], []
        for x, mask in zip(test.images, test.masks):
            d = tile_distances(trained.fnet, cut(x, grid), centers)
            scores.append(d.max())
            y0, y1, x0, x1 = grid.box(int(d.argmax()))
            on_part.append(mask[y0:y1, x0:x1].any())
        found[name] = (roc_auc_score(test.labels, scores), np.mean(np.asarray(on_part)[test.labels == 1]))
    assert found["position"][0] >= 0.9 and found["position"][1] >= 0.8, found
    assert found["global"][0] <= found["position"][0] - 0.15 and found["global"][1] <= 0.7, found


def test_tiled_evaluate_fits_each_tile_toward_its_positions_center(tmp_path):
    """`evaluate aligned --native --set tiles.center=position`: the setting is recorded, the f-Net image
    score (max over tiles) is reported, and it beats the global center's on the same data."""
    from anounet_jax.jobs.evaluate import evaluate

    preset = TINY.replace(fit={"steps": 4}, data={"n_train": 8, "n_test_good": 3, "n_test_defect": 5})
    got = {}
    for center in ("global", "position"):
        evaluate("aligned", preset=preset.replace(tiles={"center": center}), methods=["ano-unet"],
                 out_dir=tmp_path / center, native=True, progress=False)
        m = json.loads((tmp_path / center / "metrics.json").read_text())
        assert m["settings"]["tiling"]["center"] == center
        assert m["settings"]["tiling"]["native_hw"] == [128, 192]
        got[center] = m["ano-unet"]["image_auroc_fnet"]
    assert got["position"] >= 0.9 and got["position"] > got["global"], got


def test_position_centers_need_tiles(tmp_path):
    from anounet_jax.jobs.evaluate import evaluate
    from anounet_jax.jobs.score.model import resolve_tiles

    with pytest.raises(AnoUnetError, match="needs tiled evaluation"):
        evaluate("aligned", preset=TINY.replace(tiles={"center": "position"}), methods=["autoencoder"],
                 out_dir=tmp_path, native=False, progress=False)
    with pytest.raises(AnoUnetError, match="per-position center"):
        resolve_tiles(TINY.replace(tiles={"resize": True, "center": "position"}))
    with pytest.raises(AnoUnetError, match="unknown tiles.center 'middle'"):
        resolve_tiles(TINY.replace(tiles={"center": "middle"}))


def test_train_fnet_stores_position_centers_and_the_score_job_fits_each_tile_toward_its_own(tmp_path, monkeypatch):
    """`train-fnet aligned --set tiles.center=position`: the f-Net learns from tiles, the checkpoint keeps
    one C per position of the 128 x 192 grid (with its tiling); `score` hands tile k of an image its
    position's C, and an image of another size is a row problem, not a failed job."""
    from PIL import Image

    from anounet_jax.checkpoint import load_checkpoint
    from anounet_jax.engine.fit import Engine
    from anounet_jax.jobs.score.job import read_scores_csv, run_score_job
    from anounet_jax.jobs.train_fnet import train_fnet_checkpoint

    preset = TINY.replace(tiles={"center": "position"}, fit={"steps": 2},
                          data={"n_train": 48, "n_reference_per_class": 4})
    info = train_fnet_checkpoint("aligned", tmp_path / "ck", preset=preset, scorer="l2", progress=False,
                                 log=lambda *a: None)
    ck = load_checkpoint(tmp_path / "ck")
    grid = TileSpec(32).grid(128, 192)
    assert info["tiles"] == 48 and ck.tile_centers is not None
    assert ck.tile_centers.centers.shape == (grid.n_tiles, len(ck.center)) and ck.tile_centers.hw == (128, 192)
    _, test = aligned_set(0, 1, 1, hw=(128, 192), seed=5)
    d = tmp_path / "in"
    d.mkdir()
    for name, x in (("a.png", test.images[0]), ("b.png", test.images[1]), ("c.png", test.images[0][:96])):
        Image.fromarray(np.round(x * 255).astype(np.uint8)).save(d / name)
    seen = []
    real = Engine.fit_chunk

    def spy(self, images, indices, seed=0, centers=None):
        seen.append((np.asarray(indices).copy(), None if centers is None else np.asarray(centers).copy()))
        return real(self, images, indices, seed, centers)

    monkeypatch.setattr(Engine, "fit_chunk", spy)
    summary = run_score_job(d, tmp_path / "ck", tmp_path / "out", visualize="all", progress=False,
                            log=lambda *a: None)
    rows = {r["file"]: r for r in read_scores_csv(tmp_path / "out" / "scores.csv")}
    assert rows["a.png"]["status"] == rows["b.png"]["status"] == "ok"
    assert "per-position centers" in rows["c.png"]["status"] and "96x192" in rows["c.png"]["status"]
    assert summary.exit_code == 1  # a row failed; the others were mapped
    indices = np.concatenate([i for i, _ in seen])
    centers = np.concatenate([c for _, c in seen])
    assert len(indices) == 2 * grid.n_tiles
    k = indices % grid.n_tiles  # a.png and b.png come first: tile k of either image has index i * P + k
    np.testing.assert_array_equal(centers, ck.tile_centers.centers[k])

"""Tiled `anounet evaluate` (issue 16, part 5): a tiny MVTec-style folder of images larger than the tile.
Every method maps the same tiles and gets a stitched map of the image's native shape; metrics are
computed against the native masks; a defect across a tile boundary is found; a mask whose size
differs from its image is a one-line error naming the file."""

import json

import numpy as np
import pytest
from PIL import Image

from anounet_jax.cli import main
from anounet_jax.config import TINY
from anounet_jax.data.native import photo
from anounet_jax.data.tiling import tile_grid
from anounet_jax.errors import AnoUnetError
from anounet_jax.jobs.evaluate import evaluate
from anounet_jax.methods import METHODS

H, W = 64, 96  # native test size; the tiny preset's tile is 32, stride 16: 3 x 5 = 15 tiles
BOUNDARY = (29, 45, 6)  # a magenta 6x6 square over y 29..31 | 32..34 and x 45..47 | 48..50: tile edges of the grid


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.asarray(array)
    Image.fromarray(a if a.dtype == np.uint8 else np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)).save(path)


def _crops(n, hw, rng, rows):
    src = photo("grass")[rows]
    out = []
    for _ in range(n):
        y, x = rng.integers(0, src.shape[0] - hw[0]), rng.integers(0, src.shape[1] - hw[1])
        out.append(src[y:y + hw[0], x:x + hw[1]])
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvtec_native") / "grass"
    rng = np.random.default_rng(0)
    for i, x in enumerate(_crops(6, (64, 64), rng, slice(0, 380))):
        _png(root / "train" / "good" / f"{i:03d}.png", x)
    good, a, b = _crops(3, (H, W), rng, slice(384, 512))
    _png(root / "test" / "good" / "000.png", good)
    y, x, s = BOUNDARY
    for i, img in enumerate((a, b)):
        img = img.copy()
        mask = np.zeros((H, W), np.uint8)
        if i == 0:
            img[y:y + s, x:x + s] = (1.0, 0.2, 0.9)
            mask[y:y + s, x:x + s] = 255
        else:
            img[40:52, 70:84] = (1.0, 0.2, 0.9)
            mask[40:52, 70:84] = 255
        _png(root / "test" / "spot" / f"{i:03d}.png", img)
        _png(root / "ground_truth" / "spot" / f"{i:03d}_mask.png", mask)
    return root


@pytest.fixture(scope="module")
def run(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_tiled")
    maps = {}
    metrics = evaluate(folder, "tiny", None, out, seed=0, progress=False, native=True, maps_out=maps)
    return out, metrics, maps


def test_boundary_square_lies_on_tile_edges():
    g = tile_grid(H, W, TINY.image_size)
    y, x, s = BOUNDARY
    assert 32 in g.ys and 48 in g.xs and y < 32 < y + s and x < 48 < x + s


def test_every_method_maps_at_native_size_with_native_metrics(run):
    out, metrics, maps = run
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert set(metrics) == set(METHODS) | {"settings"}
    t = metrics["settings"]["tiling"]
    assert t["native_hw"] == [H, W] and t["tiles_per_image"] == 15 and t["tile"] == 32 and t["stride"] == 16
    assert maps["masks"].shape == (3, H, W)  # the native masks, not resized
    for name in METHODS:
        assert maps[name].shape == (3, H, W), name
        assert np.isfinite(maps[name]).all(), name
        m = metrics[name]
        assert m["images"] == 3 and m["diverged"] == 0
        for key in ("image_auroc", "pixel_auroc", "aupro"):
            assert 0.0 <= m[key] <= 1.0, (name, key)
    assert "native 64x96, 15 tiles of 32x32" in (out / "metrics.md").read_text()


def test_defect_across_a_tile_boundary_is_found(run):
    _, metrics, maps = run
    heat = maps["ano-unet"][1]  # test/spot/000: the square over the tile edges
    y, x, s = BOUNDARY
    inside = heat[y:y + s, x:x + s].max()
    outside = np.percentile(np.delete(heat.ravel(), np.flatnonzero(maps["masks"][1].ravel())), 99)
    assert inside > outside
    assert metrics["ano-unet"]["pixel_auroc"] > 0.8


def test_mask_of_another_size_is_a_one_line_error(folder, tmp_path, capsys):
    import shutil

    bad = tmp_path / "grass"
    shutil.copytree(folder, bad)
    _png(bad / "ground_truth" / "spot" / "001_mask.png", np.zeros((32, 48), np.uint8))
    with pytest.raises(AnoUnetError, match="001_mask.png"):
        evaluate(bad, "tiny", "autoencoder", tmp_path / "o", progress=False, native=True)
    assert main(["evaluate", str(bad), "--preset", "tiny", "--tile", "32", "--methods", "ae",
                 "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "001_mask.png" in err and "mask is 32x48" in err


def test_test_images_of_several_sizes_are_refused(folder, tmp_path):
    import shutil

    bad = tmp_path / "grass"
    shutil.copytree(folder, bad)
    _png(bad / "test" / "good" / "001.png", np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(AnoUnetError, match="one size"):
        evaluate(bad, "tiny", "autoencoder", tmp_path / "o", progress=False, native=True)


def test_default_stays_resized(folder, tmp_path):
    m = evaluate(folder, "tiny", "autoencoder", tmp_path / "o", progress=False)
    assert m["settings"]["tiling"] is None


def test_embedded_native_has_small_and_large_defects(tmp_path):
    maps = {}
    m = evaluate("embedded", "tiny", "autoencoder", tmp_path / "o", progress=False, native=True, maps_out=maps)
    t = m["settings"]["tiling"]
    assert t["tile"] == 32 and maps["autoencoder"].shape[1:] == tuple(t["native_hw"]) == (128, 96)
    assert m["settings"]["n_test"] == TINY.data.n_test_good + TINY.data.n_test_defect
    assert 0.0 <= m["autoencoder"]["pixel_auroc"] <= 1.0


def test_native_and_resize_exclude_each_other(folder, tmp_path, capsys):
    for extra in (["--native", "--resize"], ["--stride", "16", "--resize"]):
        assert main(["evaluate", str(folder), "--preset", "tiny", "--methods", "ae", "--out",
                     str(tmp_path / "o"), "--quiet", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "resize" in err
    assert not (tmp_path / "o").exists()


def test_dagm_class_folder_is_evaluated_at_its_native_size(tmp_path):
    """A DAGM class folder (original release: ClassN + ClassN_def with ellipse labels) tiled at the
    files' own size; the masks are the ellipses rasterised at that size, not resized."""
    from anounet_jax.data.dagm import ellipse_mask

    rng = np.random.default_rng(3)
    gray = [np.round(np.asarray(x).mean(2) * 255).astype(np.uint8) for x in _crops(7, (H, W), rng, slice(0, 500))]
    root = tmp_path / "dagm"
    for i in range(5):
        _png(root / "Class1" / f"{i + 1:04d}.PNG", gray[i])
    labels = [(1, 10.0, 5.0, 0.5, 30.0, 20.0), (2, 6.0, 6.0, 0.0, 70.0, 45.0)]
    for j, (num, a, b, rot, x, y) in enumerate(labels):
        img = gray[5 + j].copy()
        img[ellipse_mask((H, W), a, b, rot, x, y)] = 250
        _png(root / "Class1_def" / f"{num}.PNG", img)
    (root / "Class1_def" / "labels.txt").write_text("".join(f"{n}\t{a}\t{b}\t{r}\t{x}\t{y}\n" for n, a, b, r, x, y in labels))
    maps = {}
    m = evaluate(root / "Class1", "tiny", "autoencoder", tmp_path / "o", progress=False, native=True, maps_out=maps)
    assert m["settings"]["tiling"]["native_hw"] == [H, W] and maps["autoencoder"].shape == (4, H, W)
    assert m["settings"]["n_test_good"] == 2 and m["settings"]["n_test_defect"] == 2
    np.testing.assert_array_equal(maps["masks"][2], ellipse_mask((H, W), *labels[0][1:]))
    np.testing.assert_array_equal(maps["masks"][3], ellipse_mask((H, W), *labels[1][1:]))
    assert m["autoencoder"]["pixel_auroc"] > 0.8  # a bright ellipse on grass


def test_synthetic_family_is_generated_at_the_native_test_size(tmp_path):
    maps = {}
    m = evaluate("synthetic:grain", "tiny", "autoencoder", tmp_path / "o", progress=False, native=True,
                 maps_out=maps)
    t = m["settings"]["tiling"]
    assert t["native_hw"] == [128, 96] and t["tiles_per_image"] == 7 * 5
    assert maps["autoencoder"].shape == (TINY.data.n_test_good + TINY.data.n_test_defect, 128, 96)
    assert maps["masks"].any((1, 2)).sum() == TINY.data.n_test_defect  # every defective image has its mask

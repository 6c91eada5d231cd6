"""`anounet score` at native resolution (tiling, the default): a folder of differently sized images
(non-square, smaller than the tile, RGBA, 16-bit) gets maps, overlays and report thumbnails at each
image's own size; chunking and resuming do not change a byte; --resize is the path before tiling;
a partly diverged image keeps its map and names its tiles; bad settings are one-line errors."""

import shutil

import numpy as np
import pytest
from PIL import Image

from anounet_jax import cli
from anounet_jax.config import TINY
from anounet_jax.data.embedded import load_normal, load_test
from anounet_jax.jobs.score.job import read_scores_csv
from tests.conftest import make_tiles_diverge
from tests.test_report import check_self_contained
from tests.test_scoring import _tree, _untrained_fnet, _write_images

# name -> native (height, width); the tiny preset's tile is 32, stride 16
SIZES = {"a_32x32.png": (32, 32), "b_45x70.png": (45, 70), "c_96x80.png": (96, 80), "d_20x50.png": (20, 50),
         "e_rgba_40x40.png": (40, 40), "f_gray16_50x36.png": (50, 36), "g_40x300.png": (40, 300)}
TILES = {"a_32x32.png": 1, "b_45x70.png": 8, "c_96x80.png": 20, "d_20x50.png": 3, "e_rgba_40x40.png": 4,
         "f_gray16_50x36.png": 6, "g_40x300.png": 36}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    normal = load_normal("brick", TINY.image_size, 16, seed=0)
    _write_images(d / "normal", normal.images, [f"{i:02d}.png" for i in range(16)])
    with pytest.MonkeyPatch.context() as mp:  # training: test_fnet_train.py
        mp.setattr("anounet_jax.fnet.train.train_fnet", _untrained_fnet)
        assert cli.main(["train-fnet", str(d / "normal"), "--preset", "tiny", "--out", str(d / "ck"), "--quiet"]) == 0
    return d / "ck"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Crops of the embedded 300x300 brick photos, in every shape and file kind this test needs."""
    big = load_test("brick", 300, 1, 1, seed=1).images
    d = tmp_path_factory.mktemp("tiled") / "in"
    d.mkdir()

    def u8(x):
        return np.round(x * 255).astype(np.uint8)

    Image.fromarray(u8(big[0][:32, :32])).save(d / "a_32x32.png")
    Image.fromarray(u8(big[0][:45, :70])).save(d / "b_45x70.png")
    Image.fromarray(u8(big[1][:96, :80])).save(d / "c_96x80.png")
    Image.fromarray(u8(big[1][100:120, :50])).save(d / "d_20x50.png")  # lower than the tile: padded
    rgba = np.dstack([u8(big[0][50:90, 50:90]), np.full((40, 40), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(d / "e_rgba_40x40.png")  # composited over black (data/io.py)
    g16 = np.round(big[1][:50, 100:136].mean(2) * 65535).astype(np.uint16)
    Image.fromarray(g16).save(d / "f_gray16_50x36.png")  # 16-bit grey: / 65535, to RGB
    Image.fromarray(u8(big[0][200:240, :300])).save(d / "g_40x300.png")  # wider than a thumbnail
    assert Image.open(d / "f_gray16_50x36.png").mode == "I;16"
    return d


def _args(folder, ck, out, *extra):
    return ["score", str(folder), "--ckpt", str(ck), "--out", str(out), "--quiet", "--visualize", "all",
            "--threshold", "0", "--set", "fit.steps=3", *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, ckpt, folder):
    out = tmp_path_factory.mktemp("ref") / "out"
    assert cli.main(_args(folder, ckpt, out, "--chunk-size", "3")) == 0
    return out


def test_maps_overlays_and_thumbnails_at_each_images_native_size(reference):
    rows = read_scores_csv(reference / "scores.csv")
    assert [r["file"] for r in rows] == sorted(SIZES)
    assert all(r["status"] == "ok" and np.isfinite(float(r["L_R"])) for r in rows)
    for name, hw in SIZES.items():
        with np.load(reference / "maps" / f"{name}.npz") as z:
            assert z["heatmap"].dtype == np.float16 and z["heatmap"].shape == hw
            assert z["recon"].dtype == np.float16 and z["recon"].shape == (*hw, 3)
            assert np.isfinite(z["heatmap"]).all() and z["status"][0] == "ok"
            row = next(r for r in rows if r["file"] == name)
            assert np.float32(row["L_R"]) == z["losses"][0]
        with Image.open(reference / "overlays" / f"{name}.png") as im:
            assert im.size == (hw[1], hw[0])
    assert [p.name for p in (reference / "thumbs").iterdir()] == ["g_40x300.png.png"]
    with Image.open(reference / "thumbs" / "g_40x300.png.png") as im:
        assert max(im.size) == 256
    html = (reference / "report.html").read_text()
    assert ('<a href="overlays/g_40x300.png.png"><img class="ov" loading="lazy" src="thumbs/g_40x300.png.png"'
            in html)
    assert html.count('class="ov"') == len(SIZES)
    check_self_contained(reference)


def test_chunk_size_does_not_change_a_map(tmp_path, ckpt, folder, reference):
    out = tmp_path / "out"
    assert cli.main(_args(folder, ckpt, out, "--chunk-size", "5")) == 0
    got, want = _tree(out), _tree(reference)
    for name in want:
        if name.split("/")[0] in ("maps", "overlays", "thumbs") or name == "scores.csv":
            assert got[name] == want[name], name


def test_resume_fits_only_images_without_a_map_and_matches(tmp_path, ckpt, folder, reference):
    """As if killed in chunk 1 (images 3, 4, 5) after image 3's map file was written and while image 4
    was being written: image 3 is not fitted again, the outputs are the uninterrupted run's bytes."""
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    names = sorted(SIZES)
    for p in ["parts/part-000001.json", "parts/part-000002.json", "scores.csv", "summary.json", "report.html",
              f"maps/{names[4]}.npz", f"maps/{names[5]}.npz", f"overlays/{names[5]}.png", f"maps/{names[6]}.npz"]:
        (out / p).unlink()
    (out / "maps" / f"{names[4]}.npz.tmp").write_bytes(b"half a file")
    kept = out / "maps" / f"{names[3]}.npz"
    before = (kept.stat().st_ino, kept.stat().st_mtime_ns)
    assert cli.main(_args(folder, ckpt, out, "--chunk-size", "3")) == 0
    assert (kept.stat().st_ino, kept.stat().st_mtime_ns) == before
    assert not list(out.rglob("*.tmp"))
    got, want = _tree(out), _tree(reference)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name


def test_resize_is_the_path_before_tiling(tmp_path, ckpt, folder, reference):
    out = tmp_path / "out"
    assert cli.main(_args(folder, ckpt, out, "--resize")) == 0
    for name in SIZES:
        with np.load(out / "maps" / f"{name}.npz") as z:
            assert z["heatmap"].shape == (32, 32) and "losses" not in z
    assert not (out / "thumbs").exists()
    # an image of the tile's size is one tile with the same engine index: the same map either way
    with np.load(out / "maps" / "a_32x32.png.npz") as a, np.load(reference / "maps" / "a_32x32.png.npz") as b:
        np.testing.assert_allclose(a["heatmap"].astype(np.float32), b["heatmap"].astype(np.float32), atol=1e-3)
    rows = {r["file"]: r for r in read_scores_csv(out / "scores.csv")}
    ref = {r["file"]: r for r in read_scores_csv(reference / "scores.csv")}
    assert all(rows[n]["score"] == ref[n]["score"] for n in SIZES)  # the f-Net scores the resized image


def test_scale_keeps_maps_at_the_native_size(tmp_path, ckpt, folder):
    out = tmp_path / "out"
    assert cli.main(_args(folder, ckpt, out, "--scale", "0.5", "--stride", "32")) == 0
    for name, hw in SIZES.items():
        with np.load(out / "maps" / f"{name}.npz") as z:
            assert z["heatmap"].shape == hw and np.isfinite(z["heatmap"]).all()
    assert all(r["status"] == "ok" for r in read_scores_csv(out / "scores.csv"))


def test_partly_diverged_image_keeps_its_map_and_names_its_tiles(tmp_path, ckpt, folder, reference, monkeypatch):

    names = sorted(SIZES)
    first_c = sum(TILES[n] for n in names[:2])  # tile indices of c_96x80: first_c .. first_c + 19
    bad = [first_c + 0, first_c + 5]  # tile (0, 0) and tile (1, 1) of its 5 x 4 grid
    make_tiles_diverge(monkeypatch, bad)
    out = tmp_path / "out"
    assert cli.main(_args(folder, ckpt, out, "--chunk-size", "3")) == 1  # a failure: exit 1
    rows = {r["file"]: r for r in read_scores_csv(out / "scores.csv")}
    assert rows["c_96x80.png"]["status"] == ("diverged: 2 of 20 tiles (row 0 col 0 at y 0:32 x 0:32; "
                                             "row 1 col 1 at y 16:48 x 16:48)")
    assert '"diverged": 1' in (out / "summary.json").read_text()
    with np.load(out / "maps" / "c_96x80.png.npz") as z, np.load(reference / "maps" / "c_96x80.png.npz") as r:
        holes = np.isnan(z["heatmap"])
        assert holes[:16, :16].all() and holes.sum() == 16 * 16  # only tile (0, 0) covered that corner
        # far from the two tiles (beyond the smoothing's reach) the map is the undisturbed one
        np.testing.assert_array_equal(z["heatmap"][56:], r["heatmap"][56:])
    for name in names:  # no other image changed
        if name != "c_96x80.png":
            assert (out / "maps" / f"{name}.npz").read_bytes() == (reference / "maps" / f"{name}.npz").read_bytes()
            assert rows[name]["status"] == "ok"


def test_bad_tiling_settings_are_one_line_errors_before_anything_is_written(tmp_path, ckpt, folder, capsys):
    out = tmp_path / "out"
    for extra, text in ((["--stride", "40"], "stride must be in 1..32"),
                        (["--tile", "30"], "multiple of 4"),
                        (["--resize", "--stride", "8"], "resize"),
                        (["--set", "tiles.scale=0"], "tiles.scale must be > 0"),
                        (["--scale", "-1"], "positive number")):
        capsys.readouterr()
        assert cli.main(_args(folder, ckpt, out, *extra)) == 2, extra
        err = capsys.readouterr().err
        assert text in err and err.count("\n") == 1 and "Traceback" not in err, err
        assert not out.exists()


def test_other_tiling_on_resume_is_refused(tmp_path, ckpt, folder, capsys):
    out = tmp_path / "out"
    assert cli.main(_args(folder, ckpt, out, "--visualize", "none")) == 0
    capsys.readouterr()
    assert cli.main(_args(folder, ckpt, out, "--visualize", "none", "--stride", "8")) == 2
    err = capsys.readouterr().err
    assert "preset.tiles: was" in err and "'stride': 8" in err


def test_a_job_written_before_tiling_resumes_only_with_resize(tmp_path, ckpt, folder, capsys):
    import json

    out = tmp_path / "out"
    assert cli.main(_args(folder, ckpt, out, "--visualize", "none", "--resize", "--chunk-size", "4")) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    preset = manifest["settings"]["preset"]
    del preset["tiles"]  # as the job wrote it before tiling existed, and before the f-Net term's settings
    for section, field in (("fit", "lc_scale"), ("fit", "spatial_beta"), ("fnet", "bn_stats"),
                           ("fnet", "synthetic_flaws"), ("fnet", "patch_memory"), ("maps", "image_score")):
        preset[section].pop(field)
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "parts" / "part-000001.json").unlink()
    capsys.readouterr()
    assert cli.main(_args(folder, ckpt, out, "--visualize", "none", "--chunk-size", "4")) == 2
    assert "preset.tiles: was {'tile': 0, 'stride': 0, 'scale': 1.0, 'resize': True" in capsys.readouterr().err
    assert cli.main(_args(folder, ckpt, out, "--visualize", "none", "--resize", "--chunk-size", "4")) == 0
    assert len(read_scores_csv(out / "scores.csv")) == len(SIZES)


def test_python_api_takes_arrays_of_any_size(ckpt, folder, reference):
    import anounet_jax
    from anounet_jax.data.io import load_image

    names = sorted(SIZES)
    arrays = [load_image(folder / n) for n in names]  # the folder's images, in its order: the same keys
    preset = TINY.replace(fit={"steps": 3})
    res = anounet_jax.score(arrays, ckpt, preset=preset, visualize="all", threshold=0.0)
    assert isinstance(res.heatmaps, list) and res.status == ["ok"] * len(names)
    for i, n in enumerate(names):
        assert res.heatmaps[i].shape == SIZES[n] and res.recon[i].shape == (*SIZES[n], 3)
        with np.load(reference / "maps" / f"{n}.npz") as z:
            np.testing.assert_allclose(res.heatmaps[i], z["heatmap"].astype(np.float32), atol=2e-3)
    same = anounet_jax.score(np.stack([arrays[1], arrays[1]]), ckpt, preset=preset, visualize="all",
                             threshold=0.0)
    assert same.heatmaps.shape == (2, 45, 70) and same.recon.shape == (2, 45, 70, 3)
    assert np.abs(same.heatmaps[0] - same.heatmaps[1]).max() > 1e-4  # other tiles, other U-Nets

"""File-based data sources: io conversions, ImageFolder chunks, MVTec AD, DAGM 2007 (both releases).

Every test writes its own tiny image files with Pillow into tmp_path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anounet_jax.data.dagm import detect_release, ellipse_mask, load_dagm
from anounet_jax.data.folder import ImageFolder, load_folder
from anounet_jax.data.io import list_images, load_image, load_images, load_mask, read_image
from anounet_jax.data.mvtec import load_mvtec
from anounet_jax.errors import AnoUnetError

RNG = np.random.default_rng(0)


def rgb(h=16, w=16, seed=None) -> np.ndarray:
    rng = RNG if seed is None else np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, array_or_image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    img.save(path, **kw)
    return path


def truncated_png(path: Path) -> Path:
    save(path, rgb(32, 32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def not_an_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not a picture\n")
    return path


# --------------------------------------------------------------------------------------------------
# io: conversions
# --------------------------------------------------------------------------------------------------


def test_rgb_exact_and_resized(tmp_path):
    a = rgb(20, 30)
    p = save(tmp_path / "a.png", a)
    x = load_image(p, None)
    assert x.dtype == np.float32 and x.shape == (20, 30, 3)
    np.testing.assert_allclose(x, a / 255.0, atol=1e-7)
    y = load_image(p, (8, 12))  # (height, width)
    assert y.dtype == np.float32 and y.shape == (8, 12, 3)
    assert 0.0 <= y.min() and y.max() <= 1.0
    assert load_image(p, 10).shape == (10, 10, 3)
    _, orig = read_image(p, 5)
    assert orig == (20, 30)


def test_grayscale_and_bilevel_become_three_equal_channels(tmp_path):
    g = RNG.integers(0, 256, (10, 12), dtype=np.uint8)
    x = load_image(save(tmp_path / "g.png", g))
    assert x.shape == (10, 12, 3)
    np.testing.assert_allclose(x[..., 0], g / 255.0, atol=1e-7)
    assert np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 1], x[..., 2])
    b = save(tmp_path / "b.png", Image.fromarray(g > 128).convert("1"))
    xb = load_image(b)
    assert set(np.unique(xb)) <= {0.0, 1.0} and xb.shape == (10, 12, 3)


def test_16bit_grayscale_keeps_precision(tmp_path):
    g = np.array([[0, 1000, 32768, 65535]] * 4, dtype=np.uint16)
    for suffix in ("png", "tif"):
        p = save(tmp_path / f"g16.{suffix}", Image.fromarray(g))
        assert Image.open(p).mode.startswith("I;16")
        x = load_image(p)
        np.testing.assert_allclose(x[..., 0], g / 65535.0, atol=1e-6)
        assert x[0, 1, 0] > 0  # 1000/65535 would be 0 if truncated to 8 bits
        assert np.array_equal(x[..., 0], x[..., 2])
    y = load_image(p, 2)
    assert y.shape == (2, 2, 3) and y.dtype == np.float32 and 0 <= y.min() and y.max() <= 1


def test_alpha_is_composited_over_black(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., :3] = (200, 100, 50)
    a[0, :, 3] = 0  # fully transparent: colour must not leak
    a[1, :, 3] = 255
    a[2:, :, 3] = 128
    x = load_image(save(tmp_path / "rgba.png", a))
    assert x.shape == (4, 4, 3)
    np.testing.assert_allclose(x[0], 0.0)
    np.testing.assert_allclose(x[1, 0], np.array([200, 100, 50]) / 255.0, atol=1e-6)
    np.testing.assert_allclose(x[2, 0], np.array([200, 100, 50]) / 255.0 * 128 / 255.0, atol=2 / 255)
    la = np.stack([np.full((4, 4), 200, np.uint8), np.full((4, 4), 0, np.uint8)], -1)
    np.testing.assert_allclose(load_image(save(tmp_path / "la.png", Image.fromarray(la, "LA"))), 0.0)


def test_palette_images(tmp_path):
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    x = load_image(save(tmp_path / "p.png", p))
    np.testing.assert_allclose(x[0, 0], [1.0, 0.0, 0.0])
    pt = p.copy()
    pt.info["transparency"] = 1  # the red entry is transparent -> black
    np.testing.assert_allclose(load_image(save(tmp_path / "pt.png", pt, transparency=1)), 0.0)


def test_file_errors_name_the_file(tmp_path):
    bad = truncated_png(tmp_path / "trunc.png")
    with pytest.raises(AnoUnetError, match="truncated") as e:
        load_image(bad, 8)
    assert str(bad) in str(e.value) and e.value.path == str(bad)
    txt = not_an_image(tmp_path / "fake.png")
    with pytest.raises(AnoUnetError, match="not an image file") as e:
        load_image(txt)
    assert str(txt) in str(e.value)
    with pytest.raises(AnoUnetError, match="file not found"):
        load_image(tmp_path / "missing.png")
    f32 = save(tmp_path / "f.tif", Image.fromarray(np.ones((4, 4), np.float32)))
    with pytest.raises(AnoUnetError, match="unsupported image mode 'F'"):
        load_image(f32)
    with pytest.raises(AnoUnetError, match="size must be"):
        load_image(save(tmp_path / "ok.png", rgb(4, 4)), (0, 4))


def test_masks_nonzero_is_defect_and_nearest_resize(tmp_path):
    m = np.zeros((16, 16), np.uint8)
    m[4:12, 8:16] = 255
    p = save(tmp_path / "m.png", m)
    mask = load_mask(p)
    assert mask.dtype == bool and mask.shape == (16, 16) and mask.sum() == 64
    small = load_mask(p, 8)
    assert small.dtype == bool and small.shape == (8, 8)
    assert small[4, 6] and not small[0, 0] and small.sum() == 16
    c = np.zeros((4, 4, 3), np.uint8)
    c[1, 1] = (0, 0, 7)  # any nonzero channel counts
    assert load_mask(save(tmp_path / "c.png", c)).sum() == 1
    with pytest.raises(AnoUnetError, match="truncated"):
        load_mask(truncated_png(tmp_path / "tm.png"))


# --------------------------------------------------------------------------------------------------
# io: listing and eager loading
# --------------------------------------------------------------------------------------------------


def test_list_images(tmp_path):
    for name in ("b.PNG", "a.png", "c.JpG", "d.bmp", "e.tiff", "notes.txt", "._a.png", "sub/z.png"):
        p = tmp_path / name
        if name.endswith(".txt") or name.startswith("._"):
            not_an_image(p)
        else:
            save(p, rgb(4, 4))
    names = [p.name for p in list_images(tmp_path)]
    assert names == ["a.png", "b.PNG", "c.JpG", "d.bmp", "e.tiff"]
    rec = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, recursive=True)]
    assert rec == ["a.png", "b.PNG", "c.JpG", "d.bmp", "e.tiff", "sub/z.png"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AnoUnetError, match="no image files") as e:
        list_images(empty)
    assert str(empty) in str(e.value)
    (tmp_path / "only_sub" / "deeper").mkdir(parents=True)
    with pytest.raises(AnoUnetError, match="recursive=True"):
        list_images(tmp_path / "only_sub")
    with pytest.raises(AnoUnetError, match="folder not found"):
        list_images(tmp_path / "nope")
    with pytest.raises(AnoUnetError, match="not a folder"):
        list_images(tmp_path / "a.png")


def test_load_images_and_size_mismatch(tmp_path):
    paths = [save(tmp_path / f"{i}.png", rgb(8, 8)) for i in range(3)]
    s = load_images(paths, 4)
    assert s.images.shape == (3, 4, 4, 3) and s.ids == ["0", "1", "2"] and s.masks is None
    odd = save(tmp_path / "odd.png", rgb(8, 10))
    with pytest.raises(AnoUnetError, match="pass size=") as e:
        load_images(paths + [odd], None)
    assert str(odd) in str(e.value)
    assert load_images(paths + [odd], 6, num_workers=2).images.shape == (4, 6, 6, 3)
    bad = not_an_image(tmp_path / "bad.jpg")
    with pytest.raises(AnoUnetError) as e:
        load_images(paths + [bad], 4)
    assert str(bad) in str(e.value)


# --------------------------------------------------------------------------------------------------
# ImageFolder
# --------------------------------------------------------------------------------------------------


def test_image_folder_chunks_go_past_bad_files(tmp_path):
    root = tmp_path / "bulk"
    for i in range(7):
        save(root / f"img{i}.png", rgb(12, 12))
    truncated_png(root / "img2.png")
    not_an_image(root / "img5.png")
    save(root / "sub" / "deep.png", rgb(12, 12))

    folder = ImageFolder(root, 8)
    assert len(folder) == 7
    assert folder.ids == [f"img{i}.png" for i in range(7)]
    chunks = list(folder.iter_chunks(3))
    assert len(chunks) == 3
    seen, all_errors = [], {}
    for chunk in chunks:
        indices, ids, images, errors = chunk  # plain 4-tuple unpacking
        assert images.dtype == np.float32 and images.shape == (len(indices), 8, 8, 3)
        assert indices.dtype == np.int64 and ids == [folder.ids[i] for i in indices]
        assert not set(indices) & set(errors)
        seen += list(indices) + list(errors)
        all_errors.update(errors)
    assert sorted(seen) == list(range(7))
    assert set(all_errors) == {2, 5}
    assert "truncated" in all_errors[2] and "not an image" in all_errors[5]
    np.testing.assert_allclose(chunks[0].images[1], folder.load(1))
    with pytest.raises(AnoUnetError, match="truncated"):
        folder.load(2)

    resumed = list(folder.iter_chunks(10, start=4))
    assert len(resumed) == 1 and list(resumed[0].indices) == [4, 6] and set(resumed[0].errors) == {5}
    only_bad = next(folder.iter_chunks(1, start=2))
    assert only_bad.images.shape == (0, 8, 8, 3) and set(only_bad.errors) == {2}
    threaded = ImageFolder(root, 8, num_workers=2)
    c = next(threaded.iter_chunks(7))
    assert list(c.indices) == [0, 1, 3, 4, 6] and set(c.errors) == {2, 5}

    rec = ImageFolder(root, (6, 10), recursive=True)
    assert len(rec) == 8 and "sub/deep.png" in rec.ids
    assert rec.load(rec.ids.index("sub/deep.png")).shape == (6, 10, 3)

    with pytest.raises(AnoUnetError) as e:
        load_folder(root, 8)
    assert str(root / "img2.png") in str(e.value)


def test_image_folder_without_size_reports_other_sizes(tmp_path):
    save(tmp_path / "a.png", rgb(8, 8))
    save(tmp_path / "b.png", rgb(9, 8))
    save(tmp_path / "c.png", rgb(8, 8))
    folder = ImageFolder(tmp_path, None)
    (chunk,) = list(folder.iter_chunks(5))
    assert list(chunk.indices) == [0, 2] and chunk.images.shape == (2, 8, 8, 3)
    assert "9x8" in chunk.errors[1]
    ok = load_folder(tmp_path, 4)
    assert ok.images.shape == (3, 4, 4, 3) and ok.ids == ["a.png", "b.png", "c.png"] and ok.labels is None


# --------------------------------------------------------------------------------------------------
# MVTec AD
# --------------------------------------------------------------------------------------------------


def make_mvtec(root: Path, hw=(16, 16), mask_hw=None) -> Path:
    for i in range(3):
        save(root / "train" / "good" / f"{i:03d}.png", rgb(*hw))
    for i in range(2):
        save(root / "test" / "good" / f"{i:03d}.png", rgb(*hw))
    for defect, n in (("scratch", 2), ("crack", 1)):
        for i in range(n):
            save(root / "test" / defect / f"{i:03d}.png", rgb(*hw))
            m = np.zeros(mask_hw or hw, np.uint8)
            m[: m.shape[0] // 2, : m.shape[1] // 2] = 255  # top-left quarter
            save(root / "ground_truth" / defect / f"{i:03d}_mask.png", m)
    return root


def test_mvtec_train_and_test(tmp_path):
    root = make_mvtec(tmp_path / "bottle")
    train = load_mvtec(root, 8, "train")
    assert train.images.shape == (3, 8, 8, 3) and train.images.dtype == np.float32
    assert train.ids == ["train/good/000", "train/good/001", "train/good/002"]
    assert train.masks is None and (train.labels == 0).all()

    test = load_mvtec(root, 8, split="test")
    assert test.ids == [
        "test/good/000", "test/good/001", "test/crack/000", "test/scratch/000", "test/scratch/001",
    ]  # fmt: skip
    assert test.labels.tolist() == [0, 0, 1, 1, 1]
    assert test.masks.dtype == bool and test.masks.shape == (5, 8, 8)
    assert not test.masks[:2].any()
    assert test.masks[2:, :4, :4].all() and not test.masks[2:, 4:, :].any() and not test.masks[2:, :, 4:].any()
    assert 0.0 <= test.images.min() and test.images.max() <= 1.0
    assert load_mvtec(root, None, "test").images.shape == (5, 16, 16, 3)


def test_mvtec_errors(tmp_path):
    root = make_mvtec(tmp_path / "carpet")
    missing = root / "ground_truth" / "scratch" / "001_mask.png"
    missing.unlink()
    with pytest.raises(AnoUnetError, match="missing ground-truth mask") as e:
        load_mvtec(root, 8, "test")
    assert e.value.path == str(missing)

    root = make_mvtec(tmp_path / "grid", mask_hw=(12, 12))
    with pytest.raises(AnoUnetError, match="mask is 12x12 but its image") as e:
        load_mvtec(root, 8, "test")  # checked on the file sizes, before resizing to 8x8
    assert e.value.path.endswith("_mask.png")

    with pytest.raises(AnoUnetError, match="training folder not found"):
        load_mvtec(tmp_path / "grid" / "test", 8, "train")
    with pytest.raises(AnoUnetError, match="category folder not found"):
        load_mvtec(tmp_path / "nothing", 8)
    with pytest.raises(AnoUnetError, match="split must be"):
        load_mvtec(root, 8, "val")
    truncated_png(root / "train" / "good" / "001.png")
    with pytest.raises(AnoUnetError, match="truncated") as e:
        load_mvtec(root, 8)
    assert e.value.path.endswith("001.png")


# --------------------------------------------------------------------------------------------------
# DAGM 2007
# --------------------------------------------------------------------------------------------------


def gray(h=64, w=64) -> np.ndarray:
    return RNG.integers(0, 256, (h, w), dtype=np.uint8)


def test_ellipse_mask_geometry():
    # 1-based centre (x=41, y=21) -> pixel (row 20, col 40); semi-major 12 along x at rotation 0.
    m0 = ellipse_mask((64, 64), 12, 4, 0.0, 41, 21)
    assert m0[20, 40] and m0[20, 50] and not m0[28, 40] and not m0[50, 10]
    m90 = ellipse_mask((64, 64), 12, 4, np.pi / 2, 41, 21)
    assert m90[20, 40] and m90[28, 40] and not m90[20, 50]
    # counter-clockwise as displayed: at 45 degrees the major axis points up-right.
    m45 = ellipse_mask((64, 64), 12, 3, np.pi / 4, 41, 21)
    assert m45[20 - 7, 40 + 7] and m45[20 + 7, 40 - 7] and not m45[20 + 7, 40 + 7]
    assert np.array_equal(ellipse_mask((64, 64), 12, 4, 90, 41, 21, rotation_unit="degrees"), m90)
    with pytest.raises(AnoUnetError, match="rotation_unit"):
        ellipse_mask((8, 8), 2, 1, 0, 4, 4, rotation_unit="turns")


def make_dagm_original(root: Path, class_id=1, labels=None) -> Path:
    for i in range(1, 4):
        save(root / f"Class{class_id}" / f"{i:04d}.PNG", gray())
    for i in (1, 2):
        save(root / f"Class{class_id}_def" / f"{i}.PNG", gray())
    if labels is None:
        labels = "1\t12.0\t4.0\t1.5708\t41.0\t21.0\n2\t5\t5\t0\t10\t50\n"
    (root / f"Class{class_id}_def" / "labels.txt").write_text(labels)
    return root


def test_dagm_original_release(tmp_path):
    root = make_dagm_original(tmp_path / "dagm")
    assert detect_release(root, 1) == "original"
    train = load_dagm(root, 1, 32, split="train")
    assert train.images.shape == (3, 32, 32, 3) and train.images.dtype == np.float32
    assert np.array_equal(train.images[..., 0], train.images[..., 2])  # grayscale -> 3 channels
    assert train.labels.tolist() == [0, 0, 0] and not train.masks.any()
    assert train.ids == ["Class1/0001", "Class1/0002", "Class1/0003"]

    test = load_dagm(root, 1, None, split="test")  # radians: rotated a quarter turn, major axis vertical
    assert test.ids == ["Class1_def/1", "Class1_def/2"] and test.labels.tolist() == [1, 1]
    m = test.masks[0]
    assert m[20, 40] and m[30, 40] and not m[20, 50] and not m[60, 5]
    assert test.masks[1][49, 9] and not test.masks[1][49, 20]
    deg = load_dagm(root, 1, None, split="test", rotation_unit="degrees")  # 1.57 degrees: ~horizontal
    assert deg.masks[0][20, 50] and not deg.masks[0][30, 40]

    small = load_dagm(root, 1, 32, split="all")
    assert small.images.shape == (5, 32, 32, 3) and small.masks.shape == (5, 32, 32)
    assert small.labels.tolist() == [0, 0, 0, 1, 1]
    assert small.masks[3][10, 20] and not small.masks[3][10, 25]  # centre (20, 40) / 2


def test_dagm_original_errors(tmp_path):
    root = make_dagm_original(tmp_path / "a", labels="1\t12\t4\t0\t41\t21\n")
    with pytest.raises(AnoUnetError, match="no ellipse") as e:
        load_dagm(root, 1, 16, "test")
    assert e.value.path.endswith("2.PNG")
    root = make_dagm_original(tmp_path / "b", labels="1 12 4 0 41 21\n2 5 5\n")
    with pytest.raises(AnoUnetError, match="line 2") as e:
        load_dagm(root, 1, 16, "test")
    assert e.value.path.endswith("labels.txt")
    root = make_dagm_original(tmp_path / "c", labels="1 12 4 0 41 21\n2 5 5 0 9 9\n7 5 5 0 9 9\n")
    with pytest.raises(AnoUnetError, match="lists image 7"):
        load_dagm(root, 1, 16, "test")
    with pytest.raises(AnoUnetError, match="no DAGM class 3"):
        load_dagm(root, 3, 16)
    with pytest.raises(AnoUnetError, match="split must be"):
        load_dagm(root, 1, 16, "valid")


def make_dagm_later(root: Path, class_id=2, table=True) -> Path:
    cls = root / f"Class{class_id}"
    for split, defective in (("Train", (1, 3)), ("Test", (0,))):
        rows = []
        for i in range(4):
            name = f"{i + 10:04d}.PNG"
            save(cls / split / name, gray())
            if i in defective:
                m = np.zeros((64, 64), np.uint8)
                m[8:24, 32:48] = 255
                save(cls / split / "Label" / f"{i + 10:04d}_label.PNG", m)
                rows.append(f"{i + 1}\t1\t{name}\t0\t{i + 10:04d}_label.PNG")
            else:
                rows.append(f"{i + 1}\t0\t{name}\t0\t0")
        (cls / split / "Label").mkdir(parents=True, exist_ok=True)
        if table:
            (cls / split / "Label" / "Labels.txt").write_text("1\n" + "\n".join(rows) + "\n")
    return root


def test_dagm_later_release(tmp_path):
    root = make_dagm_later(tmp_path / "dagm")
    assert detect_release(root, 2) == "later"
    train = load_dagm(root, 2, 32, "train")
    assert train.ids == ["Class2/Train/0010", "Class2/Train/0011", "Class2/Train/0012", "Class2/Train/0013"]
    assert train.labels.tolist() == [0, 1, 0, 1]
    assert train.images.shape == (4, 32, 32, 3) and train.masks.shape == (4, 32, 32)
    assert not train.masks[[0, 2]].any()
    assert train.masks[1, 4:12, 16:24].all() and train.masks[1].sum() == 64
    test = load_dagm(root, 2, 32, "test")
    assert test.labels.tolist() == [1, 0, 0, 0] and test.ids[0] == "Class2/Test/0010"
    both = load_dagm(root, 2, 16, "all")
    assert len(both) == 8 and both.labels.tolist() == [0, 1, 0, 1, 1, 0, 0, 0]
    normal = train.subset(train.labels == 0)
    assert len(normal) == 2

    inferred = load_dagm(make_dagm_later(tmp_path / "nolabels", table=False), 2, 32, "train")
    assert inferred.labels.tolist() == [0, 1, 0, 1]
    np.testing.assert_array_equal(inferred.masks, train.masks)


def test_dagm_later_errors(tmp_path):
    root = make_dagm_later(tmp_path / "a")
    label = root / "Class2" / "Train" / "Label" / "0011_label.PNG"
    label.unlink()
    with pytest.raises(AnoUnetError, match="missing label image") as e:
        load_dagm(root, 2, 16, "train")
    assert e.value.path.endswith("0011_label.PNG")
    save(label, np.zeros((32, 32), np.uint8))
    with pytest.raises(AnoUnetError, match="label image is 32x32"):
        load_dagm(root, 2, 16, "train")
    extra = save(root / "Class2" / "Test" / "0099.PNG", gray())
    with pytest.raises(AnoUnetError, match="not listed") as e:
        load_dagm(root, 2, 16, "test")
    assert e.value.path == str(extra)

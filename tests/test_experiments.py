"""The paper reproductions (anounet_jax/jobs/experiments.py, scripts/reproduce_*.py) end to end, offline:
CIFAR-10 under tfds mock data, DAGM on generated folders of both releases, all with the tiny preset."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anounet_jax.config import PAPER, TINY
from anounet_jax.data.types import ImageSet
from anounet_jax.errors import AnoUnetError
from anounet_jax.jobs.experiments import balanced_indices, experiment_preset, run_cifar10, run_dagm

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3  # per-image fit steps in the end-to-end runs: the wiring is under test, not the quality


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def quiet(*_):
    pass


def fnet_variables(module, seed=1):
    """Variables for an f-Net module without running its init (eager init compiles op by op: slow on
    XLA:CPU): the tree from jax.eval_shape, filled with scaled normal kernels, BN at identity."""
    import jax

    x = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
    shapes = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x, train=False), x)
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = str(getattr(path[-1], "key", path[-1]))
        if name in ("var", "scale"):
            return np.ones(s.shape, np.float32)
        if name in ("mean", "bias") or len(s.shape) < 2:
            return np.zeros(s.shape, np.float32)
        return (rng.normal(0, 1, s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(np.float32)

    return {k: v for k, v in jax.tree_util.tree_map_with_path(fill, dict(shapes)).items()
            if k in ("params", "batch_stats")}


def check_outputs(out: Path, m: dict, n_panels: int, with_masks: bool):
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["image_auroc"] == m["image_auroc"]
    keys = ["image_auroc"] + (["pixel_auroc", "aupro"] if with_masks else [])
    for key in keys:
        assert math.isfinite(m[key]) and 0.0 <= m[key] <= 1.0, (key, m[key])
    for key, value in m["image_auroc_by_score"].items():
        assert math.isfinite(value), key
    assert with_masks == ("pixel_auroc" in m)
    panels = sorted((out / "panels").glob("*.png"))
    assert len(panels) == n_panels
    if panels:
        w, h = Image.open(panels[0]).size
        assert w > h * (3.5 if with_masks else 2.5)  # 4 columns with the true mask, 3 without
    rows = (out / "scores.csv").read_text().splitlines()
    assert rows[0].startswith("id,label,heatmap_max") and len(rows) == m["images"] + 1


# --------------------------------------------------------------------------------------------------
# presets the scripts build
# --------------------------------------------------------------------------------------------------


def test_scripts_default_to_the_paper_settings():
    cifar = load_script("reproduce_cifar10")
    args = cifar.build_parser().parse_args([])
    p = cifar.preset_from_args(args)
    assert (p.name, p.image_size, p.fit.beta, p.fit.steps) == ("paper", 96, 50.0, 150)
    assert (p.fit.optimizer, p.fit.lr, p.fnet.arch, p.fnet.alpha) == ("sgd", 1e-3, "mobilenet_v2", 0.5)
    assert args.n_reference == 6000 and args.n_test is None

    dagm = load_script("reproduce_dagm")
    args = dagm.build_parser().parse_args(["--root", "somewhere"])
    p = dagm.preset_from_args(args)
    assert (p.name, p.image_size, p.fit.beta, p.fit.steps) == ("paper", 96, 80.0, 200)
    assert (p.fit.optimizer, p.fit.lr) == ("sgd", 1e-3)
    assert args.class_id == 6 and args.rotation_unit == "radians"
    assert p.unet == PAPER.unet and p.fnet == PAPER.fnet

    # other presets keep their own fit section; --steps / --beta override any preset
    tiny = dagm.preset_from_args(dagm.build_parser().parse_args(["--root", "x", "--preset", "tiny", "--steps", "7"]))
    assert tiny.fit == TINY.fit.__class__(**{**TINY.fit.__dict__, "steps": 7})
    assert experiment_preset("cifar10", "tiny") == TINY
    assert experiment_preset("cifar10", "paper", beta=5.0).fit.beta == 5.0
    with pytest.raises(AnoUnetError, match="unknown preset"):
        experiment_preset("dagm", "huge")
    with pytest.raises(AnoUnetError, match="steps"):
        experiment_preset("dagm", "tiny", steps=0)


def test_balanced_indices():
    labels = np.array([0] * 10 + [1] * 3)
    rng = np.random.default_rng(0)
    assert balanced_indices(labels, None, rng).tolist() == list(range(13))
    match = balanced_indices(labels, None, rng, n_default_normal="match")
    assert len(match) == 6 and labels[match].sum() == 3
    six = balanced_indices(labels, 6, rng)
    assert labels[six].tolist() == [0, 0, 0, 1, 1, 1]
    ten = balanced_indices(labels, 10, rng)  # only 3 anomalies: topped up with normal images
    assert len(ten) == 10 and labels[ten].sum() == 3 and np.all(np.diff(ten) > 0)


# --------------------------------------------------------------------------------------------------
# CIFAR-10 under tfds mock data
# --------------------------------------------------------------------------------------------------


def fake_cifar(n_train=80, n_test=40):
    """tfds mock data source: label = index % 10, noisy images whose brightness depends on the label."""

    def as_data_source(self, split, **kwargs):
        rng = np.random.default_rng(0 if split == "train" else 1)
        n = n_train if split == "train" else n_test
        return [{"image": np.clip(rng.normal(20 * (i % 10) + 30, 25, (32, 32, 3)), 0, 255).astype(np.uint8),
                 "label": np.int64(i % 10), "id": str(i)} for i in range(n)]

    return as_data_source


def test_cifar10_end_to_end_on_mock_data(tmp_path, trained):
    tfds = pytest.importorskip("tensorflow_datasets")
    script = load_script("reproduce_cifar10")
    args = script.build_parser().parse_args(["--preset", "tiny", "--steps", str(STEPS)])
    preset = script.preset_from_args(args)
    assert preset.fit.steps == STEPS and preset.image_size == 32
    out = tmp_path / "cifar"
    with tfds.testing.mock_data(as_data_source_fn=fake_cifar()):
        m = run_cifar10(preset, out, n_test=6, n_reference=24, seed=0, download=False, trained_fnet=trained,
                        progress=False, log=quiet)
    assert (m["images"], m["anomalous"], m["normal"]) == (6, 3, 3)
    assert m["train_normal"] == 8 and m["reference"] == 24 and m["diverged"] == 0
    assert m["preset"]["fit"]["steps"] == STEPS and m["normal_class"] == "horse" and m["fnet_given"]
    check_outputs(out, m, n_panels=6, with_masks=False)
    assert {p.name.split("_")[0] for p in (out / "panels").glob("*.png")} == {"test"}


def test_cifar10_script_reports_errors(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # tfds "not installed"
    script = load_script("reproduce_cifar10")
    rc = script.main(["--preset", "tiny", "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 2 and "pip install anounet_jax[tfds]" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# DAGM 2007 on generated folders
# --------------------------------------------------------------------------------------------------


def texture(rng, defect=None) -> np.ndarray:
    """64x64 grey noise texture; defect = (row, col) puts a dark 12x12 square there."""
    img = np.clip(rng.normal(128, 20, (64, 64)), 0, 255)
    if defect is not None:
        r, c = defect
        img[r:r + 12, c:c + 12] = 20
    return img.astype(np.uint8)


def save(path: Path, array: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_dagm_original(root: Path, class_id=6, n_normal=8, n_defect=3) -> Path:
    rng = np.random.default_rng(0)
    for i in range(1, n_normal + 1):
        save(root / f"Class{class_id}" / f"{i:04d}.PNG", texture(rng))
    lines = []
    for i in range(1, n_defect + 1):
        save(root / f"Class{class_id}_def" / f"{i}.PNG", texture(rng, (20, 30)))
        lines.append(f"{i}\t8.0\t6.0\t0.0\t36.5\t26.5")  # 1-based centre of the square
    (root / f"Class{class_id}_def" / "labels.txt").write_text("\n".join(lines) + "\n")
    return root


def make_dagm_later(root: Path, class_id=6) -> Path:
    rng = np.random.default_rng(1)
    cls = root / f"Class{class_id}"
    for split, n, defective in (("Train", 8, (2,)), ("Test", 6, (1, 4))):
        rows = ["1"]
        for i in range(n):
            name = f"{i:04d}.PNG"
            bad = i in defective
            save(cls / split / name, texture(rng, (10, 40) if bad else None))
            if bad:
                m = np.zeros((64, 64), np.uint8)
                m[10:22, 40:52] = 255
                save(cls / split / "Label" / f"{i:04d}_label.PNG", m)
            rows.append(f"{i + 1}\t{int(bad)}\t{name}\t0\t{f'{i:04d}_label.PNG' if bad else '0'}")
        (cls / split / "Label").mkdir(parents=True, exist_ok=True)
        (cls / split / "Label" / "Labels.txt").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def trained():
    """A frozen tiny f-Net (the preset's small CNN with random weights: the wiring is under test, f-Net
    training has its own tests) with C from noise images. Every end-to-end test reuses it, so the
    engine compiles once for the module."""
    from anounet_jax.fnet.model import FrozenFNet, build_fnet_module, compute_center
    from anounet_jax.fnet.train import TrainedFNet

    module = build_fnet_module(TINY.fnet)
    fnet = FrozenFNet.from_module(module, fnet_variables(module))
    x = np.random.default_rng(2).uniform(0.3, 0.7, (8, 32, 32, 3)).astype(np.float32)
    feats = fnet.features(x)
    return TrainedFNet(fnet, compute_center(feats), feats, [])


def test_train_stage_and_reference(tmp_path, monkeypatch):
    """train_stage hands the imported weights and the data to train_fnet and computes C; the DAGM
    reference set is the built-in one, cut to the requested total."""
    import flax
    import jax

    import anounet_jax.fnet.train as fnet_train
    from anounet_jax.jobs.experiments import dagm_reference, train_stage
    from anounet_jax.fnet.model import FrozenFNet, build_fnet_module, compute_center
    from anounet_jax.fnet.train import TrainedFNet

    reference = dagm_reference(32, 30, TINY.data.n_reference_per_class, seed=0)
    assert len(reference) == 30 and reference.images.shape[1:] == (32, 32, 3)
    assert reference.images.dtype == np.float32 and len(set(reference.labels.tolist())) > 10

    module = build_fnet_module(TINY.fnet)
    init = fnet_variables(module)
    weights = tmp_path / "fnet.msgpack"
    weights.write_bytes(flax.serialization.to_bytes(init))
    seen = {}

    def fake_train_fnet(cfg, normal, ref, seed=0, progress=True, init_variables=None):
        seen.update(cfg=cfg, n=len(normal), ref=len(ref), init=init_variables)
        fnet = FrozenFNet.from_module(module, init_variables)
        feats = fnet.features(normal.images)
        return TrainedFNet(fnet, compute_center(feats), feats, [1.0])

    monkeypatch.setattr(fnet_train, "train_fnet", fake_train_fnet)
    train = ImageSet(np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32))
    t = train_stage(TINY, train, reference, fnet_weights=weights, progress=False, log=quiet)
    assert seen["cfg"] == TINY.fnet and (seen["n"], seen["ref"]) == (4, 30)
    got = jax.tree_util.tree_leaves(seen["init"])
    assert len(got) == len(jax.tree_util.tree_leaves(init))
    assert all(np.array_equal(a, b) for a, b in zip(got, jax.tree_util.tree_leaves(init)))
    assert t.train_features.shape[0] == 4 and np.allclose(t.center, t.train_features.mean(0))
    monkeypatch.undo()  # the real train_fnet refuses a single normal image before training
    with pytest.raises(AnoUnetError, match="at least 2 normal"):
        train_stage(TINY, train.subset([0]), reference, progress=False, log=quiet)


def test_fnet_weights_are_checked(tmp_path):
    import flax

    from anounet_jax.fnet.weights import load_fnet_weights

    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(flax.serialization.to_bytes({"params": {"conv": np.zeros(3, np.float32)}}))
    with pytest.raises(AnoUnetError, match="do not match the preset's f-Net") as e:
        load_fnet_weights(bad, TINY.fnet, 32)
    assert e.value.path == str(bad)
    (tmp_path / "junk.msgpack").write_text("not msgpack")
    with pytest.raises(AnoUnetError):
        load_fnet_weights(tmp_path / "junk.msgpack", TINY.fnet, 32)
    with pytest.raises(AnoUnetError, match="cannot read"):
        load_fnet_weights(tmp_path / "missing.msgpack", TINY.fnet, 32)


def test_dagm_original_release_end_to_end(tmp_path, trained, monkeypatch):
    import anounet_jax.jobs.experiments as experiments

    calls = []

    def fake_train_stage(preset, train, reference, **kw):  # the real one ran in the `trained` fixture
        calls.append((preset, len(train), len(reference)))
        return trained

    monkeypatch.setattr(experiments, "train_stage", fake_train_stage)
    root = make_dagm_original(tmp_path / "DAGM")
    script = load_script("reproduce_dagm")
    out = tmp_path / "out"
    rc = script.main(["--root", str(root), "--preset", "tiny", "--steps", str(STEPS), "--n-reference", "60",
                      "--out", str(out), "--quiet"])
    assert rc == 0
    # every defective image + as many normal ones, held out of f-Net training
    ((preset, n_train, n_ref),) = calls
    assert preset.fit.steps == STEPS and (n_train, n_ref) == (5, 60)
    m = json.loads((out / "metrics.json").read_text())
    assert (m["images"], m["anomalous"], m["normal"], m["train_normal"]) == (6, 3, 3, 5)
    assert m["release"] == "original" and m["class_id"] == 6 and m["reference"] == 60
    assert m["preset"]["fit"]["steps"] == STEPS and m["preset"]["name"] == "tiny"
    check_outputs(out, m, n_panels=6, with_masks=True)
    names = {p.name for p in (out / "panels").glob("*.png")}
    assert {"Class6_def_1.png", "Class6_def_3.png"} <= names

    assert script.main(["--root", str(tmp_path / "nowhere"), "--preset", "tiny", "--out", str(out)]) == 2


def test_dagm_later_release_end_to_end(tmp_path, trained):
    root = make_dagm_later(tmp_path / "DAGM")
    preset = experiment_preset("dagm", "tiny", steps=STEPS)
    out = tmp_path / "out"
    m = run_dagm(preset, root, out, class_id=6, n_test=4, panels="flagged", trained_fnet=trained,
                 progress=False, log=quiet)
    assert (m["images"], m["anomalous"], m["normal"], m["train_normal"]) == (4, 2, 2, 7)
    assert m["release"] == "later" and m["panels"] == "flagged" and m["reference"] is None
    check_outputs(out, m, n_panels=m["lof_flagged"], with_masks=True)
    with pytest.raises(AnoUnetError, match="no DAGM class 3"):
        run_dagm(preset, root, out, class_id=3, progress=False, log=quiet)

"""`anounet evaluate`: end to end on a generated MVTec AD-style folder with the tiny preset, and the CLI's
one-line errors."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from anounet_jax.cli import main
from anounet_jax.data.embedded import load_normal, plant_defect
from anounet_jax.jobs.evaluate import evaluate
from anounet_jax.methods import METHODS, parse_methods
from anounet_jax.errors import AnoUnetError

FILE_SIZE = 48  # written at 48x48, read at the tiny preset's 32x32 (images bicubic, masks nearest)
DEFECTS = {"spot": 3, "scratch": 2}  # defect type -> number of test images
N_GOOD_TEST = 3


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def mvtec_dir(tmp_path_factory):
    """train/good (16), test/good (3), test/spot (3), test/scratch (2), ground_truth/<defect>/*_mask.png."""
    root = tmp_path_factory.mktemp("mvtec") / "grass"
    n_test = N_GOOD_TEST + sum(DEFECTS.values())
    patches = load_normal("grass", FILE_SIZE, 16 + n_test, seed=3).images
    for i in range(16):
        _png(root / "train" / "good" / f"{i:03d}.png", patches[i])
    test = iter(patches[16:])
    for i in range(N_GOOD_TEST):
        _png(root / "test" / "good" / f"{i:03d}.png", next(test))
    rng = np.random.default_rng(0)
    for kind, n in DEFECTS.items():
        for i in range(n):
            img, mask = plant_defect(next(test), kind, rng)
            _png(root / "test" / kind / f"{i:03d}.png", img)
            _png(root / "ground_truth" / kind / f"{i:03d}_mask.png", mask.astype(np.float32))
    return root


@pytest.fixture(scope="module")
def run(mvtec_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    metrics = evaluate(mvtec_dir, "tiny", None, out, seed=0, progress=False)
    return out, metrics


def test_metrics_for_every_method(run):
    out, returned = run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == returned
    assert set(metrics) == set(METHODS) | {"settings"}
    n_test = N_GOOD_TEST + sum(DEFECTS.values())
    for name in METHODS:
        m = metrics[name]
        for key in ("image_auroc", "image_auroc_map_max", "pixel_auroc", "aupro"):
            assert m[key] is not None and math.isfinite(m[key]) and 0.0 <= m[key] <= 1.0, (name, key, m)
        assert m["images"] == n_test and m["diverged"] == 0
        assert math.isfinite(m["seconds"]) and m["seconds"] > 0
    # Ano-Unet's own image score is the map max; the f-Net time is counted for both f-Net methods
    assert metrics["ano-unet"]["image_auroc"] == metrics["ano-unet"]["image_auroc_map_max"]
    fnet = metrics["settings"]["seconds"]["fnet"]
    assert metrics["ano-unet"]["seconds_parts"]["fnet"] == metrics["doc-decoder"]["seconds_parts"]["fnet"] == fnet
    s = metrics["settings"]
    assert (s["preset"], s["image_size"], s["smoothing_sigma"]) == ("tiny", 32, 1.0)
    assert (s["n_train"], s["n_test_good"], s["n_test_defect"]) == (16, N_GOOD_TEST, sum(DEFECTS.values()))
    table = (out / "metrics.md").read_text()
    assert all(f"| {name} |" in table for name in METHODS)


def test_panels_for_every_test_image(run, mvtec_dir):
    out, _ = run
    expected = {f"test_good_{i:03d}.png" for i in range(N_GOOD_TEST)}
    expected |= {f"test_{k}_{i:03d}.png" for k, n in DEFECTS.items() for i in range(n)}
    assert {p.name for p in (out / "panels").iterdir()} == expected
    with Image.open(out / "panels" / "test_spot_000.png") as im:  # image | mask | 4 overlays
        assert im.width > 6 * 32 * 6 and im.mode == "RGB"


def test_parse_methods():
    assert parse_methods(None) == list(METHODS)
    assert parse_methods("AnoGAN, ano_unet,anogan") == ["anogan", "ano-unet"]
    with pytest.raises(AnoUnetError, match="unknown method 'vae'"):
        parse_methods("autoencoder,vae")
    with pytest.raises(AnoUnetError, match="no method"):
        parse_methods(" , ")


def _one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("anounet: error: ") and err.count("\n") == 1, err
    return err


def test_cli_errors(tmp_path, capsys, mvtec_dir):
    err = _one_line_error(capsys, ["evaluate", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert "nope" in err and "not found" in err
    err = _one_line_error(capsys, ["evaluate", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "train/good" in err  # a folder, but not an MVTec AD category folder
    err = _one_line_error(capsys, ["evaluate", str(mvtec_dir), "--out", str(tmp_path / "o"),
                                   "--methods", "ano-unet,nonsense", "--preset", "tiny"])
    assert "unknown method 'nonsense'" in err
    _one_line_error(capsys, ["evaluate", "embedded", "--out", str(tmp_path / "o"), "--preset", "huge"])
    assert not (tmp_path / "o").exists()  # nothing written before the inputs are checked


def test_every_synthetic_family_loads_as_an_evaluation_set():
    from anounet_jax.config import TINY
    from anounet_jax.data.sources import load_labelled
    from anounet_jax.data.synthetic import FAMILIES

    small = TINY.replace(data={"n_train": 4, "n_test_good": 1, "n_test_defect": 2})
    for family in FAMILIES:
        d = load_labelled(f"synthetic:{family}", small)
        assert d.name == f"synthetic {family}" and len(d.train) == 4 and len(d.test) == 3
        assert d.test.masks[d.test.labels == 1].any(axis=(1, 2)).all()  # every defect has mask pixels


def test_cli_evaluates_a_synthetic_family_and_records_its_settings(tmp_path, capsys):
    out = tmp_path / "weave"
    argv = ["evaluate", "synthetic:weave", "--preset", "tiny", "--methods", "autoencoder", "--out", str(out),
            "--set", "data.n_train=16", "--set", "data.n_test_defect=4", "--set", "maps.deviation=relative",
            "--set", "maps.deviation_low=0.5", "--quiet"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["data"] == "synthetic weave" and metrics["settings"]["n_train"] == 16
    assert metrics["settings"]["deviation"] == "relative" and metrics["settings"]["deviation_low"] == 0.5
    assert "map deviation relative (low side x 0.5)" in (out / "metrics.md").read_text()
    assert set(metrics["autoencoder"]["by_kind"]) <= {"dark_spot", "bright_spot", "scratch", "orientation",
                                                      "missing_detail", "extra_detail", "colour_shift",
                                                      "foreign_patch"}
    from anounet_jax.settings import preset_from_record

    again = preset_from_record(out / "config.json")  # the run's settings, ready to run again
    assert again.data.n_train == 16 and again.data.n_test_defect == 4 and again.name == "tiny"
    assert again.maps.deviation == "relative" and again.maps.deviation_low == 0.5


def test_a_warm_preset_trains_its_start_once_and_every_ano_unet_fit_begins_there(mvtec_dir, tmp_path, monkeypatch):
    from anounet_jax.config import TINY
    from anounet_jax.engine import fit as fit_module

    seen = []
    original = fit_module.Engine.for_trained.__func__

    def spy(cls, preset, trained, **kw):
        engine = original(cls, preset, trained, **kw)
        seen.append(engine.start_params)
        return engine

    monkeypatch.setattr(fit_module.Engine, "for_trained", classmethod(spy))
    preset = TINY.replace(fit={"start": "warm", "steps": 5}, start={"steps": 3, "inner_steps": 2})
    lines = []
    m = evaluate(mvtec_dir, preset, "ano-unet,autoencoder", tmp_path, seed=0, progress=False, log=lines.append)
    assert sum("warm start (reptile" in line for line in lines) == 1
    assert seen and all(p is not None for p in seen)
    parts = m["ano-unet"]["seconds_parts"]
    assert parts["warm_start"] > 0 and "warm_start" not in m["autoencoder"]["seconds_parts"]
    assert m["ano-unet"]["pixel_auroc"] is not None
    with pytest.raises(AnoUnetError, match="warm-start method 'maml'"):  # refused before anything runs
        evaluate(mvtec_dir, preset.replace(start={"method": "maml"}), "ano-unet", tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()

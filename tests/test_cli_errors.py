"""Every user mistake: one line naming the thing and the problem, exit 2, before any expensive step
(each of these returns in well under a second of work: no f-Net is trained, nothing is written)."""

import numpy as np
import pytest
from PIL import Image

from anounet_jax.cli import main


def _one_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def blocker(tmp_path):
    """A regular file: a folder can never be created below it (permissions do not stop root)."""
    f = tmp_path / "a-file"
    f.write_text("x")
    return f


def test_unwritable_output_folders_are_refused_before_training(capsys, blocker, tmp_path, monkeypatch):
    import anounet_jax.fnet.train as fnet_train
    import anounet_jax.jobs.demo as demo  # imported before patching: it binds train_fnet at import

    def no_training(*a, **k):
        raise AssertionError("training started before the output folder was checked")

    monkeypatch.setattr(fnet_train, "train_fnet", no_training)
    monkeypatch.setattr(demo, "train_fnet", no_training)
    err = _one_line(capsys, ["demo", "--preset", "tiny", "--out", str(blocker / "demo"), "--quiet"])
    assert str(blocker / "demo") in err and "output folder" in err
    err = _one_line(capsys, ["evaluate", "embedded", "--preset", "tiny", "--out", str(blocker / "ev"),
                             "--methods", "ano-unet", "--quiet"])
    assert "output folder" in err
    err = _one_line(capsys, ["train-fnet", "embedded", "--preset", "tiny", "--out", str(blocker / "ck" / "x"),
                             "--quiet"])
    assert "output folder" in err


@pytest.mark.parametrize("argv, words", [
    (["demo", "--seed", "-1"], ["--seed", "non-negative"]),
    (["demo", "--seed", "x"], ["--seed", "non-negative"]),
    (["demo", "--formulation", "typo"], ["--formulation", "typo"]),
    (["evaluate", "embedded", "--out", "o", "--formulation", "typo"], ["--formulation", "typo"]),
    (["score", "in", "--ckpt", "c", "--out", "o", "--chunk-size", "0"], ["--chunk-size", "positive"]),
    (["demo", "--set", "fit.stepz=3"], ["fit.stepz", "steps"]),
    (["demo", "--set", "fit.steps=1.5"], ["fit.steps", "int"]),
])
def test_bad_arguments_are_one_line(capsys, argv, words):
    err = _one_line(capsys, argv)
    assert all(w in err for w in words), err


def test_a_one_image_folder_is_refused_before_training(capsys, tmp_path, monkeypatch):
    import anounet_jax.fnet.train as fnet_train

    monkeypatch.setattr(fnet_train, "train_fnet", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    (tmp_path / "normal").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "normal" / "only.png")
    err = _one_line(capsys, ["train-fnet", str(tmp_path / "normal"), "--preset", "tiny",
                             "--out", str(tmp_path / "ck"), "--quiet"])
    assert "at least 2 normal images" in err and "normal" in err


def test_embedded_always_means_the_built_in_data(tmp_path):
    from anounet_jax.data.sources import parse_source

    assert parse_source("embedded") == ("embedded", None)
    assert parse_source("embedded:grass") == ("embedded", "grass")
    assert parse_source("synthetic:weave") == ("synthetic", "weave")
    assert parse_source("./embedded")[0] == "folder"  # a real folder of that name, spelled as a path

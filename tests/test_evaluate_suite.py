"""`anounet evaluate ROOT` over several categories: detection, resume after an interruption, the
summary (one mean row per method), DAGM roots, config.json, and one-line errors for a bad ROOT."""

import csv
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from anounet_jax.cli import main
from anounet_jax.config import TINY
from anounet_jax.data.sources import load_labelled
from anounet_jax.data.synthetic import write_mvtec
from anounet_jax.errors import AnoUnetError
from anounet_jax.jobs.evaluate_suite import evaluate_suite, find_categories

SMALL = dict(size=32, n_train=10, n_test_good=2, n_test_defect=3)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Two synthetic MVTec-style categories (and a stray file and a hidden folder, both ignored)."""
    r = tmp_path_factory.mktemp("bench") / "root"
    write_mvtec(r / "weave", "weave", seed=0, **SMALL)
    write_mvtec(r / "grid", "grid", seed=1, **SMALL)
    (r / "readme.txt").write_text("not a category")
    (r / ".cache").mkdir()
    return r


def _gray(rng, n=64):
    return rng.integers(0, 256, (n, n), dtype=np.uint8)


def make_dagm_later(root, class_id, rng):
    """DAGM later release, class N: Train (3 normal, 1 defective) and Test (2 normal, 2 defective)."""
    cls = root / f"Class{class_id}"
    for split, n_normal, n_def in (("Train", 3, 1), ("Test", 2, 2)):
        (cls / split / "Label").mkdir(parents=True)
        rows = []
        for i in range(n_normal + n_def):
            name = f"{i:04d}.PNG"
            Image.fromarray(_gray(rng)).save(cls / split / name)
            if i >= n_normal:
                m = np.zeros((64, 64), np.uint8)
                m[10:30, 20:40] = 255
                Image.fromarray(m).save(cls / split / "Label" / f"{i:04d}_label.PNG")
                rows.append(f"{i + 1}\t1\t{name}\t0\t{i:04d}_label.PNG")
            else:
                rows.append(f"{i + 1}\t0\t{name}\t0\t0")
        (cls / split / "Label" / "Labels.txt").write_text("header\n" + "\n".join(rows) + "\n")


def make_dagm_original(root, class_id, rng):
    """DAGM original release: ClassN (6 normal) beside ClassN_def (2 defective, ellipse labels)."""
    for i in range(1, 7):
        (root / f"Class{class_id}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_gray(rng)).save(root / f"Class{class_id}" / f"{i:04d}.PNG")
    (root / f"Class{class_id}_def").mkdir()
    for i in (1, 2):
        Image.fromarray(_gray(rng)).save(root / f"Class{class_id}_def" / f"{i}.PNG")
    (root / f"Class{class_id}_def" / "labels.txt").write_text("1 12 4 0 30 30\n2 6 6 0 20 40\n")


def test_what_holds_categories(root, tmp_path):
    cats = find_categories(root)
    assert [(c.name, c.kind) for c in cats] == [("grid", "mvtec"), ("weave", "mvtec")]
    assert find_categories(root / "grid") is None  # a category: one data set, as before
    assert find_categories("synthetic:weave") is None and find_categories("embedded") is None
    assert find_categories(tmp_path / "missing") is None  # evaluate reports it

    with pytest.raises(AnoUnetError, match="holds no category") as e:
        find_categories(tmp_path)
    assert e.value.path == str(tmp_path) and "train/good" in str(e.value) and "Class1" in str(e.value)
    broken = tmp_path / "broken_root"
    write_mvtec(broken / "ok", "weave", **SMALL)
    (broken / "half" / "test" / "good").mkdir(parents=True)  # a category without train/good
    with pytest.raises(AnoUnetError, match="no train/good") as e:
        find_categories(broken)
    assert e.value.path == str(broken / "half")


def test_dagm_roots_both_releases(tmp_path):
    rng = np.random.default_rng(0)
    later = tmp_path / "dagm"
    for n in (10, 2):
        make_dagm_later(later, n, rng)
    (later / "Class3").mkdir()  # neither release's layout: not a class
    cats = find_categories(later)
    assert [(c.name, c.kind) for c in cats] == [("Class2", "dagm"), ("Class10", "dagm")]  # natural order
    assert find_categories(later / "Class2") is None
    d = load_labelled(later / "Class2", TINY)
    assert d.train.ids == ["train/good/0000", "train/good/0001", "train/good/0002"]
    assert d.test.ids == ["test/good/0000", "test/good/0001", "test/defect/0002", "test/defect/0003"]
    assert d.test.labels.tolist() == [0, 0, 1, 1] and d.test.masks[2:].any() and not d.test.masks[:2].any()

    original = tmp_path / "dagm_original"
    make_dagm_original(original, 1, rng)
    assert [c.name for c in find_categories(original)] == ["Class1"]  # Class1_def is part of it
    d = load_labelled(original / "Class1", TINY, seed=0)
    assert len(d.train) == 4 and d.test.labels.tolist() == [0, 0, 1, 1]  # 2 normal held out, as many as defects
    assert d.test.ids[2:] == ["test/defect/1", "test/defect/2"]
    assert not set(i.split("/")[-1] for i in d.train.ids) & set(i.split("/")[-1] for i in d.test.ids[:2])

    s = evaluate_suite(later, TINY, "autoencoder", tmp_path / "out", progress=False)
    assert [r["category"] for r in s["rows"]] == ["Class2", "Class10"]
    assert (tmp_path / "out" / "Class10" / "report.html").is_file()


class _Counting:
    """Stands in for jobs.evaluate.evaluate: counts calls and can stop the run like a Ctrl-C."""

    def __init__(self, real, interrupt_at=None):
        self.real, self.interrupt_at, self.calls = real, interrupt_at, []

    def __call__(self, data, *a, **k):
        self.calls.append(str(data).rsplit("/", 1)[-1])
        if len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        return self.real(data, *a, **k)


def test_interrupted_run_resumes_without_recomputing(root, tmp_path, monkeypatch, capsys):
    import anounet_jax.jobs.evaluate as ev

    out = tmp_path / "all"
    argv = ["evaluate", str(root), "--preset", "tiny", "--methods", "autoencoder", "--out", str(out), "--quiet"]
    first = _Counting(ev.evaluate, interrupt_at=2)
    monkeypatch.setattr(ev, "evaluate", first)
    assert main(argv) == 130  # interrupted in the second category
    assert first.calls == ["grid", "weave"]
    assert (out / "grid" / "metrics.json").is_file() and not (out / "weave" / "metrics.json").exists()
    assert (out / "config.json").is_file() and not (out / "metrics.json").exists()
    stamp = (out / "grid" / "metrics.json").stat().st_mtime_ns

    second = _Counting(first.real)
    monkeypatch.setattr(ev, "evaluate", second)
    assert main(argv) == 0
    assert second.calls == ["weave"]  # grid was finished: kept, not recomputed
    assert (out / "grid" / "metrics.json").stat().st_mtime_ns == stamp
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["settings"]["kept_from_before"] == ["grid"]
    assert [(r["category"], r["method"]) for r in summary["rows"]] == [("grid", "autoencoder"),
                                                                      ("weave", "autoencoder")]
    assert [(r["category"], r["method"]) for r in summary["mean"]] == [("mean", "autoencoder")]

    third = _Counting(first.real)
    monkeypatch.setattr(ev, "evaluate", third)
    (out / "metrics.json").unlink()
    assert main(argv) == 0 and third.calls == []  # everything done: only the summary is written again
    assert json.loads((out / "metrics.json").read_text())["settings"]["kept_from_before"] == ["grid", "weave"]
    capsys.readouterr()

    # what counts as finished: every requested method, the same settings (engine settings aside)
    from anounet_jax.baselines.configs import baseline_config
    from anounet_jax.jobs.evaluate_suite import finished_metrics

    cfg = baseline_config("tiny")
    b = {f.name: dataclasses.asdict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    grid = out / "grid"
    assert finished_metrics(grid, ["autoencoder"], TINY, 0, 1.0, b) is not None
    assert finished_metrics(grid, ["autoencoder"], TINY.replace(engine={"chunk_size": 3}), 0, 1.0, b) is not None
    assert finished_metrics(grid, ["autoencoder", "anogan"], TINY, 0, 1.0, b) is None  # a method not run yet
    assert finished_metrics(grid, ["autoencoder"], TINY, 1, 1.0, b) is None  # another seed
    assert finished_metrics(grid, ["autoencoder"], TINY, 0, 2.0, b) is None  # other smoothing
    assert finished_metrics(grid, ["autoencoder"], TINY.replace(fit={"beta": 3.0}), 0, 1.0, b) is None
    other = dict(b, autoencoder=dict(b["autoencoder"], epochs=99))
    assert finished_metrics(grid, ["autoencoder"], TINY, 0, 1.0, other) is None
    (grid / "metrics.json").write_text("{\"autoencoder\": {")  # cut short by a kill
    assert finished_metrics(grid, ["autoencoder"], TINY, 0, 1.0, b) is None


def test_cli_end_to_end_summary_report_and_record(root, tmp_path, capsys):
    out = tmp_path / "runs" / "all"
    argv = ["evaluate", str(root), "--methods", "ano-unet,autoencoder", "--preset", "tiny",
            "--set", "fit.steps=5", "--set", "fnet.epochs=1", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| **mean** | **ano-unet** |" in printed and "| **mean** | **autoencoder** |" in printed
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["category"], r["method"]) for r in rows] == [
        ("grid", "ano-unet"), ("grid", "autoencoder"), ("weave", "ano-unet"), ("weave", "autoencoder"),
        ("mean", "ano-unet"), ("mean", "autoencoder")]
    summary = json.loads((out / "metrics.json").read_text())
    for mean in summary["mean"]:
        mine = [r for r in summary["rows"] if r["method"] == mean["method"]]
        for key in ("pixel_auroc", "aupro", "image_auroc_map_max", "seconds"):
            assert mean[key] == pytest.approx(np.mean([r[key] for r in mine]), abs=1e-6)
        assert mean["images"] == sum(r["images"] for r in mine) == 10
    for cat in ("grid", "weave"):
        per = json.loads((out / cat / "metrics.json").read_text())
        assert per["settings"]["preset_config"]["fit"]["steps"] == 5
        assert {"per_image.json", "curves.json", "report.html", "panels"} <= {p.name for p in (out / cat).iterdir()}
    assert (out / "report.html").is_file() and (out / "metrics.md").read_text().count("**mean**") == 2

    from anounet_jax.settings import preset_from_record

    record = json.loads((out / "config.json").read_text())
    assert record["command"] == "evaluate" and "fit.steps=5" in record["overrides"]
    again = preset_from_record(out)
    assert again.fit.steps == 5 and again.name == "tiny"


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("anounet: error: ") and err.count("\n") == 1, err
    return err


def test_bad_root_is_one_line_and_writes_nothing(tmp_path, capsys):
    images = tmp_path / "root" / "photos"
    images.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "a.png")
    out = tmp_path / "out"
    err = _one_line_error(capsys, ["evaluate", str(tmp_path / "root"), "--out", str(out), "--preset", "tiny"])
    assert f"{tmp_path / 'root'}: holds no category" in err and "train/good" in err
    err = _one_line_error(capsys, ["evaluate", str(tmp_path / "root"), "--out", str(out), "--methods", "vae"])
    assert "unknown method 'vae'" in err
    assert not out.exists()

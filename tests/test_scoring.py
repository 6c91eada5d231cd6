"""`anounet train-fnet` + `anounet score`: resume after SIGKILL, bad files, flagged-only maps, refusals,
the Python API. Tiny preset; every run shares one compilation through a persistent compile cache."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anounet_jax import cli
from anounet_jax.config import TINY
from anounet_jax.data.embedded import load_test
from anounet_jax.jobs.score.job import read_scores_csv
from tests.test_report import check_self_contained

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    """A persistent compilation cache shared by this process and its subprocesses (XLA:CPU takes
    seconds to compile the fit step; each `anounet` subprocess would otherwise compile it again)."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    d = str(tmp_path_factory.mktemp("jax_cache"))
    old = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    cc.reset_cache()
    jax.config.update("jax_compilation_cache_dir", d)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=d, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               ANOUNET_CPU_DEVICES=str(len(jax.local_devices())))  # as this process: the same programs
    yield env
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
    cc.reset_cache()


def _untrained_fnet(fnet_cfg, train, reference, seed=0, progress=True, init_variables=None):
    """Stands in for f-Net training (seconds of XLA compilation, tested in test_fnet_train.py): the
    preset's f-Net with random weights and BatchNorm statistics, C and features as training gives."""
    import jax

    from anounet_jax.fnet.model import FrozenFNet, build_fnet_module, compute_center
    from anounet_jax.fnet.train import TrainedFNet

    module = build_fnet_module(fnet_cfg)
    size = train.images.shape[1]
    x = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
    shapes = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x, train=False), x)
    rng = np.random.default_rng(seed)

    def fill(path, s):
        if "var" in jax.tree_util.keystr(path):
            return rng.uniform(0.5, 2.0, s.shape).astype(np.float32)
        return (rng.normal(0, 1, s.shape) / np.sqrt(max(np.prod(s.shape[:-1]), 1))).astype(np.float32)

    fnet = FrozenFNet.from_module(module, jax.tree_util.tree_map_with_path(fill, shapes))
    feats = fnet.features(train.images)
    return TrainedFNet(fnet, compute_center(feats), feats, [])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, jax_cache):
    """`anounet train-fnet FOLDER --preset tiny` (training replaced by random weights, see above), and a
    second checkpoint with the same f-Net and another scorer, so another fingerprint."""
    from anounet_jax.checkpoint import load_checkpoint, read_checkpoint_info, save_checkpoint
    from anounet_jax.data.embedded import load_normal
    from anounet_jax.fnet.scores import make_scorer

    d = tmp_path_factory.mktemp("ckpt")
    normal = load_normal("brick", TINY.image_size, 16, seed=0)
    _write_images(d / "normal", normal.images, [f"{i:02d}.png" for i in range(16)])
    args = ["train-fnet", str(d / "normal"), "--preset", "tiny", "--method", "doc", "--out", str(d / "a"),
            "--quiet"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("anounet_jax.fnet.train.train_fnet", _untrained_fnet)
        assert cli.main(args) == 0
        assert cli.main(args) == 2  # an existing checkpoint is not replaced without --overwrite
    info = read_checkpoint_info(d / "a")
    assert info["preset"]["fnet"]["method"] == "doc" and info["scorer"]["kind"] == "lof"
    a = load_checkpoint(d / "a")
    scorer = make_scorer("l2").fit(np.stack([a.center, a.center + 0.1, a.center - 0.1]), center=a.center)
    save_checkpoint(d / "b", a.preset, a.fnet, a.center, scorer)
    return d / "a", d / "b"


def _write_images(folder: Path, images, names):
    folder.mkdir(parents=True, exist_ok=True)
    for x, name in zip(images, names):
        Image.fromarray(np.round(x * 255).astype(np.uint8)).save(folder / name)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """12 tiny test images (4 normal, 8 with planted defects) as PNG files."""
    t = load_test("brick", TINY.image_size, 4, 8, seed=1)
    folder = tmp_path_factory.mktemp("imgs") / "in"
    names = [f"{i:02d}_{name.replace('/', '_')}.png" for i, name in enumerate(t.ids)]
    _write_images(folder, t.images, names)
    return folder


def _score_args(folder, ck, out, *extra):
    return ["score", str(folder), "--ckpt", str(ck), "--out", str(out), "--quiet", *extra]


@pytest.fixture(scope="module")
def threshold(tmp_path_factory, ckpt, images):
    """A score quantile (from a scores-only run) that flags about a third of the images."""
    out = tmp_path_factory.mktemp("none") / "out"
    assert cli.main(_score_args(images, ckpt[0], out, "--visualize", "none")) == 0
    return float(np.quantile([float(r["score"]) for r in read_scores_csv(out / "scores.csv")], 0.65))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, ckpt, images, threshold):
    """An uninterrupted run: chunks of 2, maps for the flagged images (the default)."""
    out = tmp_path_factory.mktemp("ref") / "out"
    assert cli.main(_score_args(images, ckpt[0], out, *REF_ARGS, str(threshold))) == 0
    return out


REF_ARGS = ("--chunk-size", "2", "--threshold")


def _tree(out: Path) -> dict:
    """Relative path -> bytes of every result file (not the lock)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".lock")}


def test_flagged_only_maps_and_outputs(reference, images, threshold):
    rows = read_scores_csv(reference / "scores.csv")
    assert [r["file"] for r in rows] == sorted(p.name for p in images.iterdir())
    flagged = {r["file"] for r in rows if r["flagged"] == "1"}
    assert flagged == {r["file"] for r in rows if float(r["score"]) > threshold}
    assert 2 <= len(flagged) <= 6
    assert {p.name[:-4] for p in (reference / "maps").iterdir()} == flagged
    assert {p.name[:-4] for p in (reference / "overlays").iterdir()} == flagged
    for r in rows:
        assert r["status"] == ("ok" if r["file"] in flagged else "not visualized")
        assert (r["L_R"] != "" and r["L_C"] != "") == (r["file"] in flagged)
    for f in flagged:
        with np.load(reference / "maps" / f"{f}.npz") as z:
            assert z["heatmap"].dtype == np.float16 and z["heatmap"].shape == (32, 32)
            assert z["recon"].dtype == np.float16 and z["recon"].shape == (32, 32, 3)
    pages = check_self_contained(reference)
    assert pages[0].read_text().count('class="ov"') == len(flagged)


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, jax_cache, ckpt, images, threshold, reference):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "anounet_jax.cli", *_score_args(images, ckpt[0], out, *REF_ARGS, str(threshold))]
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(cmd, env=jax_cache, stdout=log, stderr=log)
    first = out / "parts" / "part-000000.json"
    deadline = time.monotonic() + 120
    while not first.exists():
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    assert proc.returncode == -signal.SIGKILL
    done = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "parts").glob("part-*.json")}
    assert 1 <= len(done) < 6 and not (out / "scores.csv").exists()  # really killed mid-job

    assert cli.main(cmd[3:]) == 0  # the same command again (in this process: it has compiled already)
    # chunks committed before the kill were not redone
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in done} == done
    assert not list(out.rglob("*.tmp"))
    got, want = _tree(out), _tree(reference)
    assert sorted(got) == sorted(want)
    for name in want:  # scores.csv, maps, overlays, report, summary, manifest, part files
        assert got[name] == want[name], name


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_share_the_job_and_match_one(tmp_path, jax_cache, ckpt, images, threshold, reference):
    """`anounet score --coordinator ... --num-processes 2` (jax.distributed on CPU): each process takes
    every other chunk; the outputs are the bytes of the one-process run with the same devices per
    process (one CPU device, as this test process has: a program compiled for another device count
    may round differently)."""
    out = tmp_path / "out"
    port = _free_port()
    logs, procs = [], []
    for pid in (0, 1):
        logs.append(open(tmp_path / f"p{pid}.log", "w"))
        cmd = [sys.executable, "-m", "anounet_jax.cli",
               *_score_args(images, ckpt[0], out, *REF_ARGS, str(threshold)),
               "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(pid)]
        procs.append(subprocess.Popen(cmd, env=jax_cache, stdout=logs[-1], stderr=logs[-1]))
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
        for f in logs:
            f.close()
    assert codes == [0, 0], [(tmp_path / f"p{i}.log").read_text()[-2000:] for i in (0, 1)]
    assert {p.name for p in out.glob(".lock*")} == {".lock-0", ".lock-1"}
    got, want = _tree(out), _tree(reference)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name


def test_bad_file_in_the_middle(tmp_path, ckpt, images, reference):
    folder = tmp_path / "in"
    shutil.copytree(images, folder)
    good = sorted(folder.iterdir())
    data = good[5].read_bytes()
    bad = folder / (good[5].stem + "_truncated.png")  # sorts right after file 5
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert cli.main(_score_args(folder, ckpt[0], out, "--visualize", "none", "--chunk-size", "4")) == 1
    rows = read_scores_csv(out / "scores.csv")
    ref = {r["file"]: r for r in read_scores_csv(reference / "scores.csv")}
    assert [r["file"] for r in rows] == sorted(p.name for p in folder.iterdir())
    (bad_row,) = [r for r in rows if r["file"] == bad.name]
    assert rows.index(bad_row) == 6
    assert "truncated" in bad_row["status"] and bad_row["score"] == "" and bad_row["flagged"] == ""
    others = [r for r in rows if r is not bad_row]
    assert all(r["status"] == "not visualized" and r["L_R"] == "" for r in others)
    np.testing.assert_allclose([float(r["score"]) for r in others],
                               [float(ref[r["file"]]["score"]) for r in others], rtol=1e-5)
    assert not (out / "maps").exists()
    assert "1 unreadable" in (out / "report.html").read_text()
    check_self_contained(out)


def test_changed_checkpoint_or_settings_on_resume_are_refused(tmp_path, ckpt, images, capsys):
    out = tmp_path / "out"
    args = _score_args(images, ckpt[0], out, "--visualize", "none", "--chunk-size", "4")
    assert cli.main(args) == 0
    (out / "parts" / "part-000002.json").unlink()  # as if killed before the last chunk
    (out / "scores.csv").unlink()
    capsys.readouterr()
    assert cli.main(_score_args(images, ckpt[1], out, "--visualize", "none", "--chunk-size", "4")) == 2
    err = capsys.readouterr().err
    assert "another checkpoint" in err and "fingerprint" in err and "Traceback" not in err
    assert cli.main(_score_args(images, ckpt[0], out, "--visualize", "flagged", "--chunk-size", "4")) == 2
    assert "visualize: was 'none', now 'flagged'" in capsys.readouterr().err
    assert cli.main(_score_args(images, ckpt[0], out, "--visualize", "none", "--chunk-size", "4",
                                "--preset", "tiny", "--seed", "1")) == 2
    assert "seed: was 0, now 1" in capsys.readouterr().err
    assert not (out / "scores.csv").exists()
    assert cli.main(args) == 0  # the original command finishes it
    assert len(read_scores_csv(out / "scores.csv")) == 12


def test_python_api(ckpt, images, reference, threshold):
    import anounet_jax

    files = sorted(images.iterdir())[:3]
    x = np.stack([np.asarray(Image.open(p), np.float32) * np.float32(1 / 255) for p in files])
    ref = read_scores_csv(reference / "scores.csv")[:3]
    res = anounet_jax.score(x, str(ckpt[0]), preset="tiny", visualize="all", threshold=threshold)
    assert isinstance(res, anounet_jax.ScoreResult) and len(res) == 3 and res.threshold == threshold
    np.testing.assert_allclose(res.scores, [float(r["score"]) for r in ref], rtol=1e-5)
    assert res.flagged.tolist() == [r["flagged"] == "1" for r in ref]
    assert res.status == ["ok"] * 3 and np.isfinite(res.heatmaps).all() and np.isfinite(res.loss_c).all()
    for i in np.flatnonzero(res.flagged):  # position i has the same key as file i of the folder
        with np.load(reference / "maps" / (ref[i]["file"] + ".npz")) as z:
            np.testing.assert_allclose(res.heatmaps[i], z["heatmap"].astype(np.float32), atol=1e-3)
            np.testing.assert_allclose(res.recon[i], z["recon"].astype(np.float32), atol=2e-3)
        assert float(ref[i]["L_R"]) == pytest.approx(float(res.loss_r[i]), abs=1e-6)
    res = anounet_jax.score(x[:3], str(ckpt[0]), visualize="none")
    assert res.status == ["not visualized"] * 3 and np.isnan(res.heatmaps).all()


def test_import_stays_light():
    code = ("import sys, anounet_jax; assert callable(anounet_jax.__getattr__); "
            "assert 'jax' not in sys.modules and 'anounet_jax.jobs.score' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_score_refuses_bad_thresholds_and_unwritable_outputs_before_scoring(tmp_path, ckpt, images, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for threshold in ("-1", "nan", "inf"):
        assert cli.main(_score_args(images, ckpt[0], tmp_path / "o", "--threshold", threshold)) == 2
        err = capsys.readouterr().err
        assert "threshold" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    assert cli.main(_score_args(images, ckpt[0], blocker / "out")) == 2
    err = capsys.readouterr().err
    assert "output folder" in err and str(blocker / "out") in err and "Traceback" not in err


def test_python_api_measures_the_formulation_on_the_first_chunk(ckpt, images):
    import anounet_jax

    files = sorted(images.iterdir())[:2]
    x = np.stack([np.asarray(Image.open(p), np.float32) * np.float32(1 / 255) for p in files])
    res = anounet_jax.score(x, str(ckpt[0]), visualize="all", formulation="measure")
    assert res.status == ["ok", "ok"] and np.isfinite(res.heatmaps).all()

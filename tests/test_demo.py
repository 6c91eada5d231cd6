import json

import numpy as np
from PIL import Image

from anounet_jax.cli import main
from anounet_jax.config import TINY


def test_demo_pipeline_runs_end_to_end_on_the_tiny_preset(tmp_path, capsys):
    out = tmp_path / "demo"
    # the full photograph shrunk to 128 px first (7 x 7 tiles of 32 at stride 16) to keep the test fast;
    # fits warm-started as the small preset's are (a short Reptile start trained in the demo)
    assert main(["demo", "--preset", "tiny", "--out", str(out), "--quiet", "--set", "tiles.scale=0.25",
                 "--set", "tiles.stride=16", "--set", "fit.start=warm", "--set", "fit.steps=10",
                 "--set", "start.steps=10", "--set", "start.inner_steps=5"]) == 0
    printed = capsys.readouterr().out
    assert "pixel AUROC" in printed and "image AUROC" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    n_test = TINY.data.n_test_good + TINY.data.n_test_defect
    assert metrics["images"] == n_test and metrics["diverged"] == 0
    assert metrics["seconds"]["warm_start"] > 0
    assert metrics["warm_start"] == {"method": "reptile", "steps": 10, "inner_steps": 5}
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert 0.0 <= metrics[key] <= 1.0
    # the planted defects must be found better than chance even on the tiny preset
    assert metrics["pixel_auroc"] > 0.6
    photo = metrics["photo"]  # the whole 512 x 512 photograph, mapped by tiles, at its native size
    assert photo["size"] == [512, 512] and photo["tiles"] == 49 and photo["diverged_tiles"] == 0
    assert sum(1 for d in photo["defects"] if d["size_px"] <= 6) >= 2
    for key in ("pixel_auroc", "aupro", "pixel_auroc_small_defects"):
        assert 0.0 <= photo[key] <= 1.0
    assert "full photograph 512x512" in printed
    assert Image.open(out / "photo" / "overlay.png").size == (512, 512)
    assert Image.open(out / "photo" / "panel.png").size == (3 * 512 + 16, 512)
    with np.load(out / "photo" / "heatmap.npz") as z:
        assert z["heatmap"].shape == (512, 512) and z["mask"].any()
    panels = sorted((out / "panels").glob("*.png"))
    assert len(panels) == n_test
    panel = np.asarray(Image.open(panels[-1]))
    assert panel.ndim == 3 and panel.shape[1] > 4 * TINY.image_size  # four tiles side by side


def test_cli_reports_user_errors_without_a_traceback(tmp_path, capsys):
    assert main(["demo", "--preset", "huge", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("anounet: error: unknown preset 'huge'") and "Traceback" not in err

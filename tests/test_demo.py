import json

import numpy as np
from PIL import Image

from anounet_jax.cli import main
from anounet_jax.config import TINY


def test_demo_pipeline_runs_end_to_end_on_the_tiny_preset(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--preset", "tiny", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "pixel AUROC" in printed and "image AUROC" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    n_test = TINY.data.n_test_good + TINY.data.n_test_defect
    assert metrics["images"] == n_test and metrics["diverged"] == 0
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert 0.0 <= metrics[key] <= 1.0
    # the planted defects must be found better than chance even on the tiny preset
    assert metrics["pixel_auroc"] > 0.6
    panels = sorted((out / "panels").glob("*.png"))
    assert len(panels) == n_test
    panel = np.asarray(Image.open(panels[-1]))
    assert panel.ndim == 3 and panel.shape[1] > 4 * TINY.image_size  # four tiles side by side


def test_cli_reports_user_errors_without_a_traceback(tmp_path, capsys):
    assert main(["demo", "--preset", "huge", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("anounet: error: unknown preset 'huge'") and "Traceback" not in err

"""The evaluation report's numbers (worst levels, per-image maxima, curves) and its page, built from
files without any training (the browser checks are in test_browser_reports.py)."""

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from PIL import Image

from anounet_jax.errors import AnoUnetError
from anounet_jax.jobs.evaluate_report import (curve_data, image_numbers, panel_file, worst_levels,
                                              write_evaluation_record, write_report)
from anounet_jax.metrics import aupro, pixel_auroc


def test_worst_levels_by_hand():
    #            good  good  def   def   def
    map_max = [0.2, 0.6, 0.9, 0.9, 0.5]
    max_in = [None, None, 0.1, 0.6, 0.5]  # defect 2: found elsewhere only (its max inside is low)
    labels = [0, 0, 1, 1, 1]
    w = worst_levels(map_max, [np.nan if v is None else v for v in max_in], labels)
    # good 0.2: below every defect's max inside except none -> loses against 0.1 only: 1/3
    # good 0.6: loses against 0.1 and 0.5, ties 0.6: (2 + 0.5) / 3
    # defect 0.1: both goods above: 1; defect 0.6: ties the 0.6 good: 0.5 / 2; defect 0.5: 0.6 above: 1/2
    np.testing.assert_allclose(w, [1 / 3, 2.5 / 3, 1.0, 0.25, 0.5])
    # the levels add up to the pairs image AUROC (on max inside the mask) counts as wrong, twice
    assert w[[0, 1]].sum() * 3 == pytest.approx(w[[2, 3, 4]].sum() * 2)
    assert worst_levels([0.1, 0.3], [np.nan, np.nan], [0, 0]).tolist() == [0.0, 0.0]  # no opposite class


def test_image_numbers_inside_and_outside_the_mask():
    maps = np.zeros((3, 4, 4), np.float32)
    masks = np.zeros((3, 4, 4), bool)
    maps[0, 1, 1] = 0.7                       # good image
    maps[1, 0, 0], maps[1, 3, 3] = 0.2, 0.9   # defect at (0, 0): weaker than a hot spot elsewhere
    masks[1, 0, 0] = True
    maps[2, 2, 2] = 0.5                       # defective with an empty mask: inside = the map max
    n = image_numbers(maps, [1.0, 2.0, 3.0], [0, 1, 1], masks)
    assert np.isnan(n["max_in"][0]) and n["max_in"][1:].tolist() == pytest.approx([0.2, 0.5])
    assert n["max_out"].tolist() == pytest.approx([0.7, 0.9, 0.5])
    assert n["map_max"].tolist() == pytest.approx([0.7, 0.9, 0.5]) and n["score"].tolist() == [1, 2, 3]
    assert n["worst"].tolist() == [1.0, 1.0, 1.0]  # 0.7 beats both defects' inside maxima


def test_curve_data_areas_match_the_metrics():
    rng = np.random.default_rng(1)
    masks = np.zeros((6, 16, 16), bool)
    masks[3:, 4:9, 4:9] = True
    maps = rng.random((6, 16, 16)).astype(np.float32) + masks * 0.5
    labels = np.array([0, 0, 0, 1, 1, 1])
    c = curve_data(maps, maps.reshape(6, -1).max(1), labels, masks)
    assert np.trapezoid(c["pixel_roc"]["y"], c["pixel_roc"]["x"]) == pytest.approx(pixel_auroc(maps, masks), abs=0.01)
    x, y = np.array(c["pro"]["x"]), np.array(c["pro"]["y"])
    k = x < 0.3
    xs, ys = np.append(x[k], 0.3), np.append(y[k], np.interp(0.3, x, y))  # cut at the AUPRO limit
    assert np.trapezoid(ys, xs) / 0.3 == pytest.approx(aupro(maps, masks), abs=0.01)
    assert c["image_roc"]["x"][0] == 0 and c["image_roc"]["y"][-1] == 1
    inf_score = np.array([0.1, 0.2, np.inf, 0.5, 0.6, 0.7])  # a diverged good image: the top score
    assert curve_data(maps, inf_score, labels, masks)["image_roc"]["x"][1] > 0
    only_good = curve_data(maps[:3], [1, 2, 3], labels[:3], masks[:3])
    assert only_good == {"pixel_roc": None, "pro": None, "image_roc": None}


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.tags, self.items = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        for name in ("href", "src"):
            if a.get(name) is not None:
                self.links.append((tag, a[name]))
        if tag == "figure":
            self.items.append(a)


def parse_report(page: Path) -> _Page:
    p = _Page()
    p.feed(page.read_text())
    return p


def check_links(page: Path) -> _Page:
    """Every href/src of the page: relative, an existing file inside the page's folder; scripts only
    inline."""
    p = parse_report(page)
    root = page.parent.resolve()
    assert not any(t == "link" or (t == "script" and "src" in a) for t, a in p.tags), page
    for tag, url in p.links:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and not url.startswith("/"), url
        target = (root / unquote(parts.path)).resolve()
        assert target.is_file() and root in target.parents, (page, url)
    return p


def fake_evaluation(out: Path, ids, methods=("ano-unet", "autoencoder"), seed=0) -> dict:
    """What `evaluate` leaves in `out`, from random maps (panels are small real PNGs)."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    labels = np.array([0 if "/good/" in i else 1 for i in ids])
    masks = np.zeros((n, 16, 16), bool)
    masks[labels == 1, 5:10, 5:10] = True
    smoothed = {m: (rng.random((n, 16, 16)) + masks * rng.random()).astype(np.float32) for m in methods}
    scores = {m: v.reshape(n, -1).max(1) for m, v in smoothed.items()}
    for i, ident in enumerate(ids):
        f = out / panel_file(ident)
        f.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 60, 3), dtype=np.uint8)).save(f)
    write_evaluation_record(out, ids, labels, masks, smoothed, scores)
    metrics = {m: {"images": n, "pixel_auroc": 0.5, "aupro": 0.3, "image_auroc": None, "image_auroc_map_max": 0.6,
                   "seconds": 1.0, "diverged": 0, "by_kind": {"scratch": {"pixel_auroc": 0.7}},
                   "some_new_key": 0.25}  # metrics may gain keys
               for m in methods}
    metrics["settings"] = {"data": str(out), "preset": "tiny", "seed": 0, "smoothing_sigma": 1.0,
                           "n_train": 4, "n_test": n, "n_test_good": int((labels == 0).sum()),
                           "n_test_defect": int(labels.sum()), "image_size": 16}
    (out / "metrics.json").write_text(json.dumps(metrics))
    return metrics


IDS = ["test/good/000", "test/good/001", "test/scratch/000", "test/scratch/001", "test/hole #1/000"]


def test_single_report_links_gallery_and_rebuild(tmp_path):
    out = tmp_path / "run one"
    out.mkdir()
    fake_evaluation(out, IDS)
    page = write_report(out)  # no curves/*.png yet: drawn from curves.json
    assert page == out / "report.html"
    assert {p.name for p in (out / "curves").iterdir()} == {"pixel_roc.png", "image_roc.png", "pro.png"}
    p = check_links(page)
    text = page.read_text()
    assert "Pixel AUROC per defect kind" in text and "some_new_key" not in text
    assert [a["data-kind"] for a in p.items] == ["good", "good", "scratch", "scratch", "hole #1"]
    # each item's rank in a method's worst-first order follows the worst levels
    rec = json.loads((out / "per_image.json").read_text())
    for j, m in enumerate(("ano-unet", "autoencoder")):
        ranks = [int(a["data-rank"].split(",")[j]) for a in p.items]
        assert sorted(ranks) == list(range(len(IDS)))
        by_rank = [rec["methods"][m]["worst"][i] for i in np.argsort(ranks)]
        assert by_rank == sorted(by_rank, reverse=True)
    (out / "curves" / "pro.png").unlink()
    (out / "report.html").unlink()
    write_report(out)
    assert (out / "curves" / "pro.png").is_file() and (out / "report.html").is_file()


def test_report_of_a_folder_that_is_not_an_evaluation(tmp_path):
    with pytest.raises(AnoUnetError, match="metrics.json not found"):
        write_report(tmp_path)


def test_worst_first_ties_and_missing_values():
    from anounet_jax.jobs.evaluate_report import worst_first_key

    rec = {"labels": [1, 1, 0, 0, 1], "methods": {"m": {
        "worst": [0.5, 0.5, 0.5, 0.5, 0.5],
        "max_in": [0.4, 0.2, None, None, 0.9],
        "max_out": [0.3, 0.3, 0.5, 0.5, None],   # the last: the mask covers the whole image
        "map_max": [0.4, 0.3, 0.2, None, 0.9]}}}  # image 3: a diverged map (stored as None)
    order = sorted(range(5), key=lambda i: worst_first_key(rec, i, "m"))
    # defects first, smallest (inside - outside) first; then good images, highest map max first
    assert order == [1, 0, 4, 3, 2]
    assert worst_first_key(rec, 0, "other")[1] == 2  # no numbers for this method: last

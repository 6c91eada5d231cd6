"""Both reports (`anounet score`'s and `anounet evaluate`'s) in a real browser: headless Chromium from
the system's packages, driven through its --dump-dom and --screenshot modes.

Each page is loaded from disk as a user opens it. For the image check the test loads a copy of the page
beside it (same folder, so the same relative links) with two changes: lazy images made eager, so that
the load event waits for every image, and a script that writes each image's decoded naturalWidth into
the DOM at that event; --dump-dom then shows which images the browser could not load or decode. The
gallery's filters are driven by the page's own address (#category=...&kind=...&order=...), and the
dumped DOM shows which items the page's script hid and in which order it put them.

Skipped, with the reason, only where no Chromium binary is found (.ci/run installs `chromium`).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from PIL import Image

from anounet_jax.cli import main


def find_chromium() -> str | None:
    """$ANOUNET_CHROMIUM, else the first of chromium, chromium-browser, google-chrome(-stable) on PATH."""
    given = os.environ.get("ANOUNET_CHROMIUM")
    if given:
        return shutil.which(given)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


BROWSER = find_chromium()
_WHY = (f"$ANOUNET_CHROMIUM={os.environ['ANOUNET_CHROMIUM']!r} is not an executable on PATH"
        if os.environ.get("ANOUNET_CHROMIUM") else
        "none of chromium, chromium-browser, google-chrome, google-chrome-stable is on PATH")
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason=f"no headless Chromium: {_WHY} (Debian/Ubuntu: apt-get install chromium; "
                            f".ci/run installs it)")

_CHECK = ("<script>window.addEventListener('load',function(){var a=document.images;"
          "for(var i=0;i<a.length;i++){a[i].setAttribute('data-natural-width',String(a[i].naturalWidth));}"
          "document.body.setAttribute('data-loaded','yes');});</script>")


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--disable-extensions", "--mute-audio", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def dump_dom(page: Path, profile: Path, fragment: str = "") -> str:
    done = _chromium(["--dump-dom", page.resolve().as_uri() + fragment], profile)
    assert done.returncode == 0 and "<body" in done.stdout, done.stderr[-2000:]
    return done.stdout


def screenshot(page: Path, png: Path, profile: Path, fragment: str = "", size=(1200, 900)) -> np.ndarray:
    done = _chromium([f"--screenshot={png}", f"--window-size={size[0]},{size[1]}",
                      page.resolve().as_uri() + fragment], profile)
    assert done.returncode == 0 and png.is_file(), done.stderr[-2000:]
    with Image.open(png) as im:
        return np.asarray(im.convert("L"), np.float32)


def assert_not_blank(gray: np.ndarray) -> None:
    assert gray.std() > 20, gray.std()  # a blank (or one-colour) page has std 0
    assert (gray < 200).mean() > 0.02  # text, tables and images cover part of it (blank: 0)


class DOM(HTMLParser):
    """The parts of a dumped DOM the checks read: images, gallery items in order, elements by id."""

    def __init__(self, text: str):
        super().__init__()
        self.images, self.items, self.by_id, self.body = [], [], {}, {}
        self._text_of = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        elif tag == "figure":
            self.items.append(a)
        elif tag == "body":
            self.body = a
        if "id" in a:
            self.by_id[a["id"]] = a
            self._text_of = a

    def handle_data(self, data):
        if self._text_of is not None:
            self._text_of["text"] = self._text_of.get("text", "") + data

    def handle_endtag(self, tag):
        self._text_of = None


def loaded_dom(page: Path, profile: Path, fragment: str = "") -> DOM:
    """The page's DOM after its load event, loaded through an instrumented copy beside it; every image
    checked: a relative link to an existing file inside the page's folder, decoded by the browser."""
    text = page.read_text()
    copy = page.with_name(page.stem + ".browser-check.html")
    copy.write_text(text.replace('loading="lazy"', 'loading="eager"').replace("</body>", _CHECK + "</body>"))
    try:
        dom = DOM(dump_dom(copy, profile, fragment))
    finally:
        copy.unlink()
    assert dom.body.get("data-loaded") == "yes"  # the load event came: every image settled
    root = page.parent.resolve()
    assert dom.images
    for img in dom.images:
        src = img["src"]
        parts = urlsplit(src)
        assert not parts.scheme and not parts.netloc and not src.startswith("/"), src
        target = (root / unquote(parts.path)).resolve()
        assert target.is_file() and root in target.parents, (page, src)
        assert int(img["data-natural-width"]) > 0, (page, src)  # loaded and decoded
    return dom


# --------------------------------------------------------------------------------------------------
# anounet score: report.html + report-K.html
# --------------------------------------------------------------------------------------------------


def test_score_report_pages_load_every_image(tmp_path, monkeypatch, capsys):
    from anounet_jax.config import TINY
    from anounet_jax.data.embedded import load_normal, load_test
    from anounet_jax.jobs.score import report
    from tests.test_scoring import _untrained_fnet

    normal = load_normal("brick", TINY.image_size, 12, seed=0)
    test = load_test("brick", TINY.image_size, 2, 5, seed=1)
    for folder, images in (("normal", normal.images), ("incoming", test.images)):
        (tmp_path / folder).mkdir()
        for i, x in enumerate(images):
            Image.fromarray(np.round(x * 255).astype(np.uint8)).save(tmp_path / folder / f"{i:02d} #{i}.png")
    monkeypatch.setattr("anounet_jax.fnet.train.train_fnet", _untrained_fnet)  # training: test_fnet_train.py
    assert main(["train-fnet", str(tmp_path / "normal"), "--preset", "tiny", "--out", str(tmp_path / "ck"),
                 "--quiet"]) == 0
    monkeypatch.setattr(report, "write_report", functools.partial(report.write_report, page_size=3))
    out = tmp_path / "scored"
    assert main(["score", str(tmp_path / "incoming"), "--ckpt", str(tmp_path / "ck"), "--out", str(out),
                 "--visualize", "all", "--threshold", "0", "--set", "fit.steps=3", "--quiet"]) == 0
    capsys.readouterr()
    pages = [out / "report.html", out / "report-2.html", out / "report-3.html"]
    assert all(p.is_file() for p in pages) and not (out / "report-4.html").exists()

    profile = tmp_path / "profile"
    shown = []
    for page in pages:
        dom = loaded_dom(page, profile)
        shown += [unquote(img["src"]) for img in dom.images if img.get("class") == "ov"]
    # pagination: the 7 flagged images once each over the three pages, every overlay file shown
    assert sorted(shown) == sorted(f"overlays/{p.name}.png" for p in (tmp_path / "incoming").iterdir())
    assert_not_blank(screenshot(pages[0], tmp_path / "score.png", profile))


# --------------------------------------------------------------------------------------------------
# anounet evaluate: the summary report of a benchmark and each category's report
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """`anounet evaluate ROOT` on two tiny synthetic categories (ano-unet and the autoencoder)."""
    from anounet_jax.data.synthetic import write_mvtec

    base = tmp_path_factory.mktemp("evaluate")
    for i, family in enumerate(("weave", "grid")):
        write_mvtec(base / "root" / family, family, size=32, n_train=10, n_test_good=2, n_test_defect=3, seed=i)
    out = base / "out dir"  # a space: links must be quoted
    assert main(["evaluate", str(base / "root"), "--preset", "tiny", "--methods", "ano-unet,autoencoder",
                 "--set", "fit.steps=3", "--set", "fnet.epochs=1", "--out", str(out), "--quiet"]) == 0
    return out


def _visible(dom: DOM) -> list[dict]:
    return [a for a in dom.items if "hidden" not in a]


def test_evaluate_report_filters_and_worst_first(evaluated, tmp_path):
    out, profile = evaluated, tmp_path / "profile"
    dom = loaded_dom(out / "report.html", profile, "#category=weave&kind=defective&order=ano-unet")
    assert len(dom.items) == 10
    for a in dom.items:  # hidden exactly when not a weave defect
        assert ("hidden" in a) == (not (a["data-category"] == "weave" and a["data-label"] == "1")), a
    visible = _visible(dom)
    assert len(visible) == 3 and dom.by_id["shown"]["text"] == "3 of 10 images"
    # ano-unet's worst first: the weave defects ordered by their worst level, highest first
    rec = json.loads((out / "weave" / "per_image.json").read_text())
    panels = [unquote(img["src"]) for img in dom.images if img["src"].startswith("weave/panels/")]
    assert len(panels) == 5  # every weave panel is in the page (the hidden ones too)
    in_page_order = [rec["panels"].index(p[len("weave/"):]) for p in panels]
    levels = [rec["methods"]["ano-unet"]["worst"][i] for i in in_page_order if rec["labels"][i]]
    assert len(levels) == 3
    assert levels == sorted(levels, reverse=True)
    ranks = [int(a["data-rank"].split(",")[0]) for a in visible]
    assert ranks == sorted(ranks)
    # the curves of the other category are hidden too; every curve PNG decoded (loaded_dom)
    curve_imgs = [unquote(i["src"]) for i in dom.images if "/curves/" in i["src"]]
    assert sorted(curve_imgs) == sorted(f"{c}/curves/{k}.png" for c in ("grid", "weave")
                                        for k in ("pixel_roc", "image_roc", "pro"))

    dom = DOM(dump_dom(out / "report.html", profile, "#kind=nonsense&order=input"))  # unknown: all shown
    assert len(_visible(dom)) == 10 and [int(a["data-pos"]) for a in dom.items] == list(range(10))
    assert_not_blank(screenshot(out / "report.html", tmp_path / "suite.png", profile,
                                "#category=weave&order=ano-unet", size=(1200, 1400)))


def test_category_report_good_images_worst_first(evaluated, tmp_path):
    page, profile = evaluated / "grid" / "report.html", tmp_path / "profile"
    dom = loaded_dom(page, profile, "#kind=good&order=autoencoder")
    visible = _visible(dom)
    assert [a["data-label"] for a in visible] == ["0", "0"] and len(dom.items) == 5
    rec = json.loads((evaluated / "grid" / "per_image.json").read_text())
    good = [i for i, y in enumerate(rec["labels"]) if y == 0]
    by_level = sorted(good, key=lambda i: (-rec["methods"]["autoencoder"]["worst"][i],
                                           -rec["methods"]["autoencoder"]["map_max"][i]))
    shown = [int(a["data-pos"]) for a in visible]
    assert shown == by_level
    assert "category" not in " ".join(dom.by_id)  # one data set: no category filter
    assert_not_blank(screenshot(page, tmp_path / "grid.png", profile))


def test_the_image_check_catches_a_broken_image(tmp_path):
    """The instrument itself: an image file that does not decode shows naturalWidth 0."""
    Image.fromarray(np.full((4, 6, 3), 90, np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    page = tmp_path / "page.html"
    page.write_text('<!DOCTYPE html><html><body><img loading="lazy" src="good.png"><img src="broken.png">'
                    "</body></html>")
    with pytest.raises(AssertionError, match="broken.png"):
        loaded_dom(page, tmp_path / "profile")
    page.write_text('<!DOCTYPE html><html><body><img loading="lazy" src="good.png"></body></html>')
    assert [i["data-natural-width"] for i in loaded_dom(page, tmp_path / "profile").images] == ["6"]

"""The static report: self-contained, paginated, every link points to a file that exists."""

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np

from anounet_jax.jobs.score.report import PAGE_SIZE, histogram_svg, write_report


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("href", "src") and value is not None:
                self.links.append((tag, value))


def report_links(page: Path) -> tuple[list[tuple[str, str]], list[str]]:
    p = _Links()
    p.feed(page.read_text())
    return p.links, p.tags


def check_self_contained(out: Path) -> list[Path]:
    """Every report page: no scripts or stylesheets from elsewhere, every href/src an existing file
    inside `out`. Returns the pages (report.html first)."""
    pages = [out / "report.html"] + sorted(out.glob("report-*.html"), key=lambda p: int(p.stem[7:]))
    for page in pages:
        links, tags = report_links(page)
        assert "script" not in tags and "link" not in tags, page
        for tag, url in links:
            parts = urlsplit(url)
            assert not parts.scheme and not parts.netloc and not url.startswith("/"), (page, url)
            target = (out / unquote(parts.path)).resolve()
            assert target.is_file(), (page, url)
            assert out.resolve() in target.parents, (page, url)
    return pages


def _manifest(n, threshold):
    preset = {"name": "tiny", "image_size": 32, "fnet": {"arch": "small_cnn", "method": "l2softmax"},
              "unet": {"width": 4, "depth": 2, "norm": "batch"},
              "fit": {"steps": 30, "beta": 1.0, "optimizer": "adam", "lr": 0.01}, "maps": {"smoothing_sigma": 1.0}}
    return {"checkpoint": {"fingerprint": "ab" * 32, "path": "/ck"},
            "settings": {"preset": preset, "visualize": "flagged", "threshold": threshold,
                         "threshold_overridden": False, "scorer": "lof", "seed": 0, "formulation": "loop",
                         "chunk_size": 32},
            "input": {"source": "/data <x>", "count": n, "ids_sha256": "0"}}


def test_pages_links_order_and_escaping(tmp_path):
    rng = np.random.default_rng(0)
    n = 2 * PAGE_SIZE + 70
    names = [f"sub/img {i:04d}.png" for i in range(n)]
    names[3] = "odd & <name> #1 %20.png"
    scores = rng.uniform(0, 2, n)
    rows = []
    for i, (name, s) in enumerate(zip(names, scores)):
        rows.append(dict(file=name, score=float(s), flagged=bool(s > 0.4), L_R=0.1, L_C=0.2, status="ok"))
    rows[3].update(score=5.0, flagged=True)
    rows[10].update(score=None, flagged=None, L_R=None, L_C=None, status="unreadable <truncated>")
    rows[11].update(status="diverged", L_R=float("nan"))
    for r in rows:
        if r["flagged"] and r["status"] == "ok":
            f = tmp_path / "overlays" / (r["file"] + ".png")
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(b"png")
    (tmp_path / "scores.csv").write_text("file\n")
    (tmp_path / "report-9.html").write_text("stale")
    counts = dict(images=n, scored=n - 1, flagged=sum(bool(r["flagged"]) for r in rows), visualized=0,
                  not_visualized=0, diverged=1, unreadable=1, failed=2)
    written = write_report(tmp_path, rows, _manifest(n, 0.4), counts)

    n_flagged = counts["flagged"]
    assert len(written) == -(-n_flagged // PAGE_SIZE) >= 2
    assert not (tmp_path / "report-9.html").exists()
    pages = check_self_contained(tmp_path)
    assert pages == written
    # every flagged image once, highest score first, across pages
    shown = []
    for page in pages:
        links, _ = report_links(page)
        shown += [unquote(u)[len("overlays/"):-len(".png")] for t, u in links if t == "img"]
    flagged_ok = [r for r in rows if r["flagged"] and r["status"] == "ok"]
    assert shown == [r["file"] for r in sorted(flagged_ok, key=lambda r: -r["score"])]
    assert shown[0] == names[3]
    first = pages[0].read_text()
    assert "&lt;truncated&gt;" in first and "<truncated>" not in first  # escaped
    assert "<svg" in first and "threshold 0.4" in first
    assert 'href="report-2.html"' in first


def test_no_flagged_and_no_scores(tmp_path):
    rows = [dict(file="a.png", score=None, flagged=None, L_R=None, L_C=None, status="not an image file")]
    counts = dict(images=1, scored=0, flagged=0, visualized=0, not_visualized=0, diverged=0, unreadable=1,
                  failed=1)
    (tmp_path / "scores.csv").write_text("file\n")
    write_report(tmp_path, rows, _manifest(1, 1.0), counts)
    text = (tmp_path / "report.html").read_text()
    assert "No image was flagged" in text and "No image could be scored" in text
    check_self_contained(tmp_path)


def test_histogram_edge_cases():
    assert "<svg" in histogram_svg(np.array([1.0, 1.0, 1.0]), 1.0)  # zero range
    svg = histogram_svg(np.array([0.0, np.nan, 1.0, np.inf]), 0.5)
    assert "2 images" in svg

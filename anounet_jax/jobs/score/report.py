"""The static report of a scoring job: plain HTML files next to scores.csv, nothing to serve or fetch.

    report.html      run settings, counts, a score histogram (inline SVG, threshold marked), the files
                     that failed (first MAX_FAILURES), and page 1 of the flagged images
    report-2.html... further pages of the flagged images, PAGE_SIZE per page

Flagged images are sorted by score, highest first (ties in input order); each row shows the rank,
file, score, losses, status and its overlay (`overlays/<file>.png`, a relative link, lazily loaded;
shown as `thumbs/<file>.png` where the job wrote a thumbnail of a large overlay, linked to the full
size) when one was written. No JavaScript, no external CSS or fonts: the pages open from disk anywhere,
and thousands of flagged images cost only more pages.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote

import numpy as np

from anounet_jax.jobs import html as _html
from anounet_jax.jobs.score.files import atomic_write

PAGE_SIZE = 100
MAX_FAILURES = 200
_PAGE_RE = re.compile(r"^report-(\d+)\.html$")
_e, _num = _html.esc, _html.num  # the escaping and number format every report shares


def page_name(page: int) -> str:
    return "report.html" if page == 1 else f"report-{page}.html"


def histogram_svg(scores: np.ndarray, threshold: float, bins: int = 40, width: int = 640,
                  height: int = 200) -> str:
    """Inline SVG histogram of the finite scores, the threshold as a red vertical line."""
    s = np.asarray(scores, np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return "<p>No image could be scored.</p>"
    lo, hi = float(min(s.min(), threshold)), float(max(s.max(), threshold))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(s, bins=bins, range=(lo, hi))
    ml, mr, mt, mb = 40, 10, 10, 30
    pw, ph = width - ml - mr, height - mt - mb
    top = max(int(counts.max()), 1)

    def x(v):
        return ml + (v - lo) / (hi - lo) * pw

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="score histogram">',
             f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>']
    for c, a, b in zip(counts, edges[:-1], edges[1:]):
        if c:
            h = c / top * ph
            parts.append(f'<rect x="{x(a):.1f}" y="{mt + ph - h:.1f}" width="{max(x(b) - x(a) - 1, 1):.1f}" '
                         f'height="{h:.1f}" fill="#4a7bd0"><title>{a:.4g} to {b:.4g}: {c}</title></rect>')
    tx = x(threshold)
    parts.append(f'<line x1="{tx:.1f}" y1="{mt}" x2="{tx:.1f}" y2="{mt + ph}" stroke="#d00" '
                 f'stroke-width="2"/>')
    parts.append(f'<text x="{min(tx + 4, width - 120):.1f}" y="{mt + 14}" font-size="12" fill="#d00">'
                 f'threshold {threshold:.4g}</text>')
    parts.append(f'<text x="{ml}" y="{height - 8}" font-size="12">{lo:.4g}</text>')
    parts.append(f'<text x="{ml + pw}" y="{height - 8}" font-size="12" text-anchor="end">{hi:.4g}</text>')
    parts.append(f'<text x="{ml + pw / 2}" y="{height - 8}" font-size="12" text-anchor="middle">'
                 f'image score ({s.size} images)</text>')
    parts.append(f'<text x="{ml - 4}" y="{mt + 12}" font-size="12" text-anchor="end">{top}</text>')
    parts.append(f'<text x="{ml - 4}" y="{mt + ph}" font-size="12" text-anchor="end">0</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _nav(page: int, n_pages: int) -> str:
    if n_pages <= 1:
        return ""
    items = []
    if page > 1:
        items.append(f'<a href="{page_name(page - 1)}">&laquo; previous</a>')
    shown = sorted({1, n_pages, *range(max(1, page - 5), min(n_pages, page + 5) + 1)})
    last = 0
    for p in shown:
        if p > last + 1:
            items.append("<span>&hellip;</span>")
        items.append(f"<span><b>{p}</b></span>" if p == page else f'<a href="{page_name(p)}">{p}</a>')
        last = p
    if page < n_pages:
        items.append(f'<a href="{page_name(page + 1)}">next &raquo;</a>')
    return "<nav>Flagged images, page: " + " ".join(items) + "</nav>"


def _settings_table(manifest: dict, counts: dict) -> str:
    st = manifest["settings"]
    p = st["preset"]
    rows = [
        ("input", f"{manifest['input']['source']} ({manifest['input']['count']} images)"),
        ("checkpoint", f"{manifest['checkpoint']['path']} (fingerprint {manifest['checkpoint']['fingerprint'][:12]})"),
        ("preset", f"{p['name']}, {p['image_size']}x{p['image_size']}"),
        ("f-Net", f"{p['fnet']['arch']} ({p['fnet']['method']})"),
        ("U-Net", f"width {p['unet']['width']}, depth {p['unet']['depth']}, norm {p['unet']['norm']}"),
        ("fit", f"{p['fit']['steps']} steps, beta {p['fit']['beta']}, {p['fit']['optimizer']} lr "
                f"{p['fit']['lr']}, smoothing sigma {p.get('maps', {}).get('smoothing_sigma')}"),
        ("scorer", f"{st['scorer']}, threshold {st['threshold']:.6g}"
                   + (" (given)" if st["threshold_overridden"] else " (from the checkpoint)")),
        ("visualize", st["visualize"]),
        ("seed / formulation / chunk", f"{st['seed']} / {st['formulation']} / {st['chunk_size']}"),
    ]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    c = counts
    summary = (f"{c['images']} images: {c['scored']} scored, {c['flagged']} flagged, {c['visualized']} "
               f"with maps, {c['diverged']} diverged, {c['unreadable']} unreadable")
    return f"<table>{body}</table><p>{_e(summary)}. All rows: <a href=\"scores.csv\">scores.csv</a>.</p>"


def _flagged_table(rows, start: int, out: Path) -> str:
    head = ("<tr><th>#</th><th>file</th><th>score</th><th>L_R</th><th>L_C</th><th>status</th>"
            "<th>overlay</th></tr>")
    body = []
    for rank, r in enumerate(rows, start + 1):
        img = ""
        rel = f"overlays/{r['file']}.png"
        if (out / rel).is_file():  # the thumbnail when the job wrote one, linked to the full-size overlay
            src = f"thumbs/{r['file']}.png" if (out / f"thumbs/{r['file']}.png").is_file() else rel
            img = (f'<a href="{_e(quote(rel))}"><img class="ov" loading="lazy" src="{_e(quote(src))}" '
                   f'alt="{_e(r["file"])}"></a>')
        cls = ' class="bad"' if r["status"] not in ("ok", "not visualized") else ""
        body.append(f"<tr><td class=\"num\">{rank}</td><td>{_e(r['file'])}</td>"
                    f"<td class=\"num\">{_num(r['score'])}</td><td class=\"num\">{_num(r['L_R'])}</td>"
                    f"<td class=\"num\">{_num(r['L_C'])}</td><td{cls}>{_e(r['status'])}</td><td>{img}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _page(title: str, body: str) -> str:
    return _html.page(title, body)


def write_report(out, rows: list[dict], manifest: dict, counts: dict, page_size: int = PAGE_SIZE) -> list[Path]:
    """Write report.html (+ report-K.html pages) into `out`; returns the paths written."""
    out = Path(out)
    threshold = manifest["settings"]["threshold"]
    flagged = [(i, r) for i, r in enumerate(rows) if r["flagged"]]
    flagged.sort(key=lambda t: (-t[1]["score"], t[0]))
    flagged = [r for _, r in flagged]
    n_pages = max(1, -(-len(flagged) // page_size))
    scores = np.array([np.nan if r["score"] is None else r["score"] for r in rows], np.float64)
    failures = [r for r in rows if r["status"] not in ("ok", "not visualized")]
    written = []
    for page in range(1, n_pages + 1):
        chunk = flagged[(page - 1) * page_size: page * page_size]
        parts = [f"<h1>anounet score report</h1>"]
        if page == 1:
            parts.append(_settings_table(manifest, counts))
            parts.append("<h2>Score histogram</h2>")
            parts.append(histogram_svg(scores, threshold))
            if failures:
                parts.append(f"<h2>Failed ({len(failures)})</h2><table><tr><th>file</th><th>problem</th></tr>")
                parts += [f"<tr><td>{_e(r['file'])}</td><td class=\"bad\">{_e(r['status'])}</td></tr>"
                          for r in failures[:MAX_FAILURES]]
                parts.append("</table>")
                if len(failures) > MAX_FAILURES:
                    parts.append(f"<p>... and {len(failures) - MAX_FAILURES} more: see "
                                 f"<a href=\"scores.csv\">scores.csv</a>.</p>")
        else:
            parts.append(f'<p><a href="report.html">settings, histogram and failures</a></p>')
        parts.append(f"<h2>Flagged images ({len(flagged)}, score &gt; {threshold:.4g}, highest first)</h2>")
        nav = _nav(page, n_pages)
        if chunk:
            parts += [nav, _flagged_table(chunk, (page - 1) * page_size, out), nav]
        else:
            parts.append("<p>No image was flagged.</p>")
        path = out / page_name(page)
        atomic_write(path, _page(f"anounet score report ({page}/{n_pages})", "\n".join(parts)).encode())
        written.append(path)
    for f in os.listdir(out):  # pages left over from an earlier, longer report
        m = _PAGE_RE.match(f)
        if m and int(m.group(1)) > n_pages:
            (out / f).unlink()
    return written

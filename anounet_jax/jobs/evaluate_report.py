"""The evaluation report: `report.html` beside an evaluation's metrics, static, rebuilt from files.

`evaluate` (one data set) writes, next to metrics.json and panels/:

    per_image.json   per test image: id, label, defect kind, panel file, and per method its image score,
                     map maximum, largest map value inside / outside the true mask and its worst level
    curves.json      per method: the pixel ROC, image ROC and PRO curves, thinned for drawing
                     (`metrics.thin_curve`: within 1/500 of the exact curves)
    curves/          pixel_roc.png, image_roc.png, pro.png (matplotlib, Agg; one line per method)
    report.html      this module's page

and `evaluate_suite` (a whole benchmark) writes the same into every OUT/<category>/ and a summary
report.html at OUT. `write_report(OUT)` rebuilds either page from the files alone (no maps needed).

The page: the summary table, the curves, and a gallery of the panels with filters (category, defect
kind) and an order (input order, or one method's worst cases first), chosen by select boxes or by the
URL: ``report.html#category=grid&kind=scratch&order=ano-unet`` (``order=input`` for file order).
Static HTML with a little inline JavaScript; every link is relative and points to a file inside OUT.

Worst cases (the images a user must look at), per method. An image's **worst level** is the share of
the opposite class it loses against, ties counting one half (so the levels add up to the pairs that
image AUROC counts as wrong):
  - a defective image loses against a good test image whose map maximum is above the defective
    image's largest map value *inside its true mask* (a defect found only in the wrong place counts
    as missed);
  - a good image loses against a defective test image whose largest value inside the mask is below
    the good image's map maximum (a false alarm that outranks that defect).
Worst first = by level, highest first; equal levels: defective images first, among them the smallest
(max inside - max outside the mask) first, among good images the highest map maximum first. With no
image of the opposite class every level is 0 and the tie rules alone order the images.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from anounet_jax.errors import AnoUnetError
from anounet_jax.jobs import html as H
from anounet_jax.jobs.score.files import atomic_write

PER_IMAGE, CURVES, CURVE_DIR, REPORT = "per_image.json", "curves.json", "curves", "report.html"
CURVE_KINDS = {  # file stem -> (title, x label, y label)
    "pixel_roc": ("pixel ROC", "false positive rate (normal pixels)", "true positive rate (defect pixels)"),
    "image_roc": ("image ROC (each method's image score)", "false positive rate (good images)",
                  "true positive rate (defective images)"),
    "pro": ("PRO curve (AUPRO range: FPR <= 0.3)", "false positive rate (normal pixels)",
            "per-region overlap"),
}
SUMMARY_KEYS = (("image_auroc", "image AUROC"), ("image_auroc_map_max", "image AUROC (map max)"),
                ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"))


def panel_file(ident: str) -> str:
    """The panel `maps.write_panels` draws for test image `ident`, relative to the output folder."""
    return "panels/" + ident.replace("/", "_") + ".png"


def _defect_kind(ident: str) -> str:
    parts = ident.split("/")
    return parts[-2] if len(parts) >= 2 else "unknown"


def _json_num(x, digits: int = 6):
    x = float(x)
    return round(x, digits) if math.isfinite(x) else None


# --------------------------------------------------------------------------------------------------
# per-image numbers and curves (computed by evaluate from its maps)
# --------------------------------------------------------------------------------------------------


def worst_levels(map_max, max_in, labels) -> np.ndarray:
    """Each image's worst level (module docstring): defective images by their largest value inside the
    mask against the good images' map maxima, good images by their map maximum against the defective
    images' largest values inside the mask; ties count one half. float64 (N,) in [0, 1]."""
    map_max = np.asarray(map_max, np.float64)
    max_in = np.asarray(max_in, np.float64)
    bad = np.asarray(labels).astype(bool)
    good = ~bad
    level = np.zeros(len(bad))
    g = np.sort(map_max[good])
    d = np.sort(max_in[bad])
    if len(g) and bad.any():
        v = max_in[bad]
        above = len(g) - np.searchsorted(g, v, side="right")
        ties = np.searchsorted(g, v, side="right") - np.searchsorted(g, v, side="left")
        level[bad] = (above + 0.5 * ties) / len(g)
    if len(d) and good.any():
        v = map_max[good]
        below = np.searchsorted(d, v, side="left")
        ties = np.searchsorted(d, v, side="right") - below
        level[good] = (below + 0.5 * ties) / len(d)
    return level


def image_numbers(maps, score, labels, masks) -> dict[str, np.ndarray]:
    """Per image: "score" (the method's image score), "map_max", "max_in" / "max_out" (largest map
    value inside / outside the true mask; a defective image with an empty mask uses its map maximum
    inside, a good image has no inside: NaN), "worst" (`worst_levels`)."""
    maps = np.asarray(maps, np.float32)
    n = len(maps)
    flat = maps.reshape(n, -1)
    inside = np.asarray(masks, bool).reshape(n, -1)
    labels = np.asarray(labels).astype(bool)
    map_max = flat.max(1).astype(np.float64)
    max_in = np.where(inside.any(1), np.where(inside, flat, -np.inf).max(1), map_max)
    max_in = np.where(labels, max_in, np.nan)
    max_out = np.where((~inside).any(1), np.where(inside, -np.inf, flat).max(1), -np.inf)
    return {"score": np.asarray(score, np.float64).reshape(-1), "map_max": map_max, "max_in": max_in,
            "max_out": max_out.astype(np.float64), "worst": worst_levels(map_max, max_in, labels)}


def _curve(x, y, resolution: int) -> dict | None:
    from anounet_jax.metrics import thin_curve

    if len(x) == 0:
        return None
    x, y = thin_curve(x, y, resolution)
    return {"x": [round(float(v), 5) for v in x], "y": [round(float(v), 5) for v in y]}


def curve_data(maps, score, labels, masks, resolution: int = 500) -> dict:
    """{"pixel_roc", "image_roc", "pro"} -> {"x": [...], "y": [...]} (thinned) or None where the curve
    is undefined (one class only). Image ROC: `sklearn.metrics.roc_curve` of the image scores (+inf
    counts as above every finite score)."""
    from sklearn.metrics import roc_curve

    from anounet_jax.metrics import pixel_roc_curve, pro_curve

    out = {"pixel_roc": _curve(*pixel_roc_curve(maps, masks), resolution),
           "pro": _curve(*pro_curve(maps, masks), resolution)}
    y = np.asarray(labels).astype(bool)
    s = np.asarray(score, np.float64).reshape(-1)
    finite = s[np.isfinite(s)]
    if y.all() or not y.any() or finite.size == 0 or np.isnan(s).any():
        out["image_roc"] = None
    else:
        top, bottom = finite.max(), finite.min()
        s = np.where(s == np.inf, top + 1.0 + abs(top), np.where(s == -np.inf, bottom - 1.0 - abs(bottom), s))
        fpr, tpr, _ = roc_curve(y, s)
        out["image_roc"] = _curve(fpr, tpr, resolution)
    return out


def plot_curves(out_dir, curves: dict, metrics: dict | None = None, title: str = "") -> list[Path]:
    """curves/<kind>.png for every kind of `curves` ({method: curve_data}); one line per method, with
    its area from `metrics` in the legend. Returns the files written."""
    from matplotlib.figure import Figure  # no pyplot: no global state, the Agg canvas

    area_key = {"pixel_roc": "pixel_auroc", "image_roc": "image_auroc", "pro": "aupro"}
    folder = Path(out_dir) / CURVE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, (name, xlabel, ylabel) in CURVE_KINDS.items():
        fig = Figure(figsize=(4.2, 3.6), dpi=100)
        ax = fig.subplots()
        drawn = 0
        for i, (method, c) in enumerate(curves.items()):
            data = c.get(kind)
            if not data:
                continue
            area = (metrics or {}).get(method, {}).get(area_key[kind])
            label = method if area is None else f"{method} ({area:.3f})"
            ax.plot(data["x"], data["y"], lw=1.6, color=f"C{i % 10}", label=label)
            drawn += 1
        if kind == "pro":
            ax.set_xlim(0, 0.3)
        else:
            ax.plot([0, 1], [0, 1], ls=":", lw=1, color="#888")
            ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(f"{title}: {name}" if title else name, fontsize=9)
        if drawn:
            ax.legend(fontsize=7, loc="lower right")
        else:
            ax.text(0.5, 0.5, "undefined (one class only)", ha="center", va="center", fontsize=8)
        fig.tight_layout()
        path = folder / f"{kind}.png"
        fig.savefig(path)
        written.append(path)
    return written


def write_evaluation_record(out_dir, ids, labels, masks, smoothed: dict, scores: dict) -> dict:
    """per_image.json and curves.json of one evaluation (`evaluate` calls it with its smoothed maps
    and image scores per method); returns the curves ({method: curve_data}) for `plot_curves`."""
    out_dir = Path(out_dir)
    labels = np.asarray(labels).astype(np.int32)
    record = {
        "worst_level": "share of the opposite class the image loses against, ties one half: a defective "
                       "image loses against a good image whose map max is above its largest value inside "
                       "the mask; a good image against a defective image whose largest value inside the "
                       "mask is below its map max (jobs/evaluate_report.py)",
        "ids": list(ids), "labels": labels.tolist(), "kinds": [_defect_kind(i) for i in ids],
        "panels": [panel_file(i) for i in ids], "methods": {},
    }
    curves = {}
    for name, maps in smoothed.items():
        nums = image_numbers(maps, scores[name], labels, masks)
        record["methods"][name] = {k: [_json_num(v) for v in a] for k, a in nums.items()}
        curves[name] = curve_data(maps, scores[name], labels, masks)
    atomic_write(out_dir / PER_IMAGE, json.dumps(record).encode())
    atomic_write(out_dir / CURVES, json.dumps(curves).encode())
    return curves


# --------------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------------

_CSS = """
[hidden]{display:none!important}
.curves{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start;margin-bottom:0.8em}
.curves h3{width:100%;margin:0.4em 0 0}
.curves img{width:336px;height:auto;border:1px solid #ddd}
#controls{position:sticky;top:0;background:#fff;padding:6px 0;border-bottom:1px solid #ddd;z-index:1}
#controls label{margin-right:1em}
#gallery{display:flex;flex-wrap:wrap;gap:10px;margin-top:8px;align-items:flex-start}
figure.item{margin:0;padding:4px;border:1px solid #ddd;width:min-content}
figure.item img{height:120px;width:auto;max-width:100%;display:block}
figure.item figcaption{font-size:13px;margin-top:3px;min-width:240px}
figure.item .lvl{font-variant-numeric:tabular-nums;margin-right:1em}
tr.mean td{font-weight:bold;background:#f8f8f8}
p.note{font-size:13px;color:#555;max-width:60em}
"""

_JS = r"""
(function(){
  var g=document.getElementById('gallery'); if(!g) return;
  var items=Array.prototype.slice.call(g.children);
  var methods=JSON.parse(g.getAttribute('data-methods'));
  items.forEach(function(it){it._rank=it.getAttribute('data-rank').split(',').map(Number);
    it._pos=Number(it.getAttribute('data-pos'));});
  var sel={category:document.getElementById('f-category'),kind:document.getElementById('f-kind'),
           order:document.getElementById('f-order')};
  function val(s){return s?s.value:'all';}
  function apply(){
    var c=val(sel.category),k=val(sel.kind),o=val(sel.order),m=methods.indexOf(o);
    var sorted=items.slice().sort(function(a,b){return m<0?a._pos-b._pos:a._rank[m]-b._rank[m];});
    var n=0;
    sorted.forEach(function(it){
      var d=it.dataset, show=(c==='all'||d.category===c)&&(k==='all'||(k==='good'?d.label==='0':
        (k==='defective'?d.label==='1':(d.label==='1'&&d.kind===k))));
      it.hidden=!show; if(show) n++; g.appendChild(it);
    });
    document.getElementById('shown').textContent=n+' of '+items.length+' images';
    document.querySelectorAll('.curves').forEach(function(e){
      e.hidden=!(c==='all'||e.getAttribute('data-category')===c);});
    var h='category='+encodeURIComponent(c)+'&kind='+encodeURIComponent(k)+'&order='+encodeURIComponent(o);
    if(location.hash.slice(1)!==h){try{history.replaceState(null,'','#'+h);}catch(e){}}
  }
  function fromHash(){
    var p=new URLSearchParams(location.hash.slice(1));
    Object.keys(sel).forEach(function(key){
      var s=sel[key], v=p.get(key); if(!s||v===null) return;
      for(var i=0;i<s.options.length;i++) if(s.options[i].value===v){s.value=v;}
    });
    apply();
  }
  Object.keys(sel).forEach(function(key){if(sel[key]) sel[key].addEventListener('change',apply);});
  window.addEventListener('hashchange',fromHash);
  fromHash();
})();
"""


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise AnoUnetError(f"{what} not found (not an evaluation output folder?)", path) from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnoUnetError(f"cannot read {what}: {e}", path) from None


def _fmt(x) -> str:
    return "n/a" if x is None else f"{float(x):.3f}"


def _methods_of(metrics: dict) -> list[str]:
    return [k for k, v in metrics.items() if k != "settings" and isinstance(v, dict) and "images" in v]


def _settings_line(s: dict) -> str:
    from anounet_jax.maps import describe_deviation
    if not s:
        return ""
    parts = [f"data {s.get('data')}"]
    if s.get("n_test") is not None:
        parts.append(f"{s.get('n_train')} normal training images, {s.get('n_test')} test images "
                     f"({s.get('n_test_good')} good, {s.get('n_test_defect')} defective)")
    if s.get("categories"):
        parts.append(f"{len(s['categories'])} categories")
    parts.append(f"preset {s.get('preset')}" + (f" ({s['image_size']}x{s['image_size']})"
                                                 if s.get("image_size") else ""))
    parts.append(f"smoothing sigma {s.get('smoothing_sigma')}, "
                 f"map deviation {describe_deviation(s.get('deviation', 'none'), s.get('deviation_low', 1.0))}, "
                 f"seed {s.get('seed')}")
    return "<p>" + H.esc("; ".join(parts)) + "</p>"


def _single_summary(metrics: dict, methods: list[str]) -> str:
    head = "".join(f"<th>{H.esc(t)}</th>" for _, t in SUMMARY_KEYS)
    rows = []
    for m in methods:
        v = metrics[m]
        cells = "".join(f'<td class="num">{_fmt(v.get(k))}</td>' for k, _ in SUMMARY_KEYS)
        rows.append(f"<tr><td>{H.esc(m)}</td>{cells}<td class=\"num\">{H.num(v.get('seconds'), '.1f')}</td>"
                    f"<td class=\"num\">{v.get('images', '')}</td><td class=\"num\">{v.get('diverged', '')}</td></tr>")
    table = (f"<table><tr><th>method</th>{head}<th>seconds</th><th>images</th><th>diverged</th></tr>"
             + "".join(rows) + "</table>")
    kinds = sorted({k for m in methods for k in (metrics[m].get("by_kind") or {})})
    if kinds:
        mh = "".join(f"<th>{H.esc(m)}</th>" for m in methods)
        body = "".join(
            f"<tr><td>{H.esc(k)}</td>"
            + "".join(f'<td class="num">{_fmt((metrics[m].get("by_kind") or {}).get(k, {}).get("pixel_auroc"))}</td>'
                      for m in methods) + "</tr>" for k in kinds)
        table += f"<h3>Pixel AUROC per defect kind (that kind's images and the good ones)</h3>" \
                 f"<table><tr><th>kind</th>{mh}</tr>{body}</table>"
    return table


def _suite_summary(summary: dict) -> str:
    keys = list(SUMMARY_KEYS) + [("seconds", "seconds")]
    head = "".join(f"<th>{H.esc(t)}</th>" for _, t in keys)
    rows = []
    for r in summary.get("rows", []) + summary.get("mean", []):
        mean = r.get("category") == "mean"
        cat = H.esc(r.get("category"))
        if not mean:
            cat = f'<a href="{H.url(str(r["category"]) + "/" + REPORT)}">{cat}</a>'
        cells = "".join(f'<td class="num">{H.num(r.get(k), ".1f") if k == "seconds" else _fmt(r.get(k))}</td>'
                        for k, _ in keys)
        tr = '<tr class="mean">' if mean else "<tr>"
        rows.append(f"{tr}<td>{cat}</td><td>{H.esc(r.get('method'))}</td>{cells}</tr>")
    return (f"<table><tr><th>category</th><th>method</th>{head}</tr>{''.join(rows)}</table>"
            f"<p class=\"note\">mean: the mean over the categories where the metric is defined.</p>")


def _files(out: Path, names) -> str:
    links = [f'<a href="{H.url(n)}">{H.esc(n)}</a>' for n in names if (out / n).is_file()]
    return f'<p class="note">Files: {", ".join(links)}.</p>' if links else ""


def _ensure_curve_pngs(folder: Path, title: str) -> None:
    """Draw curves/*.png again from curves.json when any is missing (e.g. removed by hand)."""
    if all((folder / CURVE_DIR / f"{k}.png").is_file() for k in CURVE_KINDS):
        return
    metrics = _read_json(folder / "metrics.json", "metrics.json")
    plot_curves(folder, _read_json(folder / CURVES, CURVES), metrics, title)


def _curves_block(prefix: str, category: str | None) -> str:
    attr = f' data-category="{H.esc(category)}"' if category is not None else ""
    title = f"<h3>{H.esc(category)}</h3>" if category is not None else ""
    imgs = "".join(f'<img src="{H.url(prefix + CURVE_DIR + "/" + k + ".png")}" alt="{H.esc(t[0])}">'
                   for k, t in CURVE_KINDS.items())
    return f'<div class="curves"{attr}>{title}{imgs}</div>'


def worst_first_key(record: dict, i: int, method: str) -> tuple:
    """Sort key of image i of a per_image record in `method`'s worst-first order (module docstring):
    the level, highest first; then defective images before good ones; then for defective images the
    smallest max inside - max outside the mask, for good images the highest map maximum. Values that
    were not finite are stored as None: a map maximum or max inside the mask sorts as +inf (a diverged
    map is the most anomalous, as the metrics count it), a max outside as -inf (also: a mask that
    covers the whole image); an image the method has no numbers for comes last."""
    v = record["methods"].get(method)
    if v is None:
        return (1.0, 2, 0.0)

    def value(key):
        x = v[key][i]
        return (-math.inf if key == "max_out" else math.inf) if x is None else float(x)

    level = v["worst"][i] or 0.0
    if record["labels"][i]:
        margin = value("max_in") - value("max_out")
        return (-level, 0, 0.0 if math.isnan(margin) else margin)
    return (-level, 1, -value("map_max"))


def _gallery(parts: list[tuple[str | None, str, dict]], methods: list[str], out: Path) -> str:
    """parts: (category or None, link prefix, per_image record). The gallery's items, each with its
    rank in every method's worst-first order."""
    items = []  # (category, prefix, record, index)
    for category, prefix, rec in parts:
        items += [(category, prefix, rec, i) for i in range(len(rec["ids"]))]
    ranks = np.zeros((len(items), len(methods)), np.int64)
    for j, m in enumerate(methods):
        order = sorted(range(len(items)), key=lambda p: (worst_first_key(items[p][2], items[p][3], m), p))
        ranks[order, j] = np.arange(len(items))
    figs = []
    for pos, (category, prefix, rec, i) in enumerate(items):
        ident, label, kind = rec["ids"][i], int(rec["labels"][i]), rec["kinds"][i]
        panel = prefix + rec["panels"][i]
        img = (f'<a href="{H.url(panel)}"><img loading="lazy" src="{H.url(panel)}" alt="{H.esc(ident)}"></a>'
               if (out / panel).is_file() else '<p class="bad">panel missing</p>')
        levels = []
        for m in methods:
            v = rec["methods"].get(m)
            if v is None:
                continue
            w = v["worst"][i]
            if label:
                detail = f"max inside the mask {H.num(v['max_in'][i])}, outside {H.num(v['max_out'][i])}"
            else:
                detail = f"map max {H.num(v['map_max'][i])}"
            levels.append(f'<span class="lvl" title="{H.esc(detail + ", image score " + H.num(v["score"][i]))}">'
                          f'{H.esc(m)} {_fmt(w)}</span>')
        cat = f"<b>{H.esc(category)}</b> &middot; " if category is not None else ""
        figs.append(
            f'<figure class="item" data-category="{H.esc(category or "")}" data-kind="{H.esc(kind)}" '
            f'data-label="{label}" data-pos="{pos}" data-rank="{",".join(str(r) for r in ranks[pos])}">'
            f'{img}<figcaption>{cat}{H.esc(ident)} ({"good" if label == 0 else H.esc(kind)}) &middot; worst level: '
            f'{"".join(levels)}</figcaption></figure>')
    return "".join(figs)


def _controls(categories: list[str], kinds: list[str], methods: list[str]) -> str:
    def select(name, label, options):
        opts = "".join(f'<option value="{H.esc(v)}">{H.esc(t)}</option>' for v, t in options)
        return f'<label>{label} <select id="f-{name}">{opts}</select></label>'

    parts = []
    if categories:
        parts.append(select("category", "category", [("all", "all")] + [(c, c) for c in categories]))
    parts.append(select("kind", "defect kind", [("all", "all"), ("good", "good"), ("defective", "any defect")]
                        + [(k, k) for k in kinds]))
    parts.append(select("order", "order", [("input", "input order")]
                        + [(m, f"{m}: worst first") for m in methods]))
    return f'<div id="controls">{"".join(parts)}<span id="shown"></span></div>'


_WORST_NOTE = (
    "Worst level (per method, 0 best, 1 worst; hover for the numbers): the share of the opposite class "
    "an image loses against, ties one half. A defective image loses against each good image whose map "
    "maximum is above the largest map value inside the defect's true mask (found only elsewhere = "
    "missed); a good image loses against each defective image whose largest value inside its mask is "
    "below the good image's map maximum. \u201cworst first\u201d sorts by it (ties: defective images with "
    "the smallest max inside minus max outside the mask first, then good images with the highest map "
    "maximum). The page's state is in its address: #category=...&amp;kind=...&amp;order=METHOD.")


def _page(title: str, summary_html: str, curves_html: str, gallery_parts, methods, categories, out: Path,
          settings: dict) -> str:
    kinds = sorted({k for _, _, rec in gallery_parts for k, y in zip(rec["kinds"], rec["labels"]) if y})
    body = [f"<h1>{H.esc(title)}</h1>", _settings_line(settings), "<h2>Summary</h2>", summary_html,
            "<h2>Curves</h2>", curves_html, "<h2>Gallery</h2>", f"<p class=\"note\">{_WORST_NOTE}</p>",
            _controls(categories, kinds, methods),
            f"<div id=\"gallery\" data-methods=\"{H.esc(json.dumps(methods))}\">"
            f"{_gallery(gallery_parts, methods, out)}</div>"]
    return H.page(title, "\n".join(body), css=_CSS, script=_JS)


def write_single_report(out_dir) -> Path:
    """report.html of one evaluated data set (metrics.json, per_image.json, curves.json in out_dir)."""
    out = Path(out_dir)
    metrics = _read_json(out / "metrics.json", "metrics.json")
    per_image = _read_json(out / PER_IMAGE, PER_IMAGE)
    methods = [m for m in _methods_of(metrics) if m in per_image["methods"]]
    settings = metrics.get("settings", {})
    _ensure_curve_pngs(out, str(settings.get("data", "")))
    page = _page(f"anounet evaluation report: {settings.get('data', out.name)}",
                 _single_summary(metrics, methods) + _files(out, ("metrics.json", "metrics.md", PER_IMAGE, CURVES)),
                 _curves_block("", None), [(None, "", per_image)], methods, [], out, settings)
    atomic_write(out / REPORT, page.encode())
    return out / REPORT


def write_suite_report(out_dir) -> Path:
    """The summary report.html of a whole-benchmark evaluation (metrics.json with "rows", and one
    evaluated folder per category)."""
    out = Path(out_dir)
    summary = _read_json(out / "metrics.json", "metrics.json")
    categories = list(summary.get("categories", []))
    methods = list(summary.get("methods", []))
    parts, curves = [], []
    for c in categories:
        folder = out / c
        _ensure_curve_pngs(folder, c)
        parts.append((c, f"{c}/", _read_json(folder / PER_IMAGE, PER_IMAGE)))
        curves.append(_curves_block(f"{c}/", c))
    settings = summary.get("settings", {})
    page = _page(f"anounet evaluation report: {settings.get('data', out.name)} ({len(categories)} categories)",
                 _suite_summary(summary) + _files(out, ("metrics.json", "metrics.md", "metrics.csv")),
                 "".join(curves), parts, methods, categories, out, settings)
    atomic_write(out / REPORT, page.encode())
    return out / REPORT


def write_report(out_dir) -> Path:
    """Rebuild report.html of an evaluation output folder (one data set or a whole benchmark) from its
    files."""
    out = Path(out_dir)
    metrics = _read_json(out / "metrics.json", "metrics.json")
    return write_suite_report(out) if "rows" in metrics else write_single_report(out)

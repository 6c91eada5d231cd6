"""What the static reports (`score`'s and `evaluate`'s) share: escaping, numbers, relative links, one
page frame with one style sheet. Pages built with these open from disk anywhere: no server, no
network, no file outside the report's folder."""

from __future__ import annotations

import html
from urllib.parse import quote

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:0.5em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:middle;font-size:14px}
th{background:#f2f2f2}
td.num{text-align:right;font-variant-numeric:tabular-nums}
img.ov{width:128px;height:auto;image-rendering:pixelated}
nav{margin:0.8em 0}
nav a,nav span{margin-right:0.4em}
.bad{color:#b00}
"""


def esc(x) -> str:
    """`x` as HTML text or attribute value."""
    return html.escape(str(x), quote=True)


def num(x, fmt: str = ".4g") -> str:
    """A number for a table cell; "" for None."""
    return "" if x is None else format(float(x), fmt)


def url(relative_path: str) -> str:
    """A relative file path as an escaped href/src value (spaces, '#', '%', '&' and the like quoted)."""
    return esc(quote(str(relative_path).replace("\\", "/")))


def page(title: str, body: str, css: str = "", script: str = "") -> str:
    """A whole HTML document: the shared style sheet (+ `css`), `body`, then an inline `script`."""
    tail = f"<script>{script}</script>\n" if script else ""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{CSS}{css}</style></head><body>\n{body}\n{tail}</body></html>\n")

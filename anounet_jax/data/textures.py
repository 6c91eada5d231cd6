"""Procedural texture families: `(rng, height, width) -> float32 (H, W, 3)` in [0, 1].

Each family has fixed statistics (structure, spectrum, palette); its normal samples differ only by a
random phase/offset, a few percent of variation of the parameters and sensor noise.

Scale: every feature size is a fraction of the *shorter image side* ``s = min(H, W)`` (coordinates
below are ``x / s``, ``y / s``). A 64-px and a 512-px image therefore show the same number of periods
(weave threads, bricks, cells, ...) across the shorter side; the larger one just renders them with more
pixels (and more fine detail where the spectrum has it). A non-square image shows proportionally more
periods along its longer side. Picking the image size is picking the resolution, not the field of view.

Each generator carries ``.symmetry``: 0 isotropic (rotating it changes nothing), 4 for square lattices
(a 90-degree turn is invisible, 45 is not), 2 otherwise; the "orientation" defect reads it. ``.scale_free``
marks a power-law texture (clouds) that looks the same turned *and* zoomed: no orientation defect there.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

FAMILIES: dict = {}
SENSOR_NOISE = 0.012


def _family(symmetry: int, scale_free: bool = False):
    def register(fn):
        fn.symmetry, fn.scale_free = symmetry, scale_free
        FAMILIES[fn.__name__] = fn
        return fn
    return register


# ---------------- helpers ----------------
def _coords(rng, h, w, n, angle_jitter_deg=1.5):
    """Lattice coordinates (u, v) with n periods per shorter side, a random phase and a slight tilt."""
    s = min(h, w)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) / np.float32(s)
    t = np.deg2rad(rng.uniform(-angle_jitter_deg, angle_jitter_deg))
    c, si = np.float32(np.cos(t)), np.float32(np.sin(t))
    u = (c * x + si * y) * np.float32(n) + np.float32(rng.uniform(0, 64))
    v = (c * y - si * x) * np.float32(n) + np.float32(rng.uniform(0, 64))
    return u, v


def _spectral(rng, h, w, beta=0.0, lo=0.0, hi=np.inf, aniso=1.0):
    """Gaussian noise with power ~ 1/f^beta between lo and hi (Gaussian roll-off), z-scored.

    f is in cycles per shorter side, so the pattern scales with the image; aniso > 1 stretches the
    noise along x (the x frequencies are scaled up before the filter).
    """
    s = min(h, w)
    white = rng.standard_normal((h, w), dtype=np.float32)
    spec = sfft.rfft2(white)
    fy = (sfft.fftfreq(h) * s).astype(np.float32)[:, None]
    fx = (sfft.rfftfreq(w) * s).astype(np.float32)[None, :] * np.float32(aniso)
    f = np.sqrt(fy * fy + fx * fx)
    f[0, 0] = 1.0
    amp = f ** np.float32(-beta / 2)
    if np.isfinite(hi):
        amp *= np.exp(-((f / np.float32(hi)) ** 2))
    amp *= (f >= lo)
    amp[0, 0] = 0.0
    out = sfft.irfft2(spec * amp, s=(h, w)).astype(np.float32)
    return (out - out.mean()) / (out.std() + 1e-8)


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0, 1)
    return t * t * (3 - 2 * t)


def _palette(g, stops, rng, jitter=0.015):
    """Gray field -> RGB through a colour ramp; the ramp is shifted a little per sample."""
    shift = rng.normal(0, jitter) + rng.normal(0, jitter / 3, 3)  # mostly brightness, a little hue
    stops = np.asarray(stops, np.float32) + shift.astype(np.float32)
    pos = np.linspace(0, 1, len(stops))
    g = np.clip(g, 0, 1)
    return np.stack([np.interp(g, pos, stops[:, c]).astype(np.float32) for c in range(3)], -1)


def _lerp(a, b, t):
    return a + (np.asarray(b, np.float32) - a) * t[..., None]


def _finish(rgb, rng, sigma=SENSOR_NOISE):
    noise = rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(rgb + noise, 0, 1).astype(np.float32)


def _table(rng, n=128, scale=1.0):
    """Random per-cell values looked up by integer lattice index (modulo the table size)."""
    return (rng.standard_normal(n * n) * scale).astype(np.float32).reshape(n, n)


def _lookup(table, i, j):
    n = table.shape[0]
    return table[np.mod(i, n).astype(np.int64), np.mod(j, n).astype(np.int64)]


# ---------------- periodic ----------------
@_family(symmetry=2)
def weave(rng, h, w):
    """Plain weave: indigo warp and off-white weft threads crossing over/under alternately."""
    u, v = _coords(rng, h, w, 12 * rng.uniform(0.96, 1.04))
    i, j = np.floor(u), np.floor(v)
    fu, fv = u - i, v - j
    warp_top = (i + j) % 2 == 0
    across = np.where(warp_top, fu, fv)
    along = np.where(warp_top, fv, fu)
    # rounded thread cross-section with a dark gap between threads
    prof = np.clip(np.sin(np.pi * np.clip((across - 0.08) / 0.84, 0, 1)), 0, 1) ** 0.6
    shade = 0.55 + 0.45 * np.sin(np.pi * along)  # thread dives under at the cell ends
    warp_tone, weft_tone = _table(rng, scale=0.06), _table(rng, scale=0.06)  # thicker/thinner threads
    slub = 1 + np.where(warp_top, _lookup(warp_tone, i, 0), _lookup(weft_tone, j, 0))
    twist = 0.88 + 0.12 * np.sin(2 * np.pi * (3 * along + 1.5 * across))  # the yarn's twist
    g = prof * shade * slub * twist
    warp = _palette(g, [(0.03, 0.05, 0.12), (0.18, 0.27, 0.55), (0.35, 0.5, 0.8)], rng)
    weft = _palette(g, [(0.05, 0.06, 0.1), (0.62, 0.62, 0.58), (0.92, 0.91, 0.86)], rng)
    return _finish(np.where(warp_top[..., None], warp, weft), rng)


@_family(symmetry=4)
def grid(rng, h, w):
    """A metal wire mesh: thin bright round wires on a dark, slightly uneven background."""
    n = 8 * rng.uniform(0.96, 1.04)
    u, v = _coords(rng, h, w, n, angle_jitter_deg=2.0)
    du, dv = np.abs((u % 1) - 0.5) * 2, np.abs((v % 1) - 0.5) * 2  # 1 on the wire axis
    half = np.float32(rng.uniform(0.14, 0.16))
    wu = np.sqrt(np.clip(1 - ((1 - du) / half) ** 2, 0, 1))  # round cross-section
    wv = np.sqrt(np.clip(1 - ((1 - dv) / half) ** 2, 0, 1))
    over = (np.floor(u) + np.floor(v)) % 2 == 0  # which wire lies on top at a crossing
    wire = np.where(over, np.maximum(wu, 0.8 * wv), np.maximum(0.8 * wu, wv))
    bg = 0.12 + 0.05 * _spectral(rng, h, w, beta=3, lo=1)
    px = n / min(h, w)  # one pixel in units of du (which spans two half periods)
    cover = np.maximum(_smoothstep(1 - half - px, 1 - half + px, du),
                       _smoothstep(1 - half - px, 1 - half + px, dv))
    g = bg + (0.35 + 0.6 * wire - bg) * cover  # anti-aliased wire edges
    return _finish(_palette(g, [(0.02, 0.02, 0.03), (0.35, 0.35, 0.36), (0.85, 0.85, 0.82)], rng), rng)


@_family(symmetry=4)
def tiles(rng, h, w):
    """Square glazed ceramic tiles, each of its own slight tone, with light grout and bevelled edges."""
    n = 4 * rng.uniform(0.97, 1.03)
    u, v = _coords(rng, h, w, n, angle_jitter_deg=1.0)
    i, j = np.floor(u), np.floor(v)
    fu, fv = u - i, v - j
    edge = np.minimum(np.minimum(fu, 1 - fu), np.minimum(fv, 1 - fv))  # distance to the grout line
    grout = 1 - _smoothstep(0.035 - n / min(h, w) / 2, 0.035 + n / min(h, w) / 2, edge)  # anti-aliased
    tone = _lookup(_table(rng, scale=0.06), i, j)
    glaze = 0.55 + tone + 0.12 * (fu - fv) + 0.04 * _spectral(rng, h, w, beta=2, lo=2)
    bevel = _smoothstep(0.035, 0.09, edge)
    g = glaze * (0.55 + 0.45 * bevel)
    rgb = _palette(g, [(0.02, 0.12, 0.15), (0.1, 0.45, 0.52), (0.55, 0.85, 0.88)], rng)
    rgb = _lerp(rgb, np.float32([0.8, 0.77, 0.7]) + 0.03 * rgb, grout)
    return _finish(rgb, rng)


# ---------------- stochastic ----------------
@_family(symmetry=0, scale_free=True)
def clouds(rng, h, w):
    """1/f^2.4 noise (fixed exponent): soft white clouds on a blue sky."""
    g = 0.5 + 0.2 * _spectral(rng, h, w, beta=2.4, lo=1.5)
    return _finish(_palette(g, [(0.15, 0.3, 0.65), (0.5, 0.65, 0.9), (0.97, 0.97, 0.98)], rng), rng)


@_family(symmetry=0)
def speckle(rng, h, w):
    """Laser speckle: |complex band-limited Gaussian field|^2, exponentially distributed fine grain."""
    hi = 45 * rng.uniform(0.95, 1.05)
    a, b = _spectral(rng, h, w, hi=hi), _spectral(rng, h, w, hi=hi)
    intensity = 0.5 * (a * a + b * b)  # mean 1, exponential distribution
    g = 0.08 + 0.3 * intensity
    return _finish(_palette(g, [(0.01, 0.05, 0.02), (0.2, 0.6, 0.15), (0.8, 1.0, 0.6)], rng), rng)


@_family(symmetry=2)
def fibres(rng, h, w):
    """Paper/felt: ~300 thin slightly curved brown fibres per unit area, mostly along x (+-30 deg)."""
    s = min(h, w)
    n = int(round(300 * h * w / (s * s)))
    c = rng.uniform(-0.1, 1.1, (n, 2)) * (h, w)
    ang, bend = rng.normal(0, 0.5, (n, 1)), rng.normal(0, 0.4, (n, 1))
    length, value = rng.uniform(0.08, 0.3, (n, 1)) * s, rng.uniform(0.4, 1.0, (n, 1))
    t = np.linspace(-0.5, 0.5, int(np.ceil(0.6 * s)) + 2)[None]  # <= 0.5 px apart along a fibre
    along, across = length * t, length * bend * t * t / 2  # a slightly bent stroke
    py = c[:, :1] + along * np.sin(ang) + across * np.cos(ang)
    px = c[:, 1:] + along * np.cos(ang) - across * np.sin(ang)
    acc = np.zeros((h, w), np.float32)
    y0, x0 = np.floor(py), np.floor(px)
    for oy in (0, 1):  # bilinear splat (kept as a max, so crossings do not add up): anti-aliased lines
        for ox in (0, 1):
            wgt = (1 - np.abs(py - y0 - oy)) * (1 - np.abs(px - x0 - ox)) * value
            yy, xx = (y0 + oy).astype(np.int64), (x0 + ox).astype(np.int64)
            ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            np.maximum.at(acc, (yy[ok], xx[ok]), wgt[ok].astype(np.float32))
    sigma = s / 400
    if sigma > 0.5:  # widen the fibres with the image so they keep their relative width
        acc = ndimage.gaussian_filter(acc, sigma) * np.float32(np.sqrt(2 * np.pi) * sigma)
    g = 0.15 + 0.75 * (1 - np.exp(-1.6 * acc)) + 0.03 * _spectral(rng, h, w, beta=2, lo=1)
    return _finish(_palette(1 - g, [(0.38, 0.25, 0.18), (0.7, 0.6, 0.48), (0.93, 0.9, 0.8)], rng), rng)


@_family(symmetry=2)
def grain(rng, h, w):
    """Wood: growth rings (sawtooth, dark latewood) bent by low-frequency noise, fine streaks along x."""
    u, v = _coords(rng, h, w, 7 * rng.uniform(0.95, 1.05), angle_jitter_deg=3.0)
    t = v + 0.6 * _spectral(rng, h, w, beta=4, lo=0.5, hi=3, aniso=3.0)
    f = t % 1
    late = _smoothstep(0.72, 0.86, f) * (1 - _smoothstep(0.96, 1.0, f))  # narrow dark latewood band
    streak = 0.07 * _spectral(rng, h, w, hi=150, aniso=10.0)
    g = 0.72 + 0.12 * f - 0.45 * late + streak
    return _finish(_palette(g, [(0.3, 0.14, 0.05), (0.6, 0.36, 0.16), (0.85, 0.62, 0.36)], rng), rng)


# ---------------- structured ----------------
@_family(symmetry=2)
def bricks(rng, h, w):
    """Running-bond brick wall: 2:1 bricks of varying tone with a mottled surface, grey mortar."""
    n = 6 * rng.uniform(0.97, 1.03)
    u, v = _coords(rng, h, w, n, angle_jitter_deg=1.0)
    row = np.floor(v)
    ub = u / 2.1 + 0.5 * (row % 2)  # half-brick offset on every other row
    col = np.floor(ub)
    fu, fv = (ub - col) * 2.1, v - row
    edge = np.minimum(np.minimum(fu, 2.1 - fu), np.minimum(fv, 1 - fv))
    mortar = 1 - _smoothstep(0.07 - n / min(h, w) / 2, 0.07 + n / min(h, w) / 2, edge)  # anti-aliased
    tone = _lookup(_table(rng, scale=0.08), row, col)
    g = 0.55 + tone + 0.08 * _spectral(rng, h, w, beta=1.5, lo=4) - 0.15 * (1 - _smoothstep(0.07, 0.16, edge))
    rgb = _palette(g, [(0.3, 0.08, 0.05), (0.66, 0.26, 0.15), (0.9, 0.55, 0.38)], rng)
    m = 0.62 + 0.05 * _spectral(rng, h, w, hi=80)
    rgb = _lerp(rgb, _palette(m, [(0.3, 0.3, 0.3), (0.85, 0.83, 0.8)], rng), mortar)
    return _finish(rgb, rng)


@_family(symmetry=0)
def cells(rng, h, w):
    """Worley/Voronoi tissue: pink cells with dark membranes and a purple nucleus each."""
    s = min(h, w)
    n = 7 * rng.uniform(0.95, 1.05)
    y = (np.arange(h, dtype=np.float32) / s * n + rng.uniform(0, 1))[:, None]
    x = (np.arange(w, dtype=np.float32) / s * n + rng.uniform(0, 1))[None, :]
    cy, cx = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    pts = rng.uniform(0.1, 0.9, (int(y.max()) + 3, int(x.max()) + 3, 2)).astype(np.float32)
    jy, jx = pts[..., 0].ravel(), pts[..., 1].ravel()

    def point(dy, dx):  # feature point of the neighbour cell (dy, dx) (int arrays) and its id
        iy, ix = cy + dy, cx + dx
        cell = (iy + 1) * pts.shape[1] + ix + 1  # +1: the table starts one cell before the image
        return iy.astype(np.float32) + jy.take(cell), ix.astype(np.float32) + jx.take(cell), cell

    def sq_dist(dy, dx):  # the same for a fixed offset: separable rows/columns, two cheap takes
        iy, ix = cy[:, 0] + dy + 1, cx[0] + dx + 1
        py = pts[..., 0].take(iy, 0).take(ix, 1) + (iy - 1).astype(np.float32)[:, None]
        px = pts[..., 1].take(iy, 0).take(ix, 1) + (ix - 1).astype(np.float32)[None, :]
        return (py - y) ** 2 + (px - x) ** 2

    d = np.stack([sq_dist(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    k1 = d.argmin(0)
    f1 = np.take_along_axis(d, k1[None], 0)[0]
    np.put_along_axis(d, k1[None], np.inf, 0)
    k2 = d.argmin(0)
    f2 = np.take_along_axis(d, k2[None], 0)[0]
    (p1y, p1x, best), (p2y, p2x, _) = point(k1 // 3 - 1, k1 % 3 - 1), point(k2 // 3 - 1, k2 % 3 - 1)
    # exact distance to the Voronoi edge (the bisector), not f2 - f1: close point pairs stay thin
    edge = (f2 - f1) / (2 * np.sqrt((p2y - p1y) ** 2 + (p2x - p1x) ** 2) + 1e-6)
    f1 = np.sqrt(f1)
    tone = rng.normal(0, 0.05, pts.shape[0] * pts.shape[1]).astype(np.float32)[best]
    membrane = 1 - _smoothstep(0.015, 0.045, edge)
    nucleus = 1 - _smoothstep(0.12, 0.17, f1 + 0.02 * _spectral(rng, h, w, hi=40))
    g = 0.7 + tone - 0.55 * membrane - 0.35 * nucleus
    return _finish(_palette(g, [(0.25, 0.08, 0.35), (0.6, 0.3, 0.6), (0.95, 0.7, 0.8)], rng), rng)


@_family(symmetry=0)
def leather(rng, h, w):
    """Olive leather: embossed pebble grain (a band-pass height field with creases), pores, soft tone."""
    z = _spectral(rng, h, w, beta=1.0, lo=9, hi=18)
    height = np.sqrt(np.abs(z))  # V-shaped creases along the zero crossings, rounded pebbles between
    gy, gx = np.gradient(height)
    shade = (gx + gy) * np.float32(min(h, w) / 40)  # light from the top left
    pores = np.clip(_spectral(rng, h, w, hi=150) - 2.3, 0, None)
    g = 0.3 + 0.3 * height + 0.15 * np.clip(shade, -1.5, 1.5) - 0.2 * pores
    g += 0.05 * _spectral(rng, h, w, beta=3, lo=1)
    return _finish(_palette(g, [(0.1, 0.1, 0.03), (0.35, 0.35, 0.14), (0.68, 0.66, 0.38)], rng), rng)

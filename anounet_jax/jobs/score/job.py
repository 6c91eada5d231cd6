"""The resumable bulk job behind `anounet score`: a folder in, scores + maps + a report out.

Output folder (OUT):

    manifest.json             what this folder holds: checkpoint fingerprint, effective preset, settings,
                              the input's file list digest. A rerun with another checkpoint, preset,
                              settings or input file list is refused (AnoUnetError) instead of mixing.
    parts/part-000000.json    one per chunk of positions [k*chunk, (k+1)*chunk): its rows, in order.
                              Written last for a chunk (after its maps), by temp file + rename: a part
                              file that exists is complete, and a chunk without one is redone.
    maps/<file>.npz           "heatmap" float16 (H, W), "recon" float16 (H, W, 3) (zip entries with a
                              fixed timestamp, so a redone chunk writes byte-identical files). Tiled
                              (the default): H x W is the image's native size, and the file also holds
                              "losses" float32 [L_R, L_C] and "status" (one string, shape (1,)), so it is the image's
                              commit: written after its overlay, and a redone chunk does not fit again
                              an image whose map file exists. --resize: the preset's size.
    overlays/<file>.png       the heatmap in jet over the image at the map's size (each overlay spans its
                              own range)
    thumbs/<file>.png         the overlay at most THUMB pixels on its longer side, only for overlays
                              larger than that (report.html shows it, linked to the full overlay)
    scores.csv                file, score, flagged, L_R, L_C, status: one row per input, in input order,
                              assembled from the part files at the end
    summary.json              the counts
    report.html (+ report-2.html, ...)   see report.py

<file> is the image's path relative to the input folder (with its extension), so maps of
`a/b.png` are at `maps/a/b.png.npz`.

Memory (tiled). An image's pixels are kept as its file stores them (uint8 for 8-bit files) and
converted to float a tile or a band at a time; its map is stitched, smoothed and spilled in row bands
as its tile rows come back (`ScoringModel.fit_tiled(bands=...)`, `_MapWriter`), so the job holds one
tile row of sums, not H x W x 5 floats; the overlay PNG (pypng, row by row), its thumbnail and the
map file are then written from the spills band by band. The files equal those of stitching the whole
image (tests/test_banded_maps.py). With tiles.scale != 1 the maps are made whole (resized back to the
native size) and only the writing is banded.

Kill safety: every file is written to `<name>.tmp` and renamed into place, and a chunk counts as
done only once its part file exists, so killing the job at any moment (SIGKILL included) and
running the same command again redoes at most the chunk in flight (tiled: only its images without a
map file, so at most the one image in flight is fitted again), scores every image exactly once
and leaves the same bytes as an uninterrupted run (per-image PRNG keys come from the global position;
the f-Net runs on fixed-size batches). Files are not fsynced: this protects against the process
dying, not against the machine losing power. A lock (`OUT/.lock`, flock) refuses a second job
writing to the same folder at the same time.

Rows. score: the image score (empty if the image could not be used); flagged: 1 if score >
threshold, else 0; L_R, L_C: the final losses of the image's fit (empty if it was not fitted);
status: "ok", "not visualized", "diverged", or the problem with the file (e.g. "unreadable or
truncated image (...)"). Tiled: L_R and L_C are the means over the image's tiles; "diverged" means
every tile diverged (no map), "diverged: k of n tiles (row r col c at y y0:y1 x x0:x1; ...)" that some
did (the map is written, NaN where only those tiles lay; see data/tiling.py). Both count as failures.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from anounet_jax.data.tiling import tile_offsets
from anounet_jax.errors import AnoUnetError
from anounet_jax.jobs.score.files import atomic_write, npz_bytes, png_bytes
from anounet_jax.jobs.score.model import (STATUS_DIVERGED, STATUS_NOT_VISUALIZED, STATUS_OK, ScoringModel,
                                          check_visualize,
                                          ids_digest, is_diverged, is_failure, open_score_source)

JOB_FORMAT = 1
MANIFEST = "manifest.json"
PARTS = "parts"
CSV_FIELDS = ("file", "score", "flagged", "L_R", "L_C", "status")
DEFAULT_CHUNK = 32
THUMB = 256  # longest side of a report thumbnail
OVERLAY_BAND = 64  # rows of an overlay coloured at once (matplotlib's RGBA floats stay small)
BAND_PIXELS = 65536  # _MapWriter: pixels per band read back (at most OVERLAY_BAND rows; 16 rows at 4096 wide)


def map_path(file_id: str) -> str:
    return f"maps/{file_id}.npz"


def overlay_path(file_id: str) -> str:
    return f"overlays/{file_id}.png"


def thumb_path(file_id: str) -> str:
    return f"thumbs/{file_id}.png"


def _float(x) -> float | None:
    return None if x is None else float(np.float32(x))


def _fmt(x) -> str:
    """CSV text of a float32 value: the shortest text that reads back to the same float32."""
    return "" if x is None else str(np.float32(x))


# ---------------------------------------------------------------------------------------- rows
def chunk_rows(ids, lo: int, hi: int, chunk, outcome, fits: dict | None = None) -> list[dict]:
    """The rows of positions [lo, hi) from a loaded chunk and its ChunkOutcome; fits: {row j: (L_R,
    L_C, status)} of the fitted rows (default: the outcome's FitResult)."""
    rows = {}
    for pos, problem in chunk.errors.items():
        rows[int(pos)] = dict(file=ids[pos], score=None, flagged=None, L_R=None, L_C=None, status=problem)
    fits = outcome.fit_info() if fits is None else fits
    for j, pos in enumerate(np.asarray(chunk.indices).tolist()):
        row = dict(file=ids[pos], score=None, flagged=None, L_R=None, L_C=None, status=STATUS_NOT_VISUALIZED)
        if outcome.problems[j] is not None:
            row["status"] = outcome.problems[j]
        else:
            row["score"] = _float(outcome.scores[j])
            row["flagged"] = bool(outcome.flagged[j])
        if j in fits:
            l_r, l_c, row["status"] = fits[j]
            row["L_R"], row["L_C"] = _float(l_r), _float(l_c)
        rows[pos] = row
    if sorted(rows) != list(range(lo, hi)):
        raise AssertionError(f"chunk [{lo}, {hi}) has rows for {sorted(rows)}")  # ImageFolder's contract
    return [rows[p] for p in range(lo, hi)]


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for r in rows:
        flagged = "" if r["flagged"] is None else str(int(r["flagged"]))
        w.writerow([r["file"], _fmt(r["score"]), flagged, _fmt(r["L_R"]), _fmt(r["L_C"]), r["status"]])
    return buf.getvalue()


def count_rows(rows: list[dict]) -> dict:
    st = [r["status"] for r in rows]
    diverged = sum(is_diverged(x) for x in st)
    failed = sum(is_failure(s) for s in st)
    return {"images": len(rows), "scored": sum(r["score"] is not None for r in rows),
            "flagged": sum(bool(r["flagged"]) for r in rows), "visualized": st.count(STATUS_OK),
            "not_visualized": st.count(STATUS_NOT_VISUALIZED), "diverged": diverged,
            "unreadable": failed - diverged, "failed": failed}


# ---------------------------------------------------------------------------------------- the job
@dataclasses.dataclass
class JobSummary:
    out: Path
    counts: dict
    resumed_images: int  # images already done when this run started
    processed_images: int  # images this run scored
    seconds: float

    @property
    def exit_code(self) -> int:
        return 1 if self.counts["failed"] else 0

    @property
    def images_per_s(self) -> float:
        return self.processed_images / self.seconds if self.seconds > 0 else float("nan")


def bound_malloc(low_memory: bool = False) -> bool:
    """glibc's malloc set for a long job: at most 2 arenas (M_ARENA_MAX) instead of up to 8 per core;
    with low_memory also a fixed mmap threshold and trim threshold of 128 KiB (M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD; by default the mmap threshold rises to the largest block freed so far, up to 32
    MiB, after which every chunk-sized array comes from the arenas and stays there as fragmented free
    memory). Measured on 2 CPU cores (benchmarks/results/tiling_small.md): the fixed thresholds keep
    the resident memory to what the job holds (a 4096 x 4096 image within 3% of a 512 x 512 one) but
    make every large array a fresh mmap, 1.70x the wall time of a small score job (farm-bench, 3
    pairs); 2 arenas alone cost 1.02x. Does nothing (returns False) where malloc is not glibc's or
    where the user set any MALLOC_* variable (theirs win)."""
    import ctypes
    import platform

    if platform.system() != "Linux" or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    ok = bool(mallopt(m_arena_max, 2))
    if low_memory:
        ok = ok and bool(mallopt(m_mmap_threshold, 128 * 1024) and mallopt(m_trim_threshold, 128 * 1024))
    return ok


def _lock(out: Path, name: str = ".lock"):
    import fcntl

    f = open(out / name, "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise AnoUnetError("another anounet score job is writing to this output folder", out) from None
    return f


def _manifest(model: ScoringModel, source, visualize: str, chunk_size: int, checkpoint_path) -> dict:
    return {
        "format_version": JOB_FORMAT,
        "checkpoint": {"fingerprint": model.checkpoint.fingerprint, "path": str(checkpoint_path)},
        "settings": {"preset": model.preset.to_dict(), "visualize": visualize, "threshold": model.threshold,
                     "threshold_overridden": model.threshold_overridden, "scorer": model.scorer.kind,
                     "seed": model.seed, "formulation": model.formulation, "chunk_size": chunk_size},
        "input": {"source": source.description, "count": len(source), "ids_sha256": ids_digest(source.ids)},
    }


def _check_manifest(out: Path, new: dict) -> None:
    path = out / MANIFEST
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise AnoUnetError(f"cannot read the job manifest ({e}); delete the output folder to start over",
                           path) from None
    preset = old.get("settings", {}).get("preset")
    if isinstance(preset, dict):
        from anounet_jax.config import Preset, TileConfig

        before_tiling = "tiles" not in preset
        try:  # fields added since the job was written take their defaults (the behaviour before them)
            old["settings"]["preset"] = Preset.from_dict(preset).to_dict()
        except (KeyError, TypeError):
            pass  # malformed: the comparison below names the difference
        if before_tiling:  # written before tiling: the resize path
            old["settings"]["preset"]["tiles"] = dataclasses.asdict(TileConfig(resize=True))
    fresh = "use a new --out folder, or delete this one to start over"
    if old.get("format_version") != JOB_FORMAT:
        raise AnoUnetError(f"output folder was written by job format {old.get('format_version')}, "
                           f"this version writes {JOB_FORMAT}; {fresh}", out)
    a, b = old["checkpoint"]["fingerprint"], new["checkpoint"]["fingerprint"]
    if a != b:
        raise AnoUnetError(f"this output folder holds results of another checkpoint (fingerprint "
                           f"{a[:12]}..., made from {old['checkpoint']['path']}); the checkpoint given now "
                           f"has fingerprint {b[:12]}...; {fresh}", out)
    diffs = []
    for k in sorted(set(old["settings"]) | set(new["settings"])):
        va, vb = old["settings"].get(k), new["settings"].get(k)
        if k == "preset" and va != vb and va and vb:
            diffs += [f"preset.{s}: was {va.get(s)!r}, now {vb.get(s)!r}" for s in sorted(set(va) | set(vb))
                      if va.get(s) != vb.get(s)]
        elif va != vb:
            diffs.append(f"{k}: was {va!r}, now {vb!r}")
    if diffs:
        raise AnoUnetError("this output folder holds a job with other settings (" + "; ".join(diffs)
                           + f"); {fresh}", out)
    ia, ib = old["input"], new["input"]
    if (ia["count"], ia["ids_sha256"]) != (ib["count"], ib["ids_sha256"]):
        raise AnoUnetError(f"the input's file list changed since this job started ({ia['count']} files "
                           f"then, {ib['count']} now, from {ib['source']}); {fresh}", out)


def _part_path(out: Path, k: int) -> Path:
    return out / PARTS / f"part-{k:06d}.json"


def _read_part(path: Path, lo: int, hi: int) -> list[dict] | None:
    try:
        part = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if part.get("start") != lo or part.get("stop") != hi or len(part.get("rows", ())) != hi - lo:
        return None
    return part["rows"]


def run_score_job(inputs, checkpoint, out, *, preset=None, visualize: str = "flagged",
                  threshold: float | None = None, chunk_size: int | None = None, seed: int = 0,
                  formulation: str | None = None, recursive: bool = False, progress: bool = True,
                  log=print, low_memory: bool = False) -> JobSummary:
    """Score every image of `inputs` (a folder, or "embedded") into `out`; resumes a killed job.

    Returns a JobSummary (counts; exit_code 1 if any image failed). AnoUnetError for a missing or
    unreadable checkpoint or input folder, or an output folder holding a different job.

    Multi-process (after `anounet_jax.engine.distributed.initialize()`, every process running this with the
    same arguments and `out` on a shared file system): process p does the chunks k with k % P == p,
    then all wait at a barrier and process 0 writes scores.csv, summary.json and the report. Outputs
    are the same bytes as a one-process run; a killed process's chunks are redone by rerunning.
    """
    from tqdm.auto import tqdm

    from anounet_jax.engine import distributed
    from anounet_jax.jobs.common import prepare_out_dir
    from anounet_jax.jobs.score.report import write_report

    t0 = time.perf_counter()
    check_visualize(visualize)
    bound_malloc(low_memory)
    chunk_size = DEFAULT_CHUNK if chunk_size is None else int(chunk_size)
    if chunk_size <= 0:
        raise AnoUnetError(f"chunk size must be positive, got {chunk_size}")
    out = Path(out)
    model = ScoringModel(checkpoint, preset, threshold=threshold, seed=seed, formulation=formulation)
    source, natives = open_score_source(inputs, model, recursive)
    given = checkpoint if isinstance(checkpoint, (str, os.PathLike)) else model.checkpoint.path
    manifest = _manifest(model, source, visualize, chunk_size, given)
    prepare_out_dir(out)
    pidx, pcount = distributed.process_index(), distributed.process_count()
    lock = _lock(out, ".lock" if pcount == 1 else f".lock-{pidx}")
    try:
        if pidx == 0:
            if (out / MANIFEST).exists():
                _check_manifest(out, manifest)
            else:
                atomic_write(out / MANIFEST, json.dumps(manifest, indent=2).encode())
        distributed.barrier("anounet-score-manifest")
        if pidx != 0:
            _check_manifest(out, manifest)

        n = len(source)
        tiled = natives is not None and visualize != "none"
        # every tile's engine index, from the image sizes in the headers: the same in every process
        offsets = tile_offsets([natives.size(i) for i in range(n)], model.tiles) if tiled else None
        n_chunks = math.ceil(n / chunk_size)
        bounds = [(k * chunk_size, min((k + 1) * chunk_size, n)) for k in range(n_chunks)]
        rows: list = [None] * n_chunks
        for k, (lo, hi) in enumerate(bounds):
            if _part_path(out, k).exists():
                rows[k] = _read_part(_part_path(out, k), lo, hi)
        mine = distributed.owned_chunks(n_chunks, pidx, pcount)
        pending = [k for k in mine if rows[k] is None]
        total = sum(bounds[k][1] - bounds[k][0] for k in mine)
        done = total - sum(bounds[k][1] - bounds[k][0] for k in pending)
        if done and pending:
            log(f"resuming: {done} of {total} images already done in {out}")
        desc = "score" if pcount == 1 else f"score [process {pidx}/{pcount}]"
        t_start = time.perf_counter()
        with tqdm(total=total, initial=done, unit="img", desc=desc, disable=not progress,
                  dynamic_ncols=True) as bar, ThreadPoolExecutor(max_workers=1) as reader:
            # decode the next chunk while this one is scored and fitted
            future = reader.submit(source.chunk, *bounds[pending[0]]) if pending else None
            for i, k in enumerate(pending):
                lo, hi = bounds[k]
                chunk = future.result()
                if i + 1 < len(pending):
                    future = reader.submit(source.chunk, *bounds[pending[i + 1]])
                if tiled:
                    outcome = model.score(chunk.images, visualize)
                    fits = _fit_tiled(out, model, source.ids, natives, offsets, chunk, outcome, bar)
                    rows[k] = chunk_rows(source.ids, lo, hi, chunk, outcome, fits)
                else:
                    outcome = model.process(chunk.images, chunk.indices, visualize)
                    _write_maps(out, source.ids, chunk, outcome)
                    rows[k] = chunk_rows(source.ids, lo, hi, chunk, outcome)
                part = {"chunk": k, "start": lo, "stop": hi, "rows": rows[k]}
                atomic_write(_part_path(out, k), json.dumps(part).encode())
                bar.update(hi - lo)
        seconds = time.perf_counter() - t_start
        processed = total - done
        distributed.barrier("anounet-score-done")
        for k, (lo, hi) in enumerate(bounds):  # the other processes' chunks
            if rows[k] is None:
                rows[k] = _read_part(_part_path(out, k), lo, hi)
                if rows[k] is None:
                    raise AnoUnetError(f"chunk {k} (images {lo}..{hi - 1}) has no complete part file "
                                       f"after every process finished; rerun the job", out)
        all_rows = [r for part in rows for r in part]
        counts = count_rows(all_rows)
        if pidx == 0:
            atomic_write(out / "scores.csv", csv_text(all_rows).encode())
            atomic_write(out / "summary.json", json.dumps(counts, indent=2).encode())
            write_report(out, all_rows, manifest, counts)
        return JobSummary(out, counts, done, processed, seconds if processed else time.perf_counter() - t0)
    finally:
        lock.close()


def _write_maps(out: Path, ids, chunk, outcome) -> None:
    from anounet_jax.maps import overlay

    if outcome.fit is None:
        return
    for k, j in enumerate(outcome.fitted.tolist()):
        if outcome.fit.diverged[k]:
            continue
        fid = ids[int(chunk.indices[j])]
        heat = outcome.fit.heatmap[k]
        atomic_write(out / map_path(fid), npz_bytes(heatmap=heat.astype(np.float16),
                                                      recon=outcome.fit.recon[k].astype(np.float16)))
        atomic_write(out / overlay_path(fid), png_bytes(overlay(chunk.images[j], heat)))


def _overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """maps.overlay (the map's own range) in bands of rows: the same pixels, a bounded transient."""
    from anounet_jax.maps import overlay

    vals = heat[np.isfinite(heat)]
    vmax = float(vals.max()) if vals.size else 1.0
    vmin = min(0.0, float(vals.min())) if vals.size else 0.0
    out = np.empty(heat.shape + (3,), np.uint8)
    for y in range(0, heat.shape[0], OVERLAY_BAND):
        out[y:y + OVERLAY_BAND] = overlay(image[y:y + OVERLAY_BAND], heat[y:y + OVERLAY_BAND], vmin, vmax)
    return out


def _thumb_size(h: int, w: int) -> tuple[int, int] | None:
    """(width, height) of the thumbnail of an h x w overlay: THUMB pixels on its longer side (None
    when the overlay is not larger)."""
    if max(h, w) <= THUMB:
        return None
    f = THUMB / max(h, w)
    return max(1, round(w * f)), max(1, round(h * f))


def _thumb_rows(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """First pass of the thumbnail: rows of the overlay shrunk to the thumbnail's width (Pillow's BOX
    filter, row by row: a band gives the same rows as the whole overlay)."""
    from PIL import Image

    if rgb.shape[1] == size[0]:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size[0], rgb.shape[0]), Image.Resampling.BOX))


def _thumb_finish(rows: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Second pass: the width-shrunk rows shrunk to the thumbnail's height (Pillow's BOX filter)."""
    from PIL import Image

    return np.asarray(Image.fromarray(rows).resize(size, Image.Resampling.BOX))


def _thumbnail(rgb: np.ndarray) -> np.ndarray | None:
    """The overlay shrunk to THUMB pixels on its longer side (None when it is not larger): Pillow's
    BOX filter, width first, then height, so that it can be built from row bands (`_MapWriter`).
    Pillow's one-call resize chooses the order of its two passes itself and may differ by one grey
    level where the shrink factors are close."""
    size = _thumb_size(*rgb.shape[:2])
    return None if size is None else _thumb_finish(_thumb_rows(rgb, size), size)


class _MapWriter:
    """One tiled image's outputs (overlay, thumbnail, map file) from its maps in row bands.

    A `ScoringModel.fit_tiled(bands=...)` sink: recon(y0, rows) and heat(y0, rows) spill the rows to
    two anonymous temporary files in OUT (float16 reconstruction, float32 smoothed map; nothing is
    left behind if the job is killed) and track the map's finite range. write() then reads them
    back a band of at most BAND_PIXELS pixels at a time: colours the overlay (`_overlay`'s range: the whole map's) and
    streams it as PNG rows (pypng), shrinks each band to the thumbnail's width, and streams the map
    file's entries (`atomic_write_npz`'s bytes). Same pixels and map values as the whole-image path
    (`_overlay`, `_thumbnail`, `atomic_write_npz`) with a few bands in memory; the pixels are
    converted to float one band at a time (`float_pixels`)."""

    def __init__(self, out: Path, fid: str, pixels: np.ndarray, deviation: str = "none", low: float = 1.0):
        import tempfile

        self.out, self.fid, self.pixels, self.deviation, self.low = out, fid, pixels, deviation, low
        self.h, self.w = pixels.shape[:2]
        out.mkdir(parents=True, exist_ok=True)
        self._heat = tempfile.TemporaryFile(dir=out, prefix=".heat-")
        self._recon = tempfile.TemporaryFile(dir=out, prefix=".recon-")
        self.heat_rows = self.recon_rows = 0
        self.lo, self.hi, self.finite = np.inf, -np.inf, False
        self.n_finite = 0
        self.seconds = 0.0

    def recon(self, y0: int, rows: np.ndarray) -> None:
        t0 = time.perf_counter()
        assert y0 == self.recon_rows and rows.shape[1:] == (self.w, 3), (y0, self.recon_rows, rows.shape)
        self._recon.write(np.ascontiguousarray(rows, np.float16).tobytes())
        self.recon_rows += len(rows)
        self.seconds += time.perf_counter() - t0

    def heat(self, y0: int, rows: np.ndarray) -> None:
        t0 = time.perf_counter()
        assert y0 == self.heat_rows and rows.shape[1:] == (self.w,), (y0, self.heat_rows, rows.shape)
        rows = np.ascontiguousarray(rows, np.float32)
        vals = rows[np.isfinite(rows)]
        if vals.size:
            self.lo, self.hi, self.finite = min(self.lo, float(vals.min())), max(self.hi, float(vals.max())), True
            self.n_finite += vals.size
        self._heat.write(rows.tobytes())
        self.heat_rows += len(rows)
        self.seconds += time.perf_counter() - t0

    def _bands(self, f, dtype, shape):
        f.seek(0)
        per_row = int(np.prod(shape)) * np.dtype(dtype).itemsize
        rows = max(1, min(OVERLAY_BAND, BAND_PIXELS // self.w))
        for y in range(0, self.h, rows):
            n = min(rows, self.h - y)
            yield y, np.frombuffer(f.read(n * per_row), dtype).reshape(n, *shape)

    @functools.cached_property
    def _center(self) -> float:
        """The deviation's centre, once per image (the overlay's range and both writes read it)."""
        return self._median()

    def _median(self) -> float:
        """The exact median of the spilled map's finite values (np.median's), from two passes over its
        bands: a histogram finds the values' interval that holds the middle order statistics, then
        only the values in it are kept and sorted."""
        n, lo, hi = self.n_finite, np.float32(self.lo), np.float32(self.hi)
        k1, k2 = (n - 1) // 2, n // 2
        if lo == hi:
            return float(lo)
        edges = np.linspace(lo, hi, 4097, dtype=np.float64)
        counts = np.zeros(4096, np.int64)
        for _, band in self._bands(self._heat, np.float32, (self.w,)):
            v = band[np.isfinite(band)]
            counts += np.histogram(v, bins=edges)[0]
        cum = np.cumsum(counts)
        b1, b2 = int(np.searchsorted(cum, k1 + 1)), int(np.searchsorted(cum, k2 + 1))
        a, b = edges[max(b1 - 1, 0)], edges[min(b2 + 2, 4096)]  # a bin of slack either side
        below, kept = 0, []
        for _, band in self._bands(self._heat, np.float32, (self.w,)):
            v = band[np.isfinite(band)]
            below += int(np.count_nonzero(v < a))
            kept.append(v[(v >= a) & (v <= b)])
        kept = np.sort(np.concatenate(kept))
        if not (below <= k1 and k2 - below < len(kept)):  # (cannot happen; exact either way)
            kept, below = np.sort(np.concatenate([b[np.isfinite(b)] for _, b in
                                                  self._bands(self._heat, np.float32, (self.w,))])), 0
        return float(np.median(kept[[k1 - below, k2 - below]]))

    def _heat_bands(self):
        """The map's bands as written: the smoothed rows, or their deviation from the map's median."""
        from anounet_jax.maps import deviation

        if self.deviation == "none" or not self.finite:
            yield from self._bands(self._heat, np.float32, (self.w,))
            return
        c = self._center
        for y, band in self._bands(self._heat, np.float32, (self.w,)):
            yield y, deviation(band, self.deviation, center=c, low=self.low)

    def _overlay_rows(self, size, thumb_parts):
        from anounet_jax.data.tiling import float_pixels
        from anounet_jax.maps import deviation, overlay

        lo, hi = self.lo, self.hi
        if self.deviation != "none" and self.finite:  # the deviation is largest at an end of m's range
            ends = deviation(np.array([[lo, hi]], np.float32), self.deviation, center=self._center, low=self.low)
            lo, hi = 0.0, float(ends.max())
        vmax = hi if self.finite else 1.0
        vmin = min(0.0, lo) if self.finite else 0.0
        for y, heat in self._heat_bands():
            rgb = overlay(float_pixels(self.pixels[y:y + len(heat)]), heat, vmin, vmax)
            if size is not None:
                thumb_parts.append(_thumb_rows(rgb, size))
            for row in rgb:
                yield row.tobytes()

    def _npz_entry(self, zf, name, bands, shape, dtype):
        """One .npy entry whose rows come in bands (the bytes np.lib.format.write_array writes)."""
        from anounet_jax.jobs.score.files import open_npz_entry

        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        with open_npz_entry(zf, name, nbytes) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                     "fortran_order": False, "shape": shape})
            for _, band in bands:
                f.write(np.ascontiguousarray(band, dtype).tobytes())

    def write(self, loss_r, loss_c, status: str) -> None:
        """overlay, thumbnail, then the map file (the image's commit), each by temp file + rename."""
        import zipfile

        import png

        from anounet_jax.jobs.score.files import atomic_write_with, write_npz_entry

        t0 = time.perf_counter()
        if (self.heat_rows, self.recon_rows) != (self.h, self.h):
            raise AssertionError(f"{self.heat_rows} map and {self.recon_rows} reconstruction rows of {self.h}")
        size = _thumb_size(self.h, self.w)
        parts: list = []
        writer = png.Writer(self.w, self.h, greyscale=False, bitdepth=8)
        atomic_write_with(self.out / overlay_path(self.fid),
                          lambda f: writer.write_packed(f, self._overlay_rows(size, parts)))
        if size is not None:
            atomic_write(self.out / thumb_path(self.fid), png_bytes(_thumb_finish(np.concatenate(parts), size)))
        del parts
        hw = (self.h, self.w)

        def npz(f):
            with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
                self._npz_entry(zf, "heatmap", self._heat_bands(), hw, np.float16)
                self._npz_entry(zf, "recon", self._bands(self._recon, np.float16, (self.w, 3)), (*hw, 3),
                                np.float16)
                write_npz_entry(zf, "losses", np.array([loss_r, loss_c], np.float32))
                write_npz_entry(zf, "status", np.array([status]))

        atomic_write_with(self.out / map_path(self.fid), npz)
        self.seconds += time.perf_counter() - t0

    def close(self) -> None:
        self._heat.close()
        self._recon.close()


def _read_done(path: Path) -> tuple | None:
    """(L_R, L_C, status) of an image whose tiled map file exists (its commit), else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            losses, status = z["losses"], str(z["status"][0])
        return np.float32(losses[0]), np.float32(losses[1]), status
    except Exception:  # noqa: BLE001 - an unreadable map file is redone
        return None


def _fit_tiled(out: Path, model: ScoringModel, ids, natives, offsets, chunk, outcome, bar=None) -> dict:
    """Fit the chunk's rows to map, tile by tile, at native size; write each image's overlay,
    thumbnail and map file (last) as soon as its last tile is back. {row j: (L_R, L_C, status)}."""
    fits = {}
    todo = []
    for j in outcome.fitted.tolist():
        done = _read_done(out / map_path(ids[int(chunk.indices[j])]))
        if done is not None:  # fitted before the job was killed
            fits[j] = done
        else:
            todo.append(j)
    if not todo:
        return fits

    def items():
        for j in todo:
            pos = int(chunk.indices[j])
            try:
                native = natives.load_pixels(pos)  # uint8 for 8-bit files: converted tile / band-wise
                item = model.tiled_image((j, pos), native, int(offsets[pos]))  # (per-position C: its size)
            except AnoUnetError as e:
                fits[j] = (None, None, e.problem)
                continue
            if item.grid.n_tiles != offsets[pos + 1] - offsets[pos]:
                fits[j] = (None, None, f"image is {native.shape[0]}x{native.shape[1]}, its header said otherwise "
                                       f"when the job started")
                continue
            yield item

    tiles = [0]

    def on_tiles(n):
        tiles[0] += n
        if bar is not None:
            bar.set_postfix_str(f"{tiles[0]} tiles", refresh=False)

    def writer(item):
        return _MapWriter(out, ids[item.key[1]], item.payload, model.preset.maps.deviation,
                          model.preset.maps.deviation_low)

    for m in model.fit_tiled(items(), on_tiles, bands=writer):
        j, pos = m.key
        try:
            if m.status != STATUS_DIVERGED:  # every tile diverged: no map (its rows were all NaN)
                m.sink.write(m.loss_r, m.loss_c, m.status)
        finally:
            m.sink.close()
        fits[j] = (m.loss_r, m.loss_c, m.status)
    return fits


def read_scores_csv(path) -> list[dict]:
    """scores.csv back as dicts of strings (a helper for tests and scripts)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


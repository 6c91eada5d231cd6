"""Native resolution by tiling (issue 16): speed per tile and per megapixel, the cost of cutting and
stitching against the fits, and peak memory against the image size.

    python benchmarks/tiling.py [--preset small] [--speed-size 288] [--memory-sizes 512,2048]
                                [--memory-steps 1] [--out benchmarks/results/tiling_small]

Setup (once, in a temporary folder): a checkpoint of the preset with an untrained f-Net (random
weights, C and an LOF scorer from its features of embedded brick patches: time and memory do not depend
on what the f-Net learned) and PNG images of the embedded brick photograph repeated to each size.

1. speed (a fresh process): one SIZE x SIZE image through the score job's tiled path (ScoringModel:
   tiled_image -> TileStream in row bands -> Engine.iter_fit -> stitching -> BandSmoother -> the job's
   _MapWriter), after a warm-up fit that compiles the programs. Reports tiles/s, s per megapixel, and
   the time in cutting + stitching (the TileStream's counters), in the map's finish (smoothing, in
   bands) and in the job's outputs (spilling the bands, overlay, thumbnail, PNG and NPZ encoding) as
   fractions of the fit time. (tiles.scale != 1 is not measured: that path is the whole-image one.)
2. memory (a fresh process per size): `anounet score` (cli.main) on a folder of one SIZE x SIZE image,
   --visualize all, the same chunk for every size, --memory-steps fit steps (a chunk's memory does not
   depend on the number of steps), compilation cache off. Reports the process's peak RSS
   (resource.getrusage) and the job's time.
Writes OUT.json and OUT.md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _brick(h: int, w: int):
    import numpy as np
    from skimage import data as skd

    g = skd.brick()
    reps = (-(-h // g.shape[0]), -(-w // g.shape[1]))
    return np.repeat(np.tile(g, reps)[:h, :w, None], 3, axis=2)


def setup(folder: Path, preset_name: str, sizes) -> None:
    """The checkpoint (folder/ck) and one PNG per size (folder/img<SIZE>/brick.png)."""
    import jax
    import numpy as np
    from PIL import Image

    from anounet_jax.checkpoint import save_checkpoint
    from anounet_jax.config import get_preset
    from anounet_jax.data.embedded import load_normal
    from anounet_jax.fnet.model import FrozenFNet, build_fnet_module, compute_center
    from anounet_jax.fnet.scores import make_scorer
    from anounet_jax.fnet.train import feature_scale

    preset = get_preset(preset_name)
    s = preset.image_size
    module = build_fnet_module(preset.fnet)
    variables = module.init(jax.random.PRNGKey(0), np.zeros((1, s, s, 3), np.float32), train=False)
    fnet = FrozenFNet.from_module(module, variables)
    feats = fnet.features(load_normal("brick", s, 32, seed=0).images)
    center = compute_center(feats)
    save_checkpoint(folder / "ck", preset, fnet, center, make_scorer("lof").fit(feats), overwrite=True,
                    feature_scale=feature_scale(feats, center))  # the small preset's L_C is in its units
    for size in sizes:
        d = folder / f"img{size}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_brick(size, size)).save(d / "brick.png")


def speed(folder: Path, size: int, overrides) -> dict:
    import numpy as np

    from anounet_jax.engine.devices import split_cpu_into_devices

    split_cpu_into_devices()
    from anounet_jax.checkpoint import load_checkpoint
    from anounet_jax.data.io import read_pixels
    from anounet_jax.data.tiling import TileStream
    from anounet_jax.jobs.score.job import _MapWriter
    from anounet_jax.jobs.score.model import BandSmoother, ScoringModel
    from anounet_jax.settings import apply_overrides

    ck = load_checkpoint(folder / "ck")
    model = ScoringModel(ck, apply_overrides(ck.preset, overrides))
    spec = model.tiles
    if spec.scale != 1.0:
        raise SystemExit("speed: tiles.scale != 1 runs the whole-image path; measure it with scale 1")
    t = spec.tile
    chunk = model.engine.chunk_size_for((t, t, 3))
    t0 = time.perf_counter()
    warm = np.asarray(_brick(t, t), np.float32) / 255
    list(model.fit_tiled([model.tiled_image(0, warm, 0)]))  # compiles
    compile_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    native = read_pixels(folder / f"img{size}" / "brick.png")
    read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    item = model.tiled_image(0, native, 1)
    scale_s = time.perf_counter() - t0
    out = Path(tempfile.mkdtemp(prefix="tiling-speed-"))
    sinks = []

    def bands(it):
        sinks.append(BandSmoother(it.grid.height, model.preset.maps.smoothing_sigma,
                                  _MapWriter(out, "brick.png", it.payload)))
        return sinks[-1]

    stream = TileStream([item], chunk, recon=True, bands=bands)
    fits = model.engine.iter_fit(stream.chunks(), model.seed)
    pulled = 0.0
    stitched = None
    t_all = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        try:
            idx, res = next(fits)  # the engine's fit of one chunk, and the cutting of it
        except StopIteration:
            pulled += time.perf_counter() - t0
            break
        pulled += time.perf_counter() - t0
        for s in stream.add(idx, res):
            stitched = s
    loop_s = time.perf_counter() - t_all
    stream.close()
    fit_s = pulled - stream.cut_seconds
    t0 = time.perf_counter()
    maps = model._finish_tiled(stitched)  # the status (the map was smoothed band by band)
    stitched.sink.close()
    writer = stitched.sink.out
    writer.write(maps.loss_r, maps.loss_c, maps.status)
    writer.close()
    finish_s = stitched.sink.seconds  # smoothing in bands (inside the stream's add)
    outputs_s = writer.seconds  # spilling the bands, then overlay, thumbnail, PNG and NPZ files
    shutil.rmtree(out, ignore_errors=True)
    n = item.grid.n_tiles
    total = loop_s + scale_s + (time.perf_counter() - t0)  # the loop includes stitching and smoothing
    mp = size * size / 1e6
    return {"size": size, "tile": t, "stride": spec.stride, "scale": spec.scale, "tiles": n, "chunk": chunk,
            "steps": model.preset.fit.steps, "formulation": model.engine.formulation,
            "devices": len(model.engine.devices), "compile_s": compile_s, "read_s": read_s,
            "fit_s": fit_s, "cut_s": stream.cut_seconds, "stitch_s": stream.stitch_seconds,
            "scale_s": scale_s, "finish_s": finish_s, "outputs_s": outputs_s, "map_s": total,
            "tiles_per_s": n / total, "s_per_megapixel": total / mp,
            "cut_stitch_fraction": (stream.cut_seconds + stream.stitch_seconds) / fit_s,
            "all_overhead_fraction": (stream.cut_seconds + stream.stitch_seconds + scale_s + finish_s
                                      + outputs_s) / fit_s}


class _RssSampler:
    """VmRSS from /proc/self/status every `every` seconds in a thread (Linux): where the peak lies."""

    def __init__(self, every: float = 0.25):
        import threading

        self.samples: list = []
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every):
        while not self._stop.is_set():
            try:
                for line in open("/proc/self/status"):
                    if line.startswith("VmRSS:"):
                        self.samples.append((time.perf_counter() - self._t0, int(line.split()[1]) / 1024))
                        break
            except OSError:
                return
            self._stop.wait(every)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        if not self.samples:
            return {}
        t_end = self.samples[-1][0]
        at = {f"rss_at_{q}pct_mib": next(r for t, r in self.samples if t >= q / 100 * t_end) for q in (10, 50, 90)}
        t_peak, peak = max(self.samples, key=lambda x: x[1])
        return {"sampled_peak_mib": peak, "sampled_peak_at_pct": 100 * t_peak / t_end if t_end else 0.0, **at}


def memory(folder: Path, size: int, steps: int, chunk: int | None, overrides, low_memory: bool = False) -> dict:
    os.environ["ANOUNET_CACHE_DIR"] = "off"
    from anounet_jax import cli

    out = Path(tempfile.mkdtemp(prefix=f"tiling-mem{size}-"))
    args = ["score", str(folder / f"img{size}"), "--ckpt", str(folder / "ck"), "--out", str(out / "out"),
            "--visualize", "all", "--threshold", "0", "--quiet", "--set", f"fit.steps={steps}"]
    for o in overrides:
        args += ["--set", o]
    if chunk:
        args += ["--set", f"engine.chunk_size={chunk}"]
    if low_memory:
        args.append("--low-memory")
    sampler = _RssSampler()
    t0 = time.perf_counter()
    code = cli.main(args)
    seconds = time.perf_counter() - t0
    sampled = sampler.stop()
    import numpy as np

    with np.load(out / "out" / "maps" / "brick.png.npz") as z:
        shape = list(z["heatmap"].shape)
    shutil.rmtree(out, ignore_errors=True)
    return {"size": size, "exit": code, "map_shape": shape, "steps": steps, "seconds": seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **sampled}


def _child(*argv) -> dict:
    r = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    if r.returncode:
        raise SystemExit(f"{argv[0]} failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _machine() -> str:
    import jax

    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()}-core {cpu}, {platform.system()} {platform.release()}, Python "
            f"{platform.python_version()}, jax {jax.__version__}")


def markdown(res: dict) -> str:
    sp, mem = res["speed"], res["memory"]
    lines = ["# Tiling: speed per tile and per megapixel, cut + stitch overhead, peak memory by image size", "",
             f"Command ({res['started']} - {res['finished']} UTC, load average at the start {res['load']}):", "",
             f"    {res['command']}", "", f"Machine: {res['machine']}. {res['note']}", "",
             "## Speed (one image through the score job's tiled path, after a warm-up fit)", "",
             "| image | tile / stride | tiles | chunk | steps | formulation, devices | fit s | cut s | stitch s "
             "| finish s | outputs s | tiles/s | s per megapixel | cut + stitch / fit | all tiling overhead / fit |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
             f"| {sp['size']}x{sp['size']} | {sp['tile']} / {sp['stride']} | {sp['tiles']} | {sp['chunk']} | "
             f"{sp['steps']} | {sp['formulation']}, {sp['devices']} | {sp['fit_s']:.1f} | {sp['cut_s']:.3f} | "
             f"{sp['stitch_s']:.3f} | {sp['finish_s']:.3f} | {sp['outputs_s']:.3f} | {sp['tiles_per_s']:.2f} | "
             f"{sp['s_per_megapixel']:.0f} | {100 * sp['cut_stitch_fraction']:.2f}% | "
             f"{100 * sp['all_overhead_fraction']:.2f}% |", "",
             "finish: smoothing of the stitched map, in row bands; outputs: spilling the bands, then the "
             "full-size overlay (PNG rows), its thumbnail and the NPZ (what `anounet score` adds per image); "
             "all tiling overhead = cut + stitch + finish + outputs. Compilation (warm-up) "
             f"{sp['compile_s']:.1f} s, not counted.", "",
             "## Peak memory (`anounet score` on one image, a fresh process per size)", "",
             "| image | map | tiles | fit steps | peak RSS (MiB) | RSS at 10% / 50% / 90% of the run (MiB) "
             "| peak at | seconds |", "|---|---|---|---|---|---|---|---|"]
    for m in mem:
        at = " / ".join(f"{m.get(f'rss_at_{q}pct_mib', float('nan')):.0f}" for q in (10, 50, 90))
        lines.append(f"| {m['size']}x{m['size']} | {m['map_shape'][0]}x{m['map_shape'][1]} float16 | "
                     f"{m['tiles']} | {m['steps']} | {m['peak_rss_mib']:.0f} | {at} | "
                     f"{m.get('sampled_peak_at_pct', float('nan')):.0f}% | {m['seconds']:.1f} |")
    lines += ["", res["memory_note"], ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", nargs="?", default="all", choices=("all", "speed", "memory", "setup"))
    ap.add_argument("--preset", default="small")
    ap.add_argument("--folder", default=None, help="setup folder (default: a temporary one)")
    ap.add_argument("--size", type=int, default=288)
    ap.add_argument("--speed-size", type=int, default=288)
    ap.add_argument("--memory-sizes", default="512,2048")
    ap.add_argument("--memory-steps", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=None, help="engine chunk (default: the preset's)")
    ap.add_argument("--low-memory", action="store_true", help="memory runs with `anounet score --low-memory`")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="preset override, repeatable")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "tiling_small"))
    a = ap.parse_args(argv)
    if a.mode == "speed":
        print(json.dumps(speed(Path(a.folder), a.size, a.overrides)))
        return
    if a.mode == "memory":
        print(json.dumps(memory(Path(a.folder), a.size, a.memory_steps, a.chunk, a.overrides, a.low_memory)))
        return
    sizes = [int(s) for s in a.memory_sizes.split(",")]
    if a.mode == "setup":
        setup(Path(a.folder), a.preset, sizes)
        print(json.dumps({"folder": a.folder}))
        return
    folder = Path(a.folder or tempfile.mkdtemp(prefix="tiling-bench-"))
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    _child("setup", "--folder", str(folder), "--preset", a.preset,
           "--memory-sizes", ",".join(map(str, sorted({a.speed_size, *sizes}))))
    extra = [x for o in a.overrides for x in ("--set", o)]
    sp = _child("speed", "--folder", str(folder), "--size", str(a.speed_size), *extra)
    print(json.dumps(sp), flush=True)
    mem = []
    from anounet_jax.config import get_preset
    from anounet_jax.data.tiling import TileSpec

    t = get_preset(a.preset).image_size
    for size in sizes:
        m = _child("memory", "--folder", str(folder), "--size", str(size), "--memory-steps", str(a.memory_steps),
                   *(["--chunk", str(a.chunk)] if a.chunk else []), *(["--low-memory"] if a.low_memory else []),
                   *extra)
        m["tiles"] = TileSpec(t).n_tiles(size, size)
        print(json.dumps(m), flush=True)
        mem.append(m)
    base = mem[0]["peak_rss_mib"]
    rel = "; ".join(f"{m['size']}x{m['size']}: {m['peak_rss_mib'] - base:+.0f} MiB ({100 * (m['peak_rss_mib'] / base - 1):+.1f}%)"
                    for m in mem[1:])
    res = {"command": "python benchmarks/tiling.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "started": started, "finished": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "load": load,
           "machine": _machine(), "preset": a.preset, "speed": sp, "memory": mem,
           "note": "Untrained f-Net (random weights; speed and memory do not depend on them).",
           "memory_note": f"Against {mem[0]['size']}x{mem[0]['size']}: {rel}."}
    Path(a.out + ".json").write_text(json.dumps(res, indent=2) + "\n")
    Path(a.out + ".md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()

"""`anounet ...`: one parser for every command. User errors (AnoUnetError, bad arguments) print one
line and exit 2, no traceback; every argument is checked before the first expensive step.

Settings: `--preset NAME`, then `--config FILE.toml`, then `--set section.field=value` (repeatable);
every job writes the resolved settings to OUT/config.json (anounet_jax/settings.py).
"""

from __future__ import annotations

import argparse
import json
import sys

from anounet_jax.config import FORMULATION_CHOICES
from anounet_jax.errors import AnoUnetError
from anounet_jax.jobs.score.model import VISUALIZE


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block: "anounet demo: error: argument --seed: ..."
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _settings(p: argparse.ArgumentParser, preset_default: str | None = "small") -> None:
    from anounet_jax.settings import add_settings_arguments

    help_default = "default: %(default)s" if preset_default else "default: the checkpoint's"
    p.add_argument("--preset", default=preset_default, help=f"paper | small | tiny ({help_default})")
    add_settings_arguments(p)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _formulation(p: argparse.ArgumentParser) -> None:
    p.add_argument("--formulation", choices=FORMULATION_CHOICES, default=None,
                   help="engine formulation (default: the preset's engine.formulation, 'auto')")


def _resolved(args, base=None):
    """The preset these arguments describe (base: the preset to start from, default --preset)."""
    from anounet_jax.settings import resolve_settings

    overrides = list(args.overrides)
    if getattr(args, "formulation", None):
        overrides.append(f"engine.formulation={args.formulation}")
    return resolve_settings(base if base is not None else args.preset, args.config, overrides)


def _record(args, preset, out, command: str) -> None:
    from anounet_jax.settings import load_config_file, run_record, write_run_record

    overrides = (load_config_file(args.config)[1] if args.config else []) + list(args.overrides)
    write_run_record(out, run_record(preset, command=command, overrides=overrides,
                                     extra={"argv": sys.argv[1:]}))


def _log(args, stream=None):
    if args.quiet:
        return lambda *a, **k: None
    return (lambda *a: print(*a, file=stream)) if stream else print


def cmd_demo(args) -> int:
    from anounet_jax.jobs.common import prepare_out_dir
    from anounet_jax.jobs.demo import run_demo

    preset = _resolved(args)
    if args.category:
        preset = preset.replace(data={"category": args.category})
    _record(args, preset, prepare_out_dir(args.out), "demo")
    m = run_demo(preset, args.out, seed=args.seed, progress=not args.quiet, log=_log(args))
    print(f"image AUROC {m['image_auroc']:.3f}  pixel AUROC {m['pixel_auroc']:.3f}  "
          f"AUPRO {m['aupro']:.3f}  ({m['images']} test images, {m['diverged']} diverged)")
    ph = m["photo"]
    print(f"full photograph {ph['size'][0]}x{ph['size'][1]} at native resolution ({ph['tiles']} tiles of "
          f"{ph['tile']}x{ph['tile']}, stride {ph['stride']}, scale {ph['scale']}): pixel AUROC "
          f"{ph['pixel_auroc']:.3f}, AUPRO {ph['aupro']:.3f}, small defects (2-6 px) {ph['pixel_auroc_small_defects']:.3f}")
    print(f"time: {json.dumps(m['seconds'])}; panels, photo/, metrics.json and config.json in {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    from anounet_jax.jobs.common import prepare_out_dir
    from anounet_jax.jobs.evaluate import evaluate, markdown_table
    from anounet_jax.jobs.evaluate_suite import evaluate_suite, find_categories, summary_markdown
    from anounet_jax.methods import parse_methods

    methods = parse_methods(args.methods)
    args.overrides = list(args.overrides) + _tile_overrides(args)
    preset = _resolved(args)
    if args.native and args.resize:
        raise AnoUnetError("--native (tiles at native resolution) and --resize (every image resized) exclude "
                           "each other")
    if args.native and not preset.tiles.tile:  # tiling at the preset's size: a tile makes it the preset's
        preset = preset.replace(tiles={"tile": preset.image_size})
    categories = find_categories(args.data)  # None: one data set; a folder holding no category: an error
    if categories is not None:  # a whole benchmark: every argument checked before OUT is created
        from anounet_jax.engine.fit import check_formulation

        check_formulation(preset.engine.formulation)
        if args.smoothing is not None and not args.smoothing >= 0.0:
            raise AnoUnetError(f"smoothing sigma must be >= 0, got {args.smoothing!r}")
        _record(args, preset, prepare_out_dir(args.out), "evaluate")  # first: an interrupted run has it
        s = evaluate_suite(args.data, preset, methods, args.out, seed=args.seed, progress=not args.quiet,
                           smoothing=args.smoothing, log=_log(args), categories=categories)
        print(summary_markdown(s), end="")
        print(f"metrics.json, metrics.md, metrics.csv, report.html and config.json in {args.out}; "
              f"one folder per category")
        return 0
    m = evaluate(args.data, preset, methods, args.out, seed=args.seed, progress=not args.quiet,
                 smoothing=args.smoothing)  # checks the data before it creates the output folder
    _record(args, preset, prepare_out_dir(args.out), "evaluate")
    print(markdown_table(m), end="")
    print(f"metrics.json, metrics.md, report.html, config.json and panels/ in {args.out}")
    return 0


def cmd_train_fnet(args) -> int:
    from anounet_jax.jobs.train_fnet import train_fnet_checkpoint

    preset = _resolved(args)
    info = train_fnet_checkpoint(args.data, args.out, preset=preset, method=args.method,
                                 scorer=args.scorer, seed=args.seed, recursive=args.recursive,
                                 overwrite=args.overwrite, progress=not args.quiet, log=_log(args))
    warm = ("" if info["warm_start_seconds"] is None else
            f", warm start ({preset.start.method}) in {info['warm_start_seconds']:.0f} s")
    on = f"{info['normal']} normal" if info["tiles"] is None else f"{info['tiles']} tiles of {info['normal']} normal"
    print(f"saved {info['path']}: f-Net on {on} + {info['reference']} reference images, "
          f"{args.scorer} threshold {info['threshold']:.6g}{warm}, fingerprint {info['fingerprint'][:12]}")
    return 0


def _tile_overrides(args) -> list[str]:
    """--tile, --stride, --scale, --resize as settings of the preset's `tiles` section."""
    out = [f"tiles.{k}={v}" for k, v in (("tile", args.tile), ("stride", args.stride), ("scale", args.scale))
           if v is not None]
    return out + (["tiles.resize=true"] if args.resize else [])


def _tile_arguments(g) -> None:
    g.add_argument("--tile", type=_positive, default=None, metavar="PIXELS",
                   help="tile size (default: the preset's image size; a multiple of 2**unet.depth)")
    g.add_argument("--stride", type=_positive, default=None, metavar="PIXELS",
                   help="pixels between tile starts, at most the tile size (default: half the tile)")
    g.add_argument("--scale", type=_positive_float, default=None, metavar="FACTOR",
                   help="resize every image by FACTOR first, aspect ratio kept (e.g. 0.5: a quarter of the "
                        "tiles; maps are resized back to the native size)")
    g.add_argument("--resize", action="store_true",
                   help="no tiling: resize every image to the preset's square size (maps at that size)")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def cmd_score(args) -> int:
    if args.distributed or args.coordinator:
        from anounet_jax.engine.distributed import initialize

        initialize(args.coordinator, args.num_processes, args.process_id)
    from anounet_jax.jobs.score.job import run_score_job

    preset = args.preset
    args.overrides = list(args.overrides) + _tile_overrides(args)
    if args.overrides or args.config:  # settings apply to the checkpoint's preset unless one is named
        from anounet_jax.checkpoint import read_checkpoint_info
        from anounet_jax.config import Preset

        base = preset or Preset.from_dict(read_checkpoint_info(args.ckpt)["preset"])
        preset = _resolved(args, base)
    s = run_score_job(args.input, args.ckpt, args.out, preset=preset, visualize=args.visualize,
                      threshold=args.threshold, chunk_size=args.chunk_size, seed=args.seed,
                      formulation=args.formulation, recursive=args.recursive, progress=not args.quiet,
                      log=_log(args, sys.stderr), low_memory=args.low_memory)
    c = s.counts
    if s.processed_images:
        run = (f"{s.processed_images} scored in {s.seconds:.1f} s ({s.images_per_s:.2f} images/s)"
               + (f", {s.resumed_images} done before" if s.resumed_images else ""))
    else:
        run = "all done before, outputs re-assembled"
    print(f"{c['images']} images: {c['flagged']} flagged, {c['visualized']} with maps, {c['diverged']} "
          f"diverged, {c['unreadable']} unreadable; {run}")
    print(f"results: {s.out / 'scores.csv'}, report: {s.out / 'report.html'}")
    if c["failed"]:
        print(f"anounet: {c['failed']} image(s) failed (see the status column of scores.csv)", file=sys.stderr)
    return s.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="anounet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train, fit and draw heatmaps on the embedded default data")
    _settings(p)
    _formulation(p)
    p.add_argument("--out", default="runs/demo", help="output folder (default: %(default)s)")
    p.add_argument("--category", choices=("brick", "grass", "gravel"), default=None, help="embedded texture")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("evaluate", help="Ano-Unet and the baselines on one data set or a whole benchmark: "
                                        "metrics, curves, panels, report.html")
    p.add_argument("data", metavar="DATA", help="an MVTec AD category folder, a DAGM ClassN folder, "
                                                "'embedded[:CATEGORY]' or 'synthetic:FAMILY'; or a ROOT "
                                                "holding several categories (an MVTec AD root, a DAGM root, "
                                                "a folder of MVTec-style categories): each is evaluated "
                                                "into OUT/<category>/ (resumable) and summarized at OUT")
    _settings(p)
    _formulation(p)
    p.add_argument("--out", required=True, help="output folder: metrics.json, metrics.md, report.html, panels/ "
                                                "(a ROOT: also metrics.csv, one folder per category)")
    p.add_argument("--methods", default="ano-unet,autoencoder,doc-decoder,anogan,feature-memory",
                   help="comma-separated methods (default: %(default)s)")
    p.add_argument("--smoothing", type=float, default=None,
                   help="Gaussian sigma for every method's maps (default: the preset's maps.smoothing_sigma)")
    g = p.add_argument_group("native resolution (default: every image resized to the preset's square size; "
                             "README: Evaluating at native resolution)")
    g.add_argument("--native", action="store_true",
                   help="tiled evaluation at the images' native size: every method maps the same tiles, "
                        "stitched alike; metrics against the native masks (implied by --tile/--stride/--scale)")
    _tile_arguments(g)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train-fnet", help="train the f-Net on normal images, compute C and the image "
                                          "scorer, save one checkpoint")
    p.add_argument("data", help="folder of normal images, or 'embedded' / 'synthetic:FAMILY'")
    _settings(p)
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--method", choices=("l2softmax", "doc"), default=None,
                   help="f-Net training method (default: the preset's)")
    p.add_argument("--scorer", choices=("lof", "l2", "l1"), default="lof",
                   help="image scorer: LOF or distance to C (default: %(default)s)")
    p.add_argument("--recursive", action="store_true", help="also take images from subfolders")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    p.set_defaults(func=cmd_train_fnet)

    p = sub.add_parser("score", help="score every image of a folder, draw Ano-Unet maps, write a report "
                                     "(resumable: rerun the same command after an interruption)")
    p.add_argument("input", help="folder of images, or 'embedded' / 'synthetic:FAMILY' (their test images)")
    _settings(p, preset_default=None)
    _formulation(p)
    p.add_argument("--ckpt", required=True, help="checkpoint written by train-fnet")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--visualize", choices=VISUALIZE, default="flagged",
                   help="which images get maps (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=None,
                   help="flag score > THRESHOLD, a finite number >= 0 (default: the checkpoint scorer's)")
    p.add_argument("--chunk-size", type=_positive, default=None, help="images per committed chunk (default: 32)")
    p.add_argument("--recursive", action="store_true", help="also take images from subfolders")
    p.add_argument("--low-memory", action="store_true",
                   help="return freed memory to the system at once (resident memory stays at what the job "
                        "holds, whatever the image size; about 1.7x slower on CPU)")
    g = p.add_argument_group("native resolution (maps at each image's own size, one U-Net per tile; "
                             "README: Native resolution)")
    _tile_arguments(g)
    g = p.add_argument_group("multi-host (every process runs the same command; OUT on a shared file system)")
    g.add_argument("--distributed", action="store_true",
                   help="join a multi-process job; without the options below, JAX reads the cluster's "
                        "environment (SLURM, Open MPI, Cloud TPU)")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="process 0's address")
    g.add_argument("--num-processes", type=int, default=None)
    g.add_argument("--process-id", type=int, default=None)
    p.set_defaults(func=cmd_score)
    return parser


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)  # argument errors: one line, exit 2
    except SystemExit as e:  # --help (0) or a bad argument (2): a return code, also when called in-process
        return int(e.code or 0)
    from anounet_jax.engine.devices import enable_compilation_cache, split_cpu_into_devices

    split_cpu_into_devices()  # one CPU device per core (no-op once JAX has started, e.g. in tests)
    enable_compilation_cache()  # a second run of the same job skips XLA compilation
    try:
        return args.func(args)
    except AnoUnetError as e:
        print(f"anounet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("anounet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

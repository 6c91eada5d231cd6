"""The `train-fnet` and `score` subcommands (argparse only here; the work is imported when run)."""

from __future__ import annotations

import sys

from anounet_jax.scoring.core import VISUALIZE


def cmd_train_fnet(args) -> int:
    from anounet_jax.scoring.train import train_fnet_checkpoint

    log = (lambda *a: None) if args.quiet else print
    info = train_fnet_checkpoint(args.data, args.out, preset=args.preset, method=args.method,
                                 scorer=args.scorer, seed=args.seed, recursive=args.recursive,
                                 overwrite=args.overwrite, progress=not args.quiet, log=log)
    print(f"saved {info['path']}: f-Net on {info['normal']} normal + {info['reference']} reference images, "
          f"{args.scorer} threshold {info['threshold']:.6g}, fingerprint {info['fingerprint'][:12]}")
    return 0


def cmd_score(args) -> int:
    if args.distributed or args.coordinator:
        from anounet_jax.distributed import initialize

        initialize(args.coordinator, args.num_processes, args.process_id)
    from anounet_jax.scoring.job import run_score_job

    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    s = run_score_job(args.input, args.ckpt, args.out, preset=args.preset, visualize=args.visualize,
                      threshold=args.threshold, chunk_size=args.chunk_size, seed=args.seed,
                      formulation=args.formulation, recursive=args.recursive, progress=not args.quiet,
                      log=log)
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


def register(sub) -> None:
    """Add `train-fnet` and `score` to the `anounet` subparsers."""
    p = sub.add_parser("train-fnet", help="train the f-Net on normal images, compute C and the image "
                                          "scorer, save one checkpoint")
    p.add_argument("data", help="folder of normal images, or 'embedded' for the built-in default")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--method", choices=("l2softmax", "doc"), default=None,
                   help="f-Net training method (default: the preset's)")
    p.add_argument("--preset", default="small", help="paper | small | tiny (default: %(default)s)")
    p.add_argument("--scorer", choices=("lof", "l2", "l1"), default="lof",
                   help="image scorer: LOF or distance to C (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recursive", action="store_true", help="also take images from subfolders")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train_fnet)

    p = sub.add_parser("score", help="score every image of a folder, draw Ano-Unet maps, write a report "
                                     "(resumable: rerun the same command after an interruption)")
    p.add_argument("input", help="folder of images, or 'embedded' (the preset's embedded test set)")
    p.add_argument("--ckpt", required=True, help="checkpoint written by train-fnet")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--preset", default=None,
                   help="U-Net and fit settings (paper | small | tiny); default: the checkpoint's preset")
    p.add_argument("--visualize", choices=VISUALIZE, default="flagged", help="which images get maps (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=None,
                   help="flag score > THRESHOLD (default: the checkpoint scorer's threshold)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="images per committed chunk (default: 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--formulation", default="auto",
                   help="engine formulation: auto | measure | vmap_matmul | vmap_conv | unrolled | loop")
    p.add_argument("--recursive", action="store_true", help="also take images from subfolders")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("multi-host (every process runs the same command; OUT on a shared file system)")
    g.add_argument("--distributed", action="store_true",
                   help="join a multi-process job; without the options below, JAX reads the cluster's "
                        "environment (SLURM, Open MPI, Cloud TPU)")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="process 0's address")
    g.add_argument("--num-processes", type=int, default=None)
    g.add_argument("--process-id", type=int, default=None)
    p.set_defaults(func=cmd_score)

"""`anounet train-fnet`: normal images -> trained f-Net, C, image scorer -> one orbax checkpoint.

Normal images: a folder (resized to the preset's image size) or a named source (data/sources.py:
"embedded", "synthetic:FAMILY": its normal training images). Reference images: always the built-in
`load_reference(...)` set for the preset's data category, image size and n_reference_per_class. The
scorer is fitted on the f-Net features of the normal images (its threshold = their 95% quantile, see
fnet/scores.py).

The checkpoint stores the preset the f-Net was trained with, `--method` applied; scoring with it
needs nothing else (`anounet score ... --ckpt CKPT`).

Warm start (`--warm-start STEPS`, issue 17): U-Net parameters trained on the same normal images with the
per-image objective (engine/warm_start.py: "shared" or "reptile") are stored in the checkpoint, trained
once here instead of once per job; a job uses them with `--set fit.start=checkpoint`.
"""

from __future__ import annotations

from pathlib import Path

from anounet_jax.config import get_preset
from anounet_jax.errors import AnoUnetError


def train_fnet_checkpoint(data, out, *, preset="small", method: str | None = None, scorer: str = "lof",
                          seed: int = 0, recursive: bool = False, overwrite: bool = False,
                          progress: bool = True, log=print, warm_start: int = 0,
                          warm_start_method: str = "shared", warm_start_inner: int = 10) -> dict:
    """Train, score-fit and save; returns {"fingerprint", "threshold", "normal", "reference", "path",
    "warm_start_seconds" (None without a warm start)}. Every argument and the output place are checked
    before training starts.

    warm_start: steps of a warm start for the fits (0: none), by warm_start_method ("shared": Adam
    steps of one U-Net; "reptile": outer steps, each warm_start_inner steps of the per-image fit)."""
    from anounet_jax.checkpoint import save_checkpoint
    from anounet_jax.data.embedded import load_reference
    from anounet_jax.data.sources import load_normal_images
    from anounet_jax.fnet.scores import make_scorer
    from anounet_jax.fnet.train import describe, train_fnet
    from anounet_jax.jobs.common import check_seed, prepare_out_dir

    p = get_preset(preset) if isinstance(preset, str) else preset
    if method is not None:
        if method not in ("l2softmax", "doc"):
            raise AnoUnetError(f"unknown f-Net method {method!r}; use 'l2softmax' or 'doc'")
        p = p.replace(fnet={"method": method})
    seed = check_seed(seed)
    from anounet_jax.engine.warm_start import METHODS, make_start

    if isinstance(warm_start, bool) or not isinstance(warm_start, int) or warm_start < 0:
        raise AnoUnetError(f"warm_start must be a number of steps >= 0, got {warm_start!r}")
    if warm_start_method not in METHODS:
        raise AnoUnetError(f"unknown warm-start method {warm_start_method!r}; use one of {list(METHODS)}")
    if isinstance(warm_start_inner, bool) or not isinstance(warm_start_inner, int) or warm_start_inner < 1:
        raise AnoUnetError(f"warm_start_inner must be a number of steps >= 1, got {warm_start_inner!r}")
    out = Path(out)
    if out.exists() and not overwrite:  # fail before training, not after
        raise AnoUnetError("a checkpoint (or file) already exists here; pass --overwrite to replace it", out)
    prepare_out_dir(out.parent)
    sc = make_scorer(scorer)
    normal = load_normal_images(data, p, seed, recursive)
    if len(normal) < 2:
        raise AnoUnetError(f"the f-Net and the {scorer} scorer need at least 2 normal images, found "
                           f"{len(normal)}", data)
    reference = load_reference(p.data.category, p.image_size, p.data.n_reference_per_class, seed)
    log(f"f-Net ({describe(p.fnet)}): {len(normal)} normal, {len(reference)} reference images "
        f"of {p.image_size}x{p.image_size}")
    trained = train_fnet(p.fnet, normal, reference, seed=seed, progress=progress)
    if sc.kind == "distance":
        sc.fit(trained.train_features, center=trained.center)
    else:
        sc.fit(trained.train_features)
    start, seconds = None, None
    if warm_start:
        import time

        log(f"warm start ({warm_start_method}, {warm_start} steps) on the {len(normal)} normal images")
        t0 = time.perf_counter()
        kw = {"inner_steps": warm_start_inner} if warm_start_method == "reptile" else {}
        start = make_start(warm_start_method, p, trained, normal.images, warm_start, seed=seed,
                           progress=progress, **kw)
        seconds = time.perf_counter() - t0
    digest = save_checkpoint(out, p, trained.fnet, trained.center, sc, overwrite=overwrite,
                             feature_scale=trained.feature_scale, patch_memory=trained.patch_memory,
                             warm_start=start)
    return {"fingerprint": digest, "threshold": sc.threshold, "normal": len(normal),
            "reference": len(reference), "path": str(out), "warm_start_seconds": seconds}

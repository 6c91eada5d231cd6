"""`anounet train-fnet`: normal images -> trained f-Net, C, image scorer -> one orbax checkpoint.

Normal images: a folder (resized to the preset's image size) or a named source (data/sources.py:
"embedded", "synthetic:FAMILY": its normal training images). Reference images: always the built-in
`load_reference(...)` set for the preset's data category, image size and n_reference_per_class. The
scorer is fitted on the f-Net features of the normal images (its threshold = their 95% quantile, see
fnet/scores.py).

The checkpoint stores the preset the f-Net was trained with, `--method` applied; scoring with it
needs nothing else (`anounet score ... --ckpt CKPT`).
"""

from __future__ import annotations

from pathlib import Path

from anounet_jax.config import get_preset
from anounet_jax.errors import AnoUnetError


def train_fnet_checkpoint(data, out, *, preset="small", method: str | None = None, scorer: str = "lof",
                          seed: int = 0, recursive: bool = False, overwrite: bool = False,
                          progress: bool = True, log=print) -> dict:
    """Train, score-fit and save; returns {"fingerprint", "threshold", "normal", "reference", "path"}.
    Every argument and the output place are checked before training starts."""
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
    digest = save_checkpoint(out, p, trained.fnet, trained.center, sc, overwrite=overwrite,
                             feature_scale=trained.feature_scale, patch_memory=trained.patch_memory)
    return {"fingerprint": digest, "threshold": sc.threshold, "normal": len(normal),
            "reference": len(reference), "path": str(out)}

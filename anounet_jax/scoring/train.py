"""`anounet train-fnet`: normal images -> trained f-Net, C, image scorer -> one orbax checkpoint.

Normal images: a folder (resized to the preset's image size) or "embedded" (the preset's embedded
normal training patches). Reference images: always the built-in `load_reference(...)` set for the
preset's data category, image size and n_reference_per_class. The scorer is fitted on the f-Net
features of the normal images (its threshold = their 95% quantile, see fnet/scores.py).

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
    """Train, score-fit and save; returns {"fingerprint", "threshold", "normal", "reference", "path"}."""
    from anounet_jax.checkpoint import save_checkpoint
    from anounet_jax.data.embedded import load_normal, load_reference
    from anounet_jax.data.folder import load_folder
    from anounet_jax.fnet.scores import make_scorer
    from anounet_jax.pipeline import fit_fnet_and_center

    p = get_preset(preset) if isinstance(preset, str) else preset
    if method is not None:
        if method not in ("l2softmax", "doc"):
            raise AnoUnetError(f"unknown f-Net method {method!r}; use 'l2softmax' or 'doc'")
        p = p.replace(fnet={"method": method})
    out = Path(out)
    if out.exists() and not overwrite:  # fail before training, not after
        raise AnoUnetError("a checkpoint (or file) already exists here; pass --overwrite to replace it", out)
    sc = make_scorer(scorer)
    if str(data) == "embedded" and not Path("embedded").exists():
        normal = load_normal(p.data.category, p.image_size, p.data.n_train, seed)
    else:
        normal = load_folder(data, size=p.image_size, recursive=recursive)
    reference = load_reference(p.data.category, p.image_size, p.data.n_reference_per_class, seed)
    log(f"f-Net ({p.fnet.arch}, {p.fnet.method}): {len(normal)} normal, {len(reference)} reference images "
        f"of {p.image_size}x{p.image_size}")
    trained = fit_fnet_and_center(p, normal, reference, seed=seed, progress=progress)
    if sc.kind == "distance":
        sc.fit(trained.train_features, center=trained.center)
    else:
        sc.fit(trained.train_features)
    digest = save_checkpoint(out, p, trained.fnet, trained.center, sc, overwrite=overwrite)
    return {"fingerprint": digest, "threshold": sc.threshold, "normal": len(normal),
            "reference": len(reference), "path": str(out)}

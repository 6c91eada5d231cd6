"""The original's two experiments, CIFAR-10 horse/deer and DAGM 2007 class 6, as functions.

`scripts/reproduce_cifar10.py` and `scripts/reproduce_dagm.py` are argparse wrappers around
`run_cifar10` and `run_dagm`; tests call these with the "tiny" preset on mock or generated data.

Both run the same stages (`run_experiment`):

1. f-Net on normal + reference images (`train_fnet`, optionally starting from imported Keras ImageNet
   weights, ``fnet_weights``), frozen; C = mean feature of the normal training images.
2. Image scores of the test images from their f-Net features (`fnet/scores.py`): LOF and L2 distance
   to C, both fitted on the normal training features; LOF's threshold (0.95 quantile of the training
   scores) flags the images the seed pipeline would visualize.
3. The batched per-image Ano-Unet fit of every test image (`Engine`), heatmaps mean_c |x - G(x)|.
4. Outputs in ``out_dir``: ``metrics.json``, ``scores.csv`` (one row per test image) and
   ``panels/<id>.png`` (image | reconstruction | heatmap overlay [| true mask]).

Paper settings. `experiment_preset` applies the original's per-experiment fit settings to the "paper"
preset (`PAPER_FIT`: CIFAR-10 beta 50 and 150 steps, DAGM beta 80 and 200 steps; SGD 1e-3, 96x96,
MobileNetV2 alpha 0.5 come from the preset). The "small" and "tiny" presets keep their own fit section
(Adam, a beta tuned to it); ``steps`` / ``beta`` override any preset. The preset's ``data`` section
(embedded textures) is not used here: the counts are the function arguments.

Metrics. ``image_auroc`` is the AUROC of the heatmap maximum (the package's image score for maps,
the smoothed map's maximum, as in the demo); ``image_auroc_by_score`` adds the f-Net scores (``lof``, ``l2_to_center``)
and the final fit loss L_R + beta L_C (``fit_loss``). DAGM adds ``pixel_auroc`` and ``aupro``. Images
whose fit diverged are counted (``diverged``) and left out of the map-based metrics. Undefined metrics
(one class only) are written as null.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from anounet_jax.config import Preset, get_preset
from anounet_jax.data.types import ImageSet
from anounet_jax.errors import AnoUnetError

# The original's settings per experiment, applied to the "paper" preset.
PAPER_FIT = {
    "cifar10": {"beta": 50.0, "steps": 150},
    "dagm": {"beta": 80.0, "steps": 200},
}
PANEL_CHOICES = ("all", "flagged", "none")


def experiment_preset(experiment: str, preset: str | Preset = "paper", *, steps: int | None = None,
                      beta: float | None = None) -> Preset:
    """The preset an experiment runs with: the named preset, with `PAPER_FIT[experiment]` when it is
    "paper", then ``steps`` / ``beta`` when given."""
    if experiment not in PAPER_FIT:
        raise AnoUnetError(f"unknown experiment {experiment!r}; use one of {sorted(PAPER_FIT)}")
    base = get_preset(preset) if isinstance(preset, str) else preset
    fit = dict(PAPER_FIT[experiment]) if base.name == "paper" else {}
    if steps is not None:
        if steps < 1:
            raise AnoUnetError(f"steps must be >= 1, got {steps}")
        fit["steps"] = int(steps)
    if beta is not None:
        if not beta >= 0:
            raise AnoUnetError(f"beta must be >= 0, got {beta}")
        fit["beta"] = float(beta)
    return base.replace(fit=fit) if fit else base


# --------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------


def balanced_indices(labels, n: int | None, rng: np.random.Generator, n_default_normal: str = "all"
                     ) -> np.ndarray:
    """Sorted indices of a test subset with about as many normal (0) as anomalous (1) images.

    n: the total; half anomalous (rounded up), the rest normal, topped up from the other class when one
    runs short. n None: every anomalous image plus, with n_default_normal="all", every normal one, or
    with "match", as many normal ones as there are anomalous ones.
    """
    labels = np.asarray(labels)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if n is None:
        n_pos = len(pos)
        n_neg = len(neg) if n_default_normal == "all" else min(len(neg), n_pos)
    else:
        if n < 2:
            raise AnoUnetError(f"the test set needs at least 2 images (one per class), got n_test={n}")
        n_pos = min(len(pos), n - n // 2)
        n_neg = min(len(neg), n - n_pos)
        n_pos = min(len(pos), n - n_neg)
    pick = np.concatenate([rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)])
    return np.sort(pick.astype(np.int64))


def concat_sets(*sets: ImageSet) -> ImageSet:
    """Concatenate image sets (masks and labels kept only when every set has them)."""
    sets = [s for s in sets if len(s)]
    if not sets:
        raise AnoUnetError("no images to concatenate")
    masks = None if any(s.masks is None for s in sets) else np.concatenate([s.masks for s in sets])
    labels = None if any(s.labels is None for s in sets) else np.concatenate([s.labels for s in sets])
    return ImageSet(np.concatenate([s.images for s in sets]), masks=masks, labels=labels,
                    ids=[i for s in sets for i in s.ids])


def _finite_or_none(value):
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------------------------------
# the shared run
# --------------------------------------------------------------------------------------------------


def train_stage(preset: Preset, train: ImageSet, reference: ImageSet, *, seed: int = 0, fnet_weights=None,
                progress: bool = True, log=print):
    """The f-Net stage (`fnet.train.train_fnet`), from imported ``fnet_weights`` when given, with the fits'
    warm start when the preset's fit.start is "warm"."""
    from anounet_jax.engine.warm_start import with_warm_start
    from anounet_jax.fnet.train import train_fnet
    from anounet_jax.fnet.weights import load_fnet_weights

    init = None if fnet_weights is None else load_fnet_weights(fnet_weights, preset.fnet, preset.image_size)
    log(f"f-Net ({preset.fnet.arch}, {preset.fnet.method}, "
        f"{'imported weights' if init is not None else 'from scratch'}): {len(train)} normal + "
        f"{len(reference)} reference images of {preset.image_size}x{preset.image_size}")
    trained = train_fnet(preset.fnet, train, reference, seed=seed, progress=progress, init_variables=init)
    return with_warm_start(preset, trained, train.images, seed=seed, progress=progress, log=log)


def run_experiment(preset: Preset, train: ImageSet, reference: ImageSet | None, test: ImageSet, out_dir, *,
                   experiment: str, seed: int = 0, formulation: str | None = None, panels: str = "all",
                   fnet_weights=None, trained_fnet=None, progress: bool = True, log=print,
                   info: dict | None = None) -> dict:
    """f-Net -> C -> scores -> per-image fit -> metrics.json, scores.csv, panels (module docstring).

    trained_fnet: a `fnet.train.TrainedFNet` from an earlier `train_stage` (or a loaded checkpoint's
    ``ckpt.trained``) to skip the f-Net stage; its f-Net
    and C are used as they are, ``reference`` may then be None. The image scorers are always fitted
    on the features of ``train``.
    """
    from anounet_jax.engine.fit import Engine
    from anounet_jax.fnet.train import feature_scale
    from anounet_jax.fnet.scores import DistanceScorer, LOFScorer
    from anounet_jax.jobs.common import check_seed, prepare_out_dir
    from anounet_jax.maps import finish, write_panels
    from anounet_jax.metrics import image_auroc, map_metrics

    if panels not in PANEL_CHOICES:
        raise AnoUnetError(f"panels must be one of {PANEL_CHOICES}, got {panels!r}")
    if test.labels is None or len(test) == 0:
        raise AnoUnetError("the test set needs labelled images")
    check_seed(seed)
    if len(train) < 2:
        raise AnoUnetError(f"the f-Net and the image scorers need at least 2 normal training images, "
                           f"got {len(train)}")
    out_dir = prepare_out_dir(out_dir)
    t0 = time.perf_counter()
    fnet_given = trained_fnet is not None
    if trained_fnet is None:
        if reference is None:
            raise AnoUnetError("training the f-Net needs reference images")
        trained_fnet = train_stage(preset, train, reference, seed=seed, fnet_weights=fnet_weights,
                                   progress=progress, log=log)
        train_feats = trained_fnet.train_features
    else:
        log("f-Net: given (not trained here)")
        train_feats = trained_fnet.fnet.features(train.images)
    fnet, center = trained_fnet.fnet, np.asarray(trained_fnet.center, np.float32)
    if trained_fnet.feature_scale is None and preset.fit.lc_scale == "normal":  # (an f-Net given from elsewhere)
        trained_fnet = dataclasses.replace(trained_fnet, feature_scale=feature_scale(train_feats, center))
    t1 = time.perf_counter()

    test_feats = fnet.features(test.images)
    lof = LOFScorer().fit(train_feats)
    l2 = DistanceScorer("l2").fit(train_feats, center)
    lof_scores, l2_scores = lof.score(test_feats), l2.score(test_feats)
    flagged = lof.flag(lof_scores)

    fit = preset.fit
    log(f"Ano-Unet: {len(test)} test images ({int(test.labels.sum())} anomalous), beta {fit.beta:g}, "
        f"{fit.steps} steps, {fit.optimizer} lr {fit.lr:g}")
    if formulation is not None:  # the caller's choice over the preset's engine section
        preset = preset.replace(engine={"formulation": formulation})
    engine = Engine.for_trained(preset, trained_fnet)
    result = engine.fit(test.images, seed=seed, progress=progress)
    t2 = time.perf_counter()

    ok = ~result.diverged
    maps = finish(result.heatmap, preset.maps)
    heat_scores = maps.reshape(len(maps), -1).max(1)
    fit_loss = result.loss_r + engine.fit_beta * result.loss_c / engine.feature_scale
    n_div = int(result.diverged.sum())
    if n_div:
        log(f"warning: {n_div} fits diverged; they are left out of the map-based metrics")
    kept = test.subset(ok)
    metrics = {"experiment": experiment, **(info or {})}
    metrics.update(map_metrics(maps[ok], heat_scores[ok], kept.labels, kept.masks) if ok.any() else
                   {"images": 0})
    metrics["image_auroc_by_score"] = {
        "heatmap_max": metrics.get("image_auroc", float("nan")),
        "fit_loss": image_auroc(fit_loss[ok], kept.labels) if ok.any() else float("nan"),
        "lof": image_auroc(lof_scores, test.labels),
        "l2_to_center": image_auroc(l2_scores, test.labels),
    }

    if panels != "none":
        show = ok if panels == "all" else ok & flagged
        idx = np.flatnonzero(show)
        shown = test.subset(idx)
        write_panels(out_dir, shown.images, shown.ids, {"heatmap": maps[idx]}, masks=shown.masks,
                     recon=result.recon[idx])
    with open(out_dir / "scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", "heatmap_max", "fit_loss", "lof", "l2_to_center", "lof_flagged", "diverged"])
        for i, name in enumerate(test.ids):
            w.writerow([name, int(test.labels[i]), f"{heat_scores[i]:.6g}", f"{fit_loss[i]:.6g}",
                        f"{lof_scores[i]:.6g}", f"{l2_scores[i]:.6g}", int(flagged[i]), int(result.diverged[i])])

    metrics.update(
        anomalous=int(test.labels.sum()), normal=int((test.labels == 0).sum()),
        train_normal=len(train), reference=None if reference is None else len(reference),
        fnet_weights=None if fnet_weights is None or fnet_given else os.fspath(fnet_weights),
        fnet_given=fnet_given, lof_threshold=lof.threshold, lof_flagged=int(flagged.sum()),
        panels=panels, diverged=n_div,
        preset={k: v for k, v in preset.to_dict().items() if k != "data"},  # data: unused here
        formulation=engine.formulation,
        seconds={"fnet": round(t1 - t0, 1), "fit": round(t2 - t1, 1),
                 "total": round(time.perf_counter() - t0, 1)},
    )
    metrics = _finite_or_none(metrics)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


# --------------------------------------------------------------------------------------------------
# CIFAR-10 horse (normal) / deer (anomaly)
# --------------------------------------------------------------------------------------------------


def run_cifar10(preset: Preset, out_dir, *, data_dir=None, n_test: int | None = None,
                n_reference: int = 6000, n_train: int | None = None, seed: int = 0,
                download: bool = True, formulation: str | None = None, panels: str = "all",
                fnet_weights=None, trained_fnet=None, progress: bool = True, log=print) -> dict:
    """CIFAR-10 horse/deer: f-Net on the training horses + ``n_reference`` images of the 8 other classes
    (`load_cifar10_anomaly`), Ano-Unet on the test horses and deer; image-level metrics only.

    n_test: fit a balanced random subset of this many test images (None: all 2,000). n_train: use this
    many training horses, drawn at random (None: all 5,000). trained_fnet: skip the f-Net stage (see
    `run_experiment`). Returns the metrics written to ``out_dir/metrics.json``.
    """
    from anounet_jax.data.cifar10 import DEER, HORSE, load_cifar10_anomaly

    data = load_cifar10_anomaly(size=preset.image_size, n_reference=n_reference, seed=seed,
                                data_dir=data_dir, download=download)
    rng = np.random.default_rng([seed, 10])
    train, test = data["train_normal"], data["test"]
    if n_train is not None and n_train < len(train):
        train = train.subset(np.sort(rng.choice(len(train), n_train, replace=False)))
    test = test.subset(balanced_indices(test.labels, n_test, rng))
    log(f"CIFAR-10: normal horse ({HORSE}), anomaly deer ({DEER}); {len(data['train_normal'])} training "
        f"horses, {n_reference} reference images, {len(data['test'])} test images")
    return run_experiment(preset, train, data["reference"], test, out_dir, experiment="cifar10", seed=seed,
                          formulation=formulation, panels=panels, fnet_weights=fnet_weights,
                          trained_fnet=trained_fnet, progress=progress, log=log,
                          info={"normal_class": "horse", "anomaly_class": "deer"})


# --------------------------------------------------------------------------------------------------
# DAGM 2007
# --------------------------------------------------------------------------------------------------


def dagm_reference(image_size: int, n_reference: int | None, n_per_class_default: int, seed: int = 0
                   ) -> ImageSet:
    """The built-in reference images (`load_reference`: every bundled picture and procedural texture,
    none excluded). n_reference: total, drawn at random from at least 3 per class; None:
    ``n_per_class_default`` per class."""
    from anounet_jax.data import embedded

    n_classes = len(embedded.NORMAL_SOURCES) + len(embedded.REFERENCE_PICTURES) + len(embedded.PROCEDURAL)
    if n_reference is None:
        return embedded.load_reference("", image_size, max(3, n_per_class_default), seed)
    if n_reference < 1:
        raise AnoUnetError(f"n_reference must be >= 1, got {n_reference}")
    ref = embedded.load_reference("", image_size, max(3, math.ceil(n_reference / n_classes)), seed)
    if n_reference < len(ref):
        ref = ref.subset(np.sort(np.random.default_rng([seed, 11]).choice(len(ref), n_reference, replace=False)))
    return ref


def run_dagm(preset: Preset, root, out_dir, *, class_id: int = 6, rotation_unit: str = "radians",
             n_test: int | None = None, n_reference: int | None = None, n_train: int | None = None,
             seed: int = 0, formulation: str | None = None, panels: str = "all", fnet_weights=None,
             trained_fnet=None, progress: bool = True, log=print) -> dict:
    """DAGM 2007, one class (release auto-detected): f-Net on the class's normal images + the built-in
    reference images, Ano-Unet on defective test images plus normal ones for image AUROC.

    Test set: later release, from ``ClassN/Test`` (its defective images and as many normal ones);
    original release, the defective images of ``ClassN_def`` plus as many normal images of ``ClassN``
    held out from f-Net training. n_test: a balanced random subset of this size instead. n_train: cap
    on the normal training images. n_reference: total reference images (None: the preset's
    ``data.n_reference_per_class`` per class). trained_fnet: skip the f-Net stage (see
    `run_experiment`; no reference images are then loaded). Returns the metrics written to
    ``out_dir/metrics.json``.
    """
    from anounet_jax.data.dagm import detect_release, load_dagm

    size = preset.image_size
    release = detect_release(root, class_id)
    rng = np.random.default_rng([seed, 12])
    if release == "later":
        train_split = load_dagm(root, class_id, size, "train", rotation_unit)
        train = train_split.subset(train_split.labels == 0)
        pool = load_dagm(root, class_id, size, "test", rotation_unit)
        test = pool.subset(balanced_indices(pool.labels, n_test, rng, n_default_normal="match"))
    else:
        normal = load_dagm(root, class_id, size, "train", rotation_unit)
        defects = load_dagm(root, class_id, size, "test", rotation_unit)
        if n_test is None:
            n_def = len(defects)
            n_norm = n_def
        else:
            if n_test < 2:
                raise AnoUnetError(f"the test set needs at least 2 images (one per class), got n_test={n_test}")
            n_def = min(len(defects), n_test - n_test // 2)
            n_norm = n_test - n_def
        n_norm = min(n_norm, len(normal) - 2)  # at least 2 normal images stay for training
        if n_norm < 1:
            raise AnoUnetError(f"only {len(normal)} normal images: none can be held out for testing",
                               Path(root) / f"Class{class_id}")
        held = np.sort(rng.choice(len(normal), n_norm, replace=False))
        rest = np.setdiff1d(np.arange(len(normal)), held)
        train = normal.subset(rest)
        test = concat_sets(normal.subset(held),
                           defects.subset(np.sort(rng.choice(len(defects), n_def, replace=False))))
    if n_train is not None and n_train < len(train):
        train = train.subset(np.sort(rng.choice(len(train), n_train, replace=False)))
    reference = None if trained_fnet is not None else dagm_reference(
        size, n_reference, preset.data.n_reference_per_class, seed)
    log(f"DAGM 2007 class {class_id} ({release} release, rotation unit {rotation_unit}): "
        f"{len(train)} normal training images, {len(test)} test images")
    return run_experiment(preset, train, reference, test, out_dir, experiment="dagm", seed=seed,
                          formulation=formulation, panels=panels, fnet_weights=fnet_weights,
                          trained_fnet=trained_fnet, progress=progress, log=log,
                          info={"class_id": class_id, "release": release, "rotation_unit": rotation_unit})

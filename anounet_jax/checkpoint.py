"""One checkpoint = everything the per-image stage needs from the f-Net stage, saved with orbax.

On disk (an orbax composite checkpoint, one directory):

    <path>/arrays   StandardSave: {"fnet": {"params", "batch_stats"}, "center": C (D,),
                                   "scorer": the scorer's array entries (see fnet/scores.py),
                                   optional: "patch_memory", "warm_start" (U-Net parameters),
                                   "tile_centers" (n_tiles, D), "flaw_head" ({"kernel", "bias"}),
                                   "normal_features" (N, D)}
    <path>/meta     JsonSave: {"format_version", "preset" (Preset.to_dict()), "scorer" (its numbers
                                and strings), "fingerprint", optional: "feature_scale",
                                "patch_memory", "warm_start" ({"method", "steps", "inner_steps"}),
                                "tile_centers" ({"native_hw", "tile", "stride", "scale"}),
                                "flaw_head" ({"layer"}), "normal_features" ({"count"})}

Normal features (fit.lc_center "nearest", fnet/nearest_centers.py): f of the normal training images,
from which a score job picks each test image's own C.

Per-position centers (tiles.center "position", issue 16, fnet/tile_centers.py): one C per tile position
of the grid over images of one native size, stored with that grid so a score job can check that its
images and tiling are the ones they were made for.

Warm start (issue 17, engine/warm_start.py): U-Net parameters trained once on the normal images, stored
with the f-Net (`anounet train-fnet` when the preset's fit.start is "warm") so every job with
fit.start=warm begins its fits there. Optional like the other extras: a checkpoint without one (every older
checkpoint) has the same layout and fingerprint as before and loads unchanged (warm_start None).

No pickle anywhere: arrays go through orbax/tensorstore, everything else is JSON.

Fingerprint. `fingerprint(...)` is a SHA-256 over every array (its tree path, dtype, shape and bytes)
of the f-Net variables, C, the scorer state and the optional extras (patch memory, warm start), plus
the scorer's JSON scalars and the extras' JSON descriptions. It identifies the
*content* (two saves of the same trained f-Net give the same fingerprint wherever they live), so a
resumable job can store it next to its outputs and compare with `read_checkpoint_info(path)` (which
reads only the small JSON part) before reusing them. `load_checkpoint` recomputes it and refuses a
checkpoint whose arrays do not match it (corruption).

Preset check. `load_checkpoint(path, expected_preset)` compares the preset name and the fields that
decide the checkpoint's content, `MODEL_FIELDS`: image size, every f-Net field (architecture *and*
training), and the data fields that choose the f-Net's training images. The U-Net and per-image fit
sections are not compared: the same f-Net serves any fit settings.

Overwrite. `save_checkpoint` refuses an existing path unless `overwrite=True`. With overwrite, the new
checkpoint is first written completely beside the old one and then swapped in by renames, so a crash
mid-save leaves the old checkpoint (or, in the instant between the two renames, `<path>.old-*`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import flax
import jax
import numpy as np

from anounet_jax.config import Preset
from anounet_jax.errors import AnoUnetError
from anounet_jax.fnet.model import FrozenFNet, build_fnet_module
from anounet_jax.fnet.weights import check_variables
from anounet_jax.fnet.scores import DistanceScorer, LOFScorer, scorer_from_state
from anounet_jax.fnet.train import TrainedFNet

FORMAT_VERSION = 1
# Preset fields that must agree between a checkpoint and the preset a run expects ("fnet" = all of it).
MODEL_FIELDS = ("name", "image_size", "fnet", "data.category", "data.n_train", "data.n_reference_per_class")


@dataclasses.dataclass
class Checkpoint:
    preset: Preset
    fnet: FrozenFNet  # rebuilt with build_fnet_module(preset.fnet)
    center: np.ndarray  # C, float32 (D,)
    scorer: LOFScorer | DistanceScorer
    fingerprint: str
    path: str
    feature_scale: float | None = None  # mean L_C of the normal training images (None: older checkpoint)
    patch_memory: object = None  # fnet.patch_memory.PatchMemory, when the f-Net was trained with one
    warm_start: object = None  # engine.warm_start.WarmStart, when train-fnet stored one (fit.start warm)
    tile_centers: object = None  # fnet.tile_centers.TileCenters (tiles.center "position"), or None
    flaw_head: object = None  # fnet.flaw_head.FlawHead (fnet.synthetic_flaws), or None
    normal_features: np.ndarray | None = None  # f(normal training images) (fit.lc_center "nearest"), or None

    @property
    def trained(self):
        """The f-Net stage as a job uses it (`fnet.train.TrainedFNet`), restored instead of trained; it
        also carries the stored warm start (`.warm_start`, read by engine.warm_start.start_params_for)."""
        return TrainedFNet(self.fnet, self.center, self.normal_features, [], self.feature_scale,
                           self.patch_memory, self.warm_start, self.flaw_head)


def _ocp():
    import orbax.checkpoint as ocp  # imported lazily: it pulls in tensorstore

    return ocp


def _checkpointer():
    ocp = _ocp()
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def _to_numpy_tree(tree):
    if isinstance(tree, flax.core.FrozenDict):
        tree = flax.core.unfreeze(tree)
    return jax.tree.map(lambda a: np.asarray(jax.device_get(a)), tree)


def _split_scorer_state(state: dict) -> tuple[dict, dict]:
    arrays = {k: np.asarray(v) for k, v in state.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
    return arrays, scalars


def _digest(arrays: dict, scorer_scalars: dict, extra: dict | None = None) -> str:
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(arrays)[0]
    for key_path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(key_path)}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    h.update(json.dumps(scorer_scalars, sort_keys=True).encode())
    if extra:  # scalars added later (feature and patch-memory scales): absent from older checkpoints
        h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()


EXTRAS = ("feature_scale", "patch_memory", "warm_start", "tile_centers", "flaw_head", "normal_features")  # optional meta entries, in the fingerprint


def _extra(feature_scale, patch_memory, warm_start=None, tile_centers=None, flaw_head=None,
           normal_features=None) -> dict:
    out = {}
    if feature_scale is not None:
        out["feature_scale"] = float(feature_scale)
    if patch_memory is not None:
        out["patch_memory"] = {"scale": float(patch_memory.scale), "layers": list(patch_memory.layers)}
    if warm_start is not None:
        out["warm_start"] = warm_start.describe()
    if tile_centers is not None:
        out["tile_centers"] = tile_centers.describe()
    if flaw_head is not None:
        out["flaw_head"] = {"layer": flaw_head.layer}
    if normal_features is not None:
        out["normal_features"] = {"count": int(len(normal_features))}
    return out


def _array_tree(fnet_variables, center, scorer, patch_memory=None, warm_start=None,
                tile_centers=None, flaw_head=None, normal_features=None) -> tuple[dict, dict]:
    if isinstance(fnet_variables, FrozenFNet):
        fnet_variables = fnet_variables.variables
    scorer_arrays, scorer_scalars = _split_scorer_state(scorer.state_dict())
    arrays = {"fnet": _to_numpy_tree(fnet_variables),
              "center": np.asarray(center, np.float32).reshape(-1),
              "scorer": scorer_arrays}
    if patch_memory is not None:
        arrays["patch_memory"] = np.asarray(patch_memory.memory, np.float32)
    if warm_start is not None:
        arrays["warm_start"] = _to_numpy_tree(warm_start.params)
    if tile_centers is not None:
        arrays["tile_centers"] = np.asarray(tile_centers.centers, np.float32)
    if flaw_head is not None:
        arrays["flaw_head"] = _to_numpy_tree(flaw_head.params)
    if normal_features is not None:
        arrays["normal_features"] = np.asarray(normal_features, np.float32)
    return arrays, scorer_scalars


def fingerprint(fnet_variables, center, scorer, feature_scale: float | None = None, patch_memory=None,
                warm_start=None, tile_centers=None, flaw_head=None, normal_features=None) -> str:
    """The content fingerprint `save_checkpoint` would store for these values (hex SHA-256)."""
    return _digest(*_array_tree(fnet_variables, center, scorer, patch_memory, warm_start, tile_centers, flaw_head,
                                normal_features),
                   _extra(feature_scale, patch_memory, warm_start, tile_centers, flaw_head, normal_features))


def save_checkpoint(path, preset: Preset, fnet_variables, center, scorer, overwrite: bool = False,
                    feature_scale: float | None = None, patch_memory=None, warm_start=None,
                    tile_centers=None, flaw_head=None, normal_features=None) -> str:
    """Save f-Net variables (or a FrozenFNet), C, a fitted scorer, the feature scale (the mean L_C of
    the normal training images, `TrainedFNet.feature_scale`), the memory of normal patch features
    (`TrainedFNet.patch_memory`, if any), a warm start for the fits (`engine.warm_start.WarmStart`, if
    any; its U-Net must be the preset's), the per-position centers (`fnet.tile_centers.TileCenters`, if
    any), the f-Net's flaw head (`TrainedFNet.flaw_head`, if any), the normal training images' features
(`TrainedFNet.train_features`, for fit.lc_center "nearest"; if given) and the preset as one checkpoint.

    Returns the content fingerprint. An existing `path` is an error unless overwrite=True (then it is
    replaced only once the new checkpoint is complete; see the module docstring).
    """
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise AnoUnetError("a checkpoint (or file) already exists here; pass overwrite=True to replace it",
                           path)
    arrays, scorer_scalars = _array_tree(fnet_variables, center, scorer, patch_memory, warm_start, tile_centers,
                                         flaw_head, normal_features)
    if normal_features is not None and arrays["normal_features"].shape[1:] != arrays["center"].shape:
        raise AnoUnetError(f"normal features {arrays['normal_features'].shape} do not match C "
                           f"{arrays['center'].shape}", path)
    if tile_centers is not None and arrays["tile_centers"].shape[1:] != arrays["center"].shape:
        raise AnoUnetError(f"per-position centers {arrays['tile_centers'].shape} do not match C "
                           f"{arrays['center'].shape}", path)
    check_variables(preset.fnet, preset.image_size, arrays["fnet"])
    if warm_start is not None:
        from anounet_jax.engine.warm_start import check_start_shape

        check_start_shape(preset.unet, preset.image_size, arrays["warm_start"])
    extra = _extra(feature_scale, patch_memory, warm_start, tile_centers, flaw_head, normal_features)
    digest = _digest(arrays, scorer_scalars, extra)
    meta = {"format_version": FORMAT_VERSION, "preset": preset.to_dict(), "scorer": scorer_scalars,
            "fingerprint": digest, **extra}
    ocp = _ocp()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f"{path.name}.old-{os.getpid()}")
    try:
        with _checkpointer() as ckptr:
            ckptr.save(tmp, ocp.args.Composite(arrays=ocp.args.StandardSave(arrays),
                                               meta=ocp.args.JsonSave(meta)), force=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except OSError as e:
        raise AnoUnetError(f"could not write the checkpoint: {e}", path) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        elif old.exists():
            old.unlink()
    return digest


def _brief(e: Exception, limit: int = 300) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= limit else text[:limit] + "..."


def read_checkpoint_info(path) -> dict:
    """The JSON part only (cheap): {"format_version", "preset" (a dict), "scorer", "fingerprint"}."""
    path = Path(path).absolute()
    if not path.is_dir():
        raise AnoUnetError("no checkpoint here (missing, or not a directory)", path)
    ocp = _ocp()
    try:
        with _checkpointer() as ckptr:
            meta = ckptr.restore(path, ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # orbax raises FileNotFoundError, KeyError, JSONDecodeError, ValueError...
        raise AnoUnetError(f"not a readable anounet checkpoint ({_brief(e)})", path) from e
    if not isinstance(meta, dict) or not {"format_version", "preset", "scorer", "fingerprint"} <= set(meta):
        raise AnoUnetError("checkpoint metadata is incomplete", path)
    if meta["format_version"] != FORMAT_VERSION:
        raise AnoUnetError(f"checkpoint format version {meta['format_version']} is not supported "
                           f"(this version reads {FORMAT_VERSION})", path)
    return meta


def _field(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d[part]
    return d


def preset_mismatches(stored: Preset, expected: Preset) -> list[str]:
    """["fnet.lr: checkpoint 0.001, expected 0.003", ...] over MODEL_FIELDS (empty = compatible)."""
    a, b = stored.to_dict(), expected.to_dict()
    out = []
    for field in MODEL_FIELDS:
        va, vb = _field(a, field), _field(b, field)
        if isinstance(va, dict):
            out += [f"{field}.{k}: checkpoint {va[k]!r}, expected {vb[k]!r}" for k in va if va[k] != vb[k]]
        elif va != vb:
            out.append(f"{field}: checkpoint {va!r}, expected {vb!r}")
    return out


def load_checkpoint(path, expected_preset: Preset | None = None) -> Checkpoint:
    """Restore a checkpoint written by `save_checkpoint`.

    expected_preset: when given, its name and MODEL_FIELDS must equal the stored preset's, else an
    AnoUnetError names the path and every mismatching field. Missing, unreadable or corrupt
    checkpoints (arrays not matching the stored fingerprint) also raise AnoUnetError.
    """
    path = Path(path).absolute()
    meta = read_checkpoint_info(path)
    try:
        preset = Preset.from_dict(meta["preset"])
    except (KeyError, TypeError) as e:
        raise AnoUnetError(f"checkpoint preset is malformed ({e})", path) from e
    if expected_preset is not None:
        bad = preset_mismatches(preset, expected_preset)
        if bad:
            raise AnoUnetError(f"checkpoint was made with preset {preset.name!r}, which differs from the "
                               f"expected {expected_preset.name!r} in: " + "; ".join(bad), path)
    ocp = _ocp()
    try:
        with _checkpointer() as ckptr:
            arrays = ckptr.restore(path, ocp.args.Composite(arrays=ocp.args.StandardRestore()))["arrays"]
    except Exception as e:
        raise AnoUnetError(f"checkpoint arrays are unreadable ({_brief(e)})", path) from e
    if not isinstance(arrays, dict) or not {"fnet", "center", "scorer"} <= set(arrays):
        raise AnoUnetError("checkpoint arrays are incomplete", path)
    arrays = _to_numpy_tree(arrays)
    extra = {k: meta[k] for k in EXTRAS if meta.get(k) is not None}
    digest = _digest(arrays, meta["scorer"], extra)
    if digest != meta["fingerprint"]:
        raise AnoUnetError("checkpoint is corrupt: its arrays do not match the stored fingerprint", path)
    try:
        scorer = scorer_from_state({**meta["scorer"], **arrays["scorer"]})
    except AnoUnetError as e:
        raise AnoUnetError(e.problem, path) from e
    variables = jax.device_put(arrays["fnet"])
    fnet = FrozenFNet.from_module(build_fnet_module(preset.fnet), variables)
    memory = None
    if "patch_memory" in arrays and "patch_memory" in extra:
        from anounet_jax.fnet.patch_memory import PatchMemory

        memory = PatchMemory(np.asarray(arrays["patch_memory"], np.float32), extra["patch_memory"]["scale"],
                             tuple(extra["patch_memory"]["layers"]), preset.fnet)
    warm = None
    if "warm_start" in arrays and "warm_start" in extra:
        from anounet_jax.engine.warm_start import WarmStart

        d = extra["warm_start"]
        warm = WarmStart(arrays["warm_start"], d["method"], int(d["steps"]), int(d.get("inner_steps", 0)))
    tile_centers = None
    if "tile_centers" in arrays and "tile_centers" in extra:
        from anounet_jax.fnet.tile_centers import TileCenters

        tile_centers = TileCenters.from_description(arrays["tile_centers"], extra["tile_centers"])
    flaw_head = None
    if "flaw_head" in arrays and "flaw_head" in extra:
        from anounet_jax.fnet.flaw_head import FlawHead

        flaw_head = FlawHead(arrays["flaw_head"], preset.fnet, extra["flaw_head"]["layer"])
    normal = None
    if "normal_features" in arrays and "normal_features" in extra:
        normal = np.asarray(arrays["normal_features"], np.float32)
    return Checkpoint(preset=preset, fnet=fnet, center=np.asarray(arrays["center"], np.float32),
                      scorer=scorer, fingerprint=digest, path=str(path),
                      feature_scale=extra.get("feature_scale"), patch_memory=memory, warm_start=warm,
                      tile_centers=tile_centers, flaw_head=flaw_head, normal_features=normal)

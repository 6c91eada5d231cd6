"""f-Net weights from files: flax msgpack backbones (e.g. imported Keras ImageNet weights, made by
scripts/import_keras_mobilenetv2.py), checked against the preset's f-Net before use."""

from __future__ import annotations

from pathlib import Path

import flax
import jax
import numpy as np

from anounet_jax.errors import AnoUnetError
from anounet_jax.fnet.model import build_fnet_module


def _shapes(tree) -> dict[str, tuple]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(k): tuple(np.shape(v)) for k, v in leaves}


def check_variables(fnet_cfg, image_size: int, variables: dict, path=None) -> None:
    """The variables must be those of build_fnet_module(fnet_cfg): same tree, same shapes."""
    module = build_fnet_module(fnet_cfg)
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32)
    want = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x, train=False), x)
    want = {k: v for k, v in flax.core.unfreeze(want).items() if k in ("params", "batch_stats")}
    got_f = _shapes({k: v for k, v in variables.items() if k in ("params", "batch_stats")})
    want_f = _shapes(want)  # ShapeDtypeStructs: np.shape reads their .shape
    if got_f != want_f:
        missing = sorted(set(want_f) - set(got_f))[:3]
        extra = sorted(set(got_f) - set(want_f))[:3]
        shape = sorted(k for k in set(got_f) & set(want_f) if got_f[k] != want_f[k])[:3]
        raise AnoUnetError(f"f-Net variables do not match the preset's f-Net ({fnet_cfg.arch}, alpha "
                           f"{fnet_cfg.alpha}): missing {missing}, unexpected {extra}, wrong shape {shape}",
                           path)


def load_fnet_weights(path, fnet_cfg, image_size: int) -> dict:
    """Backbone variables from a flax msgpack file, checked against the preset's f-Net."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise AnoUnetError(f"cannot read f-Net weights ({e.strerror or e})", path) from None
    try:
        variables = flax.serialization.msgpack_restore(data)
    except Exception as e:  # noqa: BLE001 - msgpack raises several types on garbage
        raise AnoUnetError(f"not a flax msgpack file ({type(e).__name__})", path) from None
    if not isinstance(variables, dict) or "params" not in variables:
        raise AnoUnetError("f-Net weights must hold {'params', 'batch_stats'}", path)
    variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    check_variables(fnet_cfg, image_size, variables, path)
    return jax.tree.map(lambda a: np.asarray(a, np.float32), variables)

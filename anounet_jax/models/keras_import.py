"""Import Keras ``applications.MobileNetV2`` weights into :class:`~anounet_jax.models.mobilenet_v2.MobileNetV2`.

``load_keras_mobilenetv2(source, alpha)`` returns the Flax variables
``{"params": ..., "batch_stats": ...}`` for ``MobileNetV2(alpha=alpha)``. ``source`` is one of

* a legacy Keras 2 HDF5 weights file -- the layout of the ImageNet files that
  ``keras.applications.MobileNetV2(weights="imagenet")`` downloads
  (``mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_96_no_top.h5``): root attribute
  ``layer_names``, datasets ``<layer>/<layer>/kernel:0`` listed in each group's ``weight_names``;
  a legacy full-model ``.h5`` (the same under ``model_weights/``) works too;
* a Keras 3 ``.weights.h5`` file (``model.save_weights``): ``layers/<key>/vars/<i>`` with the
  layer name in the ``vars`` group's ``name`` attribute;
* a Keras 3 ``.keras`` archive (its ``model.weights.h5`` is read);
* an in-memory Keras model (Keras 3 or tf.keras), including one that nests the MobileNetV2.

Files are read with h5py only; Keras is not needed. Layers that MobileNetV2 does not have (for
example the ``predictions`` head of an ``include_top=True`` file) are ignored. Problems a user can
cause (missing file, not a weights file, weights of another width ``alpha``, missing layer, shape
mismatch) raise :class:`~anounet_jax.errors.AnoUnetError` naming the file.

Keras kernels are already HWIO like Flax; depthwise kernels go from Keras' ``(3, 3, C, 1)`` to
Flax's grouped-conv ``(3, 3, 1, C)``. BatchNorm ``gamma, beta, moving_mean, moving_variance`` become
``params/{scale, bias}`` and ``batch_stats/{mean, var}``.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from anounet_jax.errors import AnoUnetError
from anounet_jax.models.mobilenet_v2 import MobileNetV2, layer_names, make_divisible

KNOWN_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
_BN_ORDER = ("gamma", "beta", "moving_mean", "moving_variance")

LayerWeights = dict[str, dict[str, np.ndarray]]


def load_keras_mobilenetv2(path_or_model: Any, alpha: float = 0.5) -> dict[str, dict]:
    """Flax variables ``{"params", "batch_stats"}`` for ``MobileNetV2(alpha)`` from Keras weights.

    Args:
      path_or_model: path to a ``.h5`` / ``.weights.h5`` / ``.keras`` file, or a Keras model.
      alpha: width multiplier the weights were trained with (must match the file).

    Returns:
      A pytree of float32 ``jax.Array`` usable as
      ``MobileNetV2(alpha).apply(variables, images)``.
    """
    if isinstance(path_or_model, (str, os.PathLike)):
        where = os.fspath(path_or_model)
        weights = _read_file(where)
    elif hasattr(path_or_model, "layers"):
        where = f"<keras model {getattr(path_or_model, 'name', '?')}>"
        weights = _read_model(path_or_model)
    else:
        raise AnoUnetError(
            f"expected a weights file path or a Keras model, got {type(path_or_model).__name__}"
        )
    return convert(weights, alpha, where)


def convert(weights: LayerWeights, alpha: float, where: str | None = None) -> dict[str, dict]:
    """Map ``{keras_layer: {weight_name: array}}`` onto MobileNetV2(alpha)'s variable tree."""
    if not isinstance(alpha, (int, float)) or not alpha > 0:
        raise AnoUnetError(f"alpha must be a positive number, got {alpha!r}", where)
    expected = jax.eval_shape(
        lambda: MobileNetV2(alpha=float(alpha)).init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32)
        )
    )
    names = layer_names(alpha)
    depthwise = set(names["depthwise"])
    params: dict[str, dict] = {}
    batch_stats: dict[str, dict] = {}

    def check(layer: str, wname: str, arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        if tuple(arr.shape) != tuple(shape):
            guess = _guess_alpha(weights)
            hint = (
                f"; the weights look like alpha={guess}"
                if guess is not None and guess != alpha
                else ""
            )
            raise AnoUnetError(
                f"weights do not fit MobileNetV2(alpha={alpha}): {layer}/{wname} has shape "
                f"{tuple(arr.shape)}, expected {tuple(shape)}{hint}",
                where,
            )
        return arr

    for layer, leaves in expected["params"].items():
        if layer not in weights:
            raise AnoUnetError(
                f"layer {layer!r} of MobileNetV2 not found in the weights "
                f"({len(weights)} layers with weights found; is this a Keras MobileNetV2?)",
                where,
            )
        got = weights[layer]
        if "kernel" in leaves:  # Conv2D or DepthwiseConv2D
            kernel = _pick(got, ("kernel", "depthwise_kernel"), layer, where)
            if layer in depthwise and kernel.ndim == 4:
                kernel = np.transpose(kernel, (0, 1, 3, 2))  # (3,3,C,1) -> (3,3,1,C)
            shape = leaves["kernel"].shape
            params[layer] = {"kernel": check(layer, "kernel", kernel, shape)}
        else:  # BatchNormalization
            stats = expected["batch_stats"][layer]
            gamma, beta, mean, var = (_pick(got, (k,), layer, where) for k in _BN_ORDER)
            params[layer] = {
                "scale": check(layer, "gamma", gamma, leaves["scale"].shape),
                "bias": check(layer, "beta", beta, leaves["bias"].shape),
            }
            batch_stats[layer] = {
                "mean": check(layer, "moving_mean", mean, stats["mean"].shape),
                "var": check(layer, "moving_variance", var, stats["var"].shape),
            }

    to_jax = lambda a: jnp.asarray(np.asarray(a, dtype=np.float32))  # noqa: E731
    return {
        "params": jax.tree.map(to_jax, params),
        "batch_stats": jax.tree.map(to_jax, batch_stats),
    }


# ----------------------------------------------------------------------------- readers


def _basename(name: str | bytes) -> str:
    """'Conv1/kernel:0' -> 'kernel' (Keras 2 and Keras 3 weight names)."""
    if isinstance(name, bytes):
        name = name.decode("utf8")
    return name.rsplit("/", 1)[-1].split(":", 1)[0]


def _pick(got: dict[str, np.ndarray], keys: tuple[str, ...], layer: str, where) -> np.ndarray:
    for k in keys:
        if k in got:
            return got[k]
    raise AnoUnetError(
        f"layer {layer!r} has weights {sorted(got)}, expected one of {list(keys)}", where
    )


def _guess_alpha(weights: LayerWeights) -> float | None:
    """The standard alpha whose block_16_project width matches the weights, if any."""
    kernel = weights.get("block_16_project", {}).get("kernel")
    if kernel is None or kernel.ndim != 4:
        return None
    for a in KNOWN_ALPHAS:
        if make_divisible(int(320 * a), 8) == kernel.shape[-1]:
            return a
    return None


def _read_model(model: Any) -> LayerWeights:
    """Weights of an in-memory Keras model (layers of nested models included)."""
    out: LayerWeights = {}
    stack = list(model.layers)
    while stack:
        layer = stack.pop(0)
        if hasattr(layer, "layers") and layer.layers:
            stack.extend(layer.layers)
            continue
        ws = list(getattr(layer, "weights", []))
        if ws:
            out[layer.name] = {_basename(w.name): _variable_to_numpy(w) for w in ws}
    return out


def _variable_to_numpy(w: Any) -> np.ndarray:
    """Keras 3 ``Variable.value`` is a property (a jax array); tf.Variable.value() a method."""
    value = getattr(w, "value", w)
    if callable(value):
        value = value()
    return np.asarray(value)


def _read_file(path: str) -> LayerWeights:
    if not os.path.exists(path):
        raise AnoUnetError("weights file not found", path)
    if os.path.isdir(path):
        raise AnoUnetError("expected a weights file, got a folder", path)
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - h5py is in the 'keras' extra
        raise AnoUnetError("reading Keras weights needs h5py (pip install h5py)", path) from e

    if zipfile.is_zipfile(path):  # Keras 3 .keras archive
        with zipfile.ZipFile(path) as z:
            inner = [n for n in z.namelist() if n.endswith(".weights.h5")]
            if not inner:
                raise AnoUnetError("archive holds no model.weights.h5 (not a .keras file)", path)
            data = io.BytesIO(z.read(inner[0]))
        return _read_h5(h5py.File(data, "r"), path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise AnoUnetError(f"not an HDF5 weights file ({e})", path) from e
    return _read_h5(f, path)


def _read_h5(f, path: str) -> LayerWeights:
    with f:
        group = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in group.attrs:
            return _read_legacy(group, path)
        if "layers" in f:
            return _read_keras3(f, path)
    raise AnoUnetError(
        "not a Keras weights file (neither the legacy 'layer_names' layout nor Keras 3 'layers/')",
        path,
    )


def _read_legacy(group, path: str) -> LayerWeights:
    """Keras 2 / legacy HDF5: ``<layer>`` groups whose ``weight_names`` attr lists datasets.

    A group normally holds one layer's weights (``Conv1/kernel:0`` under group ``Conv1``). A
    group for a nested model holds many layers' weights; those are split by the layer part of
    each weight name.
    """
    out: LayerWeights = {}
    for raw in group.attrs["layer_names"]:
        name = raw.decode("utf8") if isinstance(raw, bytes) else str(raw)
        g = group[name]
        wnames = [w.decode("utf8") if isinstance(w, bytes) else str(w)
                  for w in g.attrs.get("weight_names", [])]
        parents = {w.rsplit("/", 2)[-2] if "/" in w else name for w in wnames}
        for w in wnames:
            layer = w.rsplit("/", 2)[-2] if len(parents) > 1 and "/" in w else name
            try:
                arr = np.asarray(g[w])
            except KeyError as e:
                raise AnoUnetError(
                    f"layer {name!r} lists weight {w!r} but the file has no such dataset", path
                ) from e
            out.setdefault(layer, {})[_basename(w)] = arr
    return out


def _index(name: str) -> int:
    m = re.search(r"_(\d+)$", name)
    return int(m.group(1)) if m else 0


def _read_keras3(f, path: str) -> LayerWeights:
    """Keras 3 ``.weights.h5``: ``.../layers/<key>/vars/<i>``; names from the ``name`` attr."""
    found: list[tuple[str, str | None, list[np.ndarray]]] = []  # (h5 key, layer name, vars)

    def visit(key, obj):
        if key.rsplit("/", 1)[-1] == "vars" and hasattr(obj, "keys") and len(obj):
            arrays = [np.asarray(obj[k]) for k in sorted(obj.keys(), key=int)]
            name = obj.attrs.get("name")
            if isinstance(name, bytes):
                name = name.decode("utf8")
            found.append((key.rsplit("/", 2)[-2], name, arrays))

    f["layers"].visititems(visit)

    def named(arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        if len(arrays) == 4:
            return dict(zip(_BN_ORDER, arrays))
        if len(arrays) == 2:
            return {"kernel": arrays[0], "bias": arrays[1]}
        return {"kernel": arrays[0]} if len(arrays) == 1 else {str(i): a for i, a in enumerate(arrays)}

    if all(name for _, name, _ in found):
        return {name: named(arrays) for _, name, arrays in found}

    # Older Keras 3 files without the name attribute: keys are class-based ('conv2d_3') and
    # numbered in layer creation order, which is the order of layer_names().
    by_kind = {"conv": "conv2d", "depthwise": "depthwise_conv2d", "bn": "batch_normalization"}
    out: LayerWeights = {}
    for kind, stem in by_kind.items():
        keys = sorted(
            ((k, arrays) for k, _, arrays in found if re.fullmatch(rf"{stem}(_\d+)?", k)),
            key=lambda t: _index(t[0]),
        )
        targets = layer_names()[kind]
        if len(keys) != len(targets):
            raise AnoUnetError(
                f"Keras 3 weights without layer names hold {len(keys)} {stem} layers, "
                f"MobileNetV2 has {len(targets)}",
                path,
            )
        out.update({t: named(arrays) for t, (_, arrays) in zip(targets, keys)})
    return out

"""Keras MobileNetV2 weights -> Flax: file layouts, user errors, and output parity with Keras."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # before anything imports keras

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from anounet_jax.errors import AnoUnetError

h5py = pytest.importorskip("h5py")  # noqa: E402  (the 'keras' extra: keras + h5py)

from anounet_jax.models.keras_import import load_keras_mobilenetv2
from anounet_jax.models.mobilenet_v2 import MobileNetV2, layer_names

# Keras 3 saving code calls np.array(variable); numpy 2 warns about it (Keras' business, not ours).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

REPO = Path(__file__).resolve().parents[1]
SIZE = 96
apply_050 = jax.jit(MobileNetV2(alpha=0.5).apply)


def random_variables(alpha: float = 0.5, seed: int = 0):
    """Random Flax variables built with numpy from the abstract shapes (no init compile)."""
    shapes = jax.eval_shape(
        lambda: MobileNetV2(alpha=alpha).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    )
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "kernel" in name:
            fan_in = int(np.prod(leaf.shape[:-1]))
            return np.asarray(rng.normal(0, np.sqrt(2 / fan_in), leaf.shape), np.float32)
        if "scale" in name or "'var'" in name:
            return np.asarray(rng.uniform(0.5, 1.5, leaf.shape), np.float32)
        return np.asarray(rng.normal(0, 0.1, leaf.shape), np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def keras2_layers_from_flax(variables, with_head: bool = True):
    """(layer, [(weight_name, array)]) in Keras order with Keras 2 names ('Conv1/kernel:0')."""
    p, s = variables["params"], variables["batch_stats"]
    names = layer_names()
    depthwise = set(names["depthwise"])
    layers = [("input_1", [])]
    for layer in p:  # any order is fine for the reader; relu/pad layers carry no weights
        if layer in names["bn"]:
            ws = [("gamma", p[layer]["scale"]), ("beta", p[layer]["bias"]),
                  ("moving_mean", s[layer]["mean"]), ("moving_variance", s[layer]["var"])]
        elif layer in depthwise:
            ws = [("depthwise_kernel", np.transpose(p[layer]["kernel"], (0, 1, 3, 2)))]
        else:
            ws = [("kernel", p[layer]["kernel"])]
        layers.append((layer, [(f"{layer}/{w}:0", np.asarray(a)) for w, a in ws]))
        layers.append((f"{layer}_relu", []))
    if with_head:  # an include_top file: the classifier must be ignored
        layers.append(("predictions", [("predictions/kernel:0", np.zeros((1280, 4), np.float32)),
                                       ("predictions/bias:0", np.zeros((4,), np.float32))]))
    return layers


def write_keras2_h5(path, layers) -> None:
    """Write the legacy Keras 2 weights layout, as in the ImageNet files Keras downloads."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode("utf8") for n, _ in layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for name, weights in layers:
            g = f.create_group(name)
            g.attrs["weight_names"] = np.array([w.encode("utf8") for w, _ in weights])
            for wname, arr in weights:
                g.create_dataset(wname, data=arr)  # 'Conv1/kernel:0' -> Conv1/Conv1/kernel:0


# ------------------------------------------------------------------ without keras


def test_keras2_layout_roundtrip(tmp_path):
    variables = random_variables(0.5, seed=3)
    path = tmp_path / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_96_no_top.h5"
    write_keras2_h5(path, keras2_layers_from_flax(variables))
    loaded = load_keras_mobilenetv2(str(path), alpha=0.5)
    assert jax.tree.structure(loaded) == jax.tree.structure(variables)
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(loaded))
    # and the result is directly usable
    y = apply_050(loaded, jnp.full((1, 64, 64, 3), 0.5))
    assert y.shape == (1, 1280)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.h5"
    with pytest.raises(AnoUnetError, match="not found") as e:
        load_keras_mobilenetv2(missing, 0.5)
    assert e.value.path == str(missing)


def test_not_a_weights_file(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_text("hello")
    with pytest.raises(AnoUnetError, match="HDF5") as e:
        load_keras_mobilenetv2(path, 0.5)
    assert e.value.path == str(path)
    with h5py.File(tmp_path / "empty.h5", "w"):
        pass
    with pytest.raises(AnoUnetError, match="not a Keras weights file"):
        load_keras_mobilenetv2(tmp_path / "empty.h5", 0.5)
    with pytest.raises(AnoUnetError, match="Keras model"):
        load_keras_mobilenetv2(42, 0.5)


def test_wrong_alpha(tmp_path):
    path = tmp_path / "alpha1.h5"
    write_keras2_h5(path, keras2_layers_from_flax(random_variables(1.0), with_head=False))
    with pytest.raises(AnoUnetError, match=r"alpha=0\.5.*look like alpha=1\.0") as e:
        load_keras_mobilenetv2(path, alpha=0.5)
    assert e.value.path == str(path)
    with pytest.raises(AnoUnetError, match="positive"):
        load_keras_mobilenetv2(path, alpha=-1)


def test_missing_layer(tmp_path):
    path = tmp_path / "partial.h5"
    layers = [l for l in keras2_layers_from_flax(random_variables()) if l[0] != "block_5_expand"]
    write_keras2_h5(path, layers)
    with pytest.raises(AnoUnetError, match="block_5_expand"):
        load_keras_mobilenetv2(path, 0.5)


def test_cli_writes_msgpack(tmp_path):
    variables = random_variables(0.5, seed=4)
    src, out = tmp_path / "w.h5", tmp_path / "out" / "mnv2.msgpack"
    write_keras2_h5(src, keras2_layers_from_flax(variables))
    script = REPO / "scripts" / "import_keras_mobilenetv2.py"
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, str(script), *a], capture_output=True, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"},
    )
    ok = run("--weights", str(src), "--alpha", "0.5", "--out", str(out))
    assert ok.returncode == 0, ok.stderr
    restored = serialization.from_bytes(variables, out.read_bytes())
    jax.tree.map(np.testing.assert_array_equal, restored, variables)
    bad = run("--weights", str(tmp_path / "missing.h5"), "--out", str(out))
    assert bad.returncode != 0 and "not found" in bad.stderr and "Traceback" not in bad.stderr


# ------------------------------------------------------------------ against Keras


@pytest.fixture(scope="module")
def keras_model():
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("keras was imported with a non-JAX backend")
    rng = np.random.default_rng(0)

    def glorot_uniform_numpy(self, shape, dtype=None):
        # Keras' JAX initializers compile one threefry program per kernel shape (~12 s here);
        # numpy draws of the same distribution keep this fixture fast. Test-only.
        receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, shape).astype("float32")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(keras.initializers.VarianceScaling, "__call__", glorot_uniform_numpy)
        model = keras.applications.MobileNetV2(
            input_shape=(SIZE, SIZE, 3), alpha=0.5, include_top=False, pooling="avg", weights=None
        )
    for layer in model.layers:  # non-trivial BatchNorm statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.2, c).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.2, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype("float32"))
    x = rng.uniform(0, 1, (2, SIZE, SIZE, 3)).astype("float32")
    # predict == model(x, training=False), jitted once instead of run layer by layer
    ref = np.asarray(model.predict(x * 2 - 1, verbose=0))
    assert ref.shape == (2, 1280) and ref.std() > 0.05  # not a degenerate output
    return model, x, ref


def test_param_count_equals_keras(keras_model):
    model = keras_model[0]
    v = load_keras_mobilenetv2(model, 0.5)
    n = lambda t: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(t))  # noqa: E731
    assert model.count_params() == n(v) == 706_224
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == n(v["params"])


def _save(model, kind: str, tmp_path) -> object:
    if kind == "model":
        return model
    if kind == "keras3.weights.h5":
        path = tmp_path / "m.weights.h5"
        model.save_weights(path)
    elif kind == "keras3_unnamed.weights.h5":  # older Keras 3 files: no layer-name attribute
        path = tmp_path / "m.weights.h5"
        model.save_weights(path)
        with h5py.File(path, "r+") as f:
            named = []
            f["layers"].visititems(lambda key, g: named.append(g) if "name" in g.attrs else None)
            for g in named:
                del g.attrs["name"]
            assert named
    elif kind == "legacy_full.h5":
        path = tmp_path / "m.h5"
        model.save(path)  # Keras 3 still writes the legacy HDF5 layout for '.h5'
    elif kind == "archive.keras":
        path = tmp_path / "m.keras"
        model.save(path)
    elif kind == "keras2_imagenet_layout.h5":
        path = tmp_path / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_96_no_top.h5"
        layers = []
        for layer in model.layers:
            depthwise = type(layer).__name__ == "DepthwiseConv2D"
            ws = [(f"{layer.name}/{'depthwise_kernel' if depthwise else w.name}:0",
                   np.asarray(w.value)) for w in layer.weights]
            layers.append((layer.name, ws))
        write_keras2_h5(path, layers)
    return str(path)


@pytest.mark.parametrize(
    "kind",
    [
        "model",
        "keras3.weights.h5",
        "keras3_unnamed.weights.h5",
        "legacy_full.h5",
        "archive.keras",
        "keras2_imagenet_layout.h5",
    ],
)
def test_flax_matches_keras(keras_model, kind, tmp_path):
    model, x, ref = keras_model
    variables = load_keras_mobilenetv2(_save(model, kind, tmp_path), alpha=0.5)
    out = np.asarray(apply_050(variables, jnp.asarray(x)))  # x in [0, 1]; model maps to [-1, 1]
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)

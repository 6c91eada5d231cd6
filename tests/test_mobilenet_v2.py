"""MobileNetV2 (Keras layout) in Flax: shapes, parameter count, BatchNorm settings, training mode,
and the CPU-friendly conv formulations (depthwise as shifted slices, 1x1 as matmul) against the
plain convolutions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from anounet_jax.errors import AnoUnetError
from anounet_jax.models import mobilenet_v2
from anounet_jax.models.mobilenet_v2 import (
    MobileNetV2,
    correct_pad,
    depthwise_conv_shifts,
    layer_names,
    make_divisible,
    num_features_for,
)

# keras.applications.MobileNetV2(alpha=0.5, include_top=False, pooling="avg").count_params()
# measured with Keras 3.15.1; tests/test_keras_import.py checks it against Keras when available.
KERAS_PARAMS_ALPHA_050 = 706_224
KERAS_TRAINABLE_ALPHA_050 = 687_680
KERAS_NON_TRAINABLE_ALPHA_050 = 18_544


def _size(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def random_variables(alpha: float = 0.5, seed: int = 0):
    """He-scaled random weights built with numpy from the abstract shapes.

    (``jax.jit(model.init)`` compiles ~100 random initializers and takes ~15 s on a small CPU.)
    """
    shapes = jax.eval_shape(
        lambda: MobileNetV2(alpha=alpha).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    )
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "kernel" in name:
            fan_in = int(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(0, np.sqrt(2 / fan_in), leaf.shape), jnp.float32)
        if "scale" in name or "'var'" in name:
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
        return jnp.asarray(rng.normal(0, 0.1, leaf.shape), jnp.float32)  # bias, mean

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def variables_96():
    return random_variables(0.5)


@pytest.mark.parametrize("size", [96, 64])
def test_output_shape(variables_96, size):
    model = MobileNetV2(alpha=0.5)
    x = jax.random.uniform(jax.random.key(1), (2, size, size, 3), jnp.float32)
    y = jax.jit(model.apply)(variables_96, x)  # weights do not depend on the input size
    assert y.shape == (2, 1280) and y.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(y)))
    assert model.num_features == 1280


def test_param_count_matches_keras():
    v = jax.eval_shape(
        lambda: MobileNetV2(alpha=0.5).init(jax.random.key(0), jnp.zeros((1, 96, 96, 3)))
    )
    assert _size(v["params"]) == KERAS_TRAINABLE_ALPHA_050
    assert _size(v["batch_stats"]) == KERAS_NON_TRAINABLE_ALPHA_050
    assert _size(v) == KERAS_PARAMS_ALPHA_050
    # flat, Keras-named submodules
    names = layer_names()
    assert set(v["params"]) == set(names["conv"] + names["depthwise"] + names["bn"])
    assert set(v["batch_stats"]) == set(names["bn"])
    assert v["params"]["Conv1"]["kernel"].shape == (3, 3, 3, 16)
    assert v["params"]["block_1_depthwise"]["kernel"].shape == (3, 3, 1, 48)
    assert v["params"]["Conv_1"]["kernel"].shape == (1, 1, 160, 1280)


def test_batchnorm_settings_are_keras():
    seen = []

    def spy(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
            seen.append((context.module.epsilon, context.module.momentum))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(spy):
        jax.eval_shape(
            lambda: MobileNetV2(alpha=0.5).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
        )
    assert len(seen) == len(layer_names()["bn"]) == 52
    assert all(eps == 1e-3 and mom == 0.999 for eps, mom in seen)


def test_train_updates_batch_stats(variables_96):
    model = MobileNetV2(alpha=0.5)
    x = jax.random.uniform(jax.random.key(2), (2, 64, 64, 3), jnp.float32)

    @jax.jit
    def train_apply(v, x):
        return model.apply(v, x, train=True, mutable=["batch_stats"])

    y, updates = train_apply(variables_96, x)
    assert y.shape == (2, 1280)
    old, new = variables_96["batch_stats"], updates["batch_stats"]
    assert jax.tree.structure(old) == jax.tree.structure(new)
    # running average with Keras momentum: new = 0.999 * old + 0.001 * batch_mean
    x_pre = x * 2 - 1
    conv1 = jax.lax.conv_general_dilated(
        x_pre, variables_96["params"]["Conv1"]["kernel"], (2, 2), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    expected = 0.999 * old["bn_Conv1"]["mean"] + 0.001 * conv1.mean(axis=(0, 1, 2))
    np.testing.assert_allclose(new["bn_Conv1"]["mean"], expected, rtol=1e-5, atol=1e-6)
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), old, new)
    assert all(jax.tree.leaves(changed))


def test_bfloat16_min_size_output_is_float32():
    model = MobileNetV2(alpha=0.35, dtype=jnp.bfloat16)
    x = jnp.full((1, 32, 32, 3), 0.5, jnp.float32)
    y, _ = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x))
    assert y.shape == (1, 1280) and y.dtype == jnp.float32


def test_keras_helpers():
    assert make_divisible(32 * 0.5) == 16 and make_divisible(32 * 0.35) == 16
    assert make_divisible(32 * 1.3) == 40 and make_divisible(32 * 1.4) == 48
    assert num_features_for(0.5) == num_features_for(1.0) == 1280
    assert num_features_for(1.4) == 1792
    assert correct_pad(96, 96) == ((0, 1), (0, 1))
    assert correct_pad(65, 64) == ((1, 1), (0, 1))


def test_bad_input_shape_is_user_error():
    with pytest.raises(AnoUnetError, match="NHWC"):
        jax.eval_shape(
            lambda: MobileNetV2().init(jax.random.key(0), jnp.zeros((1, 64, 64, 1)))
        )


# ------------------------------------------------------- depthwise "shifts" / pointwise "matmul"

REFERENCE = dict(depthwise_impl="lax", pointwise_impl="conv")  # plain grouped / 1x1 convolutions
CPU_FRIENDLY = dict(depthwise_impl="shifts", pointwise_impl="matmul")  # "auto" on CPU


@pytest.mark.parametrize(
    "size,stride,padding",
    [(8, 1, "SAME"), (7, 1, "SAME"), (8, 2, ((0, 1), (0, 1))), (7, 2, ((1, 1), (1, 1))),
     (8, 2, "SAME"), (7, 2, "SAME"), (8, 1, "VALID"), (8, 2, "VALID"), (7, 2, "VALID")],
)
def test_depthwise_shifts_matches_grouped_conv(size, stride, padding):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, (2, size, size + 1, 5))
    kernel = jax.random.normal(k2, (3, 3, 1, 5))

    def grouped(x, kernel):
        return jax.lax.conv_general_dilated(
            x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=5)

    y_ref, vjp_ref = jax.vjp(grouped, x, kernel)
    y, vjp = jax.vjp(lambda x, k: depthwise_conv_shifts(x, k, stride, padding), x, kernel)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    ct = jax.random.normal(k3, y.shape)
    for got, want in zip(vjp(ct), vjp_ref(ct)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)


def _outputs_and_grads(model, variables, x, train):
    """Features, updated batch_stats (train) and d(loss)/d(params, x) for a fixed linear loss."""
    w = jax.random.normal(jax.random.key(7), (x.shape[0], model.num_features), x.dtype)

    def loss(params, x):
        v = {"params": params, "batch_stats": variables["batch_stats"]}
        if train:
            f, updates = model.apply(v, x, train=True, mutable=["batch_stats"])
        else:
            f, updates = model.apply(v, x, train=False), {}
        return jnp.mean(f * w), (f, updates)

    (_, (f, updates)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        variables["params"], x)
    return jax.tree.map(np.asarray, {"features": f, "updates": updates, "grads": grads})


def _compare(got, want, rel, atol):
    """Every leaf within ``atol + rel * (largest magnitude of that leaf in want)``.

    (``atol`` covers leaves that are zero up to rounding, e.g. the gradient of a BatchNorm bias
    followed by another train-mode BatchNorm.)
    """
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        tol = atol + rel * float(np.max(np.abs(b)))
        err = float(np.max(np.abs(a - b)))
        assert err <= tol, f"{jax.tree_util.keystr(path)}: max |difference| {err:.3g} > {tol:.3g}"


# Train mode (batch statistics, gradients) is the harder case; inference differs only in which
# BatchNorm statistics are used, not in the convolutions, and runs with -m slow.
@pytest.mark.parametrize("train", [pytest.param(False, marks=pytest.mark.slow), True],
                         ids=["inference", "train"])
@pytest.mark.parametrize("size", [64, pytest.param(96, marks=pytest.mark.slow)])
def test_cpu_friendly_impls_same_maths_float64(variables_96, size, train):
    """In float64 the two formulations agree to ~1e-12: the same maths, not just close numbers."""
    with jax.enable_x64(True):
        v = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables_96)
        x = jax.random.uniform(jax.random.key(3), (2, size, size, 3), jnp.float64)
        kw = dict(alpha=0.5, dtype=jnp.float64, param_dtype=jnp.float64)
        want = _outputs_and_grads(MobileNetV2(**kw, **REFERENCE), v, x, train)
        got = _outputs_and_grads(MobileNetV2(**kw, **CPU_FRIENDLY), v, x, train)
    assert np.max(np.abs(want["grads"][1])) > 0  # not vacuous
    _compare(got, want, rel=1e-10, atol=1e-14)


def test_cpu_friendly_impls_match_plain_convs_float32(variables_96):
    """In float32 they differ by rounding only: measured against a float64 run, each formulation
    is off by about the same (features ~5e-5, train-mode gradients ~2e-4 of their scale; BatchNorm
    over 2 images x 2x2 pixels in the last blocks amplifies rounding). Train mode, the harder case;
    float32 inference is checked against Keras itself in test_keras_import.py."""
    x = jax.random.uniform(jax.random.key(3), (2, 64, 64, 3), jnp.float32)
    want = _outputs_and_grads(MobileNetV2(alpha=0.5, **REFERENCE), variables_96, x, True)
    got = _outputs_and_grads(MobileNetV2(alpha=0.5, **CPU_FRIENDLY), variables_96, x, True)
    _compare(got, want, rel=1e-3, atol=1e-6)


def test_impls_share_the_parameter_tree():
    def shapes(**impls):
        v = jax.eval_shape(lambda: MobileNetV2(alpha=0.5, **impls).init(
            jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
        return jax.tree.map(lambda a: (a.shape, a.dtype), v)

    ref = shapes(**REFERENCE)
    for impls in (CPU_FRIENDLY, dict(depthwise_impl="shifts", pointwise_impl="conv"),
                  dict(depthwise_impl="lax", pointwise_impl="matmul"), {}):
        assert shapes(**impls) == ref


def test_auto_picks_by_backend(monkeypatch):
    assert jax.default_backend() == "cpu"  # the test suite runs on CPU
    assert mobilenet_v2.resolve_depthwise_impl("auto") == "shifts"
    assert mobilenet_v2.resolve_pointwise_impl("auto") == "matmul"
    assert mobilenet_v2.resolve_depthwise_impl("lax") == "lax"
    assert mobilenet_v2.resolve_pointwise_impl("conv") == "conv"
    monkeypatch.setattr(mobilenet_v2.jax, "default_backend", lambda: "gpu")
    assert mobilenet_v2.resolve_depthwise_impl("auto") == "lax"
    assert mobilenet_v2.resolve_pointwise_impl("auto") == "conv"
    assert mobilenet_v2.resolve_depthwise_impl("shifts") == "shifts"


def test_unknown_impl_is_user_error():
    x = jnp.zeros((1, 32, 32, 3))
    with pytest.raises(AnoUnetError, match="depthwise_impl"):
        jax.eval_shape(lambda: MobileNetV2(depthwise_impl="fft").init(jax.random.key(0), x))
    with pytest.raises(AnoUnetError, match="pointwise_impl"):
        jax.eval_shape(lambda: MobileNetV2(pointwise_impl="fft").init(jax.random.key(0), x))


def test_bfloat16_gradients_keep_param_dtypes():
    model = MobileNetV2(alpha=0.35, dtype=jnp.bfloat16, **CPU_FRIENDLY)
    x = jnp.full((2, 32, 32, 3), 0.5, jnp.float32)
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), x))

    def loss(params, batch_stats):
        f, _ = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                           mutable=["batch_stats"])
        return jnp.sum(f)

    grads = jax.eval_shape(jax.grad(loss), v["params"], v["batch_stats"])
    assert jax.tree.map(lambda a: (a.shape, a.dtype), grads) == jax.tree.map(
        lambda a: (a.shape, a.dtype), v["params"])

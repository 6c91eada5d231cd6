"""MobileNetV2 (Keras layout) in Flax: shapes, parameter count, BatchNorm settings, training mode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from anounet_jax.errors import AnoUnetError
from anounet_jax.models.mobilenet_v2 import (
    MobileNetV2,
    correct_pad,
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

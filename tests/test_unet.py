import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # before anything imports keras

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anounet_jax import AnoUnetError
from anounet_jax.config import PAPER, SMALL
from anounet_jax.models.unet import (BN_EPSILON, Conv3x3, ImageNorm, UNet, UpConv2x2, im2col_3x3,
                                     init_unet_params, unet_from_config)


def _count(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _keras_paper_unet(keras):
    """The original Keras U-Net (built, not compiled): 96x96x3 in, 4 levels of two (3x3 conv,
    BatchNormalization, ReLU) of widths 64..512, a 1024 bottleneck, 2x2 max-pool down, 2x2 stride-2
    Conv2DTranspose up, skip concatenation, 1x1 conv to 3 channels with sigmoid."""
    layers = keras.layers
    zeros = dict(kernel_initializer="zeros")  # random draws would compile one by one (seconds each)

    def block(x, width):
        for _ in range(2):
            x = layers.Conv2D(width, 3, padding="same", **zeros)(x)
            x = layers.BatchNormalization()(x)
            x = layers.Activation("relu")(x)
        return x

    inputs = keras.Input((96, 96, 3))
    x, skips = inputs, []
    for width in (64, 128, 256, 512):
        x = block(x, width)
        skips.append(x)
        x = layers.MaxPooling2D(2)(x)
    x = block(x, 1024)
    for width, skip in zip((512, 256, 128, 64), reversed(skips)):
        x = layers.Conv2DTranspose(width, 2, strides=2, **zeros)(x)
        x = block(layers.Concatenate()([skip, x]), width)
    outputs = layers.Conv2D(3, 1, activation="sigmoid", **zeros)(x)
    return keras.Model(inputs, outputs)


def _paper_unet_shapes():
    """(module, variable shapes, number of BatchNorm channels) of the paper preset's U-Net."""
    model = unet_from_config(PAPER.unet)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 96, 96, 3))))
    bn_channels = sum(a.shape[0] for p, a in jax.tree_util.tree_leaves_with_path(shapes)
                      if "norm" in jax.tree_util.keystr(p) and p[-1].key == "scale")
    return model, shapes, bn_channels


def test_paper_unet_has_the_originals_parameter_count():
    model, shapes, bn_channels = _paper_unet_shapes()
    trainable = _count(shapes)
    # Keras counts BatchNorm moving mean/variance too (2 per channel); we normalize with the fitted
    # image's own statistics, so those are not parameters here.
    assert trainable == 31_043_651
    assert trainable + 2 * bn_channels == 31_055_427  # the original's Keras total (next test)
    out = jax.eval_shape(lambda: model.apply(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 96, 96, 3))),
                                             jnp.zeros((2, 96, 96, 3))))
    assert out.shape == (2, 96, 96, 3)


def test_paper_unet_has_the_keras_originals_weights():
    _, shapes, bn_channels = _paper_unet_shapes()
    keras = pytest.importorskip("keras")  # the 'keras' extra
    original = _keras_paper_unet(keras)
    assert original.output_shape == (None, 96, 96, 3)
    assert original.count_params() == _count(shapes) + 2 * bn_channels
    # tensor by tensor: the same weight sizes are trained, and the rest are the moving statistics of
    # as many BatchNorm channels as we have norm scales
    keras_sizes = sorted(int(np.prod(w.shape)) for w in original.trainable_weights)
    assert keras_sizes == sorted(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes))
    assert sum(int(np.prod(w.shape)) for w in original.non_trainable_weights) == 2 * bn_channels


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_matmul_and_lax_convolutions_compute_the_same_unet(norm):
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 3))
    lax_model = UNet(width=4, depth=2, norm=norm, conv_impl="lax")
    mm_model = UNet(width=4, depth=2, norm=norm, conv_impl="matmul")
    v = lax_model.init(jax.random.PRNGKey(0), x)
    np.testing.assert_allclose(lax_model.apply(v, x), mm_model.apply(v, x), atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3])
def test_swapped_kernel_gradient_equals_xlas_kernel_gradient(batch):
    from anounet_jax.models.unet import _conv_same, _kernel_grad_swapped

    x = jax.random.normal(jax.random.PRNGKey(0), (batch, 12, 10, 5))
    g = jax.random.normal(jax.random.PRNGKey(1), (batch, 12, 10, 7))
    kernel = jnp.zeros((3, 3, 5, 7))
    expected = jax.vjp(lambda k: _conv_same(x, k), kernel)[1](g)[0]
    np.testing.assert_allclose(_kernel_grad_swapped(x, g), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("impl,batch", [("hybrid", 1), ("hybrid", 2), ("swapped", 2)])
def test_hybrid_convolutions_give_lax_values_and_gradients(impl, batch):
    # 32x32 with depth 2: the 32x32 and 16x16 levels take the conv path (swapped kernel gradient at
    # batch 1), the 8x8 bottleneck the matmul path; the up-convolutions are matmuls
    x = jax.random.uniform(jax.random.PRNGKey(1), (batch, 32, 32, 3))
    ref_model = UNet(width=4, depth=2, conv_impl="lax")
    model = UNet(width=4, depth=2, conv_impl=impl)
    v = ref_model.init(jax.random.PRNGKey(0), x)

    def loss(model):
        return lambda v, x: jnp.sum(jnp.abs(model.apply(v, x) - 0.5))

    np.testing.assert_allclose(model.apply(v, x), ref_model.apply(v, x), atol=1e-5)
    got = jax.grad(loss(model), argnums=(0, 1))(v, x)
    want = jax.grad(loss(ref_model), argnums=(0, 1))(v, x)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        if getattr(path[-1], "key", None) == "bias" and "conv" in jax.tree_util.keystr(path):
            continue  # BatchNorm cancels conv biases: their gradient is rounding noise
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * float(jnp.max(jnp.abs(b))) + 1e-6,
                                   err_msg=jax.tree_util.keystr(path))


def test_unknown_conv_impl_is_refused():
    with pytest.raises(AnoUnetError, match="conv_impl"):
        UNet(width=4, depth=1, conv_impl="fft").init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))


def test_transposed_conv_places_kernel_tap_dy_dx_at_output_offset():
    x = jnp.zeros((1, 2, 2, 1)).at[0, 1, 0, 0].set(1.0)  # one pixel at (1, 0)
    kernel = jnp.arange(4.0).reshape(2, 2, 1, 1)
    for impl in ("lax", "matmul"):
        y = UpConv2x2(1, impl).apply({"params": {"kernel": kernel, "bias": jnp.zeros(1)}}, x)[0, ..., 0]
        np.testing.assert_allclose(y[2:4, 0:2], kernel[..., 0, 0])
        assert float(jnp.abs(y).sum()) == pytest.approx(6.0)


def test_im2col_matches_a_library_conv():
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 5, 6, 2))
    k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 2, 4))
    ref = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(im2col_3x3(x) @ k.reshape(18, 4), ref, atol=1e-5)


def test_batch_norm_uses_each_images_own_statistics():
    # Four images with very different statistics, each with its own parameters, through the U-Net as
    # the engine runs it (engine/steps.py): vmapped over images, every image a batch of 1. The image
    # axis is named like the engine's ("images"), so a norm that pooled statistics over it (a synced
    # BatchNorm) would be seen here too. (The module given a batch of N > 1 itself normalizes over
    # (N, H, W), like Keras in training: it is only ever applied one image at a time.)
    model = UNet(width=4, depth=2)
    u = jnp.asarray(np.random.default_rng(1).random((4, 32, 32, 3), np.float32))
    x = jnp.stack([u[0], 1.0 - u[1], 0.1 * u[2], 0.8 + 0.2 * u[3]])
    keys = jax.random.split(jax.random.PRNGKey(0), 4)  # (initialized under the named axis as well)
    params = jax.vmap(lambda k: init_unet_params(model, k, (32, 32, 3)), axis_name="images")(keys)
    layers = lambda m, _: isinstance(m, (Conv3x3, ImageNorm))  # noqa: E731

    def one(p, xi):
        y, state = model.apply({"params": p}, xi[None], capture_intermediates=layers,
                               mutable=["intermediates"])
        return y[0], state["intermediates"]

    per_image = jax.jit(jax.vmap(one, axis_name="images"))
    out, inter = per_image(params, x)
    assert out.shape == x.shape

    # changing one image changes its output and no other
    changed, _ = per_image(params, x.at[2].set(u[2][::-1]))
    others = np.array([0, 1, 3])
    np.testing.assert_allclose(changed[others], out[others], atol=1e-6,
                               err_msg="changing image 2 changed the others")
    assert float(jnp.max(jnp.abs(changed[2] - out[2]))) > 1e-2

    # every norm layer normalizes each image with that image's own mean and variance over H and W
    # (scale 1 and bias 0 at initialization)
    checked = 0
    for block, layer in inter.items():
        for i in range(2):
            if f"norm{i}" not in layer:
                continue
            before = np.asarray(layer[f"conv{i}"]["__call__"][0], np.float64)[:, 0]  # (4, H, W, C)
            after = np.asarray(layer[f"norm{i}"]["__call__"][0])[:, 0]
            mean = before.mean((1, 2), keepdims=True)
            var = before.var((1, 2), keepdims=True)
            np.testing.assert_allclose(after, (before - mean) / np.sqrt(var + BN_EPSILON), atol=1e-4,
                                       err_msg=f"{block}/norm{i}")
            checked += 1
    assert checked == 2 * (2 * model.depth + 1)

    # each image's output is its output alone
    alone = jax.jit(lambda p, xi: model.apply({"params": p}, xi[None])[0])
    for i in range(len(x)):
        np.testing.assert_allclose(out[i], alone(jax.tree.map(lambda a: a[i], params), x[i]), atol=1e-5,
                                   err_msg=f"image {i}")


def test_image_size_must_divide_by_two_to_the_depth():
    model = unet_from_config(SMALL.unet)
    with pytest.raises(AnoUnetError, match="divisible"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 40, 40, 3)))


def test_init_has_the_modules_distributions_and_the_values_of_one_long_draw():
    model = UNet(width=8, depth=2)
    key = jax.random.PRNGKey(4)
    params = init_unet_params(model, key, (16, 16, 3))
    leaves = jax.tree_util.tree_leaves_with_path(params)
    n = sum(a.size for _, a in leaves)
    # the draw is laid out in rows for speed; the values must be those of one long draw (seeded fits
    # stay as they were), scaled per kernel by He (conv) or LeCun (output) standard deviations
    z = np.asarray(jax.random.normal(key, (n,), jnp.float32))
    offset, kernels = 0, 0
    for path, a in leaves:
        name, a = path[-1].key, np.asarray(a)
        if name in ("kernel", "out_kernel"):
            std = np.sqrt((2.0 if name == "kernel" else 1.0) / np.prod(a.shape[:-1]))
            np.testing.assert_allclose(a.ravel(), z[offset:offset + a.size] * std, rtol=1e-6)
            kernels += 1
        else:
            assert np.all(a == (1.0 if name == "scale" else 0.0)), jax.tree_util.keystr(path)
        offset += a.size
    assert kernels >= 8
    batched = jax.vmap(lambda k: init_unet_params(model, k, (16, 16, 3)))(key[None])
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(batched)):
        np.testing.assert_array_equal(a, b[0])

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anounet_jax import AnoUnetError
from anounet_jax.config import PAPER, SMALL
from anounet_jax.models.unet import UNet, UpConv2x2, im2col_3x3, init_unet_params, unet_from_config


def _count(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def test_paper_unet_has_the_originals_parameter_count():
    model = unet_from_config(PAPER.unet)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 96, 96, 3))))
    trainable = _count(shapes)
    # Keras counts BatchNorm moving mean/variance too (2 per channel); we normalize with the fitted
    # image's own statistics, so those are not parameters here.
    bn_channels = sum(a.shape[0] for p, a in jax.tree_util.tree_leaves_with_path(shapes)
                      if "norm" in jax.tree_util.keystr(p) and p[-1].key == "scale")
    assert trainable == 31_043_651
    assert trainable + 2 * bn_channels == 31_055_427  # Keras model.summary() total of the original
    out = jax.eval_shape(lambda: model.apply(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 96, 96, 3))),
                                             jnp.zeros((2, 96, 96, 3))))
    assert out.shape == (2, 96, 96, 3)


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
    model = UNet(width=4, depth=2)
    x = jax.random.uniform(jax.random.PRNGKey(1), (1, 32, 32, 3))
    v = model.init(jax.random.PRNGKey(0), x)
    alone = model.apply(v, x)
    with_other = jax.vmap(lambda xi: model.apply(v, xi[None])[0])(jnp.concatenate([x, 1 - x]))
    np.testing.assert_allclose(alone[0], with_other[0], atol=1e-6)


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

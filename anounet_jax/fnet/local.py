"""Patch-level features of the f-Net: its intermediate feature maps, for feature-memory baselines.

`local_feature_fn(fnet_cfg, layers)` returns `fn(variables, images) -> (N, h, w, C)`, the f-Net's
intermediate maps (inference mode) taken the way PatchCore (Roth et al. 2022) takes them:

1. each chosen map gets a 3x3 local average at its own resolution (PatchCore's neighbourhood
   aggregation: a patch feature then describes a 3x3 neighbourhood, which makes it robust to small
   shifts; border cells average only the cells that exist, so borders are not pulled to zero);
2. every map is resampled bilinearly onto the grid of the finest chosen map;
3. the maps are concatenated over channels.

Maps are named by their stride (`MobileNetV2` / `SmallCNN` with `return_maps=True`): MobileNetV2
"stride2", "stride4", "stride8", "stride16", "stride32"; SmallCNN "stride2", "stride4", "stride8".
An image of H x W gives maps of ceil(H/s) x ceil(W/s).

Where a cell sits in the image: both f-Nets reduce resolution only with 3x3 stride-2 convs padded
the TF "SAME" way (Keras' `correct_pad` is the same), which on an even size pads one pixel after the
input and none before. So cell i's receptive field is centred on pixel 2i + 1 of the level below,
not on 2i + 0.5, and at stride s (sizes divisible by s) on pixel s*i + s - 1: 3.5 px right of the
centre of its s x s block at stride 8. `cell_centers` computes these centres; every resampling here
(and `upsample_to_image`, for maps on this grid) interpolates between them, so a feature or a score
lands on the pixels it describes (`jax.image.resize` would place it at the block centre instead).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from anounet_jax.errors import AnoUnetError
from anounet_jax.fnet.model import build_fnet_module

# PatchCore takes the two middle stages of its backbone (WideResNet-50 layer2 + layer3, strides 8
# and 16 on 224 px images: a 28x28 grid). The project's images are 64-96 px, so MobileNetV2 takes
# strides 4 and 8 (a 16x16 / 24x24 grid at 64 / 96 px): its stride-16 map is 4x4 at 64 px and its
# receptive field covers the whole image, too coarse to localize a defect. SmallCNN has three stages;
# its two deeper ones are the closest analogue.
DEFAULT_LAYERS = {"mobilenet_v2": ("stride4", "stride8"), "small_cnn": ("stride4", "stride8")}
AGGREGATE = 3  # neighbourhood size of the local average


def default_layers(arch: str) -> tuple[str, ...]:
    try:
        return DEFAULT_LAYERS[arch]
    except KeyError:
        raise AnoUnetError(f"unknown f-Net arch {arch!r}; use one of {sorted(DEFAULT_LAYERS)}") from None


def layer_stride(name: str) -> int:
    """"stride8" -> 8."""
    if not (name.startswith("stride") and name[6:].isdigit()):
        raise AnoUnetError(f"f-Net layer names are 'stride2', 'stride4', ...; got {name!r}")
    return int(name[6:])


def finest_stride(layers: Sequence[str]) -> int:
    return min(layer_stride(name) for name in layers)


# ----------------------------------------------------------------------------- geometry


def cell_centers(size: int, stride: int) -> np.ndarray:
    """Pixel index (0 .. size-1) on which each cell of the stride-`stride` map is centred, along an
    axis of `size` pixels, for a stack of 3x3 stride-2 "SAME" convs: each level's cell i is centred on
    cell 2i + 1 of the level below (even size: padding after) or 2i (odd size: one pixel each side)."""
    centers = np.arange(size, dtype=np.float64)
    n, s = size, 1
    while s < stride:
        centers = centers[2 * np.arange(-(-n // 2)) + 1 - n % 2]
        n, s = -(-n // 2), 2 * s
    return centers


def resample_matrix(src_centers: np.ndarray, dst_positions: np.ndarray) -> np.ndarray:
    """(len(dst), len(src)) linear-interpolation weights: a value known at the pixel positions
    `src_centers` (increasing), read at `dst_positions`; constant beyond the first / last centre."""
    u = np.interp(dst_positions, src_centers, np.arange(len(src_centers), dtype=np.float64))
    lo = np.floor(u).astype(int)
    hi = np.minimum(lo + 1, len(src_centers) - 1)
    w = u - lo
    m = np.zeros((len(dst_positions), len(src_centers)), np.float64)
    np.add.at(m, (np.arange(len(u)), lo), 1.0 - w)
    np.add.at(m, (np.arange(len(u)), hi), w)
    return m.astype(np.float32)


def _resample(x, mh: np.ndarray, mw: np.ndarray):
    """x (N, h, w, ...) -> (N, H, W, ...) with the separable weights mh (H, h), mw (W, w)."""
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("Hh,nhw...->nHw...", mh, x, precision=hi)
    return jnp.einsum("Ww,nHw...->nHW...", mw, x, precision=hi)


def upsample_to_image(maps, image_hw: tuple[int, int], stride: int):
    """Maps (N, h, w, ...) on the stride-`stride` grid of an H x W image -> (N, H, W, ...), bilinear
    between the cells' receptive-field centres (`cell_centers`)."""
    (h, w) = image_hw
    mh = resample_matrix(cell_centers(h, stride), np.arange(h))
    mw = resample_matrix(cell_centers(w, stride), np.arange(w))
    return _resample(maps, mh, mw)


# ----------------------------------------------------------------------------- features


def local_average(x: jax.Array, size: int = AGGREGATE) -> jax.Array:
    """size x size mean over H and W of (N, H, W, C), stride 1, padding excluded from the mean."""
    if size <= 1:
        return x
    return nn.avg_pool(x, (size, size), strides=(1, 1), padding="SAME", count_include_pad=False)


def local_feature_fn(fnet_cfg, layers: Sequence[str] | None = None,
                     aggregate: int = AGGREGATE) -> Callable[[Any, jax.Array], jax.Array]:
    """`fn(variables, images) -> float32 (N, h, w, C)`: the f-Net's maps named in `layers` (default:
    `default_layers(fnet_cfg.arch)`), each locally averaged over `aggregate` x `aggregate` cells,
    resampled bilinearly onto the finest one's grid (h x w = ceil(H/s) x ceil(W/s), s its stride)
    and concatenated over channels in `layers` order. Pure and jit-able; `variables` are the
    f-Net's (`FrozenFNet.variables`)."""
    module = build_fnet_module(fnet_cfg)
    layers = tuple(layers) if layers is not None else default_layers(fnet_cfg.arch)
    if not layers:
        raise AnoUnetError("local features need at least one f-Net layer")
    if len(set(layers)) != len(layers):
        raise AnoUnetError(f"f-Net layers are repeated: {list(layers)}")
    if int(aggregate) < 1 or int(aggregate) % 2 == 0:
        raise AnoUnetError(f"the local average size must be odd and >= 1, got {aggregate}")
    fine = finest_stride(layers)

    def fn(variables, images):
        images = jnp.asarray(images, jnp.float32)
        _, maps = module.apply(variables, images, train=False, return_maps=True)
        unknown = [name for name in layers if name not in maps]
        if unknown:
            raise AnoUnetError(f"f-Net {fnet_cfg.arch!r} has no layer {unknown[0]!r}; "
                               f"choose from {sorted(maps, key=layer_stride)}")
        hw = images.shape[1:3]
        out = []
        for name in layers:
            m = local_average(maps[name].astype(jnp.float32), int(aggregate))
            s = layer_stride(name)
            if s != fine:  # coarse cell centres -> fine cell centres, per axis
                m = _resample(m, *(resample_matrix(cell_centers(n, s), cell_centers(n, fine)) for n in hw))
            out.append(m)
        return jnp.concatenate(out, axis=-1)

    return fn


def local_feature_shape(fnet_cfg, image_hw: tuple[int, int], layers: Sequence[str] | None = None,
                        variables=None) -> tuple[int, int, int]:
    """(h, w, C) of `local_feature_fn(fnet_cfg, layers)` for H x W images, without computing anything
    (jax.eval_shape). `variables` default to abstract ones from `module.init`."""
    fn = local_feature_fn(fnet_cfg, layers)
    x = jax.ShapeDtypeStruct((1, *image_hw, 3), jnp.float32)
    if variables is None:
        variables = jax.eval_shape(lambda a: build_fnet_module(fnet_cfg).init(jax.random.PRNGKey(0), a), x)
    return tuple(jax.eval_shape(fn, variables, x).shape[1:])

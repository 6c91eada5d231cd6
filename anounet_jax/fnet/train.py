"""f-Net training on normal + reference images: L2-constrained softmax or DOC, then frozen.

L2-softmax (Ranjan et al. 2017): features f scaled to alpha_L2 * f / ||f|| per sample, then a dense
softmax over the classes {normal, reference class 1..K}; cross-entropy.
DOC (Perera & Patel 2019): descriptiveness = softmax cross-entropy on reference images, compactness =
mean squared distance of each normal feature to the mean of the *other* normal features in its batch
(scaled by n^2/(n-1)^2 as in the paper), loss = descriptiveness + lambda * compactness.
The class head is dropped after training (a flaw head, fnet.synthetic_flaws, is kept: fnet/flaw_head.py);
the engine gets a FrozenFNet, and C is the mean feature of the normal training images. `train_fnet` is the whole f-Net stage: every job calls it.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from anounet_jax.data.types import ImageSet
from anounet_jax.errors import AnoUnetError
from anounet_jax.fnet.model import FrozenFNet, build_fnet_module, compute_center
from anounet_jax.training import run_epochs


class Classifier(nn.Module):
    """Feature network + the training head (dropped afterwards)."""

    backbone: nn.Module
    num_classes: int
    alpha_l2: float | None  # None: plain logits (DOC); a float: L2-constrained softmax
    seg_layer: str | None = None  # a map ("stride8") that also gets a 1x1 flaw-localization head

    @nn.compact
    def __call__(self, x, train: bool = False):
        seg = None
        if self.seg_layer is None:
            f = self.backbone(x, train=train)
        else:
            f, maps = self.backbone(x, train=train, return_maps=True)
            seg = nn.Conv(1, (1, 1), name="seg_head")(maps[self.seg_layer].astype(jnp.float32))[..., 0]
        z = f
        if self.alpha_l2 is not None:
            z = self.alpha_l2 * f * jax.lax.rsqrt(jnp.sum(f * f, -1, keepdims=True) + 1e-12)
        return f, nn.Dense(self.num_classes, name="head")(z), seg


def augment(key, x):
    """Random horizontal/vertical flips and (square images) 90-degree rotations, per image."""
    k1, k2, k3 = jax.random.split(key, 3)
    n = x.shape[0]
    flip_h = jax.random.bernoulli(k1, 0.5, (n, 1, 1, 1))
    x = jnp.where(flip_h, x[:, :, ::-1], x)
    flip_v = jax.random.bernoulli(k2, 0.5, (n, 1, 1, 1))
    x = jnp.where(flip_v, x[:, ::-1], x)
    if x.shape[1] == x.shape[2]:
        rot = jax.random.bernoulli(k3, 0.5, (n, 1, 1, 1))
        x = jnp.where(rot, jnp.swapaxes(x, 1, 2), x)
    return x


@dataclasses.dataclass
class TrainedFNet:
    """The f-Net stage's result: the frozen network, C, what C was computed from, and the fits' warm start."""

    fnet: FrozenFNet
    center: np.ndarray  # C, float32 (D,)
    train_features: np.ndarray | None  # f(normal training images), (N, D); None when restored
    history: list[float]  # mean training loss per epoch ([] when restored)
    feature_scale: float | None = None  # mean L_C of the normal training images (FitConfig.lc_scale)
    patch_memory: object = None  # fnet.patch_memory.PatchMemory (FNetConfig.patch_memory > 0), or None
    # engine.warm_start.WarmStart: where the fits start for fit.start "warm" (engine.warm_start.with_warm_start
    # adds it; a checkpoint restores it), or None
    warm_start: object = None
    flaw_head: object = None  # fnet.flaw_head.FlawHead (fnet.synthetic_flaws), or None


def feature_scale(features: np.ndarray, center: np.ndarray) -> float:
    """The typical L_C of a normal image: the mean over images of mean|f - C| (L_C's unit when
    FitConfig.lc_scale is "normal")."""
    scale = float(np.mean(np.abs(np.asarray(features, np.float32) - center)))
    if not np.isfinite(scale) or scale <= 0.0:
        raise AnoUnetError(f"the normal training features all equal C (mean |f - C| = {scale}): "
                           f"L_C has no unit; is the f-Net's output constant?")
    return scale


def recompute_batch_stats(module: nn.Module, variables, images: np.ndarray, batch_size: int, seed: int = 0):
    """BatchNorm statistics that match the trained weights: the mean over batches of `images` of each
    BN layer's batch mean and variance, taken in train mode (each layer normalized by its batch's
    statistics, as during training). `module` must have a `bn_momentum` field (MobileNetV2,
    SmallCNN); with momentum 0 one train-mode call stores exactly the batch's statistics."""
    if "batch_stats" not in variables:
        return variables
    probe = module.clone(bn_momentum=0.0)

    @jax.jit
    def batch_stats(x):
        _, updates = probe.apply(variables, x, train=True, mutable=["batch_stats"])
        return updates["batch_stats"]

    n = len(images)
    bs = max(2, min(int(batch_size), n))
    order = np.random.default_rng(seed).permutation(n)
    total, count = None, 0
    for s in range(0, n - bs + 1, bs):  # full batches only: one shape, and batch statistics as in training
        stats = batch_stats(jnp.asarray(images[order[s:s + bs]]))
        total = stats if total is None else jax.tree.map(jnp.add, total, stats)
        count += 1
    mean = jax.tree.map(lambda t: np.asarray(t / count, np.float32), total)
    return {**variables, "batch_stats": mean}


def describe(cfg) -> str:
    """"mobilenet_v2, l2softmax, 4 epochs" or "mobilenet_v2, untrained: random features" (epochs 0)."""
    if cfg.epochs == 0:
        return f"{cfg.arch}, untrained: random features"
    return f"{cfg.arch}, {cfg.method}, {cfg.epochs} epochs"


def train_fnet(cfg, normal: ImageSet, reference: ImageSet, seed: int = 0, progress: bool = True,
               init_variables=None) -> TrainedFNet:
    """Train the f-Net named by `cfg` (an FNetConfig), freeze it, and compute C on the normal images.

    normal: the normal training images (class 0). reference: other images; `reference.labels` are their
    class ids 0..K-1 (all one class if None). init_variables: optional pretrained backbone variables
    (e.g. imported ImageNet weights, `fnet.weights.load_fnet_weights`) to start from.
    """
    if len(normal) < 2 or len(reference) == 0:
        raise AnoUnetError(f"f-Net training needs at least 2 normal images and some reference images "
                           f"(got {len(normal)} normal, {len(reference)} reference)")
    ref_labels = np.zeros(len(reference), np.int32) if reference.labels is None else reference.labels
    ref_labels = np.asarray(ref_labels, np.int32)
    n_ref = len(reference)
    flaw_masks = None
    if cfg.synthetic_flaws:  # "normal with a flaw" becomes the next reference class
        from anounet_jax.fnet.irregularities import flawed_copies

        flawed, flaw_masks = flawed_copies(normal.images, seed)
        reference = ImageSet(np.concatenate([reference.images, flawed]))
        ref_labels = np.concatenate([ref_labels, np.full(len(flawed), ref_labels.max() + 1, np.int32)])
    backbone = build_fnet_module(cfg)
    doc = cfg.method == "doc"
    if cfg.method not in ("l2softmax", "doc"):
        raise AnoUnetError(f"unknown f-Net method {cfg.method!r}; use 'l2softmax' or 'doc'")
    if cfg.bn_stats not in ("moving", "recompute"):
        raise AnoUnetError(f"unknown fnet.bn_stats {cfg.bn_stats!r}; use 'moving' or 'recompute'")
    # L2-softmax: normal is class 0, references 1..K. DOC: the head classifies references only.
    num_classes = int(ref_labels.max()) + (1 if doc else 2)
    # with synthetic flaws, the f-Net's local features also learn WHERE a flaw is (DRAEM-style): a 1x1
    # head on the stride-8 map predicts the flaw mask of flawed copies and "nothing" on normal images,
    # so the patch features the spatial term compares (fnet/patch_memory.py) separate flaws locally
    seg_layer = "stride8" if cfg.synthetic_flaws else None
    model = Classifier(backbone, num_classes, None if doc else cfg.alpha_l2, seg_layer)

    # rbg keys: XLA:CPU compiles every threefry draw slowly (seconds each), and nothing here is vmapped
    # over keys (where rbg would not be batch-invariant).
    key = jax.random.key(seed, impl="rbg")
    key, init_key = jax.random.split(key)
    variables = model.init(init_key, jnp.asarray(normal.images[:2]), train=False)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    if init_variables is not None:
        params = {**params, "backbone": init_variables["params"]}
        batch_stats = {**batch_stats, "backbone": init_variables.get("batch_stats", {})}
    tx = optax.amsgrad(cfg.lr)
    opt_state = tx.init(params)

    def seg_loss(seg, mask, seg_w):
        """Per-cell binary cross-entropy against the flaw mask averaged onto the map's grid, on the
        normal and flawed images (seg_w 1; the reference images are not "normal texture")."""
        target = jax.image.resize(mask, (mask.shape[0], *seg.shape[1:]), "linear", antialias=True)
        bce = jnp.mean(optax.sigmoid_binary_cross_entropy(seg, jnp.clip(target, 0.0, 1.0)), (1, 2))
        return jnp.sum(bce * seg_w) / jnp.maximum(jnp.sum(seg_w), 1.0)

    def loss_fn(params, batch_stats, x, y, is_normal, mask, seg_w):
        (f, logits, seg), updates = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                                train=True, mutable=["batch_stats"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        extra = 0.0 if seg is None else seg_loss(seg, mask, seg_w)
        if not doc:
            return jnp.mean(ce) + extra, updates["batch_stats"]
        # DOC: descriptiveness on the reference rows, compactness on the normal rows of the batch.
        ref = 1.0 - is_normal
        desc = jnp.sum(ce * ref) / jnp.maximum(jnp.sum(ref), 1.0)
        # (a batch with fewer than 2 normal rows has no "other normal features": compactness 0 there,
        # not the distance of a lone normal feature to the origin)
        n_normal = jnp.sum(is_normal)
        n = jnp.maximum(n_normal, 2.0)
        others = (jnp.sum(f * is_normal[:, None], 0, keepdims=True) - f) / (n - 1)
        comp = jnp.sum(jnp.sum(jnp.square(f - others), -1) * is_normal) / n / f.shape[-1]
        comp = jnp.where(n_normal >= 2, comp, 0.0)
        return desc + cfg.doc_lambda * comp + extra, updates["batch_stats"]

    @jax.jit
    def train_step(state, key, x, y, is_normal, mask, seg_w):
        params, batch_stats, opt_state = state
        if cfg.augment and seg_layer is not None:  # the flaw mask turns with its image
            xm = augment(key, jnp.concatenate([x, mask[..., None]], -1))
            x, mask = xm[..., :3], xm[..., 3]
        elif cfg.augment:
            x = augment(key, x)
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, x, y, is_normal, mask, seg_w)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

    images = np.concatenate([normal.images, reference.images])
    is_normal = np.concatenate([np.ones(len(normal)), np.zeros(len(reference))]).astype(np.float32)
    labels = np.concatenate([np.zeros(len(normal), np.int32), ref_labels + (0 if doc else 1)])
    if flaw_masks is not None:  # normal: no flaw anywhere; flawed copies: their masks; references: unused
        masks = np.zeros(images.shape[:3], np.float32)
        masks[len(normal) + n_ref:] = flaw_masks
        seg_w = np.concatenate([np.ones(len(normal)), np.zeros(n_ref), np.ones(len(flaw_masks))]).astype(np.float32)
    else:  # (placeholders: one shape for the step, nothing stored per pixel)
        masks, seg_w = np.zeros((len(images), 1, 1), np.float32), np.zeros(len(images), np.float32)
    (params, batch_stats, _), history = run_epochs(
        train_step, (params, batch_stats, opt_state), (images, labels, is_normal, masks, seg_w),
        batch_size=cfg.batch_size,
        epochs=cfg.epochs, seed=seed, desc="f-Net", progress=progress, key=key)
    backbone_vars = {"params": params["backbone"]}
    if batch_stats:
        backbone_vars["batch_stats"] = batch_stats["backbone"]
    if cfg.bn_stats == "recompute":
        backbone_vars = recompute_batch_stats(backbone, backbone_vars, images, cfg.batch_size, seed)
    fnet = FrozenFNet.from_module(backbone, backbone_vars)
    feats = fnet.features(normal.images)
    center = compute_center(feats)
    memory = None
    if cfg.patch_memory > 0:
        from anounet_jax.fnet.patch_memory import build_patch_memory

        memory = build_patch_memory(fnet, cfg, normal.images, seed, coreset_fraction=cfg.patch_memory)
    try:
        scale = feature_scale(feats, center)
    except AnoUnetError:  # (only a scale-free L_C needs it: Engine.from_preset says so there)
        scale = None
    flaw_head = None
    if seg_layer is not None:  # kept: the fits' flaw term reads it (fnet/flaw_head.py)
        from anounet_jax.fnet.flaw_head import FlawHead

        flaw_head = FlawHead(jax.device_get(params["seg_head"]), cfg, seg_layer)
    return TrainedFNet(fnet, center, feats, history, scale, memory, flaw_head=flaw_head)

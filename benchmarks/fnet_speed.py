"""f-Net (MobileNetV2) speed: one training step and forward-only feature extraction, per conv impl.

    python benchmarks/fnet_speed.py [--batch 64] [--size 64] [--alpha 0.5] [--repeats 5]
                                    [--configs lax/conv,lax/matmul,shifts/matmul]

The training step is what ``anounet_jax.fnet.train`` jits: MobileNetV2 in train mode (BatchNorm
batch statistics, ``batch_stats`` updated) -> L2-constrained softmax head -> cross-entropy ->
``value_and_grad`` -> AMSGrad update. Feature extraction is ``MobileNetV2.apply(train=False)``.
A config is ``depthwise_impl/pointwise_impl`` of :class:`MobileNetV2`: depthwise ``"lax"``
(grouped convolution) or ``"shifts"`` (9 shifted slices), pointwise ``"conv"`` or ``"matmul"``;
``lax/conv`` is the plain formulation (the reference), ``shifts/matmul`` what ``"auto"`` picks on
CPU. All configs are compiled and timed in this one process, interleaved, each time the min over
``--repeats`` rounds (the machine may be shared; the min is the least disturbed run). Prints one
JSON object, then a table.
"""

from __future__ import annotations

import argparse
import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from anounet_jax.models.mobilenet_v2 import (
    MobileNetV2,
    resolve_depthwise_impl,
    resolve_pointwise_impl,
)

CONFIGS = ("lax/conv", "lax/matmul", "shifts/matmul")
REFERENCE = "lax/conv"


class _Classifier(nn.Module):
    """MobileNetV2 + the L2-softmax head of anounet_jax.fnet.train (alpha_L2 = 5)."""

    alpha: float
    depthwise_impl: str
    pointwise_impl: str
    num_classes: int = 8
    alpha_l2: float = 5.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        f = MobileNetV2(alpha=self.alpha, depthwise_impl=self.depthwise_impl,
                        pointwise_impl=self.pointwise_impl, name="backbone")(x, train=train)
        z = self.alpha_l2 * f * jax.lax.rsqrt(jnp.sum(f * f, -1, keepdims=True) + 1e-12)
        return f, nn.Dense(self.num_classes, name="head")(z)


def _block(tree):
    jax.tree.map(lambda a: a.block_until_ready(), tree)
    return tree


def _build(config, alpha, batch, size, seed=0):
    depthwise, pointwise = config.split("/")
    model = _Classifier(alpha=alpha, depthwise_impl=depthwise, pointwise_impl=pointwise)
    x = jax.random.uniform(jax.random.key(seed), (batch, size, size, 3), jnp.float32)
    y = jax.random.randint(jax.random.key(seed + 1), (batch,), 0, model.num_classes)
    # same initial variables for every config (the parameter trees are identical)
    variables = jax.jit(model.init, static_argnames="train")(jax.random.key(seed + 2), x[:2])
    tx = optax.amsgrad(1e-4)

    def loss_fn(params, batch_stats, x, y):
        (_, logits), updates = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                           train=True, mutable=["batch_stats"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.mean(ce), updates["batch_stats"]

    @jax.jit
    def train_step(params, batch_stats, opt_state, x, y):
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    backbone = MobileNetV2(alpha=alpha, depthwise_impl=depthwise, pointwise_impl=pointwise)
    features = jax.jit(lambda v, x: backbone.apply(v, x, train=False))
    bvars = {"params": variables["params"]["backbone"],
             "batch_stats": variables["batch_stats"]["backbone"]}
    state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))

    t0 = time.perf_counter()
    _block(train_step(*state, x, y))
    compile_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    _block(features(bvars, x))
    compile_feat = time.perf_counter() - t0
    return {
        "train": lambda: _block(train_step(*state, x, y)),
        "features": lambda: _block(features(bvars, x)),
        "compile_s": {"train_step": compile_train, "features": compile_feat},
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help="comma-separated depthwise_impl/pointwise_impl pairs")
    args = ap.parse_args(argv)
    configs = tuple(args.configs.split(","))

    runs = {cfg: _build(cfg, args.alpha, args.batch, args.size) for cfg in configs}
    times = {cfg: {"train": [], "features": []} for cfg in configs}
    for _ in range(args.repeats):  # interleaved, so load spikes hit every config alike
        for cfg in configs:
            for what in ("train", "features"):
                t0 = time.perf_counter()
                runs[cfg][what]()
                times[cfg][what].append(time.perf_counter() - t0)

    result = {
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
        "batch": args.batch, "size": args.size, "alpha": args.alpha, "repeats": args.repeats,
        "auto": f"{resolve_depthwise_impl('auto')}/{resolve_pointwise_impl('auto')}",
        "configs": {
            cfg: {
                "train_step_s": min(times[cfg]["train"]),
                "features_s": min(times[cfg]["features"]),
                "train_step_all_s": times[cfg]["train"],
                "features_all_s": times[cfg]["features"],
                "compile_s": runs[cfg]["compile_s"],
            }
            for cfg in configs
        },
    }
    if REFERENCE in configs:
        ref = result["configs"][REFERENCE]
        result[f"speedup_vs_{REFERENCE}"] = {
            cfg: {"train_step": ref["train_step_s"] / r["train_step_s"],
                  "features": ref["features_s"] / r["features_s"]}
            for cfg, r in result["configs"].items()
        }
    print(json.dumps(result, indent=1))
    print(f"\n{'config':15s} {'train step (s)':>15s} {'features (s)':>13s}   "
          f"(batch {args.batch}, {args.size}x{args.size}, alpha {args.alpha}, "
          f"min of {args.repeats}, {result['backend']}; auto = {result['auto']})")
    for cfg in configs:
        r = result["configs"][cfg]
        print(f"{cfg:15s} {r['train_step_s']:15.3f} {r['features_s']:13.3f}")
    return result


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Convert Keras MobileNetV2 weights into Flax variables for ``anounet_jax.models.MobileNetV2``.

Offline, from a weights file (the ImageNet ``.h5`` Keras downloads into ~/.keras/models/, or a
Keras 3 ``.weights.h5`` / ``.keras`` file)::

    python scripts/import_keras_mobilenetv2.py \\
        --weights mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_96_no_top.h5 \\
        --alpha 0.5 --out mobilenet_v2_0.5_96.msgpack

With internet and Keras 3 installed (``pip install keras h5py``; JAX backend, no TensorFlow)::

    python scripts/import_keras_mobilenetv2.py --from-keras --alpha 0.5 --size 96 --out mnv2.msgpack

The output is ``flax.serialization.to_bytes({"params": ..., "batch_stats": ...})``; read it back
with ``flax.serialization.from_bytes(MobileNetV2(alpha).init(...), data)`` or
``flax.serialization.msgpack_restore(data)``. The model takes images in [0, 1].
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="Keras MobileNetV2 weights (.h5, .weights.h5 or .keras)")
    src.add_argument(
        "--from-keras",
        action="store_true",
        help='build keras.applications.MobileNetV2(weights="imagenet") (downloads the weights)',
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="width multiplier (default 0.5)")
    parser.add_argument(
        "--size",
        type=int,
        default=224,
        choices=[96, 128, 160, 192, 224],
        help="with --from-keras: input size the ImageNet weights were trained at (default 224)",
    )
    parser.add_argument("--out", required=True, help="output .msgpack file")
    args = parser.parse_args(argv)

    from flax import serialization

    from anounet_jax.errors import AnoUnetError
    from anounet_jax.models.keras_import import load_keras_mobilenetv2

    try:
        if args.from_keras:
            os.environ.setdefault("KERAS_BACKEND", "jax")
            try:
                import keras
            except ImportError as e:
                raise AnoUnetError(f"--from-keras needs Keras 3 (pip install keras h5py): {e}")
            source = keras.applications.MobileNetV2(
                input_shape=(args.size, args.size, 3),
                alpha=args.alpha,
                include_top=False,
                pooling="avg",
                weights="imagenet",
            )
        else:
            source = args.weights
        variables = load_keras_mobilenetv2(source, alpha=args.alpha)
        data = serialization.to_bytes(variables)
        out_dir = os.path.dirname(os.path.abspath(args.out))
        try:
            os.makedirs(out_dir, exist_ok=True)
            with open(args.out, "wb") as f:
                f.write(data)
        except OSError as e:
            raise AnoUnetError(f"cannot write output: {e.strerror or e}", args.out) from e
    except AnoUnetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    n_params = sum(x.size for x in __import__("jax").tree.leaves(variables["params"]))
    print(
        f"wrote {args.out}: MobileNetV2(alpha={args.alpha}) with {n_params:,} parameters "
        f"and {len(variables['batch_stats'])} BatchNorm layers ({len(data):,} bytes)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

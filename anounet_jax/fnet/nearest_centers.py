"""A C per test image (fit.lc_center "nearest"): the mean f-Net feature of the normal training images
nearest to the image's own feature.

One global C asks every image to look like the average normal image; textures vary from image to image
(scale, contrast, colour), so most of |f(G(x)) - C| is that variation, not the defect, and the fit is
pulled toward the average everywhere. The k nearest normal features are the normal images most like
this one: L_C then asks G(x) to look like *its own kind* of normal. Distances are mean absolute
differences, L_C's own metric. On the tuning families this center gave the fits' L_C its image score
back without its cost in pixels (benchmarks/results/lc_center_small.md).
"""

from __future__ import annotations

import numpy as np

from anounet_jax.errors import AnoUnetError


def nearest_centers(features: np.ndarray, normal_features: np.ndarray, k: int) -> np.ndarray:
    """float32 (N, D): for each row of `features` (N, D), the mean of its k nearest rows of
    `normal_features` (M, D) by mean absolute difference (ties: the lower index first)."""
    features = np.asarray(features, np.float32)
    normal = np.asarray(normal_features, np.float32)
    if features.ndim != 2 or normal.ndim != 2 or features.shape[1] != normal.shape[1]:
        raise AnoUnetError(f"nearest centers need (N, D) features and (M, D) normal features of the same D, "
                           f"got {features.shape} and {normal.shape}")
    if not 1 <= k <= len(normal):
        raise AnoUnetError(f"fit.lc_center_k must be between 1 and the number of normal features "
                           f"({len(normal)}), got {k}")
    out = np.empty_like(features)
    for i, q in enumerate(features):  # one row at a time: memory M x D, whatever N is
        d = np.abs(normal - q).mean(1)
        out[i] = normal[np.argsort(d, kind="stable")[:k]].mean(0)
    return out

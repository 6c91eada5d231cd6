"""The in-memory image set every source returns."""

from __future__ import annotations

import dataclasses

import numpy as np

from anounet_jax.errors import AnoUnetError


@dataclasses.dataclass
class ImageSet:
    """Images float32 NHWC in [0, 1]; optional bool masks (N, H, W), int labels (N,) and file ids.

    labels: 0 = normal, 1 = anomalous (for test sets); class indices for reference sets.
    """

    images: np.ndarray
    masks: np.ndarray | None = None
    labels: np.ndarray | None = None
    ids: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        x = self.images
        if x.ndim != 4 or x.shape[-1] != 3:
            raise AnoUnetError(f"images must be (N, H, W, 3), got {x.shape}")
        if x.dtype != np.float32:
            raise AnoUnetError(f"images must be float32, got {x.dtype}")
        n = len(x)
        if not self.ids:
            self.ids = [f"{i:06d}" for i in range(n)]
        if len(self.ids) != n:
            raise AnoUnetError(f"{len(self.ids)} ids for {n} images")
        if self.masks is not None and self.masks.shape != x.shape[:3]:
            raise AnoUnetError(f"masks {self.masks.shape} do not match images {x.shape[:3]}")
        if self.labels is not None and len(self.labels) != n:
            raise AnoUnetError(f"{len(self.labels)} labels for {n} images")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index) -> "ImageSet":
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return ImageSet(
            images=self.images[index],
            masks=None if self.masks is None else self.masks[index],
            labels=None if self.labels is None else self.labels[index],
            ids=[self.ids[i] for i in index],
        )

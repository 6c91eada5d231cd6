"""Image-level anomaly scores from f-Net features, as in the author's metric-learning pipeline.

A scorer is fitted once on the features of the *normal training* images and then maps the features of
any image to one number per image, larger = more anomalous:

- `LOFScorer`: features are min-max scaled with the statistics of the training features
  (scikit-learn `MinMaxScaler`), then `LocalOutlierFactor(n_neighbors=5, novelty=True)` is fitted on
  them; score(x) = -lof.score_samples(scale(x)) (the local outlier factor, about 1 for inliers).
- `DistanceScorer`: score(x) = ||x - C||_2 (metric "l2") or ||x - C||_1 (metric "l1"), C the mean
  training feature (`compute_center`) unless given.

Threshold (which images get visualized). `threshold` is the `quantile` (default 0.95) of the scores
of the training images themselves, so about 5% of normal images are flagged: `flag(scores)` is
`scores > threshold`. For LOF the training scores are the leave-self-out factors
(`-negative_outlier_factor_`), i.e. the same quantity a new image would get; scoring the training
points with `score_samples` would count each point as its own neighbour and bias the threshold low.

State. `state_dict()` is a flat dict of numpy arrays, Python numbers and strings (no pickle), and
`scorer_from_state(state)` / `Cls.from_state_dict(state)` rebuilds an identical scorer. LOF keeps
the scaled training features plus the scaler's `scale`/`offset` (transform = x * scale + offset)
and refits the (deterministic, exact-kNN) LOF on restore.
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import LocalOutlierFactor
from sklearn.preprocessing import MinMaxScaler

from anounet_jax.errors import AnoUnetError

DEFAULT_QUANTILE = 0.95


def _features(x, what: str) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise AnoUnetError(f"{what} must be (N, D) features, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise AnoUnetError(f"{what} contain NaN or inf")
    return x


class _Scorer:
    kind: str = ""
    quantile: float
    threshold: float | None

    @property
    def fitted(self) -> bool:
        return self.threshold is not None

    def _check_fitted(self):
        if not self.fitted:
            raise AnoUnetError(f"the {self.kind} scorer is not fitted; call fit(train_features) first")

    def _check_dim(self, x: np.ndarray, dim: int):
        if x.shape[1] != dim:
            raise AnoUnetError(f"features have dimension {x.shape[1]}, the {self.kind} scorer was "
                               f"fitted on dimension {dim}")

    def _set_threshold(self, train_scores: np.ndarray):
        if not 0.0 < self.quantile <= 1.0:
            raise AnoUnetError(f"threshold quantile must be in (0, 1], got {self.quantile}")
        self.threshold = float(np.quantile(train_scores, self.quantile))

    def flag(self, scores) -> np.ndarray:
        """bool (N,): True where an image's score exceeds the threshold (these get visualized)."""
        self._check_fitted()
        return np.asarray(scores) > self.threshold

    def fit_score(self, train_features) -> np.ndarray:
        return self.fit(train_features).score(train_features)


class LOFScorer(_Scorer):
    """Local outlier factor on min-max scaled features (novelty mode); score = -score_samples."""

    kind = "lof"

    def __init__(self, n_neighbors: int = 5, quantile: float = DEFAULT_QUANTILE):
        self.n_neighbors = int(n_neighbors)
        self.quantile = float(quantile)
        self.threshold = None
        self.scale = self.offset = self.train_scaled = None
        self._lof = None

    def _fit_lof(self, train_scaled: np.ndarray) -> np.ndarray:
        n = len(train_scaled)
        if n < 2:
            raise AnoUnetError(f"LOF needs at least 2 normal training images, got {n}")
        # sklearn would cap n_neighbors at n - 1 with a warning; do it quietly and explicitly.
        lof = LocalOutlierFactor(n_neighbors=min(self.n_neighbors, n - 1), novelty=True)
        lof.fit(train_scaled)
        self._lof = lof
        self.train_scaled = train_scaled
        return -lof.negative_outlier_factor_

    def transform(self, features) -> np.ndarray:
        self._check_fitted()
        x = _features(features, "features")
        self._check_dim(x, len(self.scale))
        return (x * self.scale + self.offset).astype(np.float32)

    def fit(self, train_features) -> "LOFScorer":
        x = _features(train_features, "training features")
        scaler = MinMaxScaler().fit(x)
        self.scale = scaler.scale_.astype(np.float32)
        self.offset = scaler.min_.astype(np.float32)
        scaled = (x * self.scale + self.offset).astype(np.float32)
        self._set_threshold(self._fit_lof(scaled))
        return self

    def score(self, features) -> np.ndarray:
        """float32 (N,): the local outlier factor of each image (about 1 = normal, larger = anomalous)."""
        x = self.transform(features)
        if len(x) == 0:
            return np.zeros(0, np.float32)
        return (-self._lof.score_samples(x)).astype(np.float32)

    def state_dict(self) -> dict:
        self._check_fitted()
        return {"kind": self.kind, "n_neighbors": self.n_neighbors, "quantile": self.quantile,
                "threshold": self.threshold, "scale": self.scale, "offset": self.offset,
                "train_scaled": self.train_scaled}

    @classmethod
    def from_state_dict(cls, state: dict) -> "LOFScorer":
        s = cls(n_neighbors=int(state["n_neighbors"]), quantile=float(state["quantile"]))
        s.scale = np.asarray(state["scale"], np.float32)
        s.offset = np.asarray(state["offset"], np.float32)
        s._fit_lof(_features(state["train_scaled"], "stored LOF training features"))
        s.threshold = float(state["threshold"])
        return s


class DistanceScorer(_Scorer):
    """Distance of a feature to the center C: metric "l2" (Euclidean) or "l1" (Manhattan)."""

    kind = "distance"

    def __init__(self, metric: str = "l2", quantile: float = DEFAULT_QUANTILE):
        if metric not in ("l2", "l1"):
            raise AnoUnetError(f"unknown distance metric {metric!r}; use 'l2' or 'l1'")
        self.metric = metric
        self.quantile = float(quantile)
        self.threshold = None
        self.center = None

    def fit(self, train_features, center=None) -> "DistanceScorer":
        """center: C (D,); None = the mean training feature (what `compute_center` returns)."""
        x = _features(train_features, "training features")
        if len(x) == 0:
            raise AnoUnetError("cannot fit a distance scorer on zero normal images")
        c = x.mean(0) if center is None else np.asarray(center, np.float32).reshape(-1)
        self._check_dim(x, len(c))
        self.center = c.astype(np.float32)
        self._set_threshold(self._distances(x))
        return self

    def _distances(self, x: np.ndarray) -> np.ndarray:
        d = x - self.center
        out = np.abs(d).sum(1) if self.metric == "l1" else np.sqrt(np.square(d).sum(1))
        return out.astype(np.float32)

    def score(self, features) -> np.ndarray:
        """float32 (N,): ||x - C|| in the chosen metric."""
        self._check_fitted()
        x = _features(features, "features")
        self._check_dim(x, len(self.center))
        return self._distances(x)

    def state_dict(self) -> dict:
        self._check_fitted()
        return {"kind": self.kind, "metric": self.metric, "quantile": self.quantile,
                "threshold": self.threshold, "center": self.center}

    @classmethod
    def from_state_dict(cls, state: dict) -> "DistanceScorer":
        s = cls(metric=str(state["metric"]), quantile=float(state["quantile"]))
        s.center = np.asarray(state["center"], np.float32)
        s.threshold = float(state["threshold"])
        return s


SCORERS = {"lof": LOFScorer, "distance": DistanceScorer}
# Names accepted by make_scorer: "lof", "l2"/"distance" (Euclidean distance to C), "l1".
_ALIASES = {"lof": ("lof", {}), "l2": ("distance", {"metric": "l2"}),
            "distance": ("distance", {"metric": "l2"}), "l1": ("distance", {"metric": "l1"})}


def make_scorer(name: str, **kwargs) -> LOFScorer | DistanceScorer:
    """An unfitted scorer by name: "lof", "l2" (= "distance") or "l1"; kwargs e.g. quantile=0.9."""
    try:
        kind, defaults = _ALIASES[name]
    except KeyError:
        raise AnoUnetError(f"unknown scorer {name!r}; use one of {sorted(_ALIASES)}") from None
    return SCORERS[kind](**{**defaults, **kwargs})


def scorer_from_state(state: dict) -> LOFScorer | DistanceScorer:
    """Rebuild a fitted scorer from `state_dict()` output (its "kind" entry picks the class)."""
    kind = state.get("kind")
    if kind not in SCORERS:
        raise AnoUnetError(f"unknown scorer kind {kind!r} in stored state; expected one of {sorted(SCORERS)}")
    try:
        return SCORERS[kind].from_state_dict(state)
    except KeyError as e:
        raise AnoUnetError(f"stored {kind} scorer state lacks the entry {e.args[0]!r}") from None

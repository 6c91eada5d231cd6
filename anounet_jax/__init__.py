"""Ano-Unet anomaly visualization in JAX."""

from anounet_jax.errors import AnoUnetError

__all__ = ["AnoUnetError"]
__version__ = "0.1.0"


def __getattr__(name):
    """`anounet_jax.score` / `anounet_jax.ScoreResult`, imported on first use (they pull in jax)."""
    if name in ("score", "ScoreResult"):
        from anounet_jax.jobs.score import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

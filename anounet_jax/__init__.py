"""Ano-Unet anomaly visualization in JAX."""

from anounet_jax.errors import AnoUnetError

__all__ = ["AnoUnetError"]
__version__ = "0.1.0"

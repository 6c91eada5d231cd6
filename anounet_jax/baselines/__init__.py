"""Baselines with the Ano-Unet interface: same images in, same (heatmap, recon, score) out.

    from anounet_jax.baselines import autoencoder, baseline_config
    ae = autoencoder.train(normal, baseline_config("small").autoencoder, seed=0)
    res = ae.score_maps(test.images)    # BaselineResult(heatmap (N,H,W), recon (N,H,W,3), score (N,))

Maps are not smoothed here; the map step smooths every method alike. `anounet_jax.methods` is the
registry that `anounet evaluate` iterates (Ano-Unet and every baseline behind one interface).
"""

from anounet_jax.baselines.common import BaselineResult
from anounet_jax.baselines.configs import (AnoGANConfig, AutoencoderConfig, BaselineConfigs, DocDecoderConfig,
                                           FeatureMemoryConfig, baseline_config)

__all__ = ["AnoGANConfig", "AutoencoderConfig", "BaselineConfigs", "BaselineResult", "DocDecoderConfig",
           "FeatureMemoryConfig", "baseline_config"]

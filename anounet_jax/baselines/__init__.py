"""Baselines with the Ano-Unet interface: same images in, same (heatmap, recon, score) out.

    from anounet_jax.baselines import autoencoder, doc_decoder, anogan, baseline_config
    cfgs = baseline_config("small")
    ae = autoencoder.train(normal, cfgs.autoencoder, seed=0)
    dd = doc_decoder.train(normal, fnet, cfgs.doc_decoder, seed=0)
    gan = anogan.train(normal, cfgs.anogan, seed=0)
    res = ae.score_maps(test.images)    # BaselineResult(heatmap (N,H,W), recon (N,H,W,3), score (N,))

Maps are not smoothed here; the evaluate harness smooths every method alike.
"""

from anounet_jax.baselines import anogan, autoencoder, doc_decoder
from anounet_jax.baselines.anogan import AnoGAN, AnoGANConfig
from anounet_jax.baselines.autoencoder import Autoencoder, AutoencoderConfig
from anounet_jax.baselines.common import BaselineConfigs, BaselineResult, baseline_config
from anounet_jax.baselines.doc_decoder import DocDecoder, DocDecoderConfig

train_autoencoder = autoencoder.train
train_doc_decoder = doc_decoder.train
train_anogan = anogan.train

__all__ = ["AnoGAN", "AnoGANConfig", "Autoencoder", "AutoencoderConfig", "BaselineConfigs",
           "BaselineResult", "DocDecoder", "DocDecoderConfig", "anogan", "autoencoder",
           "baseline_config", "doc_decoder", "train_anogan", "train_autoencoder", "train_doc_decoder"]

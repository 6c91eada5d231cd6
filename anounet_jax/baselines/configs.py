"""The baselines' settings: one frozen dataclass per method, and the sizes that go with each preset.
A leaf module: the methods import their config from here, nothing here knows a method."""

from __future__ import annotations

import dataclasses

from anounet_jax.errors import AnoUnetError


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
    width: int = 32  # channels of the first encoder / last decoder level; doubles per level down
    depth: int = 4  # stride-2 levels (image size must be divisible by 2**depth)
    latent: int = 128  # bottleneck size
    norm: str = "group"  # decoder normalization: "group" (per sample) | "none"
    loss: str = "l2"  # "l2" | "l1"
    lr: float = 1e-3
    epochs: int = 50
    batch_size: int = 64
    eval_batch_size: int = 64


@dataclasses.dataclass(frozen=True)
class DocDecoderConfig:
    width: int = 32  # channels of the last (half-resolution) decoder level; doubles per level down
    depth: int = 4  # stride-2 up-sampling levels (image size must be divisible by 2**depth)
    norm: str = "group"  # "group" (per sample) | "none"
    loss: str = "l2"  # "l2" | "l1"
    lr: float = 1e-3
    epochs: int = 50
    batch_size: int = 64
    eval_batch_size: int = 64


@dataclasses.dataclass(frozen=True)
class AnoGANConfig:
    width: int = 64  # channels of D's first and G's last level; doubles per level down
    depth: int = 4  # stride-2 levels (image size must be divisible by 2**depth)
    latent: int = 100  # dimension of z
    norm: str = "group"  # per-sample normalization in G and D: "group" | "none"
    lr: float = 2e-4  # GAN training, Adam(lr, b1=0.5) for G and D
    beta1: float = 0.5
    epochs: int = 50
    batch_size: int = 64
    lam: float = 0.1  # lambda: weight of the discrimination loss in the latent search
    search_steps: int = 500
    search_lr: float = 0.05  # Adam on z
    chunk_size: int = 64  # images searched at once
    steps_per_call: int = 1  # search steps unrolled per jitted call (fewer dispatches on accelerators)


@dataclasses.dataclass(frozen=True)
class FeatureMemoryConfig:
    layers: tuple[str, ...] | None = None  # f-Net maps ("stride4", ...); None: default_layers(arch)
    coreset_fraction: float = 0.1  # memory size = this fraction of all normal patch vectors ...
    max_memory: int = 20000  # ... but at most this many vectors
    projection_dim: int = 128  # the coreset is selected on a random projection to this many dims
    k: int = 1  # nearest memory vectors averaged into a patch score
    batch_size: int = 32  # images per f-Net / scoring batch
    memory_block: int = 2048  # memory vectors per distance block
    coreset_chunk: int = 512  # greedy selection steps per jitted call


@dataclasses.dataclass(frozen=True)
class BaselineConfigs:
    autoencoder: AutoencoderConfig
    doc_decoder: DocDecoderConfig
    anogan: AnoGANConfig
    feature_memory: FeatureMemoryConfig = FeatureMemoryConfig()


def baseline_config(preset_name: str) -> BaselineConfigs:
    """The baseline sizes that go with a preset: "tiny" (tests: seconds), "small" (2-core CPU: the three
    baselines train and score ~60 64x64 test images in a few minutes), "paper" (full size)."""
    presets = {
        "tiny": BaselineConfigs(
            AutoencoderConfig(width=8, depth=2, latent=16, epochs=4, batch_size=16, lr=3e-3,
                              eval_batch_size=16),
            DocDecoderConfig(width=8, depth=2, epochs=4, batch_size=16, lr=3e-3, eval_batch_size=16),
            AnoGANConfig(width=8, depth=2, latent=16, epochs=4, batch_size=16, search_steps=20,
                         search_lr=0.05, chunk_size=4),
            FeatureMemoryConfig(coreset_fraction=0.05, max_memory=2000, batch_size=16),
        ),
        "small": BaselineConfigs(
            # tuned on the TUNING families (benchmarks/results/tune_baselines_small.md)
            AutoencoderConfig(width=16, depth=4, latent=256, epochs=100, batch_size=32, lr=2e-3),
            DocDecoderConfig(width=16, depth=4, epochs=50, batch_size=32, lr=2e-3),  # tuned like the AE
            AnoGANConfig(width=8, depth=4, latent=64, epochs=10, batch_size=32, search_steps=500,
                         search_lr=0.05, chunk_size=64),
            # PatchCore reports 1% and 10% coresets alike; 10% costs ~70 s of greedy selection here
            FeatureMemoryConfig(coreset_fraction=0.01),
        ),
        "paper": BaselineConfigs(
            AutoencoderConfig(),
            DocDecoderConfig(),
            AnoGANConfig(),
        ),
    }
    try:
        return presets[preset_name]
    except KeyError:
        raise AnoUnetError(f"unknown preset {preset_name!r}; choose one of {sorted(presets)}") from None

"""Presets as frozen dataclasses: a preset is a value, not a file format.

"paper" is the original notebook (96x96, 31M-parameter U-Net, MobileNetV2 alpha 0.5 f-Net, SGD 1e-3,
beta 50, 150 steps). "small" is sized for a 2-core CPU, "tiny" for tests.

A preset keeps apart what changes the maths and what does not: `unet`, `fnet` and `fit` decide the
numbers of a heatmap; `maps` post-processes the raw maps (the same for every method); `engine` only
decides how the fits are run (chunk size, formulation) and never changes a map beyond float rounding.
"""

from __future__ import annotations

import dataclasses

from anounet_jax.errors import AnoUnetError

# The engine's ways to run the same maths (engine/fit.py); "auto" and "measure" pick one.
FORMULATIONS = ("vmap_matmul", "vmap_conv", "unrolled", "loop")
FORMULATION_CHOICES = ("auto", "measure") + FORMULATIONS


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    width: int = 64  # channels of the first level; doubles per level
    depth: int = 4  # down-sampling levels (the bottleneck has width * 2**depth channels)
    norm: str = "batch"  # "batch" (statistics of the image being fitted) | "none"


@dataclasses.dataclass(frozen=True)
class FNetConfig:
    arch: str = "mobilenet_v2"  # "mobilenet_v2" | "small_cnn"
    alpha: float = 0.5  # MobileNetV2 width multiplier
    small_cnn_width: int = 16  # only for arch="small_cnn"
    method: str = "l2softmax"  # "l2softmax" | "doc"
    alpha_l2: float = 5.0  # L2-constrained softmax feature scale
    doc_lambda: float = 0.1  # DOC: weight of the compactness loss
    lr: float = 1e-4
    batch_size: int = 128
    epochs: int = 30  # 0: the f-Net stays at its random initialization (random features)
    augment: bool = True  # flips and 90-degree rotations
    # BatchNorm statistics of the frozen f-Net: "moving" keeps the moving averages training left
    # (Keras' momentum 0.999: after a few hundred steps still mostly their initial values, so the frozen
    # network is not the trained one); "recompute" replaces them with the mean batch statistics of the
    # training images under the trained weights (what training normalized with).
    bn_stats: str = "moving"
    # Self-supervised: one damaged copy of every normal image (fnet/irregularities.py: cut-paste,
    # noise, blur, colour in a small region) as one more class, "normal with a flaw", and a stride-8
    # head trained to find the flaw.
    synthetic_flaws: bool = False
    # The memory of normal patch features for the spatial term (fit.spatial_beta): its size as a
    # fraction of all normal patch vectors (a greedy coreset, fnet/patch_memory.py); 0 = none.
    patch_memory: float = 0.0


@dataclasses.dataclass(frozen=True)
class FitConfig:
    steps: int = 150
    beta: float = 50.0
    optimizer: str = "sgd"  # "sgd" (momentum) | "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    # L_C's unit: "raw" (the original: beta depends on the f-Net's feature scale) or "normal" (L_C is
    # divided by the mean L_C of the normal training images, so beta = 1 weighs a typical normal
    # image's distance to C like its mean absolute reconstruction error of 1).
    lc_scale: str = "raw"
    # Weight of the spatial feature term: G(x)'s local f-Net features against a memory of normal patch
    # features (engine/steps.py spatial_loss), in units of a normal patch's squared distance; 0 = off (the original).
    spatial_beta: float = 0.0
    # Weight of the flaw term: the mean over G(x)'s stride-8 cells of -log(1 - p_flaw) from the f-Net's
    # flaw head (fnet.synthetic_flaws; fnet/flaw_head.py): the fit rewrites what the head sees as a
    # local flaw. 0 = off (the original).
    flaw_beta: float = 0.0
    # Where every image's fit starts: "cold" (random U-Net parameters per image, the original) or
    # "warm" (U-Net parameters trained once on the normal images by the `start` section's recipe, with
    # the f-Net: stored in its checkpoint by `anounet train-fnet`, trained in-process by demo and
    # evaluate; engine/warm_start.py). A warm start needs far fewer steps (and more make maps worse).
    start: str = "cold"
    # Where L_C acts: "everywhere" (the original: every image's own fit, and the warm start's training,
    # whose inner fits are those fits) or "start" (only while the warm start is trained: the start is
    # meta-learned with L_C, then each image's fit is the plain reconstruction, no f-Net in its loop)
    lc_where: str = "everywhere"
    # L_C's target in each test image's fit: "global" (C, the mean f-Net feature of the normal training
    # images: the original) or "nearest" (per image, the mean feature of the lc_center_k normal training
    # images nearest to f(x): its own kind of normal; fnet/nearest_centers.py). The warm start's
    # training keeps C (its images are the normal ones); per-position centers (tiles.center "position")
    # replace both
    lc_center: str = "global"
    lc_center_k: int = 32

    @property
    def fit_beta(self) -> float:
        """L_C's weight in each test image's own fit."""
        return self.beta if self.lc_where == "everywhere" else 0.0


@dataclasses.dataclass(frozen=True)
class StartConfig:
    """How the warm start (fit.start "warm") is trained (engine/warm_start.py)."""
    method: str = "reptile"  # "reptile" (meta-learned) | "shared" (one U-Net fitted to all normal images)
    steps: int = 100  # Reptile: outer steps; shared: Adam steps
    inner_steps: int = 10  # Reptile: steps of each image's own fit per outer step
    batch_size: int = 8  # normal images per step


@dataclasses.dataclass(frozen=True)
class MapConfig:
    smoothing_sigma: float = 0.0  # Gaussian smoothing of every method's raw maps (pixels); 0 = none
    # after smoothing, each map's departure from its own median (maps.deviation): "none" (the raw
    # map, the original), "absolute" |m - median| or "relative" |m - median| / median. Both
    # directions count: a patch that lost its detail is reconstructed *better* than its texture
    deviation: str = "none"
    # the weight of the deviation's low side (below the median): 1 counts both sides alike; below 1
    # a smooth normal region reproduced better than its surroundings (mortar) counts less
    deviation_low: float = 1.0
    # image score from a smoothed map (maps.map_score): "max" (the original) or "top1" (the mean of
    # the map's top 1% of pixels: one hot pixel of noise counts less)
    image_score: str = "max"


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    chunk_size: int = 8  # images fitted at once (lowered to fit the device's memory unless given)
    formulation: str = "auto"  # one of FORMULATION_CHOICES


@dataclasses.dataclass(frozen=True)
class DataConfig:
    category: str = "brick"  # embedded default: "brick" | "grass"
    n_train: int = 1000  # normal training patches
    n_reference_per_class: int = 200
    n_test_good: int = 20
    n_test_defect: int = 40


@dataclasses.dataclass(frozen=True)
class TileConfig:
    """Native resolution by tiling (data/tiling.py): images are cut into overlapping tiles, one U-Net each."""
    tile: int = 0  # tile size in pixels; 0 = the preset's image_size
    stride: int = 0  # pixels between tile starts; 0 = tile // 2
    scale: float = 1.0  # resize factor applied first (aspect ratio kept)
    resize: bool = False  # True: no tiling; every image resized to image_size x image_size (maps at that size)
    # C for the tiles (fnet/tile_centers.py): "global" (one center, textures) or "position" (tile k of
    # the grid has its own center from tile k of the normal images: aligned objects, one image size)
    center: str = "global"


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    image_size: int
    unet: UNetConfig
    fnet: FNetConfig
    fit: FitConfig
    data: DataConfig
    maps: MapConfig = MapConfig()
    engine: EngineConfig = EngineConfig()
    tiles: TileConfig = TileConfig()
    start: StartConfig = StartConfig()

    def replace(self, **sections) -> "Preset":
        """`preset.replace(fit={"beta": 10})` -> a new preset with some fields of a section changed."""
        changes = {}
        for key, value in sections.items():
            current = getattr(self, key)
            changes[key] = dataclasses.replace(current, **value) if isinstance(value, dict) else value
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "Preset":
        """The inverse of to_dict; also reads the layout before `maps`/`engine`/`start` existed (checkpoints
        written then kept smoothing_sigma and chunk_size in `fit`; fit.start "checkpoint" is now "warm")."""
        fit = dict(d["fit"])
        maps = dict(d.get("maps", {}))
        engine = dict(d.get("engine", {}))
        if "smoothing_sigma" in fit:
            maps.setdefault("smoothing_sigma", fit.pop("smoothing_sigma"))
        if "chunk_size" in fit:
            engine.setdefault("chunk_size", fit.pop("chunk_size"))
        if fit.get("start") == "checkpoint":  # the name of "warm" before the `start` section existed
            fit["start"] = "warm"
        return Preset(
            name=d["name"],
            image_size=d["image_size"],
            unet=UNetConfig(**d["unet"]),
            fnet=FNetConfig(**d["fnet"]),
            fit=FitConfig(**fit),
            data=DataConfig(**d["data"]),
            maps=MapConfig(**maps),
            engine=EngineConfig(**engine),
            tiles=TileConfig(**d.get("tiles", {})),
            start=StartConfig(**d.get("start", {})),
        )


PAPER = Preset(
    name="paper",
    image_size=96,
    unet=UNetConfig(width=64, depth=4, norm="batch"),
    fnet=FNetConfig(arch="mobilenet_v2", alpha=0.5, method="l2softmax", alpha_l2=5.0, lr=1e-4,
                    batch_size=128, epochs=30),
    fit=FitConfig(steps=150, beta=50.0, optimizer="sgd", lr=1e-3, momentum=0.9),
    data=DataConfig(n_train=5000, n_reference_per_class=400, n_test_good=50, n_test_defect=100),
    maps=MapConfig(smoothing_sigma=0.0),
    engine=EngineConfig(chunk_size=16),
)

SMALL = Preset(
    name="small",
    image_size=64,
    unet=UNetConfig(width=16, depth=4, norm="batch"),
    # f-Net: an untrained MobileNetV2 (random features; epochs 0) with raw BatchNorm statistics, L_C
    # scale-free at beta 0.015: the best variant on the tuning families (benchmarks/results/
    # tune_anounet_small.md); the trained f-Net before it (4 epochs, beta 50 raw) did worse as L_C's
    # target (mean pixel AUROC 0.747 against 0.769 over the five tuning families)
    fnet=FNetConfig(arch="mobilenet_v2", alpha=0.5, method="l2softmax", alpha_l2=5.0, lr=1e-3,
                    batch_size=64, epochs=0),
    # fits: 10 steps from a Reptile warm start (100 outer steps of 8 images x 10 inner steps, trained
    # once with the f-Net) instead of 60 from a random U-Net: chosen on the tuning families, better
    # maps at a sixth of the steps (benchmarks/results/warm_start_small.md, issue 17)
    # L_C against each image's nearest-normal center (the mean feature of the 32 normal training images
    # nearest to f(x)) instead of one global C: chosen on the tuning families, +0.018 pixel AUROC + AUPRO
    # and the same image AUROC; the global C cost the fits 0.022 against no L_C in them at all
    # (benchmarks/results/lc_center_small.md)
    fit=FitConfig(steps=10, beta=0.015, optimizer="adam", lr=1e-2, lc_scale="normal", start="warm",
                  lc_center="nearest", lc_center_k=32),
    data=DataConfig(n_train=800, n_reference_per_class=100, n_test_good=20, n_test_defect=40),
    # maps: each map's absolute deviation from its median, the low side at half weight: chosen on the
    # six tuning sets (five synthetic families + the embedded bricks; pixel AUROC + AUPRO 1.721 against
    # 1.574 without a deviation) as the best that costs the real bricks no more than 0.02; a full low
    # side (1.743) costs them 0.033 (benchmarks/results/map_deviation_small.md)
    maps=MapConfig(smoothing_sigma=2.0, image_score="top1", deviation="absolute", deviation_low=0.5),
    engine=EngineConfig(chunk_size=16),
)

TINY = Preset(
    name="tiny",
    image_size=32,
    unet=UNetConfig(width=4, depth=2, norm="batch"),
    fnet=FNetConfig(arch="small_cnn", small_cnn_width=8, method="l2softmax", alpha_l2=5.0, lr=3e-3,
                    batch_size=32, epochs=2),
    fit=FitConfig(steps=30, beta=1.0, optimizer="adam", lr=1e-2),
    data=DataConfig(n_train=64, n_reference_per_class=16, n_test_good=4, n_test_defect=8),
    maps=MapConfig(smoothing_sigma=1.0),
    engine=EngineConfig(chunk_size=4),
)

PRESETS = {p.name: p for p in (PAPER, SMALL, TINY)}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise AnoUnetError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None

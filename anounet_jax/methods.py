"""Every method `anounet evaluate` compares, behind one interface, in one registry.

A method turns normal training images and test images into raw maps (not smoothed: the map step
smooths every method alike) and, where it has one, its own image score:

    out = METHODS["autoencoder"].run(MethodInputs(train, test_images, preset, seed=0))
    out.heatmap (N, H, W), out.score (N,) or None (then the preset's map score, maps.image_score, of
    the smoothed map is the score), out.diverged (N,)

Methods that need the f-Net (`needs_fnet`) get the job's one trained f-Net in `inputs.trained`: it is
trained once and shared. To add a method: write a `run` function and `register(Method(...))` it.

Tiled evaluation (jobs/evaluate.py) needs the two halves apart: `prepare(inputs)` trains once and
returns `maps(images, first_index, positions) -> MethodOutput` for any batch of tiles (first_index: the
global index of the batch's first tile, Ano-Unet's PRNG key for it, so results do not depend on
batching; positions: each tile's index k in its image's grid, which picks its center when
`inputs.tile_centers` holds one per position, fnet/tile_centers.py).
Every registered method has both; `run(inputs)` is `prepare(inputs)(inputs.test_images, 0)` in effect.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from anounet_jax.data.types import ImageSet
from anounet_jax.errors import AnoUnetError


@dataclasses.dataclass
class MethodInputs:
    train: ImageSet  # normal training images
    test_images: np.ndarray  # (N, H, W, 3)
    preset: object  # config.Preset
    baselines: object = None  # baselines.BaselineConfigs (None: baseline_config(preset.name))
    trained: object = None  # fnet.train.TrainedFNet, for methods that need the f-Net
    seed: int = 0
    progress: bool = False
    tile_centers: np.ndarray | None = None  # (n_tiles, D) C per tile position (tiles.center "position")


@dataclasses.dataclass
class MethodOutput:
    heatmap: np.ndarray  # (N, H, W) raw map
    score: np.ndarray | None  # (N,) the method's own image score, or None (the map's max)
    diverged: np.ndarray  # (N,) bool
    info: dict = dataclasses.field(default_factory=dict)  # e.g. the engine formulation
    # (N,) the f-Net's distance of each input to its C, mean|f(x) - C| (Ano-Unet only; tiled: its
    # maximum over an image's tiles is the f-Net image score)
    fnet_score: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    run: Callable[[MethodInputs], MethodOutput]
    image_score: str  # what its own image score is, for the tables
    needs_fnet: bool = False
    prepare: Callable[[MethodInputs], Callable] | None = None  # -> maps(images, first_index) (tiling)


METHODS: dict[str, Method] = {}
ALIASES = {"anounet": "ano-unet", "ano-u-net": "ano-unet", "docdecoder": "doc-decoder", "doc": "doc-decoder",
           "ae": "autoencoder", "patchcore": "feature-memory", "memory": "feature-memory"}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def parse_methods(methods) -> list[str]:
    """Method names from a list or a comma-separated string (None = all), in the given order, without
    repeats. Case, "_" for "-" and a few aliases ("anounet", "doc", "ae") are accepted."""
    if methods is None:
        return list(METHODS)
    if isinstance(methods, str):
        methods = methods.split(",")
    out = []
    for m in methods:
        key = str(m).strip().lower().replace("_", "-")
        if not key:
            continue
        key = ALIASES.get(key, key)
        if key not in METHODS:
            raise AnoUnetError(f"unknown method {str(m).strip()!r}; choose from {','.join(METHODS)}")
        if key not in out:
            out.append(key)
    if not out:
        raise AnoUnetError(f"no method given; choose from {','.join(METHODS)}")
    return out


def _configs(inputs: MethodInputs):
    from anounet_jax.baselines.configs import baseline_config

    return inputs.baselines or baseline_config(inputs.preset.name)


def _from_baseline(res) -> MethodOutput:
    return MethodOutput(res.heatmap, res.score, res.diverged)


def _ano_unet(inputs: MethodInputs) -> MethodOutput:
    from anounet_jax.engine.fit import Engine

    from anounet_jax.fnet.tile_centers import tile_distances

    engine = Engine.for_trained(inputs.preset, inputs.trained)
    res = engine.fit(inputs.test_images, seed=inputs.seed, progress=inputs.progress)
    fscore = tile_distances(inputs.trained.fnet, inputs.test_images, engine.row_centers(len(res.heatmap)))
    return MethodOutput(res.heatmap, None, res.diverged, {"engine_formulation": engine.formulation},
                        fnet_score=fscore)


def _autoencoder(inputs: MethodInputs) -> MethodOutput:
    from anounet_jax.baselines import autoencoder

    model = autoencoder.train(inputs.train, _configs(inputs).autoencoder, seed=inputs.seed,
                              progress=inputs.progress)
    return _from_baseline(model.score_maps(inputs.test_images))


def _doc_decoder(inputs: MethodInputs) -> MethodOutput:
    from anounet_jax.baselines import doc_decoder

    model = doc_decoder.train(inputs.train, inputs.trained.fnet, _configs(inputs).doc_decoder,
                              seed=inputs.seed, progress=inputs.progress)
    return _from_baseline(model.score_maps(inputs.test_images))


def _anogan(inputs: MethodInputs) -> MethodOutput:
    from anounet_jax.baselines import anogan

    model = anogan.train(inputs.train, _configs(inputs).anogan, seed=inputs.seed, progress=inputs.progress)
    return _from_baseline(model.score_maps(inputs.test_images, seed=inputs.seed, progress=inputs.progress))


def _feature_memory(inputs: MethodInputs) -> MethodOutput:
    from anounet_jax.baselines import feature_memory

    model = feature_memory.train(inputs.train, inputs.trained.fnet, inputs.preset.fnet,
                                 _configs(inputs).feature_memory, seed=inputs.seed, progress=inputs.progress)
    return _from_baseline(model.score_maps(inputs.test_images))


def _ano_unet_prepare(inputs: MethodInputs):
    from anounet_jax.engine.fit import Engine, FitResult
    from anounet_jax.fnet.tile_centers import tile_distances

    engine = Engine.for_trained(inputs.preset, inputs.trained)

    def maps(images, first_index: int = 0, positions=None) -> MethodOutput:
        images = np.asarray(images, np.float32)
        idx = np.arange(first_index, first_index + len(images), dtype=np.int64)
        centers = None
        if inputs.tile_centers is not None:
            if positions is None:
                raise AnoUnetError("per-position centers need each tile's position in its grid")
            centers = inputs.tile_centers[np.asarray(positions)]
        res = FitResult.concatenate([r for _, r in engine.iter_fit([(idx, images, centers)], inputs.seed)])
        fscore = tile_distances(inputs.trained.fnet, images, engine.row_centers(len(images), centers))
        return MethodOutput(res.heatmap, None, res.diverged, {"engine_formulation": engine.formulation},
                            fnet_score=fscore)

    return maps


def _baseline_prepare(train: Callable, **score_kw):
    def prepare(inputs: MethodInputs):
        model = train(inputs)

        def maps(images, first_index: int = 0, positions=None) -> MethodOutput:
            kw = {k: (inputs.seed if v == "seed" else v) for k, v in score_kw.items()}
            return _from_baseline(model.score_maps(images, **kw))

        return maps

    return prepare


def _train_autoencoder(inputs):
    from anounet_jax.baselines import autoencoder

    return autoencoder.train(inputs.train, _configs(inputs).autoencoder, seed=inputs.seed, progress=inputs.progress)


def _train_doc_decoder(inputs):
    from anounet_jax.baselines import doc_decoder

    return doc_decoder.train(inputs.train, inputs.trained.fnet, _configs(inputs).doc_decoder, seed=inputs.seed,
                             progress=inputs.progress)


def _train_anogan(inputs):
    from anounet_jax.baselines import anogan

    return anogan.train(inputs.train, _configs(inputs).anogan, seed=inputs.seed, progress=inputs.progress)


def _train_feature_memory(inputs):
    from anounet_jax.baselines import feature_memory

    return feature_memory.train(inputs.train, inputs.trained.fnet, inputs.preset.fnet,
                                _configs(inputs).feature_memory, seed=inputs.seed, progress=inputs.progress)


register(Method("ano-unet", _ano_unet, "the preset's score of the smoothed map (maps.image_score)",
                needs_fnet=True, prepare=_ano_unet_prepare))
register(Method("autoencoder", _autoencoder, "sum of the raw map",
                prepare=_baseline_prepare(_train_autoencoder)))
register(Method("doc-decoder", _doc_decoder, "sum of the raw map", needs_fnet=True,
                prepare=_baseline_prepare(_train_doc_decoder)))
register(Method("anogan", _anogan, "latent-search loss L(z*)",
                prepare=_baseline_prepare(_train_anogan, seed="seed", progress=False)))
register(Method("feature-memory", _feature_memory, "max nearest-neighbour patch distance", needs_fnet=True,
                prepare=_baseline_prepare(_train_feature_memory)))

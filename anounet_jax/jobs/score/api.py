"""`anounet_jax.score(...)`: the `anounet score` job as a function returning arrays instead of files.

    result = anounet_jax.score("photos/", "ckpt/", visualize="flagged")
    result.scores[result.flagged], result.heatmaps[result.flagged], result.status

Everything is held in memory (heatmaps and reconstructions for every row), so this is for sets that
fit in RAM; for large folders use the resumable CLI job (`anounet score`), which streams to disk.

Maps are at each image's native size (tiled, see jobs/score/model.py) unless the preset's
tiles.resize is set (`preset.replace(tiles={"resize": True})`: every image resized to the preset's
size, as before tiling).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from anounet_jax.errors import AnoUnetError

from anounet_jax.jobs.score.model import (STATUS_DIVERGED, STATUS_NOT_VISUALIZED, STATUS_OK, ScoringModel,
                                          check_visualize, is_failure, open_score_source)


@dataclasses.dataclass
class ScoreResult:
    """One entry per input image, in input order (N images of size H x W).

    scores: float32 (N,), NaN where the image could not be used. flagged: bool (N,), score > threshold.
    heatmaps: float32 (N, H, W) and recon: float32 (N, H, W, 3), NaN for rows without maps. H x W is
    each image's native size (tiled), or the preset's size with tiles.resize; when the images' sizes
    differ, heatmaps and recon are lists of (H_i, W_i) and (H_i, W_i, 3) arrays instead.
    loss_r, loss_c: float32 (N,), the fit's final L_R and L_C (tiled: the means over the image's
    tiles), NaN for rows that were not fitted.
    status: "ok", "not visualized", "diverged" (tiled: "diverged: k of n tiles (...)" when only some
    tiles did), or the problem with the file. ids: file ids (paths relative to the folder) or
    "000000", ... for arrays.
    """

    ids: list[str]
    scores: np.ndarray
    flagged: np.ndarray
    heatmaps: np.ndarray | list
    recon: np.ndarray | list
    loss_r: np.ndarray
    loss_c: np.ndarray
    status: list[str]
    threshold: float

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def failed(self) -> np.ndarray:
        """bool (N,): unreadable images and diverged fits."""
        return np.array([is_failure(s) for s in self.status], bool)


def score(images_or_folder, checkpoint, preset=None, visualize: str = "flagged", *,
          threshold: float | None = None, seed: int = 0, chunk_size: int = 32, formulation: str | None = None,
          recursive: bool = False, progress: bool = False) -> ScoreResult:
    """Image scores for every image and Ano-Unet maps for all / the flagged / none of them.

    images_or_folder: float32 (N, H, W, 3) in [0, 1] (or uint8), or a list of (H, W, 3) arrays of any
      sizes (tiled; with tiles.resize only arrays at the checkpoint's image size), an ImageSet, a
      folder of image files of any sizes (unreadable files get their problem as status and NaN
      scores), or "embedded" (the preset's embedded test set). Scores always come from the images
      resized to the checkpoint's image size.
    checkpoint: a path written by `anounet train-fnet` / `save_checkpoint`, or a loaded Checkpoint.
    preset: None (the checkpoint's preset), a name or a Preset: chooses the U-Net and the per-image
      fit (it must have the checkpoint's image size). threshold: overrides the checkpoint scorer's.
    formulation: the engine's (None: the preset's engine.formulation; "measure" times the candidates).
    """
    check_visualize(visualize)
    model = ScoringModel(checkpoint, preset, threshold=threshold, seed=seed, formulation=formulation)
    if int(chunk_size) <= 0:
        raise AnoUnetError(f"chunk size must be positive, got {chunk_size}")
    source, natives = open_score_source(images_or_folder, model, recursive)
    if natives is not None:
        return _score_tiled(model, source, natives, visualize, chunk_size, progress)
    n, s = len(source), model.image_size
    scores = np.full(n, np.nan, np.float32)
    flagged = np.zeros(n, bool)
    heat = np.full((n, s, s), np.nan, np.float32)
    recon = np.full((n, s, s, 3), np.nan, np.float32)
    l_r = np.full(n, np.nan, np.float32)
    l_c = np.full(n, np.nan, np.float32)
    status = [STATUS_NOT_VISUALIZED] * n
    for idx, out in _scored_chunks(source, chunk_size, progress, scores, flagged, status,
                                   lambda chunk: model.process(chunk.images, chunk.indices, visualize)):
        if out.fit is not None:
            rows = idx[out.fitted]
            heat[rows], recon[rows] = out.fit.heatmap, out.fit.recon
            l_r[rows], l_c[rows] = out.fit.loss_r, out.fit.loss_c
            for r, d in zip(rows.tolist(), out.fit.diverged.tolist()):
                status[r] = STATUS_DIVERGED if d else STATUS_OK
    return ScoreResult(ids=list(source.ids), scores=scores, flagged=flagged, heatmaps=heat, recon=recon,
                       loss_r=l_r, loss_c=l_c, status=status, threshold=model.threshold)


def _scored_chunks(source, chunk_size, progress, scores, flagged, status, score_chunk):
    """Every chunk of `source` scored by `score_chunk(chunk)`: fills scores, flags and the problems of
    unreadable or unusable images in place and yields (indices, outcome) for the maps."""
    from tqdm.auto import tqdm

    n = len(source)
    with tqdm(total=n, unit="img", desc="score", disable=not progress) as bar:
        for lo in range(0, n, chunk_size):
            hi = min(lo + chunk_size, n)
            chunk = source.chunk(lo, hi)
            for pos, problem in chunk.errors.items():
                status[pos] = problem
            out = score_chunk(chunk)
            idx = np.asarray(chunk.indices)
            scores[idx], flagged[idx] = out.scores, out.flagged
            for j, problem in enumerate(out.problems):
                if problem is not None:
                    status[idx[j]] = problem
            yield idx, out
            bar.update(hi - lo)


def _score_tiled(model, source, natives, visualize, chunk_size, progress) -> ScoreResult:
    """`score` with maps at each image's native size (see jobs/score/model.py)."""
    from anounet_jax.data.tiling import tile_offsets

    n = len(source)
    sizes = [natives.size(i) for i in range(n)]
    offsets = tile_offsets(sizes, model.tiles) if visualize != "none" else None
    scores = np.full(n, np.nan, np.float32)
    flagged = np.zeros(n, bool)
    heat, recon = [None] * n, [None] * n
    l_r = np.full(n, np.nan, np.float32)
    l_c = np.full(n, np.nan, np.float32)
    status = [STATUS_NOT_VISUALIZED] * n
    for idx, out in _scored_chunks(source, chunk_size, progress, scores, flagged, status,
                                   lambda chunk: model.score(chunk.images, visualize)):
        def items(idx=idx, out=out):
            for j in out.fitted.tolist():
                pos = int(idx[j])
                try:
                    native = natives.load(pos)
                except AnoUnetError as e:
                    status[pos] = e.problem
                    continue
                yield model.tiled_image(pos, native, int(offsets[pos]))

        if len(out.fitted):
            for m in model.fit_tiled(items()):
                heat[m.key], recon[m.key] = m.heatmap, m.recon
                l_r[m.key], l_c[m.key], status[m.key] = m.loss_r, m.loss_c, m.status
    known = {hw for hw in sizes if hw is not None}
    for i in range(n):  # rows without maps: NaN at the image's size (the common size if unknown)
        hw = sizes[i] or (next(iter(known)) if len(known) == 1 else (0, 0))
        if heat[i] is None:
            heat[i] = np.full(hw, np.nan, np.float32)
        if recon[i] is None:
            recon[i] = np.full((*hw, 3), np.nan, np.float32)
    if len({h.shape for h in heat}) <= 1:
        heat = np.stack(heat) if n else np.zeros((0, model.image_size, model.image_size), np.float32)
        recon = np.stack(recon) if n else np.zeros((0, model.image_size, model.image_size, 3), np.float32)
    return ScoreResult(ids=list(source.ids), scores=scores, flagged=flagged, heatmaps=heat, recon=recon,
                       loss_r=l_r, loss_c=l_c, status=status, threshold=model.threshold)

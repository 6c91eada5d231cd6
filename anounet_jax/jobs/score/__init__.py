"""Bulk scoring: f-Net image scores for every image, Ano-Unet maps for all or only the flagged ones.

    model.py     checkpoint + preset -> per-chunk scores, flags and fitted maps (shared by both below)
    job.py       the resumable `anounet score` job: part files per chunk, manifest, scores.csv, maps
    report.py    the static, paginated report.html
    api.py       `anounet_jax.score(...)` -> ScoreResult (arrays instead of files)
    files.py     output files written atomically, with bytes that depend only on their content
"""

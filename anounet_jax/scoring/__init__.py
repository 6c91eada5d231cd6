"""Bulk scoring: f-Net image scores for every image, Ano-Unet maps for all or only the flagged ones.

    core.py      checkpoint + preset -> per-chunk scores, flags and fitted maps (shared by both below)
    job.py       the resumable `anounet score` job: part files per chunk, manifest, scores.csv, maps
    report.py    the static, paginated report.html
    api.py       `anounet_jax.score(...)` -> ScoreResult (arrays instead of files)
    train.py     `anounet train-fnet`: f-Net + C + image scorer -> one checkpoint
    commands.py  the argparse side of both commands (imports nothing heavy)

Nothing heavy is imported here: `anounet --help` and `import anounet_jax` stay fast.
"""

"""Thin orchestration of the stages, one module per command: demo, evaluate, experiments (the paper's
two), train_fnet, score (the resumable bulk job, its report and the `anounet_jax.score` API)."""

"""Sampling: the jitted sampler over a run's EMA parameters, `--mode=sample`, and sample grids as PNG."""

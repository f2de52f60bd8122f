"""ntm_jax: Normalizing Trajectory Models in JAX/Flax (NNX), exact trajectory likelihood, few-step sampling."""

__version__ = "0.1.0"

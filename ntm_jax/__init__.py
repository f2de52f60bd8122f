"""ntm_jax: Normalizing Trajectory Models in JAX/Flax (NNX), exact trajectory likelihood, few-step sampling."""

__version__ = "0.1.0"


def load(path: str, checkpoint: str = "best"):
  """A trained run as an `ntm_jax.api.Model` (sample, bits_per_dim, trajectory_log_prob); see ntm_jax/api.py.
  `checkpoint` is "best" (the best validation step) or "latest".

  Imported on first use: `python -m ntm_jax.main` must not pay for jax before parsing its flags.
  """
  from ntm_jax import api  # pylint: disable=import-outside-toplevel
  return api.load(path, checkpoint)

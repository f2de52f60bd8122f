"""Flax NNX modules of ntm_jax: layers, the TarFlow transporter, the trajectory predictor, NTM, baselines."""

from flax import nnx

from ntm_jax.models.config import ModelConfig, model_config_from_dict
from ntm_jax.models.ntm import NTM
from ntm_jax.models.tarflow_baseline import TarFlowBaseline


def build_model(cfg: ModelConfig, *, rngs: nnx.Rngs):
  """NTM (and the `gaussian` baseline, which is NTM with no transporter blocks) or the TarFlow baseline."""
  return NTM(cfg, rngs=rngs) if cfg.kind == "ntm" else TarFlowBaseline(cfg, rngs=rngs)


__all__ = ["ModelConfig", "NTM", "TarFlowBaseline", "build_model", "model_config_from_dict"]

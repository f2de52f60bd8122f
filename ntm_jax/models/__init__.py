"""Flax NNX modules of ntm_jax: layers, the TarFlow transporter, the trajectory predictor, NTM, baselines,
and the flow-matching model."""

from flax import nnx

from ntm_jax.models.config import ModelConfig, model_config_from_dict
from ntm_jax.models.flow_matching import FlowMatching
from ntm_jax.models.ntm import NTM
from ntm_jax.models.tarflow_baseline import TarFlowBaseline


def build_model(cfg: ModelConfig, *, rngs: nnx.Rngs):
  """NTM (and the `gaussian` baseline, which is NTM with no transporter blocks), the TarFlow baseline, or
  the flow-matching model that can seed an NTM (D9)."""
  builders = {"ntm": NTM, "tarflow": TarFlowBaseline, "flow_matching": FlowMatching}
  return builders[cfg.kind](cfg, rngs=rngs)


__all__ = ["FlowMatching", "ModelConfig", "NTM", "TarFlowBaseline", "build_model", "model_config_from_dict"]

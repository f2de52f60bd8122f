"""Flax NNX modules of ntm_jax and their maths: one interface (ntm_jax.models.generative) for NTM, the
plain TarFlow baseline and flow matching; the shared layers, Transformer stack, transporter and predictor.

Nothing here imports the rest of ntm_jax: models name logical axes only (ntm_jax.models.logical_axes) and
whoever runs them installs the sharding rules.
"""

import jax
from flax import nnx

from ntm_jax.models.config import ModelConfig, model_config_from_dict
from ntm_jax.models.flow_matching import FlowMatching
from ntm_jax.models.generative import GenerativeModel
from ntm_jax.models.ntm import NTM
from ntm_jax.models.tarflow import TarFlow
from ntm_jax.models.transporter import INVERSION_METHODS, JACOBI_TOLERANCE

_MODEL_CLASSES = {"ntm": NTM, "tarflow": TarFlow, "flow_matching": FlowMatching}


def model_class(cfg: ModelConfig) -> type[GenerativeModel]:
  """NTM (and the `gaussian` baseline, which is NTM with no transporter blocks), the TarFlow baseline, or
  the flow-matching model that can seed an NTM (D9)."""
  return _MODEL_CLASSES[cfg.kind]


def build_model(cfg: ModelConfig, *, rngs: nnx.Rngs) -> GenerativeModel:
  return model_class(cfg)(cfg, rngs=rngs)


def abstract_model(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, parameters as ShapeDtypeStructs with their logical axes): a model's shapes, nothing allocated."""
  return nnx.split(nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0))))


def count_parameters(cfg: ModelConfig) -> int:
  """Number of parameters, without allocating them (the pod presets have billions)."""
  return int(sum(x.size for x in jax.tree.leaves(abstract_model(cfg)[1])))


__all__ = ["INVERSION_METHODS", "JACOBI_TOLERANCE", "FlowMatching", "GenerativeModel", "ModelConfig", "NTM",
           "TarFlow", "abstract_model", "build_model",
           "count_parameters", "model_class", "model_config_from_dict"]

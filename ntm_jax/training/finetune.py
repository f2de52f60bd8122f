"""Fine-tuning an NTM from a flow-matching run (`config.init_from`, D9, NTM.md C.8): the teacher run.

The maths (the parameter mapping, the mean alignment and its schedule) is in
ntm_jax.models.flow_matching_init; here the run is read, checked against the NTM's config, and its EMA
parameters restored as the frozen teacher the train step takes as a fourth argument.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import ml_collections
from flax import nnx

from ntm_jax import models
from ntm_jax.models import flow_matching_init
from ntm_jax.models.config import ModelConfig
from ntm_jax.parallel import checkpoint
from ntm_jax.parallel import mesh as mesh_lib


@dataclasses.dataclass
class Teacher:
  """A trained flow-matching run: its workdir, config, graphdef, the schedule of the mean alignment, and
  (once restored) its EMA parameters and step."""

  workdir: str
  config: ml_collections.ConfigDict
  graphdef: nnx.GraphDef
  abstract_params: object          # ShapeDtypeStructs with their shardings (what a compile needs)
  alignment: tuple[float, int]     # (lambda_0, anneal steps)
  params: nnx.State | None = None
  step: int | None = None

  def with_params(self, which: str, mesh) -> Teacher:
    """This teacher with the EMA parameters of its `which` checkpoint, sharded over `mesh`."""
    _, params, step, _ = checkpoint.restore_params(self.config, self.workdir, which, mesh)
    return dataclasses.replace(self, params=params, step=step)

  def alignment_loss(self, step, parts: dict, condition, params) -> tuple[jax.Array, jax.Array]:
    """(lambda(step), mean (mu_P - sg[mu_FM])^2) for the NTM loss parts of a train step."""
    teacher = nnx.merge(self.graphdef, params)
    return (flow_matching_init.alignment_weight(step, *self.alignment),
            flow_matching_init.mean_alignment_loss(teacher, parts, condition))


def read_teacher(config: ml_collections.ConfigDict, model_cfg: ModelConfig, mesh) -> Teacher | None:
  """The flow-matching run of `config.init_from.workdir`, checked to seed this NTM; None without init_from.
  Its parameters are restored by the train loop (a compile needs only their shapes)."""
  init_from = config.get("init_from")
  if not init_from or not init_from.workdir:
    return None
  workdir = os.path.abspath(init_from.workdir)
  run_config = checkpoint.read_run_config(workdir, "the workdir of a flow-matching run (python -m ntm_jax.main "
                                          "--config=configs/flow_matching.py ...), as init_from.workdir must be")
  run_cfg = models.model_config_from_dict(run_config.model)
  flow_matching_init.check_compatible(model_cfg, run_cfg, f"init_from.workdir {init_from.workdir!r}")
  graphdef, abstract = models.abstract_model(run_cfg)
  abstract = mesh_lib.with_shardings(abstract, mesh_lib.param_shardings(abstract, mesh))
  anneal_steps = init_from.alignment_anneal_steps or config.train.num_steps
  return Teacher(workdir, run_config, graphdef, abstract,
                 (float(init_from.alignment_weight), int(anneal_steps)))

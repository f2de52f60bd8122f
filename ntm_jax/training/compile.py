"""`--mode=compile`: the train step and the sampler compiled ahead of time for `config.compile.topology`.

The mesh of `config.mesh` is laid over the topology's chips (ntm_jax.parallel.compile gives the devices
and the per-chip report), and both programs are lowered from abstract arguments only: no parameter is
ever allocated, so a 4 B-parameter preset compiles on a laptop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from ntm_jax import latents, models
from ntm_jax.models import attention
from ntm_jax.parallel import compile as compile_lib
from ntm_jax.parallel import mesh as mesh_lib
from ntm_jax.sampling import sampler
from ntm_jax.training import train


def _condition_structs(config, condition_kind: str, batch_size: int, sharding) -> dict:
  """Abstract condition features of `batch_size` examples, as a data batch holds them."""
  if condition_kind == "label":
    return {"label": jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=sharding)}
  if condition_kind != "text":
    return {}
  tokens, dim = config.text.max_tokens, config.text.dim
  return {"text_tokens": jax.ShapeDtypeStruct((batch_size, tokens, dim), jnp.float32, sharding=sharding),
          "text_mask": jax.ShapeDtypeStruct((batch_size, tokens), jnp.bool_, sharding=sharding),
          "text_pooled": jax.ShapeDtypeStruct((batch_size, dim), jnp.float32, sharding=sharding)}


def compile_for_topology(config: ml_collections.ConfigDict) -> dict:
  """Compiles the train step and the sampler for `config.compile.topology`; returns the per-chip report."""
  spec = config.compile
  devices = compile_lib.topology_devices(spec.topology, spec.num_slices)
  mesh = mesh_lib.make_mesh(config.mesh.to_dict(), devices)
  # A latent preset's step only adds the latent noise: no autoencoder is needed to compile it.
  setup = train.build_training(config, mesh, initialise=False, space=latents.space_of(config, load=False))
  condition_kind = setup.model_cfg.condition_kind
  image = setup.model_cfg.image
  batch_size = config.data.batch_size
  batch_sharding = NamedSharding(mesh, mesh_lib.logical_to_spec(("batch",), (batch_size,), mesh))
  batch = {"image": jax.ShapeDtypeStruct((batch_size, image.height, image.width, image.channels), jnp.int32,
                                         sharding=batch_sharding)}
  batch.update(_condition_structs(config, condition_kind, batch_size, batch_sharding))
  replicated = NamedSharding(mesh, PartitionSpec())
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
  num_samples = spec.sample_batch_size or batch_size
  # The sampler takes the condition itself: None, the label array, or the text features' dict.
  structs = _condition_structs(config, condition_kind, num_samples, replicated)
  condition = {"none": None, "label": structs.get("label"), "text": structs}[condition_kind]
  sample_fn = sampler.make_sample_fn(setup.graphdef, num_samples, out_sharding=replicated)
  # Model FLOPs from the architecture (the model's methods read its config only: no parameter is allocated).
  model = nnx.merge(*models.abstract_model(setup.model_cfg))
  chips = len(devices)
  programs = [
      ("train step", lambda: setup.step_fn.lower(setup.abstract_state, batch, key, *setup.step_arguments),
       batch_size * model.train_flops() / chips, not setup.model_cfg.scan_layers, True),
      (f"sampler ({num_samples} images)", lambda: sample_fn.lower(setup.abstract_state["ema"], key, condition),
       num_samples * model.sample_flops() / chips, False, False),  # the inversion is a loop
  ][:2 if spec.get("sampler", True) else 1]
  with mesh_lib.use(mesh):
    rows = compile_lib.compile_programs(programs, spec.topology, mesh)
    implementation = attention.resolve(setup.model_cfg.predictor.attention)  # what "auto" is on the topology
  return {"topology": spec.topology, "num_slices": spec.num_slices, "chips": len(devices), "mesh": dict(mesh.shape),
          "attention": implementation,
          "parameters": setup.num_params, "batch_size": batch_size, "scan_layers": setup.model_cfg.scan_layers,
          "programs": rows}

"""Held-out bits per dimension over a full split (NTM.md D7, D.2), and `--mode=eval`; for a latent model,
nats per latent dimension instead (ntm_jax.latents.space).

Every model gives lower bounds on log p(x_0 | y) per image through the one interface
(`GenerativeModel.log_likelihood`): for NTM and flow matching, with the forward chain as the variational
posterior (t_0 = 0, so x_{t_0} is the dequantised image),
  ELBO = E_q[log p(X)] + H[q(x_{1:T} | x_0)],  H = sum_k (D / 2) log(2 pi e v_k)  (exact),
  IW_M = log (1 / M) sum_m p(X_m) / q(X_m | x_0)  (importance-weighted; IW_1 is the single-sample ELBO,
  and IW_M tightens as M grows);
for the plain TarFlow both are its exact log p(x). BPD = (-bound + D ln(K / 2)) / (D ln 2) per image, with
one dequantisation draw per image; the table reports the mean over the split and its standard error.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from ntm_jax import data, latents
from ntm_jax.models import conditioning
from ntm_jax.models.config import ModelConfig
from ntm_jax.parallel import checkpoint
from ntm_jax.parallel import mesh as mesh_lib


def make_bound_fn(graphdef, space: latents.PixelSpace, importance_samples: int, mesh=None):
  """A jitted fn(params, stored images, condition, key) -> {"elbo": [B], "iw": [B]} in nats; `space` turns the
  stored examples into model inputs (dequantised pixels, or noise-augmented latents).

  On a `mesh` the results are replicated, so every process of a multi-host job can read them.
  """
  if importance_samples < 1:
    raise ValueError(f"eval.importance_samples must be >= 1, got {importance_samples}")

  def bounds(params, stored, condition, key):
    dequant_key, bound_key = jax.random.split(key)
    images = space.to_model(stored, dequant_key)
    return nnx.merge(graphdef, params).log_likelihood(bound_key, images, condition,
                                                       importance_samples=importance_samples)

  replicated = NamedSharding(mesh, PartitionSpec()) if mesh is not None else None
  return jax.jit(bounds, out_shardings=replicated)


def evaluate_bits_per_dim(graphdef, params, cfg: ModelConfig, source: data.DataSource, *,
                          space: latents.PixelSpace, batch_size: int, importance_samples: int = 1, seed: int = 0,
                          bound_fn=None, mesh=None) -> dict[str, float]:
  """Mean bits/dim (ELBO and importance-weighted; nats per latent dim in a latent space) with standard errors
  over every example of `source`.

  On a `mesh` (training), each batch enters as a global array: every process reads the same batch, and
  the model's batch constraints spread the work over the devices.
  """
  bound_fn = bound_fn or make_bound_fn(graphdef, space, importance_samples, mesh)
  if mesh is not None:
    replicated = NamedSharding(mesh, PartitionSpec())
    to_device = lambda x: jax.make_array_from_process_local_data(replicated, x)
  else:
    to_device = jnp.asarray
  per_image = {"elbo": [], "iw": []}
  base_key = jax.random.key(seed)
  for index, batch in enumerate(data.eval_batches(source, batch_size)):
    condition = conditioning.from_batch(batch, cfg.condition_kind)
    condition = jax.tree.map(to_device, condition) if condition is not None else None
    out = bound_fn(params, to_device(batch["image"]), condition, jax.random.fold_in(base_key, index))
    real = batch["mask"] > 0
    for name in per_image:
      per_image[name].append(np.asarray(jax.device_get(out[name]), np.float64)[real])
  results = {"num_examples": int(sum(len(x) for x in per_image["elbo"]))}
  if results["num_examples"] != source.num_examples:
    raise RuntimeError(f"evaluated {results['num_examples']} of {source.num_examples} examples")
  results.update(space.likelihood_results({k: np.concatenate(v) for k, v in per_image.items()}, cfg.image.num_dims))
  results["num_steps_T"] = cfg.num_steps
  results["importance_samples"] = importance_samples
  return results


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, split: str = "test",
                        which: str = "best") -> dict:
  """--mode=eval: bits/dim (nats per latent dim for a latent model) over the full `split` of the EMA parameters
  of the `best` (by validation) or `latest` step; also written to WORKDIR/eval_<split>.json."""
  space = latents.space_of(config)
  mesh = mesh_lib.make_mesh(config.mesh.to_dict())
  graphdef, params, step, model_cfg = checkpoint.restore_params(config, workdir, which, mesh)
  source = space.load_split(config, split, model_cfg)
  with mesh_lib.use(mesh):
    results = evaluate_bits_per_dim(
        graphdef, params, model_cfg, source, space=space,
        batch_size=config.eval.batch_size, importance_samples=config.eval.importance_samples, seed=config.seed,
        mesh=mesh)
  results.update(step=step, split=split, checkpoint=which, unit=space.unit, metric_prefix=space.metric_prefix)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, f"eval_{split}.json"), "w") as f:
      json.dump(results, f, indent=2)
  return results

"""Held-out bits per dimension over a full split (NTM.md D7, D.2).

NTM gives log p(X) of whole trajectories exactly; the marginal log p(x_0) is bounded with the forward chain
as the variational posterior (t_0 = 0, so x_{t_0} is the dequantised image):
  ELBO = E_q[log p(X)] + H[q(x_{1:T} | x_0)],  H = sum_k (D / 2) log(2 pi e v_k)  (exact),
  IW_M = log (1 / M) sum_m p(X_m) / q(X_m | x_0)  (importance-weighted; IW_1 is the single-sample ELBO,
  and IW_M tightens as M grows).
The plain TarFlow baseline has an exact log p(x); both of its bounds are that value. A flow-matching model
is bounded the same way through its ancestral Gaussian chain (ntm_jax.models.flow_matching).
BPD = (-bound + D ln(K / 2)) / (D ln 2) per image, with one dequantisation draw per image; the table
reports the mean over the split and its standard error.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from ntm_jax import bits, conditioning, data, trajectory
from ntm_jax.models import patches
from ntm_jax.models.config import ModelConfig


def make_bound_fn(graphdef, cfg: ModelConfig, num_levels: int, importance_samples: int, mesh=None):
  """A jitted fn(params, images_int, labels, key) -> {"elbo": [B], "iw": [B]} in nats.

  On a `mesh` the results are replicated, so every process of a multi-host job can read them.
  """
  if importance_samples < 1:
    raise ValueError(f"eval.importance_samples must be >= 1, got {importance_samples}")
  image = cfg.image

  def bounds(params, images_int, labels, key):
    model = nnx.merge(graphdef, params)
    dequant_key, trajectory_key = jax.random.split(key)
    x0 = patches.patchify(bits.dequantize(images_int, dequant_key, num_levels), image.patch_size)
    if cfg.kind == "tarflow":
      log_p = -model.log_prob(x0, labels)["nll"]
      return {"elbo": log_p, "iw": log_p}
    times = model.time_grid(dtype=x0.dtype)

    def one_sample(key):
      x = trajectory.sample_trajectory(key, x0, times)
      return -model.trajectory_log_prob(x, times, labels)["nll"], trajectory.log_q_trajectory(x, times)

    log_p, log_q = jax.lax.map(one_sample, jax.random.split(trajectory_key, importance_samples))  # [M, B]
    elbo = jnp.mean(log_p, axis=0) + trajectory.forward_entropy(times, image.num_dims)
    iw = jax.scipy.special.logsumexp(log_p - log_q, axis=0) - math.log(importance_samples)
    return {"elbo": elbo, "iw": iw}

  replicated = NamedSharding(mesh, PartitionSpec()) if mesh is not None else None
  return jax.jit(bounds, out_shardings=replicated)


def evaluate_bits_per_dim(graphdef, params, cfg: ModelConfig, source: data.DataSource, *, num_levels: int,
                          batch_size: int, importance_samples: int = 1, seed: int = 0,
                          bound_fn=None, mesh=None) -> dict[str, float]:
  """Mean bits/dim (ELBO and importance-weighted) with standard errors over every example of `source`.

  On a `mesh` (training), each batch enters as a global array: every process reads the same batch, and
  the model's batch constraints spread the work over the devices.
  """
  bound_fn = bound_fn or make_bound_fn(graphdef, cfg, num_levels, importance_samples, mesh)
  if mesh is not None:
    replicated = NamedSharding(mesh, PartitionSpec())
    to_device = lambda x: jax.make_array_from_process_local_data(replicated, x)
  else:
    to_device = jnp.asarray
  condition_kind = cfg.condition_kind
  per_image = {"elbo": [], "iw": []}
  base_key = jax.random.key(seed)
  for index, batch in enumerate(data.eval_batches(source, batch_size)):
    condition = conditioning.from_batch(batch, condition_kind)
    labels = jax.tree.map(to_device, condition) if condition is not None else None
    out = bound_fn(params, to_device(batch["image"]), labels, jax.random.fold_in(base_key, index))
    real = batch["mask"] > 0
    for name in per_image:
      per_image[name].append(np.asarray(jax.device_get(out[name]), np.float64)[real])
  results = {"num_examples": int(sum(len(x) for x in per_image["elbo"]))}
  if results["num_examples"] != source.num_examples:
    raise RuntimeError(f"evaluated {results['num_examples']} of {source.num_examples} examples")
  for name, values in per_image.items():
    bpd = bits.bits_per_dim(-np.concatenate(values), cfg.image.num_dims, num_levels)
    results[f"bpd_{name}"] = float(np.mean(bpd))
    results[f"bpd_{name}_se"] = float(np.std(bpd, ddof=1) / math.sqrt(len(bpd)))
  results["num_steps_T"] = cfg.grid.num_steps if cfg.kind != "tarflow" else 0
  results["importance_samples"] = importance_samples
  return results

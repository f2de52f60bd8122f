"""An NTM initialised from a flow-matching run, and the mean-alignment loss that anchors it (D9, NTM.md C.8).

At step 0 the NTM *is* the flow-matching model used as an ancestral sampler:
- f_T = identity: its output projections start at zero (D3), so u = x and every log-det is 0;
- the predictor gets the velocity network's weights, so mu_P = c_x u_t + c_0 (u_t - t v) and, with the
  delta head at zero, sigma_P = sbar: the flow-matching model's Gaussian posterior (C.3).
The one weight that changes: the flow-matching network reads the time pair (t, t) and the NTM predictor
(t, s), so the time embedding's hidden layer gets W_t + W_s on the t features and zero on the s features,
the same function of t at step 0, with s free to matter as fine-tuning goes on.

Fine-tuning adds lambda(step) * mean (mu_P - sg[mu_FM])^2 over the predicted levels (u-space against the
frozen teacher's posterior mean from x_t; the two spaces coincide while f_T is near the identity), with
lambda cosine-annealed from `alignment_weight` (2.5) to 0.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from ntm_jax.models.config import ModelConfig


def check_compatible(ntm_cfg: ModelConfig, fm_cfg: ModelConfig, where: str = "init_from.workdir") -> None:
  """Raises ValueError naming the setting that stops `ntm_cfg` from starting as the flow-matching model
  `fm_cfg` (the one in `where`)."""
  if fm_cfg.kind != "flow_matching":
    raise ValueError(f"{where} holds a {fm_cfg.kind!r} run, not a flow_matching one")
  if ntm_cfg.kind != "ntm":
    raise ValueError(f"init_from builds an NTM, but model.kind is {ntm_cfg.kind!r}")
  if not ntm_cfg.predictor.markov:
    raise ValueError("init_from needs model.predictor.markov=True: the flow-matching network sees x_t only, so "
                     "a predictor that attends to noisier levels would not start as it")
  if ntm_cfg.predictor.prediction != "velocity":
    raise ValueError("init_from needs model.predictor.prediction='velocity' (h = u_t - t v)")
  if ntm_cfg.image != fm_cfg.image:
    raise ValueError(f"model.image {ntm_cfg.image} differs from the flow-matching model's {fm_cfg.image}")
  differing = [f.name for f in dataclasses.fields(ntm_cfg.predictor)
               if f.name not in ("markov", "dropout", "remat")
               and getattr(ntm_cfg.predictor, f.name) != getattr(fm_cfg.predictor, f.name)]
  if differing:
    raise ValueError(f"model.predictor differs from the flow-matching model's in {differing}: "
                     f"{ntm_cfg.predictor} against {fm_cfg.predictor}")


def ntm_params_from_flow_matching(ntm_graphdef, ntm_params, fm_graphdef, fm_params) -> nnx.State:
  """NTM parameters (new buffers) whose predictor is the flow-matching network (see the module docstring);
  the transporter keeps `ntm_params`' (freshly initialised: the identity)."""
  ntm = nnx.merge(ntm_graphdef, ntm_params)
  fm = nnx.merge(fm_graphdef, fm_params)
  if any(jnp.any(block.network.output_projection.kernel[...] != 0) for block in ntm.transporter.blocks):
    raise ValueError("the NTM's transporter is not the identity: init_from needs a freshly initialised NTM")
  nnx.update(ntm.predictor, nnx.state(fm.predictor, nnx.Param))
  hidden = ntm.predictor.level_embedding.hidden
  w_t, w_s = jnp.split(hidden.kernel[...], 2, axis=0)
  hidden.kernel[...] = jnp.concatenate([w_t + w_s, jnp.zeros_like(w_s)], axis=0)
  head = ntm.predictor.network.output_projection
  token_dim = head.kernel.shape[1] // 2
  head.kernel[...] = head.kernel[...].at[:, token_dim:].set(0.0)  # delta = 0: sigma_P = sbar
  head.bias[...] = head.bias[...].at[token_dim:].set(0.0)
  # Own buffers: training donates the NTM's parameters, and the teacher keeps using its own.
  return jax.tree.map(jnp.copy, nnx.state(ntm, nnx.Param))


def alignment_weight(step, initial: float, anneal_steps: int):
  """lambda(step) = initial (1 + cos(pi min(step / anneal_steps, 1))) / 2: from `initial` down to 0."""
  progress = jnp.minimum(step / max(anneal_steps, 1), 1.0)
  return initial * 0.5 * (1.0 + jnp.cos(math.pi * progress))


def mean_alignment_loss(teacher, parts: dict, condition) -> jax.Array:
  """mean (mu_P - sg[mu_FM])^2 over the levels `parts` predicts (from NTM.loss: mu, conditioning_x, times)."""
  mu_teacher, _ = teacher.posterior(parts["conditioning_x"], parts["times"], condition)
  return jnp.mean(jnp.square(parts["mu"] - jax.lax.stop_gradient(mu_teacher)))

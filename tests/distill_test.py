"""Denoiser distillation (C.12): a light denoiser learns f_T^-1 from the NTM's own samples alone."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from ntm_jax.training import distill
from ntm_jax.models.denoiser import Denoiser, DenoiserConfig
from tests import helpers


def test_distilled_denoiser_beats_the_identity_on_fresh_samples():
  # A float32 NTM whose transporter is far from the identity, so u_0 -> x_0 is a real map to learn.
  model = helpers.randomize(helpers.tiny_model(0, scale=0.0, num_steps=2, dtype=jnp.float32), seed=3, scale=0.5)
  graphdef, params = nnx.split(model)
  image = model.cfg.image
  denoiser = Denoiser(DenoiserConfig(depth=1, width=32, head_dim=16), image.num_tokens, image.token_dim,
                      rngs=nnx.Rngs(0))
  optimizer = optax.adam(3e-3)
  den_graphdef, state = distill.initial_state(denoiser, optimizer)
  teacher = functools.partial(distill.teacher_batch, batch_size=64, num_classes=0, target="inverse",
                              temperature=1.0)
  step_fn, held_out_errors = distill.make_step_fns(graphdef, den_graphdef, optimizer, teacher)
  before = held_out_errors(state["params"], params, jax.random.key(99))
  np.testing.assert_allclose(before["mse"], before["identity_mse"], rtol=1e-6)  # zero head: the identity
  assert float(before["identity_mse"]) > 1e-3
  for step in range(300):
    state, _ = step_fn(state, params, jax.random.key(step))
  after = held_out_errors(state["params"], params, jax.random.key(99))  # samples never trained on
  assert float(after["mse"]) < 0.3 * float(after["identity_mse"])


def test_unknown_target_is_named():
  config = ml_collections.ConfigDict({"distill": {"target": "sharpened"}})
  with np.testing.assert_raises_regex(ValueError, "distill.target must be one of"):
    distill.distill(config, "/nonexistent")

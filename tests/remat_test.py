"""Rematerialisation (`transporter.remat`, `predictor.remat`) trades memory for FLOPs and changes no number."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tests import helpers


def test_remat_gives_the_same_loss_and_gradients(x64):
  plain = helpers.tiny_model(0, num_steps=2, dropout=0.2)
  remat = helpers.tiny_model(0, num_steps=2, dropout=0.2, remat=True)
  images = jax.random.uniform(jax.random.key(1), (3, 2, 4, 1), jnp.float64, -1.0, 1.0)

  def loss_and_grads(model):
    graphdef, params = nnx.split(model)
    loss_fn = lambda p: nnx.merge(graphdef, p).loss(jax.random.key(2), images, dropout_key=jax.random.key(3))[0]
    return jax.value_and_grad(loss_fn)(params)

  loss_plain, grads_plain = loss_and_grads(plain)
  loss_remat, grads_remat = loss_and_grads(remat)
  np.testing.assert_allclose(loss_remat, loss_plain, rtol=1e-12)
  for a, b in zip(jax.tree.leaves(grads_remat), jax.tree.leaves(grads_plain)):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
  # The recomputation is really there: the backward pass of the jitted gradient contains a remat.
  graphdef, params = nnx.split(remat)
  jaxpr = jax.make_jaxpr(jax.grad(lambda p: nnx.merge(graphdef, p).loss(jax.random.key(2), images)[0]))(params)
  assert "remat" in str(jaxpr) or "checkpoint" in str(jaxpr)

"""The layer stack's execution choices trade memory or compile time for FLOPs and change no number:
rematerialisation policies (`transporter.remat`, `predictor.remat`) and scanned against unrolled layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests import helpers


def _loss_and_grads(model, images):
  graphdef, params = nnx.split(model)
  loss_fn = lambda p: nnx.merge(graphdef, p).loss(jax.random.key(2), images, dropout_key=jax.random.key(3))[0]
  return jax.jit(jax.value_and_grad(loss_fn))(params)  # jitted: op by op, the same numbers take minutes


@pytest.mark.parametrize("remat, scan_layers", [("full", True), ("save_matmuls", True), ("none", False),
                                                ("full", False)])
def test_remat_policies_and_unrolled_layers_give_the_same_loss_and_gradients(x64, remat, scan_layers):
  plain = helpers.tiny_model(0, num_steps=2, dropout=0.2)
  other = helpers.tiny_model(0, num_steps=2, dropout=0.2, remat=remat, scan_layers=scan_layers)
  images = jax.random.uniform(jax.random.key(1), (3, 2, 4, 1), jnp.float64, -1.0, 1.0)
  loss_plain, grads_plain = _loss_and_grads(plain, images)
  loss_other, grads_other = _loss_and_grads(other, images)
  np.testing.assert_allclose(loss_other, loss_plain, rtol=1e-12)
  for a, b in zip(jax.tree.leaves(grads_other), jax.tree.leaves(grads_plain)):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
  graphdef, params = nnx.split(other)
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: nnx.merge(graphdef, p).loss(jax.random.key(2), images)[0]))(params))
  # The recomputation is really there (a remat in the backward pass) exactly when a policy asks for it.
  assert (("remat" in jaxpr) or ("checkpoint" in jaxpr)) == (remat != "none")


def test_layers_are_one_stacked_array_per_parameter(x64):
  model = helpers.tiny_model(0, depth=3, layers_per_block=2)
  kernel = model.predictor.network.transformer.layers.mlp.up.kernel
  assert kernel.shape[0] == 3 and kernel.get_metadata()["logical_axes"][0] == "layers"
  assert model.transporter.blocks[0].network.transformer.layers.mlp.up.kernel.shape[0] == 2
  with pytest.raises(ValueError, match=r"transporter.remat must be one of \(.none., .save_matmuls., .full.\)"):
    helpers.tiny_config(remat="everything")

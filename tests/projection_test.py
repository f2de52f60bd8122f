"""ntm_jax.models.projection: the same product as the multi-axis dot, a transpose-free backward on the CPU, and
the multi-axis dot kept where the program is lowered for another platform."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntm_jax.models import projection


# (activation shape, kernel shape, contracted axes): an MLP layer, attention's q|k|v and its output projection.
CASES = [((3, 5, 4), (4, 6), 1), ((3, 5, 4), (4, 3, 2, 2), 1), ((3, 5, 2, 2), (2, 2, 4), 2)]


@pytest.mark.parametrize("x_shape,kernel_shape,num_contracting", CASES)
def test_values_and_both_derivatives_match_the_multi_axis_dot(x64, x_shape, kernel_shape, num_contracting):
  x = jax.random.normal(jax.random.key(0), x_shape, jnp.float64)
  kernel = jax.random.normal(jax.random.key(1), kernel_shape, jnp.float64)
  ours = lambda x, k: jnp.sum(jnp.tanh(projection.project(x, k, num_contracting)) ** 2)  # noqa: E731
  theirs = lambda x, k: jnp.sum(jnp.tanh(jnp.tensordot(x, k, num_contracting)) ** 2)  # noqa: E731
  np.testing.assert_allclose(projection.project(x, kernel, num_contracting),
                             jnp.tensordot(x, kernel, num_contracting), rtol=1e-13)
  for got, want in zip(jax.grad(ours, argnums=(0, 1))(x, kernel), jax.grad(theirs, argnums=(0, 1))(x, kernel)):
    np.testing.assert_allclose(got, want, rtol=1e-12)
  # Forward mode too (the exactness tests take jax.jacfwd of the flows built on it).
  np.testing.assert_allclose(jax.jacfwd(ours)(x, kernel), jax.jacfwd(theirs)(x, kernel), rtol=1e-12)


def _top_level_copies(fn, *args) -> int:
  text = jax.jit(fn).lower(*args).compile().as_text()
  entry = text[text.index("\nENTRY"):]
  return len(re.findall(r"%(?:copy|transpose)[\w.\-]* = ", entry))


def test_the_kernel_gradient_needs_no_transposed_copy_on_the_cpu():
  x, kernel = jnp.ones((8, 16, 32)), jnp.ones((32, 64))
  kernel_grad = lambda dot: jax.grad(lambda k: jnp.sum(jnp.tanh(dot(x, k))))  # noqa: E731
  assert _top_level_copies(kernel_grad(lambda x, k: projection.project(x, k, 1)), kernel) == 0
  # The control: the multi-axis dot's backward has XLA:CPU copy an operand first (why projection exists).
  assert _top_level_copies(kernel_grad(lambda x, k: jnp.tensordot(x, k, 1)), kernel) >= 1


def test_other_platforms_keep_the_multi_axis_dot():
  x, kernel = jnp.ones((8, 16, 32)), jnp.ones((32, 3, 4, 8))
  fn = jax.grad(lambda k: jnp.sum(projection.project(x, k, 1) ** 2))
  contractions = lambda platform: re.findall(  # noqa: E731
      r"stablehlo.dot_general.*?contracting_dims = (\[[0-9, ]*\] x \[[0-9, ]*\])",
      jax.jit(fn).trace(kernel).lower(lowering_platforms=(platform,)).as_text())
  assert contractions("cpu") == ["[1] x [0]", "[0] x [0]"]  # forward, kernel gradient: matrix products
  assert contractions("tpu") == ["[2] x [0]", "[0, 1] x [0, 1]"]  # over [batch, tokens] as they are


def test_refuses_a_kernel_that_does_not_fit_and_a_contraction_it_does_not_compute():
  with pytest.raises(ValueError, match="cannot project"):
    projection.project(jnp.ones((2, 3, 4)), jnp.ones((5, 6)))
  with pytest.raises(ValueError, match="only"):
    projection.linear_dot_general(jnp.ones((2, 4)), jnp.ones((2, 6)), (((0,), (0,)), ((), ())))
  with pytest.raises(ValueError, match="precision"):
    projection.linear_dot_general(jnp.ones((2, 4)), jnp.ones((4, 6)), (((1,), (0,)), ((), ())),
                                  precision=jax.lax.Precision.HIGHEST)

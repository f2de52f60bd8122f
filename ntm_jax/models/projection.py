"""Activations times a weight: on the CPU as one matrix product, which XLA:CPU runs without transposes.

Every weight matmul here contracts the trailing axes of an activation x [rows..., in...] with the leading axes
of a kernel w [in..., out...], where the rows are [batch, tokens]. Left in that shape, the kernel's gradient
is a dot contracting two axes of each operand, and XLA:CPU feeds its matmul by first copying an operand into
a transposed buffer: at ml-tarflow's mnist shape, 8 ms of copy before each 18 ms weight-gradient dot of the
MLP, and a [768, 3,136] copy before each of attention's. With the rows and the kernel's axes flattened
(reshapes of contiguous arrays, free) each weight matmul is a plain matrix product, forward and backward, that
it runs on the operands as they lie (`python benchmarks/vs_ml_tarflow.py --before=multi_axis_dots` sets the
two side by side). The values are the same sums of the same products. Other platforms keep the multi-axis
dot: flattening the kernel would merge its sharded heads axis into one that is not, and their compilers lay
out dots well without help.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax


def project(x: jax.Array, kernel: jax.Array, num_contracting: int = 1) -> jax.Array:
  """x [rows..., in...] . kernel [in..., out...] over the `num_contracting` `in` axes -> [rows..., out...]."""
  num_rows = x.ndim - num_contracting
  if x.shape[num_rows:] != kernel.shape[:num_contracting]:
    raise ValueError(f"cannot project {x.shape} by a kernel {kernel.shape} over {num_contracting} axes")
  out_shape = x.shape[:num_rows] + kernel.shape[num_contracting:]

  def as_matrix_product(x, kernel):
    in_size = math.prod(kernel.shape[:num_contracting])
    product = x.reshape(-1, in_size) @ kernel.reshape(in_size, -1)
    return product.reshape(out_shape)

  multi_axis_dot = lambda x, kernel: jnp.tensordot(x, kernel, num_contracting)  # noqa: E731
  return lax.platform_dependent(x, kernel, cpu=as_matrix_product, default=multi_axis_dot)


def linear_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                       out_sharding=None):
  """`project` as the `dot_general` of an nnx.Linear (which contracts its input's last axis with the kernel's
  first). Refuses any other contraction, precision or output sharding rather than ignoring it."""
  (lhs_contracting, rhs_contracting), batch = dimension_numbers
  if tuple(lhs_contracting) != (lhs.ndim - 1,) or tuple(rhs_contracting) != (0,) or any(batch):
    raise ValueError(f"linear_dot_general computes x[..., in] . w[in, out] only, got {dimension_numbers}")
  if precision is not None or out_sharding is not None:
    raise ValueError("linear_dot_general takes no precision or out_sharding (the layers here set neither)")
  out = project(lhs, rhs, 1)
  return out if preferred_element_type is None else out.astype(preferred_element_type)

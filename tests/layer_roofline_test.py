"""benchmarks/layer_roofline.py: each piece is compiled whole (forward and backward), and its figures add up."""

import pathlib
import sys

import jax
import pytest
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import layer_roofline  # noqa: E402
from ntm_jax.models import attention, transformer  # noqa: E402
from ntm_jax.parallel import mesh as mesh_lib  # noqa: E402
from tests.compile_test import needs_libtpu  # noqa: E402


def test_each_piece_compiles_its_forward_and_its_backward():
  rows = {r["piece"]: r for r in layer_roofline.rows_for("smoke", "cpu", smoke=True)}
  assert set(rows) == set(layer_roofline.PIECES) | {"layer, MLP fused (estimate)"}
  # XLA drops a forward matmul whose output nobody uses (it counted 2/3 of the matmul's FLOPs before the
  # pieces returned their output); the model FLOPs count forward and backward.
  for piece in ("matmul", "mlp"):
    assert rows[piece]["tflops_per_chip"] == pytest.approx(rows[piece]["model_tflops_per_chip"], rel=0.1), piece
  layer, mlp, fused = rows["layer"], rows["mlp"], rows["layer, MLP fused (estimate)"]
  assert mlp["hbm_gb_per_chip"] < layer["hbm_gb_per_chip"] and fused["hbm_gb_per_chip"] < layer["hbm_gb_per_chip"]
  # The fused kernel computes the up projection again: a third of the matmul piece's FLOPs.
  assert fused["tflops_per_chip"] - layer["tflops_per_chip"] == pytest.approx(rows["matmul"]["tflops_per_chip"] / 3,
                                                                              rel=0.1)


def _kernel_cost(trace):
  with attention.kernel_costs(backward=True) as cost:
    trace()
  return cost


def test_the_layer_counts_its_kernels_as_the_remat_stack_does():
  """The splash kernels' estimate of the layer piece is the same as a one-layer TransformerStack's under the
  same remat: the forward kernel twice (remat computes it again in the backward pass)."""
  shapes = layer_roofline.preset_shapes("smoke", 1, smoke=True) | {"remat": "save_matmuls"}
  mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])

  def stack_forward():
    stack = nnx.eval_shape(lambda: transformer.TransformerStack(
        1, shapes["width"], shapes["head_dim"], shapes["mlp_ratio"], dtype=shapes["dtype"],
        param_dtype=shapes["param_dtype"], rngs=nnx.Rngs(0), remat="save_matmuls", scan=False, attention="splash"))
    graphdef, params = nnx.split(stack)
    mask = attention.Mask.block_causal(shapes["levels"], shapes["tokens"]).with_prefix(
        jax.numpy.ones((shapes["batch"], shapes["prefix"]), bool))
    x = jax.ShapeDtypeStruct((shapes["batch"], shapes["length"], shapes["width"]), shapes["dtype"])
    jax.eval_shape(lambda p, x: nnx.merge(graphdef, p)(x, mask), params, x)

  with mesh_lib.use(mesh):
    piece = _kernel_cost(lambda: layer_roofline.lower_piece("layer", shapes, mesh, "splash"))
    stack = _kernel_cost(stack_forward)
    once = _kernel_cost(lambda: layer_roofline.lower_piece("layer", shapes | {"remat": "none"}, mesh, "splash"))
  assert piece.calls == stack.calls == 1
  assert piece.flops == stack.flops > once.flops > 0
  assert piece.hbm_bytes == stack.hbm_bytes > once.hbm_bytes


@needs_libtpu
def test_a_tpu_layer_runs_the_splash_kernel_and_the_plan_moves_less_than_xla_counts():
  rows = {r["piece"]: r for r in layer_roofline.rows_for("smoke", "v6e:8x8", smoke=True)}
  assert rows["layer"]["attention"] == "splash"
  assert rows["layer"]["kernel_hbm_gb_per_chip"] > 0  # the kernel's own estimate is in the layer's bytes
  for piece in layer_roofline.PIECES:
    assert rows[piece]["planned_hbm_gb_per_chip"] < rows[piece]["hbm_gb_per_chip"], piece

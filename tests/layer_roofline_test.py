"""benchmarks/layer_roofline.py: each piece is compiled whole (forward and backward), and its figures add up."""

import importlib.util
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import layer_roofline  # noqa: E402


def test_each_piece_compiles_its_forward_and_its_backward():
  rows = {r["piece"]: r for r in layer_roofline.rows_for("smoke", "cpu", smoke=True)}
  assert set(rows) == set(layer_roofline.PIECES) | {"layer, MLP fused (estimate)"}
  # XLA drops a forward matmul whose output nobody uses (it counted 2/3 of the matmul's FLOPs before the
  # pieces returned their output); the model FLOPs count forward and backward.
  for piece in ("matmul", "mlp"):
    assert rows[piece]["tflops_per_chip"] == pytest.approx(rows[piece]["model_tflops_per_chip"], rel=0.1), piece
  layer, mlp, fused = rows["layer"], rows["mlp"], rows["layer, MLP fused (estimate)"]
  assert mlp["hbm_gb_per_chip"] < layer["hbm_gb_per_chip"]
  # The fused estimate swaps the MLP's bytes for its floor, which is below what the compiled MLP moves.
  shapes = layer_roofline.preset_shapes("smoke", 1, smoke=True)
  floor_gb = layer_roofline.fused_mlp_floor_bytes(shapes) / 1e9
  assert floor_gb < mlp["hbm_gb_per_chip"]
  assert fused["hbm_gb_per_chip"] == pytest.approx(layer["hbm_gb_per_chip"] - mlp["hbm_gb_per_chip"] + floor_gb)
  assert fused["model_mfu_bound"] > layer["model_mfu_bound"]


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu is not installed (pip install -c constraints.txt -e '.[tpu]'); CI's default "
                           "install has no libtpu, so the TPU compile runs where it is installed")
def test_a_tpu_layer_runs_the_splash_kernel_and_the_plan_moves_less_than_xla_counts():
  rows = {r["piece"]: r for r in layer_roofline.rows_for("smoke", "v6e:8x8", smoke=True)}
  assert rows["layer"]["attention"] == "splash"
  assert rows["layer"]["kernel_hbm_gb_per_chip"] > 0  # the kernel's own estimate is in the layer's bytes
  for piece in layer_roofline.PIECES:
    assert rows[piece]["planned_hbm_gb_per_chip"] < rows[piece]["hbm_gb_per_chip"], piece

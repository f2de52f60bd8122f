"""What caps the MFU bound at a preset's width: one predictor layer and its pieces, compiled for one TPU chip.

  pip install -c constraints.txt -e ".[tpu]"   # libtpu: compiles for TPUs on this CPU machine
  python benchmarks/layer_roofline.py [--sizes base,large,xl,3b] [--topologies v5p:4x4x4,v6e:8x8]
  python benchmarks/layer_roofline.py --smoke   # a tiny layer on this machine's CPU (what CI runs)

The whole train step's bound (benchmarks/compile_table.py) mixes every stack, the collectives and the
optimizer. This compiles, at each preset's per-chip shapes (its global batch over the topology's chips, the
predictor's 4 x 256 + 64 tokens, its width, head dimension and remat), the forward and backward pass of:
  - `matmul`: the MLP's up projection alone ([rows, width] x [width, 4 width]);
  - `mlp`: the whole MLP (up projection, GELU, down projection);
  - `layer`: one predictor layer as the model runs it with its layers unrolled, as the compile table does (two
    LayerNorms, attention with the block-causal caption mask through the preset's attention kernel, the MLP,
    residual adds);
each on one chip of the topology, with its weights whole (as FSDP gathers them), and reports the figures of
`--mode=compile`: XLA's FLOPs and HBM bytes, the model FLOPs (ntm_jax.models.flops), and the model-FLOPs MFU
bound from XLA's byte count and from the compiler's memory-space plan. A last row per pair, `layer, MLP
fused`, is an estimate, not a compile: the layer's bytes with the MLP's replaced by the least a kernel that
keeps the hidden units on chip must move (its input, read by both passes, its output and both gradients,
its weights read in the forward and the backward, its weight gradients written), with the FLOPs of the up
projection it computes again in the backward pass. Writes benchmarks/results/layer_roofline.json.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from benchmarks import common  # noqa: E402
from ntm_jax.models import attention, flops, layers, transformer  # noqa: E402
from ntm_jax.parallel import compile as compile_lib  # noqa: E402
from ntm_jax.parallel import mesh as mesh_lib  # noqa: E402

PIECES = ("matmul", "mlp", "layer")


def preset_shapes(size: str, chips: int, smoke: bool) -> dict:
  """Per-chip shapes of a t2i preset's predictor layer."""
  config = common.load_config("t2i", "smoke" if smoke else f"size={size}")
  predictor, image = config.model.predictor, config.model.image
  batch = config.data.batch_size
  if batch % chips:
    raise ValueError(f"the {size} preset's global batch {batch} does not divide over {chips} chips")
  levels, tokens = config.model.grid.num_steps, (image.height // image.patch_size) * (image.width // image.patch_size)
  return dict(width=predictor.width, head_dim=predictor.head_dim, mlp_ratio=predictor.mlp_ratio,
              remat=predictor.remat, levels=levels, tokens=tokens, prefix=predictor.text_tokens,
              length=levels * tokens + predictor.text_tokens, batch=2 if smoke else batch // chips,
              dtype=jnp.dtype(config.model.dtype), param_dtype=jnp.dtype(config.model.param_dtype))


def _module(piece: str, s: dict, implementation: str):
  """The piece as an abstract module (no parameter allocated)."""
  hidden = s["mlp_ratio"] * s["width"]

  def make():
    kwargs = dict(dtype=s["dtype"], param_dtype=s["param_dtype"], rngs=nnx.Rngs(0))
    if piece == "matmul":
      return layers.linear(s["width"], hidden, ("embed", "mlp"), **kwargs)
    if piece == "mlp":
      return layers.MLP(s["width"], hidden, **kwargs)
    return transformer.TransformerLayer(s["width"], s["head_dim"], s["mlp_ratio"], attention=implementation, **kwargs)

  return nnx.eval_shape(make)


def up_projection_flops(s: dict) -> float:
  """The MLP's up projection, forward, on one chip."""
  return 2.0 * s["batch"] * s["length"] * s["width"] * s["mlp_ratio"] * s["width"]


def model_flops(piece: str, s: dict) -> float:
  """The piece's forward and backward model FLOPs on one chip."""
  if piece == "matmul":
    return flops.forward_backward(up_projection_flops(s))
  if piece == "mlp":
    return flops.forward_backward(2 * up_projection_flops(s))
  pairs = flops.predictor_pairs(s["levels"], s["tokens"], s["prefix"])
  return s["batch"] * flops.forward_backward(flops.stack(s["width"], s["mlp_ratio"], 1, s["length"], pairs))


def lower_piece(piece: str, s: dict, mesh, implementation: str):
  """Lowers the piece's forward and backward pass (its output, and a vjp of a given output gradient), under
  the preset's remat as its Transformer stack applies it."""
  graphdef, params = nnx.split(_module(piece, s, implementation))

  def forward(params, x, prefix_valid):
    module = nnx.merge(graphdef, params)
    if piece != "layer":
      return module(x)
    mask = attention.Mask.block_causal(s["levels"], s["tokens"]).with_prefix(prefix_valid)
    return module(x, mask)

  if s["remat"] != "none":
    forward = jax.checkpoint(forward, policy=transformer.SAVED_BY_REMAT[s["remat"]])

  def forward_backward(params, x, prefix_valid, out_gradient):
    # The output too, as a layer's output feeds the next one: without it XLA drops the last matmul's forward.
    out, pullback = jax.vjp(lambda p, x: forward(p, x, prefix_valid), params, x)
    return out, pullback(out_gradient)

  one_chip = NamedSharding(mesh, PartitionSpec())
  struct = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=one_chip)  # noqa: E731
  x = struct((s["batch"], s["length"], s["width"]), s["dtype"])
  prefix_valid = struct((s["batch"], s["prefix"]), jnp.bool_)
  params = jax.tree.map(lambda p: struct(p.shape, p.dtype), params)
  # The output's shape from the shapes, not from a trace: jax.checkpoint caches its trace, so a first trace
  # outside `recomputed` would be the one the kernels' estimate sees.
  out_width = s["mlp_ratio"] * s["width"] if piece == "matmul" else s["width"]
  out_gradient = struct((s["batch"], s["length"], out_width), s["dtype"])
  with attention.recomputed(s["remat"] != "none"):  # the kernels' estimate counts remat's second forward
    return jax.jit(forward_backward).lower(params, x, prefix_valid, out_gradient)


def fused_mlp_floor_bytes(s: dict) -> float:
  """The least HBM traffic of an MLP kernel that keeps its hidden units on chip, forward and backward: the
  input (read by both passes), the output and both gradients in the compute dtype, the weights read twice
  (forward, backward) and their gradients written, in the parameter dtype."""
  activations = 5 * s["batch"] * s["length"] * s["width"] * s["dtype"].itemsize
  hidden = s["mlp_ratio"] * s["width"]
  weights = (2 * s["width"] * hidden + hidden + s["width"]) * s["param_dtype"].itemsize
  return activations + 3 * weights


def rows_for(size: str, topology: str, smoke: bool) -> list[dict]:
  """The report of each piece of a preset's layer on one chip of `topology`, and the fused-MLP estimate."""
  devices = compile_lib.topology_devices(topology)
  shapes = preset_shapes(size, 1 if smoke else len(devices), smoke)
  mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices[:1])
  chip = compile_lib.chip_of(topology)
  with mesh_lib.use(mesh):
    implementation = attention.resolve("auto")  # what the presets run on this platform
    programs = [(piece, lambda piece=piece: lower_piece(piece, shapes, mesh, implementation),
                 model_flops(piece, shapes), True, True) for piece in PIECES]
    reports = compile_lib.compile_programs(programs, topology, mesh)
  about = dict(size=size, topology=topology, attention=implementation,
               **{k: shapes[k] for k in ("width", "head_dim", "batch", "remat")})
  rows = [about | {"piece": report["program"]} | report for report in reports]
  layer, mlp = rows[PIECES.index("layer")], rows[PIECES.index("mlp")]
  fused_gb = layer["hbm_gb_per_chip"] - mlp["hbm_gb_per_chip"] + fused_mlp_floor_bytes(shapes) / 1e9
  # Keeping the hidden units on chip means computing them again in the backward pass: one more up projection.
  fused_tflops = layer["tflops_per_chip"] + up_projection_flops(shapes) / 1e12
  roofline_s = max(fused_tflops * 1e12 / chip.peak_flops, fused_gb * 1e9 / chip.hbm_bytes_per_s)
  rows.append(about | dict(piece="layer, MLP fused (estimate)", tflops_per_chip=fused_tflops,
                           model_tflops_per_chip=layer["model_tflops_per_chip"], hbm_gb_per_chip=fused_gb,
                           model_mfu_bound=layer["model_tflops_per_chip"] * 1e12 / chip.peak_flops / roofline_s,
                           planned_hbm_gb_per_chip=None, planned_model_mfu_bound=None))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", default="base,large,xl,3b")
  parser.add_argument("--topologies", default="v5p:4x4x4,v6e:8x8")
  parser.add_argument("--out", default="benchmarks/results/layer_roofline.json")
  parser.add_argument("--smoke", action="store_true", help="the t2i smoke model's layer on this machine's CPU (CI)")
  args = parser.parse_args()
  if args.smoke:
    args.sizes, args.topologies = "smoke", "cpu"
  rows = []
  for size in args.sizes.split(","):
    for topology in args.topologies.split(","):
      rows += rows_for(size, topology, args.smoke)
      common.write_json(args.out, rows)
  bound = lambda value: f"{'n/a':>9s}" if value is None else f"{value:9.2f}"  # noqa: E731
  gb = lambda value: f"{'n/a':>8s}" if value is None else f"{value:8.3f}"  # noqa: E731
  print(f"\n{'size':6s} {'topology':10s} {'piece':28s} {'width':>5s} {'batch':>5s} {'remat':12s} {'TFLOP':>7s} "
        f"{'model TF':>8s} {'HBM GB':>8s} {'model MFU':>9s} {'plan GB':>8s} {'plan MFU':>9s}")
  for r in rows:
    print(f"{r['size']:6s} {r['topology']:10s} {r['piece']:28s} {r['width']:5d} {r['batch']:5d} {r['remat']:12s} "
          f"{r['tflops_per_chip']:7.3f} {r['model_tflops_per_chip']:8.3f} {gb(r['hbm_gb_per_chip'])} "
          f"{bound(r['model_mfu_bound'])} {gb(r['planned_hbm_gb_per_chip'])} {bound(r['planned_model_mfu_bound'])}")
  print("Per chip, forward and backward of one piece with its weights whole; TFLOP and HBM GB: XLA's counts (plus "
        "the attention kernels' estimate); model MFU: the model-FLOPs MFU bound from XLA's bytes; plan: from the "
        "compiler's memory-space plan. 'layer, MLP fused' is an estimate (see the docstring).")


if __name__ == "__main__":
  main()

"""The README's TPU compile table: `--mode=compile` for t2i size presets on TPU topologies, in one run.

  pip install -c constraints.txt -e ".[tpu]"   # libtpu: compiles for TPUs on this CPU machine
  python benchmarks/compile_table.py [--sizes base,large,xl] [--topologies v5p:4x4x4,v6e:8x8]
  python benchmarks/compile_table.py --smoke   # the t2i smoke model on this machine's CPU devices (CI)
  python benchmarks/compile_table.py --model_flops_only   # each preset's model FLOPs only, in seconds

Each row is exactly what `python -m ntm_jax.main --config=configs/t2i.py:size=S --workdir=DIR --mode=compile
--config.compile.topology=TOPOLOGY` prints. Writes benchmarks/results/compile_tpu.json.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flax import nnx  # noqa: E402

from benchmarks import common  # noqa: E402
from ntm_jax import models  # noqa: E402
from ntm_jax.parallel import compile as compile_lib  # noqa: E402
from ntm_jax.training.compile import compile_for_topology  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", default="base,large,xl")
  parser.add_argument("--topologies", default="v5p:4x4x4,v6e:8x8")
  parser.add_argument("--config_arg", default="", help="extra t2i config arguments, e.g. remat=none")
  parser.add_argument("--num_slices", type=int, default=1, help="multi-slice: the data axis spans the slices")
  parser.add_argument("--train_only", action="store_true", help="compile the train step only (no sampler)")
  parser.add_argument("--out", default="benchmarks/results/compile_tpu.json")
  parser.add_argument("--smoke", action="store_true", help="the tiny t2i model on topology 'cpu' (what CI runs)")
  parser.add_argument("--model_flops_only", action="store_true",
                      help="only the model FLOPs of each preset (ntm_jax.models.flops): no compile, no libtpu")
  args = parser.parse_args()
  if args.smoke:
    args.sizes, args.topologies, args.config_arg = "cpu", "cpu", ",".join(filter(None, ["smoke", args.config_arg]))
  if args.model_flops_only:
    return model_flops_table(args)
  rows = []
  for size in args.sizes.split(","):
    for topology in args.topologies.split(","):
      config = common.load_config("t2i", ",".join(filter(None, [f"size={size}", args.config_arg])))
      config.compile.update(topology=topology, num_slices=args.num_slices, sampler=not args.train_only)
      config.mesh.dcn_data = args.num_slices
      try:
        report = compile_for_topology(config)
      except compile_lib.CompiledMemoryError as error:
        report = {"topology": topology, "error": str(error)}
      report.update(size=size, remat=config.model.predictor.remat, scan_layers=config.model.scan_layers,
                    config_arg=args.config_arg)
      rows.append(report)
      print(compile_lib.format_report(report) if "error" not in report else f"{size} on {topology}: {report['error']}",
            flush=True)
      common.write_json(args.out, rows)
  print(f"\n{'size':6s} {'params':>8s} {'topology':10s} {'mesh':14s} {'attention':9s} {'batch':>5s} {'GiB/chip':>9s} "
        f"{'TFLOP/chip':>10s} {'HBM GB':>7s} {'model TF':>9s} {'ms@peak':>8s} {'MFU bound':>9s} {'model MFU':>9s} "
        f"{'plan HBM GB':>11s} {'plan model MFU':>14s} {'sampler GiB':>11s} {'sampler ms':>10s}")
  bound = lambda value: f"{'n/a':>9s}" if value is None else f"{value:9.2f}"  # noqa: E731
  gb = lambda value: f"{'n/a':>11s}" if value is None else f"{value:11.1f}"  # noqa: E731
  for r in rows:
    if "error" in r:
      print(f"{r['size']:6s} {'':8s} {r['topology']:10s} does not fit: {r['error'][:80]}")
      continue
    train_step, sampler = (r["programs"] + [None])[:2]
    mesh = "x".join(f"{k}{v}" for k, v in r["mesh"].items() if v > 1) or "1"
    sampler_columns = (f"{sampler['per_chip_gib']:11.2f} {sampler['model_step_ms_at_peak']:10.1f}" if sampler
                       else f"{'-':>11s} {'-':>10s}")
    print(f"{r['size']:6s} {r['parameters'] / 1e6:7.0f}M {r['topology']:10s} {mesh:14s} {r['attention']:9s} "
          f"{r['batch_size']:5d} {train_step['per_chip_gib']:9.2f} {train_step['tflops_per_chip']:10.2f} "
          f"{train_step['hbm_gb_per_chip']:7.1f} {train_step['model_tflops_per_chip']:9.2f} "
          f"{train_step['step_ms_at_peak']:8.1f} {bound(train_step['mfu_bound'])} "
          f"{bound(train_step['model_mfu_bound'])} {gb(train_step['planned_hbm_gb_per_chip'])} "
          f"{bound(train_step['planned_model_mfu_bound']):>14s} {sampler_columns}")
  print("TFLOP/chip, HBM GB, ms@peak, MFU bound: XLA's counts (plus the attention kernels' estimate); model TF, "
        "model MFU: the architecture's FLOPs (no masked attention, no remat); plan HBM GB, plan model MFU: the HBM "
        "traffic of the compiler's memory-space plan (VMEM-resident operands left out) and the model-FLOPs bound "
        "from it; sampler ms: its model FLOPs at peak, "
        "every loop iteration")


def model_flops_table(args):
  """Per chip: the train step's and the sampler's model FLOPs and their time at the chip's peak."""
  rows = []
  print(f"{'size':6s} {'params':>8s} {'topology':10s} {'chips':>5s} {'batch':>5s} {'train TFLOP':>11s} "
        f"{'train ms':>8s} {'samples':>7s} {'sampler TFLOP':>13s} {'sampler ms':>10s}")
  for size in args.sizes.split(","):
    for topology in args.topologies.split(","):
      config = common.load_config("t2i", ",".join(filter(None, [f"size={size}", args.config_arg])))
      model_cfg = models.model_config_from_dict(config.model)
      model = nnx.merge(*models.abstract_model(model_cfg))  # the counts read the config: nothing allocated
      chip = compile_lib.chip_of(topology)
      chips = math.prod(int(d) for d in topology.split(":")[1].split("x")) if ":" in topology else 1
      batch = config.data.batch_size
      samples = config.compile.sample_batch_size or batch
      row = {"size": size, "topology": topology, "chips": chips, "parameters": models.count_parameters(model_cfg),
             "batch_size": batch, "num_samples": samples,
             "train_model_tflops_per_chip": batch * model.train_flops() / chips / 1e12,
             "sampler_model_tflops_per_chip": samples * model.sample_flops() / chips / 1e12}
      row["train_model_ms_at_peak"] = 1e3 * row["train_model_tflops_per_chip"] * 1e12 / chip.peak_flops
      row["sampler_model_ms_at_peak"] = 1e3 * row["sampler_model_tflops_per_chip"] * 1e12 / chip.peak_flops
      rows.append(row)
      print(f"{size:6s} {row['parameters'] / 1e6:7.0f}M {topology:10s} {chips:5d} {batch:5d} "
            f"{row['train_model_tflops_per_chip']:11.2f} {row['train_model_ms_at_peak']:8.1f} {samples:7d} "
            f"{row['sampler_model_tflops_per_chip']:13.2f} {row['sampler_model_ms_at_peak']:10.1f}", flush=True)
  common.write_json(args.out, rows)


if __name__ == "__main__":
  main()

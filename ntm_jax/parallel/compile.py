"""Ahead-of-time compilation for a TPU topology, without a TPU: compile-only devices, the per-chip report.

Runs on any machine with libtpu installed (`pip install ".[tpu]"`; no TPU needed): libtpu describes the
topology (for example "v5p:4x4x4", "v5e:16x16"; `num_slices` > 1 for multi-slice) and XLA compiles a program
exactly as a pod would run it. Topology "cpu" compiles for this machine's own devices instead (nominal CPU
figures), so the same path runs in CI without libtpu. From each compiled program it reports, per chip:
argument, temporary and output memory, FLOPs and HBM bytes per step, the step time at the chip's peak FLOP/s,
and the roofline MFU bound (compute time over the larger of compute and HBM time; communication is not in
it), from XLA's byte count and again from the HBM traffic of the compiler's memory-space plan. A program
that needs more memory than the chip's HBM is an error naming the numbers. What to compile (the train step,
the sampler) is chosen by ntm_jax.training.compile.
"""
from __future__ import annotations

import dataclasses
import os
import time

import jax

from ntm_jax.models import attention
from ntm_jax.parallel import hbm_traffic

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  hbm_bytes: int
  peak_flops: float         # dense bf16 FLOP/s
  hbm_bytes_per_s: float


# Per-chip figures from Google Cloud's TPU documentation (system architecture pages).
CHIPS = {
    "v4": Chip(32 * GiB, 275e12, 1.2e12),
    "v5e": Chip(16 * GiB, 197e12, 0.82e12),
    "v5p": Chip(95 * GiB, 459e12, 2.76e12),
    "v6e": Chip(32 * GiB, 918e12, 1.64e12),
    # Nominal figures for topology "cpu" (this machine's devices): 24 GiB, the float32 matmul ceiling
    # measured on our 2-core machines (about 0.29 TFLOP/s) and a DDR bandwidth of 20 GB/s.
    "cpu": Chip(24 * GiB, 0.29e12, 20e9),
}


class CompiledMemoryError(ValueError):
  """A compiled program needs more memory per chip than the chip has."""


class MissingLibtpuError(ImportError):
  """libtpu, which describes TPU topologies, is not installed."""


def chip_of(topology: str) -> Chip:
  generation = topology.split(":")[0]
  if generation not in CHIPS:
    raise ValueError(f"unknown TPU generation {generation!r} in compile.topology={topology!r}; "
                     f"known: {sorted(CHIPS)} (write it as 'v5e:4x4', 'v5p:2x2x2', ...)")
  return CHIPS[generation]


def topology_devices(topology: str, num_slices: int = 1) -> list:
  """Compile-only devices of a TPU topology, from libtpu (no TPU needed); "cpu": this machine's devices."""
  if topology == "cpu":
    return jax.devices("cpu")
  try:
    import libtpu  # noqa: F401, PLC0415  (only to give a clear error when it is missing)
  except ImportError as error:
    raise MissingLibtpuError("--mode=compile needs libtpu: pip install -c constraints.txt -e '.[tpu]'") from error
  # Compile-only: there is no chip to guard, so libtpu's one-process-per-host lockfile would only make a second
  # compiling process (a test beside a run) fail.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # noqa: PLC0415
  kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
  return list(topologies.get_topology_desc(topology_name=topology, platform="tpu", **kwargs).devices)


def program_report(compiled, chip: Chip, name: str, model_flops: float = 0.0, whole_counts: bool = True,
                   kernel_flops: float = 0.0, kernel_hbm_bytes: float = 0.0) -> dict:
  """The per-chip figures of one compiled program. `model_flops` (per chip, from ntm_jax.models.flops) gives the
  model-FLOPs step time and MFU bound; `whole_counts` says whether XLA's counts cover the whole program (no
  loop whose body it counts once): only then is there a roofline bound from them. `kernel_flops` and
  `kernel_hbm_bytes` (per chip) are the Pallas kernels' own estimate, which XLA's counts leave out: the
  program's totals include them."""
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) + kernel_flops
  hbm = float(cost.get("bytes accessed", 0.0)) + kernel_hbm_bytes
  per_chip = (memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes
              - memory.alias_size_in_bytes)
  compute_s = flops / chip.peak_flops
  # XLA's byte count takes every operand as HBM traffic; the compiler's plan keeps many in VMEM.
  planned = _planned_traffic(compiled)
  planned_hbm = None if planned is None else planned.hbm_bytes + kernel_hbm_bytes

  def bounds(hbm_bytes):
    """(MFU bound, model-FLOPs MFU bound) for this HBM traffic; none unless XLA counted the whole program."""
    if not (flops and whole_counts) or hbm_bytes is None:
      return None, None
    roofline_s = max(compute_s, hbm_bytes / chip.hbm_bytes_per_s)
    return compute_s / roofline_s, (model_flops / chip.peak_flops / roofline_s if model_flops else None)

  mfu_bound, model_mfu_bound = bounds(hbm)
  planned_mfu_bound, planned_model_mfu_bound = bounds(planned_hbm)
  return {
      "program": name,
      "argument_gib": memory.argument_size_in_bytes / GiB,
      "temp_gib": memory.temp_size_in_bytes / GiB,
      "output_gib": memory.output_size_in_bytes / GiB,
      "alias_gib": memory.alias_size_in_bytes / GiB,
      "per_chip_gib": per_chip / GiB,
      "hbm_gib": chip.hbm_bytes / GiB,
      "tflops_per_chip": flops / 1e12,
      "hbm_gb_per_chip": hbm / 1e9,
      "kernel_tflops_per_chip": kernel_flops / 1e12,  # included in the two above
      "kernel_hbm_gb_per_chip": kernel_hbm_bytes / 1e9,
      "step_ms_at_peak": 1e3 * compute_s,
      "mfu_bound": mfu_bound,
      "xla_counts_whole_program": whole_counts,
      # The model's own work (no masked attention, no remat recompute, every loop iteration) at peak, and
      # the share of the roofline time it can fill: the MFU that maxtext and maxdiffusion report, bounded.
      "model_tflops_per_chip": model_flops / 1e12,
      "model_step_ms_at_peak": 1e3 * model_flops / chip.peak_flops,
      "model_mfu_bound": model_mfu_bound,
      # The same bounds with the HBM traffic of the compiler's memory-space plan (ntm_jax.parallel.hbm_traffic;
      # kernels' estimate included): an estimate from the plan, not a profile, so the bounds above stay the
      # conservative ones.
      "planned_hbm_gb_per_chip": None if planned is None else planned_hbm / 1e9,
      "planned_vmem_gb_per_chip": None if planned is None else planned.vmem_bytes / 1e9,
      "planned_mfu_bound": planned_mfu_bound,
      "planned_model_mfu_bound": planned_model_mfu_bound,
  }


def _planned_traffic(compiled) -> hbm_traffic.Traffic | None:
  """The plan's HBM traffic, or None where XLA cannot print the compiled module back (it refuses some
  asynchronous ops of large unrolled programs with a RET_CHECK): the report then goes on without it."""
  try:
    text = compiled.as_text()
  except jax.errors.JaxRuntimeError:
    return None
  return hbm_traffic.estimate(text)


def compile_lowered(lowered, name: str, topology: str, mesh):
  """Compiles, turning XLA's out-of-HBM refusal into a CompiledMemoryError that names the program."""
  try:
    return lowered.compile()
  except jax.errors.JaxRuntimeError as error:
    if "RESOURCE_EXHAUSTED" not in str(error):
      raise
    reason = str(error).split("RESOURCE_EXHAUSTED:", 1)[-1].strip().splitlines()[0]
    raise CompiledMemoryError(
        f"the {name} does not fit in a chip's HBM on {topology} (mesh {dict(mesh.shape)}): {reason} "
        f"Shard more (config.mesh.fsdp), use a smaller batch, or a bigger topology.") from error


def compile_programs(programs, topology: str, mesh) -> list[dict]:
  """Compiles each (name, lowered program, model FLOPs per chip, XLA counts the whole program?, has a backward
  pass?) and reports it per chip (with its compile time and the cost of the attention kernels traced into it);
  refuses any that needs more memory per chip than the chip's HBM."""
  chip = chip_of(topology)
  chips = mesh.devices.size
  rows = []
  for name, lower, model_flops, whole_counts, backward in programs:
    start = time.perf_counter()
    with attention.kernel_costs(backward) as kernels:
      lowered = lower()
    compiled = compile_lowered(lowered, name, topology, mesh)
    rows.append(program_report(compiled, chip, name, model_flops, whole_counts, kernels.flops / chips,
                               kernels.hbm_bytes / chips) | {"compile_s": time.perf_counter() - start})
  too_big = [p for p in rows if p["per_chip_gib"] > p["hbm_gib"]]
  if too_big:
    worst = max(too_big, key=lambda p: p["per_chip_gib"])
    raise CompiledMemoryError(
        f"the {worst['program']} needs {worst['per_chip_gib']:.2f} GiB per chip on {topology} "
        f"(mesh {dict(mesh.shape)}), more than the chip's {worst['hbm_gib']:.0f} GiB of HBM; shard more "
        "(config.mesh.fsdp), use a smaller batch, or a bigger topology")
  return rows


LOOP_NOTE = ("XLA's FLOP and HBM-byte counts take a loop body once (the sampler's token-by-token inversion, and "
             "every layer stack under model.scan_layers=true): no roofline bound comes from them there, and the "
             "model FLOPs (every iteration) give the time at peak; compile with --config.model.scan_layers=false "
             "for whole-program counts of the train step")


def _bound(value) -> str:
  return "n/a (loop bodies counted once)" if value is None else f"{value:.2f}"


def _kernels(program: dict) -> str:
  if not program.get("kernel_tflops_per_chip"):
    return ""
  return (f" (attention kernels' estimate included: {program['kernel_tflops_per_chip']:.3f} TFLOP, "
          f"{program['kernel_hbm_gb_per_chip']:.2f} GB)")


def _planned(program: dict) -> str:
  if program.get("planned_hbm_gb_per_chip") is None:
    return "n/a (XLA could not print the compiled module)"
  return (f"{program['planned_hbm_gb_per_chip']:.2f} GB of HBM traffic ({program['planned_vmem_gb_per_chip']:.2f} "
          f"GB kept in VMEM), MFU bound {_bound(program['planned_mfu_bound'])}, model-FLOPs MFU bound "
          f"{_bound(program['planned_model_mfu_bound'])}")


def format_report(report: dict) -> str:
  lines = [(f"{report['topology']} x {report['num_slices']} slice(s), {report['chips']} chips, mesh {report['mesh']}, "
            f"{report['parameters'] / 1e6:.1f} M parameters, global batch {report['batch_size']}, "
            f"attention {report.get('attention', 'xla')}")]
  for p in report["programs"]:
    lines.append(
        f"  {p['program']}: per chip {p['per_chip_gib']:.2f} GiB of {p['hbm_gib']:.0f} (arguments "
        f"{p['argument_gib']:.2f}, temporaries {p['temp_gib']:.2f}, outputs {p['output_gib']:.2f}, donated "
        f"{p['alias_gib']:.2f}); XLA: {p['tflops_per_chip']:.3f} TFLOP and {p['hbm_gb_per_chip']:.2f} GB of HBM "
        f"traffic per chip{_kernels(p)}, {p['step_ms_at_peak']:.2f} ms at peak, MFU bound {_bound(p['mfu_bound'])}; model: "
        f"{p['model_tflops_per_chip']:.3f} TFLOP per chip, {p['model_step_ms_at_peak']:.2f} ms at peak, "
        f"model-FLOPs MFU bound {_bound(p['model_mfu_bound'])}; after memory-space assignment: {_planned(p)}; "
        f"compiled in {p['compile_s']:.1f} s")
  if not all(p["xla_counts_whole_program"] for p in report["programs"]):
    lines.append(f"  note: {LOOP_NOTE}")
  return "\n".join(lines)

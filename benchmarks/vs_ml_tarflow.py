"""ntm_jax's TarFlow baseline against apple/ml-tarflow's PyTorch `Model`, side by side on this CPU.

  python benchmarks/vs_ml_tarflow.py --ml_tarflow=PATH [--torch_python=PYTHON] [--threads=1,2] [--repeats=3]
      [--shapes=digits,mnist] [--parts=train,nll,sample] [--before=one_device,small_pages] [--smoke]

PATH is a checkout of https://github.com/apple/ml-tarflow (its transformer_flow.py is imported unmodified);
PYTHON is an interpreter with torch (`pip install torch==2.13.0` is the CPU build; default: this one). Both
run at ml-tarflow's own shapes, float32, random data:
  digits  8x8x1, patch 2, 4 blocks x 2 layers, width 128, head dim 64
  mnist   28x28x1, patch 4, 4 blocks x 4 layers, width 256, head dim 64
and three parts: a train step (forward, backward, AdamW; ours also updates its EMA) at batch 64, the exact
log-likelihood at batch 256, and sampling (the KV-cached inversion of every block) at batch 64. Every
measurement is its own process pinned to the first N cores (N = 1, 2), the two implementations interleaved;
each process warms up (compiles) and reports the median images/s of its timed calls, and the table gives the
median over --repeats processes. Ours runs as `python -m ntm_jax.main` runs it: one CPU device per core it
may use, the batch split over them (ntm_jax.parallel.host_cpu), and glibc's malloc set for XLA's scratch buffer
(ntm_jax.parallel.host_malloc: one arena that keeps what XLA frees on one core, the process restarted on
transparent huge pages on more). --before=one_device adds ours on one device (at every thread count above
one), --before=malloc_defaults ours with glibc's malloc defaults, --before=multi_axis_dots ours with its weight
matmuls as multi-axis dots rather than the matrix products of ntm_jax.models.projection, --before=small_pages
ours without the huge pages (at every thread count above one): each as it ran before that change (with today's
malloc setting where the change was not malloc's). Where torch or the checkout is missing, the PyTorch column says
why and only ours is measured.
Prints the table and writes benchmarks/results/vs_ml_tarflow.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from ntm_jax.parallel import host_malloc  # noqa: E402  (the standard library only: the PyTorch worker needs no jax)

SHAPES = {
    "digits": dict(size=8, channels=1, patch=2, blocks=4, layers=2, width=128, head_dim=64),
    "mnist": dict(size=28, channels=1, patch=4, blocks=4, layers=4, width=256, head_dim=64),
    "smoke": dict(size=8, channels=1, patch=2, blocks=2, layers=1, width=64, head_dim=64),
}
BATCH = {"train": 64, "nll": 256, "sample": 64}
IMPLEMENTATIONS = ("ntm_jax", "ml_tarflow")
# ntm_jax as it ran before a change, measured beside it with --before=NAME[,NAME]: {NAME: (the variant's name,
# the worker's flags, whether it differs at one thread)}.
BEFORE = {
    "one_device": ("ntm_jax_one_device", ["--devices=1"], False),  # before one CPU device per core (host_cpu)
    "malloc_defaults": ("ntm_jax_malloc_defaults", ["--malloc_defaults"], True),  # before host_malloc
    "multi_axis_dots": ("ntm_jax_multi_axis_dots", ["--multi_axis_dots"], True),  # before projection's matrix form
    "small_pages": ("ntm_jax_small_pages", ["--small_pages"], False),  # before host_malloc's huge pages
}
RESULT_TAG = "RESULT "


# -- one measurement (the worker process) -------------------------------------------------------------------
def timed_calls(fn, min_seconds: float, min_calls: int = 3) -> tuple[list[float], float]:
  """Seconds of each call of `fn` (which blocks until done) after one warm-up call, until both limits pass, and
  the page faults per timed call (memory the process maps afresh: what host_malloc avoids)."""
  fn()
  times = []
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  while len(times) < min_calls or sum(times) < min_seconds:
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / len(times)


def ntm_jax_part(shape: dict, part: str, batch: int, devices: int = 0):
  """A function running one `part` of ntm_jax's TarFlow baseline at `shape` (jitted, compiled by its first call),
  its batch split over `devices` CPU devices (0: one per usable core, as `python -m ntm_jax.main` does)."""
  import jax  # noqa: PLC0415  (the PyTorch worker never imports jax)

  from ntm_jax.parallel import host_cpu  # noqa: PLC0415
  devices = host_cpu.use_cores([batch], cores=devices or None)  # before anything starts jax's backends
  import jax.numpy as jnp  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from ntm_jax.config_args import load_config_file  # noqa: PLC0415
  from ntm_jax.models import build_model, model_config_from_dict  # noqa: PLC0415
  from ntm_jax.parallel import mesh as mesh_lib  # noqa: PLC0415
  from ntm_jax.training import train  # noqa: PLC0415

  config = load_config_file(os.path.join(ROOT, "configs", "digits.py"), "tarflow")
  config.model.image.update(height=shape["size"], width=shape["size"], channels=shape["channels"],
                            patch_size=shape["patch"])
  config.model.transporter.update(num_blocks=shape["blocks"], layers_per_block=shape["layers"],
                                  width=shape["width"], head_dim=shape["head_dim"])
  config.data.update(batch_size=batch, pixel_levels=256)
  config.mesh.update(data=devices, fsdp=1, tensor=1)
  mesh = mesh_lib.make_mesh(config.mesh.to_dict(), jax.devices()[:devices])
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data",)))
  size, channels = shape["size"], shape["channels"]
  count = lambda tree: int(sum(x.size for x in jax.tree.leaves(tree)))  # noqa: E731

  if part == "train":
    setup = train.build_training(config, mesh)
    images = jax.device_put(jax.random.randint(jax.random.key(0), (batch, size, size, channels), 0, 256),
                            batch_sharding)
    holder = {"state": setup.state}
    key = jax.random.key(0)

    def train_step():  # the state is donated: chain it, as training does
      holder["state"], metrics = setup.step_fn(holder["state"], {"image": images}, key)
      jax.block_until_ready(metrics)

    return train_step, count(setup.state["params"])

  model = build_model(model_config_from_dict(config.model), rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  if part == "nll":
    images = jax.device_put(
        jax.random.uniform(jax.random.key(1), (batch, size, size, channels), jnp.float32, -1.0, 1.0),
        batch_sharding)
    log_likelihood = jax.jit(lambda p, x: nnx.merge(graphdef, p).log_likelihood(jax.random.key(0), x)["elbo"],
                             out_shardings=batch_sharding)
    return lambda: jax.block_until_ready(log_likelihood(params, images)), count(params)
  sample = jax.jit(lambda p, key: nnx.merge(graphdef, p).sample(key, batch), out_shardings=batch_sharding)
  return lambda: jax.block_until_ready(sample(params, jax.random.key(2))), count(params)


def ml_tarflow_part(shape: dict, part: str, batch: int, checkout: str):
  """The same `part` of ml-tarflow's `Model` (imported from `checkout`, unmodified), eager PyTorch, float32."""
  import math  # noqa: PLC0415

  import torch  # noqa: PLC0415

  sys.path.insert(0, checkout)
  import transformer_flow  # noqa: PLC0415  (ml-tarflow's own module)

  torch.manual_seed(0)
  model = transformer_flow.Model(in_channels=shape["channels"], img_size=shape["size"], patch_size=shape["patch"],
                                 channels=shape["width"], num_blocks=shape["blocks"],
                                 layers_per_block=shape["layers"], nvp=True, num_classes=0)
  heads = {layer.attention.num_heads for block in model.blocks for layer in block.attn_blocks}
  if heads != {shape["width"] // shape["head_dim"]}:  # ml-tarflow's head dimension is fixed (64): ours must match
    raise ValueError(f"ml-tarflow built {heads} heads of width {shape['width']}, not head dim {shape['head_dim']}")
  parameters = sum(p.numel() for p in model.parameters())
  images = torch.rand(batch, shape["channels"], shape["size"], shape["size"]) * 2 - 1
  if part == "train":  # ml-tarflow's train.py: its loss, backward, AdamW (betas 0.9, 0.95; no EMA)
    optimizer = torch.optim.AdamW(model.parameters(), betas=(0.9, 0.95), lr=1e-4, weight_decay=1e-4)

    def train_step():
      optimizer.zero_grad()
      z, _, logdets = model(images)
      model.get_loss(z, logdets).backward()
      optimizer.step()

    return train_step, parameters
  model.eval()
  if part == "nll":
    dims = images[0].numel()

    def log_likelihood():  # exact log p(x): N(z; 0, I) + log|det|; ml-tarflow's logdets are per dimension
      with torch.inference_mode():
        z, _, logdets = model(images)
        return -0.5 * z.pow(2).flatten(1).sum(1) - 0.5 * dims * math.log(2 * math.pi) + dims * logdets

    return log_likelihood, parameters
  noise = torch.randn(batch, model.num_patches, shape["channels"] * shape["patch"] ** 2)

  def sample():
    with torch.inference_mode():
      return model.reverse(noise.clone())

  return sample, parameters


def use_multi_axis_dots() -> None:
  """Every weight matmul of ntm_jax as one dot over the activation's [batch, tokens] rows and the kernel's own
  axes (what ntm_jax.models.projection keeps off the CPU), as before it flattened them on the CPU."""
  import jax.numpy as jnp  # noqa: PLC0415

  from ntm_jax.models import projection  # noqa: PLC0415

  # The layers look projection.project up at every call.
  projection.project = lambda x, kernel, num_contracting=1: jnp.tensordot(x, kernel, num_contracting)


def run_worker(args) -> None:
  """Measures one (implementation, shape, part) on the cores this process was pinned to; prints the result."""
  shape = SHAPES[args.shape]
  batch = args.batch or BATCH[args.part]
  if args.worker == "ml_tarflow":
    import torch  # noqa: PLC0415
    torch.set_num_threads(args.threads)
    fn, parameters = ml_tarflow_part(shape, args.part, batch, args.ml_tarflow)
  else:
    if args.small_pages:
      host_malloc.reuse_freed_memory()  # as before the huge pages: one core only
    elif not args.malloc_defaults:
      host_malloc.use_for_host_cpu()  # as `python -m ntm_jax.main` does, before jax starts any thread
    if args.multi_axis_dots:
      use_multi_axis_dots()
    fn, parameters = ntm_jax_part(shape, args.part, batch, args.devices)
  start = time.perf_counter()
  times, faults = timed_calls(fn, args.min_seconds)
  median = statistics.median(times)
  print(RESULT_TAG + json.dumps({"images_per_s": batch / median, "median_s": median, "calls": len(times),
                                 "page_faults_per_call": round(faults),
                                 "parameters": parameters, "seconds_with_warmup": time.perf_counter() - start}),
        flush=True)


# -- the side-by-side run ------------------------------------------------------------------------------------
def torch_unavailable(python: str, checkout: str | None) -> str | None:
  """Why the PyTorch column cannot be measured (None when it can)."""
  if not checkout:
    return "no ml-tarflow checkout given (--ml_tarflow=PATH; fetch https://github.com/apple/ml-tarflow)"
  if not os.path.isfile(os.path.join(checkout, "transformer_flow.py")):
    return f"{checkout} has no transformer_flow.py: not an ml-tarflow checkout"
  probe = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True,
                         check=False)
  if probe.returncode:
    return f"{python} cannot import torch (pip install torch==2.13.0 gives the CPU build)"
  return None


def measure_once(implementation: str, shape: str, part: str, threads: int, args) -> dict:
  """One worker process pinned to cores 0..threads-1; returns its result."""
  python = args.torch_python if implementation == "ml_tarflow" else sys.executable
  before = {name: flags for name, flags, _ in BEFORE.values()}
  worker = "ntm_jax" if implementation in before else implementation
  command = [python, os.path.abspath(__file__), f"--worker={worker}", f"--shape={shape}", f"--part={part}",
             f"--threads={threads}", f"--min_seconds={args.min_seconds}", f"--batch={args.batch}",
             *before.get(implementation, [])]
  if args.ml_tarflow:
    command.append(f"--ml_tarflow={args.ml_tarflow}")
  env = dict(os.environ, OMP_NUM_THREADS=str(threads), JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # no device count of the caller's: the worker sets its own, as ntm_jax.main does
  cores = sorted(os.sched_getaffinity(0))[:threads]
  done = subprocess.run(command, env=env, capture_output=True, text=True, check=False,
                        preexec_fn=lambda: os.sched_setaffinity(0, cores))
  lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)]
  if done.returncode or not lines:
    raise RuntimeError(f"{implementation} {shape}/{part} at {threads} threads failed:\n{done.stderr[-3000:]}")
  return json.loads(lines[-1][len(RESULT_TAG):])


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--ml_tarflow", default="", help="a checkout of apple/ml-tarflow")
  parser.add_argument("--torch_python", default=sys.executable, help="a Python interpreter that has torch")
  parser.add_argument("--threads", default="1,2", help="comma-separated core counts")
  parser.add_argument("--shapes", default="digits,mnist")
  parser.add_argument("--parts", default="train,nll,sample")
  parser.add_argument("--repeats", type=int, default=3, help="processes per measurement (the median is reported)")
  parser.add_argument("--min_seconds", type=float, default=2.0, help="timed seconds per process, after warm-up")
  parser.add_argument("--batch", type=int, default=0, help="one batch size for every part (0: 64, 256, 64)")
  parser.add_argument("--out", default="benchmarks/results/vs_ml_tarflow.json")
  parser.add_argument("--before", nargs="?", const="one_device", default="",
                      help="also measure ntm_jax as it ran before these changes (comma-separated): one_device (one "
                      "CPU device, where threads > 1), malloc_defaults (glibc's malloc as it comes), multi_axis_dots "
                      "(the weight matmuls as multi-axis dots), small_pages (without the huge pages, where "
                      "threads > 1)")
  parser.add_argument("--smoke", action="store_true", help="a tiny shape, batch 8, one process each (what CI runs)")
  parser.add_argument("--devices", type=int, default=0,
                      help="ntm_jax's CPU devices (0: one per core it is pinned to, as ntm_jax.main; 1: the old way)")
  parser.add_argument("--malloc_defaults", action="store_true",
                      help="ntm_jax with glibc's malloc defaults (without ntm_jax.parallel.host_malloc)")
  parser.add_argument("--small_pages", action="store_true",
                      help="ntm_jax without the restart on transparent huge pages (host_malloc on one core only)")
  parser.add_argument("--multi_axis_dots", action="store_true",
                      help="ntm_jax's weight matmuls as multi-axis dots (without projection's matrix form)")
  parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
  parser.add_argument("--shape", help=argparse.SUPPRESS)
  parser.add_argument("--part", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    args.threads = int(args.threads)
    return run_worker(args)
  if args.smoke:
    args.shapes, args.threads, args.repeats, args.min_seconds, args.batch = "smoke", "1", 1, 0.0, 8
  shapes, parts = args.shapes.split(","), args.parts.split(",")
  befores = [name for name in args.before.split(",") if name]
  unknown = sorted(set(befores) - set(BEFORE))
  if unknown:
    raise SystemExit(f"--before: unknown {unknown}; choose from {sorted(BEFORE)}")
  thread_counts = [int(n) for n in args.threads.split(",")]
  if max(thread_counts) > len(os.sched_getaffinity(0)):
    raise SystemExit(f"--threads={args.threads} asks for more cores than this process may use "
                     f"({len(os.sched_getaffinity(0))})")

  skipped = torch_unavailable(args.torch_python, args.ml_tarflow)
  implementations = ("ntm_jax",) if skipped else IMPLEMENTATIONS
  if skipped:
    print(f"ml-tarflow is not measured: {skipped}", flush=True)
  runs = {}  # (shape, part, threads, implementation) -> [results]
  for repeat in range(args.repeats):  # interleaved: every row once, then every row again
    for shape in shapes:
      for part in parts:
        for threads in thread_counts:
          variants = tuple(BEFORE[name][0] for name in befores if BEFORE[name][2] or threads > 1)
          for implementation in implementations + variants:
            result = measure_once(implementation, shape, part, threads, args)
            runs.setdefault((shape, part, threads, implementation), []).append(result)
            print(f"[{repeat + 1}/{args.repeats}] {shape} {part} {threads} thread(s) {implementation}: "
                  f"{result['images_per_s']:.1f} images/s", flush=True)

  rows = []
  for shape in shapes:
    for part in parts:
      for threads in thread_counts:
        row = {"shape": shape, "part": part, "threads": threads, "batch": args.batch or BATCH[part]}
        for implementation in implementations:
          results = runs[(shape, part, threads, implementation)]
          row[implementation] = statistics.median(r["images_per_s"] for r in results)
          row[implementation + "_runs"] = [round(r["images_per_s"], 2) for r in results]
          row[implementation + "_parameters"] = results[0]["parameters"]
          row[implementation + "_page_faults_per_call"] = statistics.median(
              r["page_faults_per_call"] for r in results)
        for name in befores:
          variant = BEFORE[name][0]
          if (shape, part, threads, variant) in runs:
            results = runs[(shape, part, threads, variant)]
            row[variant] = statistics.median(r["images_per_s"] for r in results)
            row[variant + "_runs"] = [round(r["images_per_s"], 2) for r in results]
            row[variant + "_page_faults_per_call"] = statistics.median(r["page_faults_per_call"] for r in results)
            row["speedup_over_" + name] = row["ntm_jax"] / row[variant]
        if not skipped:
          row["ratio"] = row["ntm_jax"] / row["ml_tarflow"]
        rows.append(row)

  print(f"\nimages/s, float32, median of {args.repeats} process(es) each"
        + (f" (ml-tarflow: {skipped})" if skipped else ""))
  print(f"{'shape':8s} {'part':7s} {'batch':>5s} {'threads':>7s} {'ntm_jax':>10s} {'ml-tarflow':>11s} {'ratio':>7s}"
        + "".join(f" {name[:15]:>15s} {'gain':>6s}" for name in befores))
  for row in rows:
    theirs = f"{row['ml_tarflow']:11.1f}" if not skipped else f"{'-':>11s}"
    ratio = f"{row['ratio']:6.2f}x" if not skipped else f"{'-':>7s}"
    before = "".join(f" {row[BEFORE[name][0]]:15.1f} {row['speedup_over_' + name]:5.2f}x" if BEFORE[name][0] in row
                     else f" {'-':>15s} {'-':>6s}" for name in befores)
    print(f"{row['shape']:8s} {row['part']:7s} {row['batch']:5d} {row['threads']:7d} {row['ntm_jax']:10.1f} "
          f"{theirs} {ratio}{before}")
  payload = {"shapes": {name: SHAPES[name] for name in shapes}, "repeats": args.repeats,
             "min_seconds": args.min_seconds, "ml_tarflow_skipped": skipped, "rows": rows,
             "versions": versions(args.torch_python, skipped), "machine": machine()}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(payload, f, indent=2)
  print(f"wrote {args.out}")


def versions(torch_python: str, skipped: str | None) -> dict:
  import jax  # noqa: PLC0415
  found = {"jax": jax.__version__, "python": sys.version.split()[0]}
  if not skipped:
    found["torch"] = subprocess.run([torch_python, "-c", "import torch; print(torch.__version__)"],
                                    capture_output=True, text=True, check=True).stdout.strip()
  return found


def machine() -> dict:
  """The CPU the run measured: its model and the vector extensions both sides' kernels choose between (runs on
  different CPUs differ by up to 2x in our column alone, so a figure without its CPU cannot be compared)."""
  model, flags = "unknown", set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown":
          model = value.strip()
        elif key.strip() == "flags" and not flags:
          flags = set(value.split())
  except OSError:
    pass
  wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
  return {"cpu": model, "vector_extensions": [name for name in wanted if name in flags],
          "usable_cores": len(os.sched_getaffinity(0)),
          "transparent_huge_pages": host_malloc.transparent_huge_pages()}


if __name__ == "__main__":
  main()

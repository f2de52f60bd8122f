"""The scanned Transformer stack against the unrolled one and against an older checkout, side by side.

  python benchmarks/layer_stack.py --baseline=../ntm_jax_4e23f1e [--runs=3] [--compile_runs=1]
  python benchmarks/layer_stack.py --smoke      # tiny sizes, this checkout's two variants (what CI runs)

Two measurements, each a fresh process per run, the variants interleaved run by run (medians over runs):
  cpu_step      forward + backward of the exact NLL of the digits NTM, batch 64, float32
                (`benchmarks/nll_step.py`, its median over --repeats within a run);
  tpu_compile   `python -m ntm_jax.main --config=configs/t2i.py:size=large --mode=compile` for v5p:4x4x4
                (libtpu; no TPU needed): the train step's and the sampler's lowering + compile seconds.
Variants: `baseline` (the checkout given by --baseline, run with its own code and defaults: before the
stack existed, its layers were a Python loop), `scan` (this checkout, `model.scan_layers=true`: layers under
jax.lax.scan) and `unrolled` (this checkout, `model.scan_layers=false`: the same stacked parameters,
unrolled); both with remat "none", as the baseline's presets had. A checkout that does not
know a flag this script passes is a run that fails, reported as such. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402


def run(checkout: str, command: list[str], env_extra: dict | None = None) -> tuple[bool, str]:
  """Runs `command` in `checkout` with that checkout's ntm_jax first on the path; (ok, output)."""
  env = dict(os.environ, PYTHONPATH=checkout, JAX_PLATFORMS="cpu", TPU_SKIP_MDS_QUERY="1", **(env_extra or {}))
  env.pop("XLA_FLAGS", None)  # one device, as a user's run
  done = subprocess.run([sys.executable, *command], cwd=checkout, env=env, capture_output=True, text=True)
  return done.returncode == 0, done.stdout + done.stderr


def cpu_step_ms(checkout: str, overrides: list[str], smoke: bool, out_dir: str) -> float | None:
  out = os.path.join(out_dir, "nll_step.json")
  command = ["benchmarks/nll_step.py", f"--out={out}"] + (["--smoke"] if smoke else ["--repeats=10"])
  command += [f"--set={o}" for o in overrides]
  ok, log = run(checkout, command)
  if not ok:
    print(f"  cpu_step failed in {checkout}: {log[-500:]}", flush=True)
    return None
  with open(out) as f:
    return json.load(f)["results"]["ntm"]["median_ms"]


def compile_seconds(checkout: str, overrides: list[str], smoke: bool, out_dir: str) -> dict | None:
  config = "configs/t2i.py:smoke" if smoke else "configs/t2i.py:size=large"
  topology = "cpu" if smoke else "v5p:4x4x4"
  command = ["-m", "ntm_jax.main", f"--config={config}", f"--workdir={out_dir}", "--mode=compile",
             f"--config.compile.topology={topology}"] + [f"--config.{o}" for o in overrides]
  ok, log = run(checkout, command)
  if not ok:
    print(f"  tpu_compile failed in {checkout}: {log[-500:]}", flush=True)
    return None
  with open(os.path.join(out_dir, f"compile_{topology.replace(':', '_')}.json")) as f:
    programs = json.load(f)["programs"]
  return {"train_step_s": programs[0]["compile_s"], "sampler_s": programs[1]["compile_s"]}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--baseline", default="", help="another checkout of ntm_jax to run beside this one")
  parser.add_argument("--runs", type=int, default=3, help="processes per variant for the CPU step")
  parser.add_argument("--compile_runs", type=int, default=1, help="processes per variant for the TPU compile")
  parser.add_argument("--out", default="benchmarks/results/layer_stack.json")
  parser.add_argument("--smoke", action="store_true")
  args = parser.parse_args()
  here = common.ROOT
  if args.smoke:
    args.runs, args.compile_runs = 1, 1
  no_remat = ["model.transporter.remat=none", "model.predictor.remat=none"]
  variants = {"scan": (here, ["model.scan_layers=true", *no_remat]),
              "unrolled": (here, ["model.scan_layers=false", *no_remat])}
  if args.smoke:  # the two variants differ by one override: the smoke run keeps the scanned one
    variants.pop("unrolled")
  if args.baseline:
    variants = {"baseline": (os.path.abspath(args.baseline), []), **variants}
  can_compile = args.smoke or importlib.util.find_spec("libtpu") is not None
  if not can_compile:
    print("libtpu is not installed (pip install -c constraints.txt -e '.[tpu]'): skipping the TPU compile rows")

  results = {name: {"cpu_step_ms": [], "compile": []} for name in variants}
  with tempfile.TemporaryDirectory() as scratch:
    for index in range(max(args.runs, args.compile_runs if can_compile else 0)):
      for name, (checkout, overrides) in variants.items():  # interleaved: each run sees the same machine state
        out_dir = os.path.join(scratch, f"{name}_{index}")
        os.makedirs(out_dir)
        if index < args.runs:
          ms = cpu_step_ms(checkout, overrides, args.smoke, out_dir)
          results[name]["cpu_step_ms"].append(ms)
          print(f"run {index} {name}: cpu step {ms} ms", flush=True)
        if can_compile and index < args.compile_runs:
          seconds = compile_seconds(checkout, overrides, args.smoke, out_dir)
          results[name]["compile"].append(seconds)
          print(f"run {index} {name}: compile {seconds}", flush=True)

  def median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None

  table = {}
  for name, measured in results.items():
    compiles = [c for c in measured["compile"] if c]
    table[name] = {"checkout": variants[name][0], "overrides": variants[name][1],
                   "cpu_step_ms": median(measured["cpu_step_ms"]),
                   "train_step_compile_s": median([c["train_step_s"] for c in compiles]),
                   "sampler_compile_s": median([c["sampler_s"] for c in compiles]), "raw": measured}
  what = ("digits NTM smoke; t2i smoke on topology cpu" if args.smoke
          else "digits NTM, batch 64; t2i size=large on v5p:4x4x4")
  print(f"\n{what} (medians over {args.runs} / {args.compile_runs} processes per variant)")
  print(f"{'variant':10s} {'CPU fwd+bwd ms':>15s} {'train-step compile s':>21s} {'sampler compile s':>18s}")
  for name, row in table.items():
    cells = [row["cpu_step_ms"], row["train_step_compile_s"], row["sampler_compile_s"]]
    print(f"{name:10s} " + " ".join(f"{'-' if c is None else c:>{w}}" for c, w in zip(cells, (15, 21, 18))))
  common.write_json(args.out, {"what": what, "runs": args.runs, "compile_runs": args.compile_runs, "rows": table})


if __name__ == "__main__":
  main()

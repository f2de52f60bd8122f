"""Initialising NTM from flow matching (issue 7, NTM.md D9, C.7, C.8), on digits, in one run.

  python benchmarks/flow_matching_init.py --fm_workdir=workdirs/fm_digits \
      --finetune_workdir=workdirs/ntm_ft_digits --scratch_workdir=workdirs/ntm_scratch_digits \
      --pairwise_workdir=workdirs/ntm_pairwise_digits [--importance_samples=256 --num_samples=360]
  python benchmarks/flow_matching_init.py --smoke    # trains 2-step tiny runs of the four first (what CI runs)

Rows (EMA parameters of each run's best validation step, test split, this CPU):
  flow matching, T Euler steps        samples only: a deterministic map has no tractable density here;
  flow matching, T ancestral steps    bits/dim of its Gaussian chain (the density the NTM starts from);
  NTM fine-tuned from it / from scratch (same architecture, the scratch run as many steps as both
    flow matching and the fine-tune together);
  the pairwise-trained NTM at T = 4, 8 and 16 (one model).
Bits/dim: ELBO and importance-weighted bound (M samples) with standard errors (ntm_jax.evaluation.bits_per_dim, D7).
Sample quality: Frechet distance, precision and recall of `num_samples` samples against the test split,
with the judge of ntm_jax.evaluation.sample_quality. The target line compares validation curves (metrics.jsonl):
the first fine-tuning step whose validation bits/dim (IW, M = 16) reaches the scratch run's best.
Prints the tables and writes benchmarks/results/flow_matching_init.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from ntm_jax import data, latents  # noqa: E402
from ntm_jax.evaluation import bits_per_dim, sample_quality  # noqa: E402
from ntm_jax.parallel import checkpoint  # noqa: E402
from ntm_jax.sampling import sampler as sampling  # noqa: E402
from ntm_jax.training import metric_writer  # noqa: E402


def run_config(workdir: str, num_steps: int | None = None) -> ml_collections.ConfigDict:
  config = checkpoint.read_run_config(workdir)
  if num_steps:
    config.model.grid.num_steps = num_steps  # an NTM's parameters do not depend on T
  return config


def test_bits_per_dim(config, workdir, importance_samples):
  graphdef, params, step, model_cfg = checkpoint.restore_params(config, workdir, "best")
  source = data.load_split(config.data.name, "test", config.data.data_dir)
  results = bits_per_dim.evaluate_bits_per_dim(graphdef, params, model_cfg, source,
                                               space=latents.space_of(config),
                                               batch_size=config.eval.batch_size,
                                               importance_samples=importance_samples, seed=config.seed)
  return {**results, "best_step": step}


def samples(config, workdir, num_samples, sampler_name=None):
  graphdef, params, _, _ = checkpoint.restore_params(config, workdir, "best")
  fn = sampling.make_sample_fn(graphdef, num_samples, {"sampler": sampler_name} if sampler_name else {})
  return np.asarray(fn(params, jax.random.key(7), None))


def validation_curve(workdir: str) -> list[tuple[int, float]]:
  return [(r["step"], r["eval/validation/bpd_iw"]) for r in metric_writer.read_metrics(workdir)
          if "eval/validation/bpd_iw" in r]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--fm_workdir")
  parser.add_argument("--finetune_workdir")
  parser.add_argument("--scratch_workdir")
  parser.add_argument("--pairwise_workdir", default="")
  parser.add_argument("--importance_samples", type=int, default=256)
  parser.add_argument("--num_samples", type=int, default=360)
  parser.add_argument("--out", default="benchmarks/results/flow_matching_init.json")
  parser.add_argument("--smoke", action="store_true", help="train 2-step tiny runs first (what CI runs)")
  args = parser.parse_args()
  start = time.perf_counter()
  if args.smoke:
    smoke_dir = tempfile.mkdtemp(prefix="fm_init_smoke_")
    # The pairwise rows run the same code as the others: the smoke run leaves them out.
    args.fm_workdir, args.finetune_workdir, args.scratch_workdir = (
        os.path.join(smoke_dir, name) for name in ("fm", "finetune", "scratch"))
    common.train_smoke_run("flow_matching", "", args.fm_workdir)
    common.train_smoke_run("finetune", f"init_from={args.fm_workdir}", args.finetune_workdir)
    common.train_smoke_run("finetune", "scratch", args.scratch_workdir)
    args.importance_samples, args.num_samples = 2, 16
  if not (args.fm_workdir and args.finetune_workdir and args.scratch_workdir):
    parser.error("--fm_workdir, --finetune_workdir and --scratch_workdir are required (or --smoke)")

  rows = [("flow matching, 4 Euler steps", args.fm_workdir, 4, "euler", False),
          ("flow matching, 4 ancestral steps", args.fm_workdir, 4, "ancestral", True),
          ("NTM fine-tuned from flow matching, T = 4", args.finetune_workdir, 4, None, True),
          ("NTM from scratch, T = 4", args.scratch_workdir, 4, None, True)]
  if args.pairwise_workdir:
    rows += [(f"NTM pairwise-trained, T = {t}", args.pairwise_workdir, t, None, True) for t in (4, 8, 16)]

  first = run_config(args.fm_workdir)
  judge = sample_quality.fit_judge(first.data.name, first.data.pixel_levels)
  real, _ = sample_quality.split_images(first.data.name, "train", first.data.pixel_levels)
  results = {"real training images (reference)": sample_quality.score(judge, real[:args.num_samples])}
  for name, workdir, num_steps, sampler, with_bpd in rows:
    config = run_config(workdir, num_steps)
    row = {"workdir": workdir, "T": num_steps}
    if with_bpd:
      row.update(test_bits_per_dim(config, workdir, args.importance_samples))
    images = samples(config, workdir, args.num_samples, sampler)
    row.update(sample_quality.score(judge, images))
    results[name] = row
    print(f"{name}: {json.dumps({k: v for k, v in row.items() if k != 'workdir'})}", flush=True)

  finetune, scratch = validation_curve(args.finetune_workdir), validation_curve(args.scratch_workdir)
  scratch_best = min(bpd for _, bpd in scratch)
  scratch_steps = max(step for step, _ in scratch)
  reached = next((step for step, bpd in finetune if bpd <= scratch_best), None)
  fm_steps = max(step for step, _ in validation_curve(args.fm_workdir))
  target = {"scratch_best_validation_bpd_iw": scratch_best, "scratch_steps": scratch_steps,
            "flow_matching_steps": fm_steps, "finetune_steps_to_reach_it": reached,
            "finetune_curve": finetune, "scratch_curve": scratch,
            "met_half_the_steps": reached is not None and reached <= scratch_steps / 2}
  results["target"] = target
  results["seconds"] = round(time.perf_counter() - start, 1)

  print(f"\n| model | T | test BPD, ELBO | test BPD, IW (M = {args.importance_samples}) | Frechet | precision | recall |")
  print("|---|---|---|---|---|---|---|")
  for name, row in results.items():
    if name in ("target", "seconds"):
      continue
    bpd = (f"{row['bpd_elbo']:.3f} +- {row['bpd_elbo_se']:.3f} | {row['bpd_iw']:.3f} +- {row['bpd_iw_se']:.3f}"
           if "bpd_elbo" in row else "n/a | n/a")
    print(f"| {name} | {row.get('T', '')} | {bpd} | {row['frechet_distance']:.2f} | {row['precision']:.2f} | "
          f"{row['recall']:.2f} |")
  print(f"\nscratch NTM: best validation bits/dim (IW, M = 16) {scratch_best:.4f} in {scratch_steps} steps; the "
        f"fine-tuned NTM reaches it at step {reached} (after {fm_steps} flow-matching steps); "
        f"at most half the steps: {target['met_half_the_steps']}. {results['seconds']} s")
  common.write_json(args.out, results)


if __name__ == "__main__":
  main()

"""Text-to-image on `shapes`: NTM against the `gaussian`, plain TarFlow and flow-matching baselines, and NTM
against the guidance scale, all scored by the GenEval-style shapes judge on the same seen and held-out prompts,
in one run.

  python benchmarks/t2i_shapes.py --ntm_workdir=workdirs/t2i_ntm --gaussian_workdir=workdirs/t2i_gaussian \
      --tarflow_workdir=workdirs/t2i_tarflow,workdirs/t2i_tarflow_long [--scales=0,1,2,3,5] [--denoise]
  python benchmarks/t2i_shapes.py --smoke    # trains tiny runs of the three models first (what CI runs)
  python benchmarks/t2i_shapes.py --latent=workdirs/autoencoder_shapes --ntm_workdir=workdirs/t2i_latent_ntm \
      --flow_matching_workdir=workdirs/t2i_latent_fm --out=benchmarks/results/t2i_shapes_latent.json
      # runs of configs/t2i.py:latent=... (likelihoods in nats)

Each workdir is a `python -m ntm_jax.main --config=configs/t2i.py[:gaussian|:tarflow|:flow_matching] --workdir=...`
run; each row is what `--mode=judge` prints for it (4 steps for NTM and gaussian; TarFlow samples without
guidance; flow matching at each of --flow_matching_steps Euler steps). Each row has the seen prompts' scores and
the held-out prompts' (`held_out_overall`), and whether the run was trained with the held-out compositions kept
out of its captions (`data.hold_out_compositions`; without it the held-out prompts were seen too).
Also: parameters, the training wall time read from the run's metrics, and how much the caption is worth
to the likelihood: validation bits/dim (ELBO) with the true captions against shuffled captions. Prints a
table, writes JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from ntm_jax import data, latents, models  # noqa: E402
from ntm_jax.data.builders import shapes_scenes  # noqa: E402
from ntm_jax.evaluation import bits_per_dim, prompt_following  # noqa: E402
from ntm_jax.parallel import checkpoint  # noqa: E402


def training_minutes(workdir: str) -> float | None:
  """Wall time of the training run from its metrics (sum of logged steps / steps per second)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  seconds, last_step = 0.0, 0
  with open(path) as f:
    for line in f:
      row = json.loads(line)
      rate = row.get("train/steps_per_sec")
      if rate:
        seconds += (row["step"] - last_step) / rate
        last_step = row["step"]
  return seconds / 60 if seconds else None


def caption_gain(config, workdir: str, max_examples: int | None = None) -> dict[str, float]:
  """Validation bits/dim (ELBO, M = 1; nats per latent dim for a latent model) of the best checkpoint with the
  true and with shuffled captions."""
  graphdef, params, _, model_cfg = checkpoint.restore_params(config, workdir, "best")
  space = latents.space_of(config)
  split = space.load_split(config, "validation", model_cfg)
  examples = [split.source[i] for i in range(min(split.num_examples, max_examples or split.num_examples))]
  order = np.random.default_rng(0).permutation(len(examples))
  shuffled = [dict(e, caption=examples[j]["caption"]) for e, j in zip(examples, order)]
  out = {"likelihood_unit": space.unit}
  for name, rows in (("true", examples), ("shuffled", shuffled)):
    source = data.with_text_features(dataclasses.replace(split, source=rows, num_examples=len(rows)), "shapes",
                                     config.text.encoder, config.text.max_tokens)
    results = bits_per_dim.evaluate_bits_per_dim(graphdef, params, model_cfg, source, space=space, batch_size=250,
                                                 seed=config.seed)
    out[f"{name}_captions"] = results[f"{space.metric_prefix}_elbo"]
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--ntm_workdir")
  parser.add_argument("--gaussian_workdir")
  parser.add_argument("--tarflow_workdir", help="one or more, comma-separated (for example equal steps and "
                      "equal wall time)")
  parser.add_argument("--flow_matching_workdir")
  parser.add_argument("--flow_matching_steps", default="4,50", help="Euler steps for the flow-matching rows")
  parser.add_argument("--scales", default="0,1,2,3,5", help="guidance scales for NTM")
  parser.add_argument("--prompts_per_category", type=int, default=20)
  parser.add_argument("--samples_per_prompt", type=int, default=4)
  parser.add_argument("--temperature", type=float, default=1.0)
  parser.add_argument("--denoise", action="store_true", help="NTM/gaussian: trajectory-score denoising (C.11)")
  parser.add_argument("--latent", default="", help="the autoencoder workdir the runs were trained over "
                      "(configs/t2i.py:latent=DIR); empty for pixel runs")
  parser.add_argument("--out", default="benchmarks/results/t2i_shapes.json")
  parser.add_argument("--smoke", action="store_true", help="train 2-step tiny runs of the three models and judge "
                      "them on one prompt per category (what CI runs)")
  args = parser.parse_args()
  config_arg = ""
  if args.smoke:
    smoke_dir = tempfile.mkdtemp(prefix="t2i_smoke_")
    # NTM (with guidance) and flow matching (its own sampler); gaussian and TarFlow rows run the same code.
    for variant in ("ntm", "flow_matching"):
      common.train_smoke_run("t2i", variant, os.path.join(smoke_dir, variant))
    args.ntm_workdir, args.gaussian_workdir, args.scales = os.path.join(smoke_dir, "ntm"), "", "0,1"
    args.flow_matching_workdir, args.flow_matching_steps = os.path.join(smoke_dir, "flow_matching"), "2"
    args.prompts_per_category, args.samples_per_prompt, config_arg = 1, 1, "smoke"
  if not args.ntm_workdir:
    parser.error("--ntm_workdir is required (or --smoke)")

  runs = [("ntm", args.ntm_workdir, args.scales, 0), ("gaussian", args.gaussian_workdir, "0", 0)]
  runs += [("tarflow", workdir, "0", 0) for workdir in (args.tarflow_workdir or "").split(",") if workdir]
  if args.flow_matching_workdir:
    runs += [("flow_matching", args.flow_matching_workdir, "0", int(n)) for n in args.flow_matching_steps.split(",")]
  rows = []
  for variant, workdir, scales, num_steps in runs:
    if not workdir:
      continue
    latent = f"latent={args.latent}" if args.latent else ""
    config = common.load_config("t2i", ",".join(filter(None, ["" if variant == "ntm" else variant, config_arg,
                                                              latent])))
    config.judge.update(prompts_per_category=args.prompts_per_category, samples_per_prompt=args.samples_per_prompt,
                        guidance_scales=scales, batch_size=min(config.judge.batch_size, 6 if args.smoke else 120))
    config.sample.update(temperature=args.temperature, num_steps=num_steps,
                         denoise=args.denoise and variant in ("ntm", "gaussian"))
    results = prompt_following.judge_checkpoint(config, workdir)
    gain = caption_gain(config, workdir, 32 if args.smoke else None)
    for scale, scores in results["by_guidance_scale"].items():
      held_out = results["held_out_by_guidance_scale"][scale]
      rows.append({"model": variant, "workdir": workdir, "guidance_scale": float(scale), "step": results["step"],
                   "sampling_steps": results["num_steps_T"],
                   "parameters": models.count_parameters(models.model_config_from_dict(config.model)),
                   "train_minutes": training_minutes(workdir),
                   "held_out_compositions_kept_out_of_training": results["held_out_compositions_kept_out_of_training"],
                   **gain, **scores, "held_out_overall": held_out["overall"], "held_out": held_out})
    print(f"{variant} ({workdir}) done", flush=True)

  categories = list(shapes_scenes.CATEGORIES)
  header = (f"{'model':>13} {'params':>8} {'steps':>6} {'train min':>9} {'T':>3} {'w':>4} "
            + " ".join(f"{c[:12]:>12}" for c in categories))
  print(header + f" {'overall':>8} {'held out':>8} {'sample s':>8} {'likelihood true/shuffled captions':>34}")
  for r in rows:
    minutes = f"{r['train_minutes']:.1f}" if r["train_minutes"] else "-"
    held_out = f"{r['held_out_overall']:.3f}" + ("" if r["held_out_compositions_kept_out_of_training"] else "*")
    print(f"{r['model']:>13} {r['parameters'] / 1e6:>7.2f}M {r['step']:>6} {minutes:>9} {r['sampling_steps']:>3} "
          f"{r['guidance_scale']:>4g} " + " ".join(f"{r[c]:>12.3f}" for c in categories)
          + f" {r['overall']:>8.3f} {held_out:>8} {r['seconds']:>8.1f} "
          f"{r['true_captions']:>13.4f} / {r['shuffled_captions']:.4f} {r['likelihood_unit']}")
  if any(not r["held_out_compositions_kept_out_of_training"] for r in rows):
    print("* trained without data.hold_out_compositions: its held-out prompts were training captions too")
  common.write_json(args.out, {"device": str(jax.devices()[0]), "latent": args.latent, "temperature": args.temperature,
                               "denoise": args.denoise, "prompts_per_category": args.prompts_per_category,
                               "samples_per_prompt": args.samples_per_prompt, "rows": rows})


if __name__ == "__main__":
  main()

"""What each `--mode` of `python -m ntm_jax.main` does, and what it prints (one function per mode)."""

from __future__ import annotations

import json
import os

from ntm_jax.evaluation import bits_per_dim, fid, inception_weights, prompt_following
from ntm_jax.latents import encode
from ntm_jax.parallel import checkpoint
from ntm_jax.parallel import compile as compile_lib
from ntm_jax.parallel import host_cpu
from ntm_jax.sampling import sampler
from ntm_jax.training import autoencoder, distill, preemption, train
from ntm_jax.training import compile as training_compile

# Failures a user can meet and fix: printed as one line, without a traceback.
EXPECTED_ERRORS = (FileNotFoundError, checkpoint.IncompatibleCheckpointError, train.NonFiniteLossError,
                   compile_lib.CompiledMemoryError, compile_lib.MissingLibtpuError,
                   inception_weights.InceptionWeightsError, fid.ReferenceStatisticsError, fid.TooFewImagesError)
# A run stopped by SIGTERM after saving its step (ntm_jax.training.preemption): a message and status 143.
Preempted, PREEMPTED_EXIT_STATUS = preemption.Preempted, preemption.EXIT_STATUS


def use_host_cores(config) -> int | None:
  """On a host CPU, one jax device per usable core, as many as divide the config's batches (host_cpu)."""
  return host_cpu.use_cores(host_cpu.config_batch_sizes(config))


def _train(config, workdir, split, which):
  del split, which
  if config.get("trainer") == "autoencoder":  # configs/autoencoder.py: its own train loop
    autoencoder.train_autoencoder(config, workdir)
  else:
    train.train_and_evaluate(config, workdir)


def _eval(config, workdir, split, which):
  r = bits_per_dim.evaluate_checkpoint(config, workdir, split, which)
  p = r["metric_prefix"]  # bpd, or nats_per_dim for a latent model
  print(f"{split} {r['unit']} of step {r['step']} ({which}): {r[p + '_elbo']:.4f} +- {r[p + '_elbo_se']:.4f} (ELBO), "
        f"{r[p + '_iw']:.4f} +- {r[p + '_iw_se']:.4f} (importance-weighted, M={r['importance_samples']}) over "
        f"{r['num_examples']} images")


def _sample(config, workdir, split, which):
  del split
  out = sampler.sample_checkpoint(config, workdir, which)
  print(f"{config.sample.num_samples} samples from step {out['step']} ({which}) in {out['seconds']:.2f} s after "
        f"compilation ({out['images_per_s']:.1f} images/s): {out['png']}, {out['npz']}")


def _distill(config, workdir, split, which):
  del split, which
  out = distill.distill(config, workdir)
  print(f"denoiser step {out['denoiser_step']} (target {out['target']}): held-out MSE {out['held_out_mse']:.5f} "
        f"(identity map: {out['held_out_identity_mse']:.5f}) on fresh samples of NTM step {out['ntm_step']}")


def _compile(config, workdir, split, which):
  del split, which
  report = training_compile.compile_for_topology(config)
  print(compile_lib.format_report(report))
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, f"compile_{report['topology'].replace(':', '_')}.json"), "w") as f:
    json.dump(report, f, indent=2)


def _judge(config, workdir, split, which):
  del split
  results = prompt_following.judge_checkpoint(config, workdir, which)
  print(f"shapes judge, step {results['step']} ({which}), {results['num_prompts']} prompts x "
        f"{results['samples_per_prompt']} samples, T = {results['num_steps_T']}:")
  print(prompt_following.format_results(results))


def _encode(config, workdir, split, which):
  del workdir, split, which
  out = encode.encode_dataset(config)
  print(f"latents of {config.data.name!r} ({', '.join(f'{k} {v}' for k, v in out['splits'].items())}) in "
        f"{out['directory']} ({out['seconds']:.0f} s)")


def _fid_stats(config, workdir, split, which):
  del workdir, split, which
  out = fid.compute_reference_statistics(config)
  print(f"FID reference statistics of {out['data']} {out['split']} ({out['num_images']} images, Inception "
        f"weights {out['weights']}) in {out['path']} ({out['seconds']:.0f} s)")


def _fid(config, workdir, split, which):
  del split
  r = fid.fid_of_checkpoint(config, workdir, which)
  steps = f", T = {r['num_steps_T']}" if r["num_steps_T"] else ""  # TarFlow has no T
  print(f"FID {r['fid']:.3f}, precision {r['precision']:.4f}, recall {r['recall']:.4f} (k={r['nearest_k']}) of "
        f"{r['num_samples']} samples of step {r['step']} ({which}){steps}, guidance {r['guidance_scale']:g}, "
        f"seed {r['seed']}, against {r['reference_images']} {r['reference_split']} images: {r['json']}")


MODES = {"train": _train, "eval": _eval, "sample": _sample, "distill": _distill, "compile": _compile,
         "judge": _judge, "encode": _encode, "fid_stats": _fid_stats, "fid": _fid}


def run(mode: str, config, workdir: str, eval_split: str = "test", eval_checkpoint: str = "best") -> None:
  if config.get("trainer") == "autoencoder" and mode != "train":
    raise ValueError(f"--mode={mode} is for the generative models; an autoencoder config only trains "
                     "(--mode=train), and the flows read its latents")
  MODES[mode](config, workdir, eval_split, eval_checkpoint)

"""Command line: python -m ntm_jax.main --config=configs/digits.py --workdir=DIR [--mode=train|eval|...].

Kept short on purpose: the logic lives in importable modules (train.py, evaluate.py) that notebooks and
tests call directly.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with arguments: configs/digits.py:tarflow,steps=2000.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "sample", "distill", "compile", "judge"],
                          "train: train (resuming from the workdir) and evaluate; eval: bits/dim of the "
                          "checkpoint chosen by --eval_checkpoint on --eval_split; sample: a PNG grid and an "
                          ".npz of samples from that checkpoint (settings in config.sample); distill: train the "
                          "light denoiser that replaces the last inversion on the model's own samples; compile: "
                          "ahead-of-time compilation for the TPU topology in config.compile (needs libtpu); judge: "
                          "GenEval-style prompt-following scores of a `shapes` text-to-image model (config.judge).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first: set by the multi-host launchers in launch/ "
    "(on TPU VMs and GKE it finds the coordinator and the process index itself).")
_EVAL_SPLIT = flags.DEFINE_string("eval_split", "test", "Split for --mode=eval.")
_EVAL_CHECKPOINT = flags.DEFINE_enum(
    "eval_checkpoint", "best", ["best", "latest"],
    "Which EMA parameters --mode=eval and --mode=sample use: the step with the best validation bits/dim (kept in "
    "WORKDIR/best) or the newest resume checkpoint.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/digits.py")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required and must not be empty, e.g. --workdir=workdirs/digits")
  # Import after flag parsing: jax and TensorFlow are slow to import and read XLA_FLAGS at import time.
  import jax

  if _DISTRIBUTED.value:
    jax.distributed.initialize()  # must come before anything touches the devices

  # TensorFlow is only used by TFDS and the TensorBoard writer: keep it off any accelerator.
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")

  from ntm_jax import train
  from ntm_jax.checkpoint import IncompatibleCheckpointError

  workdir = os.path.abspath(_WORKDIR.value)
  logging.info("ntm_jax %s: workdir %s, process %d of %d, %d devices", _MODE.value, workdir,
               jax.process_index(), jax.process_count(), jax.device_count())
  from ntm_jax import aot_compile
  try:
    _run_mode(train, workdir)
  except (FileNotFoundError, IncompatibleCheckpointError, train.NonFiniteLossError,
          aot_compile.CompiledMemoryError, aot_compile.MissingLibtpuError) as error:
    # Expected failures get their message, not a traceback; nothing saved has been touched.
    sys.exit(f"error: {error}")


def _run_mode(train, workdir):
  if _MODE.value == "train":
    train.train_and_evaluate(_CONFIG.value, workdir)
  elif _MODE.value == "compile":
    from ntm_jax import aot_compile
    report = aot_compile.compile_for_topology(_CONFIG.value)
    print(aot_compile.format_report(report))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, f"compile_{report['topology'].replace(':', '_')}.json"), "w") as f:
      json.dump(report, f, indent=2)
  elif _MODE.value == "distill":
    from ntm_jax import distill
    out = distill.distill(_CONFIG.value, workdir)
    print(f"denoiser step {out['denoiser_step']} (target {out['target']}): held-out MSE {out['held_out_mse']:.5f} "
          f"(identity map: {out['held_out_identity_mse']:.5f}) on fresh samples of NTM step {out['ntm_step']}")
  elif _MODE.value == "judge":
    from ntm_jax import shapes_eval
    results = shapes_eval.judge_checkpoint(_CONFIG.value, workdir, _EVAL_CHECKPOINT.value)
    print(f"shapes judge, step {results['step']} ({_EVAL_CHECKPOINT.value}), {results['num_prompts']} prompts x "
          f"{results['samples_per_prompt']} samples, T = {results['num_steps_T']}:")
    print(shapes_eval.format_results(results))
  elif _MODE.value == "sample":
    from ntm_jax import sample
    out = sample.sample_checkpoint(_CONFIG.value, workdir, _EVAL_CHECKPOINT.value)
    print(f"{_CONFIG.value.sample.num_samples} samples from step {out['step']} ({_EVAL_CHECKPOINT.value}) in "
          f"{out['seconds']:.2f} s after compilation ({out['images_per_s']:.1f} images/s): {out['png']}, {out['npz']}")
  else:
    results = train.evaluate_checkpoint(_CONFIG.value, workdir, _EVAL_SPLIT.value, _EVAL_CHECKPOINT.value)
    print(f"{_EVAL_SPLIT.value} bits/dim of step {results['step']} ({_EVAL_CHECKPOINT.value}): "
          f"{results['bpd_elbo']:.4f} +- {results['bpd_elbo_se']:.4f} (ELBO), "
          f"{results['bpd_iw']:.4f} +- {results['bpd_iw_se']:.4f} (importance-weighted, "
          f"M={results['importance_samples']}) over {results['num_examples']} images")


def _unknown_override(argv) -> str | None:
  """The first `--config.a.b=...` override whose path the config file does not define."""
  config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if config_arg is None:
    return None
  path, _, arg = config_arg.partition(":")
  config = config_flags.config_flags._LoadConfigModule("config", path).get_config(*([arg] if arg else []))
  for override in (a for a in argv if a.startswith("--config.")):
    keys = override[len("--config."):].split("=", 1)[0].split(".")
    node = config
    for depth, key in enumerate(keys):
      if not hasattr(node, "keys") or key not in node.keys():
        return ".".join(keys[:depth + 1])
      node = node[key]
  return None


def parse_flags(argv):
  """absl flag parsing, with a clear error for a `--config.x=y` override of a key the config lacks."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as error:
    unknown = _unknown_override(argv)
    if unknown is None:
      raise
    sys.exit(f"error: unknown config key {unknown!r} in a --config override ({error})")
  except flags.Error as error:
    sys.exit(f"error: {error}")


def run():
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  sys.exit(run())

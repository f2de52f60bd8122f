"""Command line: python -m ntm_jax.main --config=configs/digits.py --workdir=DIR [--mode=train|eval|...].

Kept short on purpose: flags -> config -> one function per mode, each in an importable module that
notebooks and tests call directly. The console shows progress, evaluations, warnings and errors; absl's
`--verbosity=0` (or higher) brings back every library's INFO lines.
"""

from __future__ import annotations

import functools
import os
import sys

# TensorFlow runs only TFDS and the TensorBoard writer here, never the model: its oneDNN kernels (announced by
# a C++ INFO line at every start) do nothing for us.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ntm_jax import config_args  # noqa: E402
from ntm_jax.parallel import host_malloc  # noqa: E402  (the standard library only: no jax yet)

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with arguments: configs/digits.py:tarflow,steps=2000.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "sample", "distill", "compile", "judge", "encode",
                                           "fid_stats", "fid"],
                          "train: train (resuming from the workdir) and evaluate; eval: bits/dim of the "
                          "checkpoint chosen by --eval_checkpoint on --eval_split; sample: a PNG grid and an "
                          ".npz of samples from that checkpoint (settings in config.sample); distill: train the "
                          "light denoiser that replaces the last inversion on the model's own samples; compile: "
                          "ahead-of-time compilation for the TPU topology in config.compile (needs libtpu); judge: "
                          "GenEval-style prompt-following scores of a `shapes` text-to-image model (config.judge); "
                          "encode: write the latents of config.data by the autoencoder of config.latent (what a "
                          "latent model trains on); fid_stats: Inception statistics of the data set's "
                          "config.fid.split, computed once and stored; fid: FID, precision and recall of "
                          "config.fid.num_samples samples against them (Inception weights in "
                          "config.fid.inception_weights).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first: set by the multi-host launchers in launch/ "
    "(on TPU VMs and GKE it finds the coordinator and the process index itself).")
_EVAL_SPLIT = flags.DEFINE_string("eval_split", "test", "Split for --mode=eval.")
_EVAL_CHECKPOINT = flags.DEFINE_enum(
    "eval_checkpoint", "best", ["best", "latest"],
    "Which EMA parameters --mode=eval, sample and judge use: the step with the best validation bits/dim (kept in "
    "WORKDIR/best) or the newest resume checkpoint.")


def main(argv, malloc_setting: str = "not set"):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required and must not be empty, e.g. --workdir=workdirs/digits")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax, grain and TFDS report every save and start at INFO
  # Import after flag parsing: jax and TensorFlow are slow to import and read XLA_FLAGS at import time.
  import jax
  if _DISTRIBUTED.value:
    jax.distributed.initialize()  # must come before anything touches the devices
  import tensorflow as tf  # used only by TFDS and the TensorBoard writer: keep it off any accelerator
  tf.config.set_visible_devices([], "GPU")

  from ntm_jax import modes
  if not _DISTRIBUTED.value and _MODE.value != "compile":  # one device per core (ahead-of-time compiles keep theirs)
    modes.use_host_cores(_CONFIG.value)
  logging.info("ntm_jax %s: workdir %s, process %d of %d, %d devices, malloc: %s", _MODE.value, _WORKDIR.value,
               jax.process_index(), jax.process_count(), jax.device_count(), malloc_setting)
  try:
    modes.run(_MODE.value, _CONFIG.value, os.path.abspath(_WORKDIR.value), _EVAL_SPLIT.value, _EVAL_CHECKPOINT.value)
  except modes.EXPECTED_ERRORS as error:
    sys.exit(f"error: {error}")  # a message, not a traceback; nothing saved has been touched
  except modes.Preempted as stopped:
    print(stopped, flush=True)
    sys.exit(modes.PREEMPTED_EXIT_STATUS)


def parse_flags(argv):
  """absl flag parsing, with a clear error for a `--config.x=y` override of a key the config lacks."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as error:
    unknown = config_args.unknown_override(argv)
    if unknown is None:
      raise
    sys.exit(f"error: unknown config key {unknown!r} in a --config override ({error})")
  except flags.Error as error:
    sys.exit(f"error: {error}")


def run():
  # First, before the config (and with it numpy or jax) starts threads: on a host CPU, XLA's scratch buffer of
  # each step is then reused (one core) or faulted in by huge pages (more cores: this restarts the process once)
  # rather than page-faulted in afresh page by page (ntm_jax/parallel/host_malloc.py).
  malloc_setting = host_malloc.use_for_host_cpu()
  flags.mark_flags_as_required(["config"])
  app.run(functools.partial(main, malloc_setting=malloc_setting), flags_parser=parse_flags)


if __name__ == "__main__":
  sys.exit(run())

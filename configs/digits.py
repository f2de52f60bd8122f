"""scikit-learn digits (8x8, 17 grey levels): the embedded default data set, trains in minutes on a CPU.

COMMAND:
  python -m ntm_jax.main --config=configs/digits.py --workdir=workdirs/digits
Variants (after a colon, comma-separated):
  ntm (default) | gaussian (NTM with f_T = identity, D8) | tarflow (plain TarFlow, D8)
  conditional   (class-conditional on the digit label)
  smoke         (a few steps of a tiny model: what the tests run)
  steps=N       (number of training steps)
Example: --config=configs/digits.py:tarflow,steps=2000
The base of configs/mnist.py (which changes the data, the model size and the schedule).
"""

import ml_collections

from ntm_jax.config_args import fid_settings, finish_config, parse_model_arg


def base_config(args: dict) -> ml_collections.ConfigDict:
  """The NTM config of the embedded data sets, before the variant and `smoke` are applied."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  # pixel_levels: K of the data (digits have values 0..16), for dequantisation and bits/dim (D7).
  config.data = dict(name="digits", data_dir="", batch_size=64, pixel_levels=17)
  config.model = dict(
      kind="ntm",
      image=dict(height=8, width=8, channels=1, patch_size=2),
      grid=dict(num_steps=4, shift=0.5),
      transporter=dict(num_blocks=2, layers_per_block=2, width=64, head_dim=32, mlp_ratio=4, dropout=0.0,
                       remat="none"),
      predictor=dict(depth=4, width=64, head_dim=32, mlp_ratio=4, markov=False, sigma_floor=0.02, dropout=0.0,
                     num_classes=args["num_classes"], remat="none"),
      dtype="float32",
      param_dtype="float32",
      # Unrolled layers: 1.38x faster on this CPU than jax.lax.scan for these small models (digits NTM
      # forward + backward 209 against 289 ms, benchmarks/layer_stack.py); scan is for deep TPU presets.
      scan_layers=False,
  )
  # Device mesh (ntm_jax.parallel.mesh): -1 fills with the remaining devices; dcn_* axes span TPU slices.
  config.mesh = dict(data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1)
  # --mode=compile: ahead-of-time compilation for a TPU topology (libtpu; `pip install ".[tpu]"`), or "cpu".
  # sample_batch_size 0 = data.batch_size; sampler=False compiles the train step only.
  config.compile = dict(topology="v5e:2x2", num_slices=1, sample_batch_size=0, sampler=True)

  # learning_rate: 1.6e-2 beat 1e-3, 2e-3, 4e-3 and 8e-3 on validation at 1,000 steps (README).
  config.opt = dict(learning_rate=1.6e-2, warmup_steps=200, end_learning_rate_factor=0.01, b1=0.9, b2=0.95,
                    weight_decay=1e-4, clip_norm=1.0, ema_decay=0.999)
  # pairwise_num_steps "4,8,16": the pairwise (t, s) mode of C.7 (needs model.predictor.markov=True).
  config.train = dict(num_steps=args["steps"] or 2800, log_every=100, eval_every=500,
                      checkpoint_every=1000, keep_checkpoints=3, label_dropout=0.1,
                      pairwise_num_steps="")
  config.eval = dict(split="validation", batch_size=360, importance_samples=16, best_metric="bpd_iw")
  # num_steps 0 = the model's T; labels "" = cycle over the classes (conditional models only);
  # denoise = trajectory-score denoising of the result (C.11); inversion of f_T "sequential" (token by token) or
  # "jacobi" (all tokens at once per iteration, until no value moves by more than jacobi_tolerance, at most
  # jacobi_max_iterations per block; 0 = N - 1, which is exact).
  config.sample = dict(num_samples=64, temperature=1.0, guidance_scale=0.0, num_steps=0, seed=0, labels="",
                       denoise=False, use_denoiser=True,
                       inversion="sequential", jacobi_tolerance=1e-4, jacobi_max_iterations=0)
  # --mode=fid_stats / fid: FID, precision and recall with Inception weights the user brings. digits has 1,797
  # images, too few for a full-rank covariance of 2,048 features: FID is for larger data sets (mnist, shapes).
  config.fid = fid_settings()
  # --mode=distill: the light denoiser g(u_0, y) -> x_0 trained on the model's own samples (C.12).
  config.distill = dict(depth=2, width=64, head_dim=32, mlp_ratio=4, attention="auto", num_steps=1000, batch_size=64,
                        learning_rate=1e-3, target="inverse", log_every=100, checkpoint_every=500)
  return config


def get_config(arg=None):
  args = parse_model_arg(arg)
  return finish_config(base_config(args), args)

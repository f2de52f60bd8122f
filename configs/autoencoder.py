"""The autoencoder of latent text-to-image on `shapes`: 32x32x3 scenes <-> 8x8x4 latents.

COMMAND:
  python -m ntm_jax.main --config=configs/autoencoder.py --workdir=workdirs/autoencoder_shapes
Arguments (after a colon, comma-separated): smoke (a few steps of a tiny model: what the tests run),
steps=N, downsample=N (4: 8x8 latents of 32x32 images), latent_channels=N (4), noise_std=X (0.1: the
latent noise augmentation, in units of each channel's std).
The run keeps the EMA parameters of its lowest validation MSE in WORKDIR/best, with the latents' per-channel
mean and scale over the training split (best/latent_stats.json).
"""

import ml_collections

from ntm_jax.config_args import parse_arg


def get_config(arg=None):
  args = parse_arg(arg, smoke=False, steps=0, downsample=4, latent_channels=4, noise_std=0.1)
  config = ml_collections.ConfigDict()
  config.trainer = "autoencoder"
  config.seed = 0
  config.data = dict(name="shapes", data_dir="", batch_size=32, pixel_levels=256)
  config.autoencoder = dict(height=32, width=32, channels=3, downsample=args["downsample"],
                            latent_channels=args["latent_channels"], base_width=32, noise_std=args["noise_std"])
  config.mesh = dict(data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1)
  config.opt = dict(learning_rate=2e-3, warmup_steps=200, end_learning_rate_factor=0.01, b1=0.9, b2=0.99,
                    weight_decay=1e-4, clip_norm=1.0, ema_decay=0.999)
  config.train = dict(num_steps=args["steps"] or 1500, log_every=100, eval_every=500, checkpoint_every=500,
                      keep_checkpoints=3)
  config.eval = dict(split="validation", batch_size=250)
  if args["smoke"]:
    config.autoencoder.base_width = 8
    config.data.batch_size = 8
    config.train.update(num_steps=args["steps"] or 4, log_every=2, eval_every=4, checkpoint_every=2)
    config.eval.batch_size = 200
  return config

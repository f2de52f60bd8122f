"""Text-to-image NTM: model-size presets from a CPU size to several billion parameters.

COMMANDS:
  python -m ntm_jax.main --config=configs/t2i.py:size=base --workdir=DIR --mode=compile \
      --config.compile.topology=v5p:4x4x4
  launch/tpu_vm.sh --tpu NAME --zone ZONE --config=configs/t2i.py:size=large --workdir=gs://BUCKET/DIR
Arguments (after a colon, comma-separated): size=cpu|base|large|xl|3b, res=N (image side, default 32 for
cpu and 256 otherwise; patches of res/16 give 256 tokens), remat=true|false (default: on for xl and 3b),
plus the variants of configs/digits.py.

Status: the presets, the mesh and --mode=compile work today. The text side (a frozen MiniLM encoder whose
token embeddings the predictor attends to as a prefix, captioned data sets such as `shapes`) arrives with
the text-to-image issue; until then `--mode=train` stops at the data set `shapes`, which does not exist
yet, and the compile figures leave out the text prefix (about 32 extra tokens per level).
"""

import ml_collections

from ntm_jax.config_args import apply_model_variant, apply_smoke, parse_model_arg

# size: (width, predictor depth, transporter blocks x layers, head_dim, global batch, mesh, remat)
# remat: without it xl needs 40.7 GiB per chip on v5p:4x4x4 and 29.8 of a v6e chip's 32 on v6e:8x8 (README).
PRESETS = {
    "cpu": (128, 6, (2, 2), 32, 32, {"data": -1, "fsdp": 1, "tensor": 1}, False),
    "base": (768, 12, (2, 4), 64, 256, {"data": 1, "fsdp": -1, "tensor": 1}, False),
    "large": (1024, 24, (2, 4), 64, 256, {"data": 1, "fsdp": -1, "tensor": 1}, False),
    "xl": (2048, 28, (2, 4), 128, 512, {"data": 1, "fsdp": -1, "tensor": 1}, True),
    "3b": (3072, 28, (2, 4), 128, 512, {"data": 1, "fsdp": -1, "tensor": 1}, True),
}


def get_config(arg=None):
  args = parse_model_arg(arg, size="cpu", res=0, remat="")
  if args["size"] not in PRESETS:
    raise ValueError(f"unknown size {args['size']!r}; choose one of {sorted(PRESETS)}")
  width, depth, (blocks, layers), head_dim, batch_size, mesh, remat = PRESETS[args["size"]]
  res = args["res"] or (32 if args["size"] == "cpu" else 256)
  if args["remat"]:
    if args["remat"] not in ("true", "false"):
      raise ValueError(f"remat must be true or false, got {args['remat']!r}")
    remat = args["remat"] == "true"
  if res % 16:
    raise ValueError(f"res must be a multiple of 16 (patches of res/16 give 256 tokens), got {res}")
  num_classes = args["num_classes"]
  on_tpu = args["size"] != "cpu"

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = dict(name="shapes", data_dir="", batch_size=batch_size, num_levels=256)
  model = dict(
      kind="ntm",
      image=dict(height=res, width=res, channels=3, patch_size=res // 16),
      grid=dict(num_steps=4, shift=1.0),
      transporter=dict(num_blocks=blocks, layers_per_block=layers, width=width, head_dim=head_dim, mlp_ratio=4,
                       dropout=0.0, remat=remat),
      predictor=dict(depth=depth, width=width, head_dim=head_dim, mlp_ratio=4, markov=False, sigma_floor=0.02,
                     dropout=0.0, num_classes=num_classes, remat=remat),
      # bf16 matmuls on TPUs (log-dets, mu, sigma and z stay float32, D3); float32 on the CPU (README).
      dtype="bfloat16" if on_tpu else "float32",
      param_dtype="float32",
  )
  config.model = apply_model_variant(model, args["variant"], num_classes)
  config.mesh = dict(mesh, dcn_data=1, dcn_fsdp=1)
  config.compile = dict(topology="v5p:4x4x4" if on_tpu else "v5e:2x2", num_slices=1, sample_batch_size=0)

  config.opt = dict(learning_rate=1e-4 if on_tpu else 2e-3, warmup_steps=1000 if on_tpu else 100,
                    end_learning_rate_factor=0.01, b1=0.9, b2=0.95, weight_decay=1e-4, clip_norm=1.0,
                    ema_decay=0.9999 if on_tpu else 0.999)
  config.train = dict(num_steps=args["steps"] or (400_000 if on_tpu else 2000), log_every=100,
                      eval_every=5000 if on_tpu else 500, checkpoint_every=2000 if on_tpu else 500,
                      keep_checkpoints=3, label_dropout=0.1)
  config.eval = dict(split="validation", batch_size=batch_size, importance_samples=1, best_metric="bpd_iw")
  config.sample = dict(num_samples=64, temperature=1.0, guidance_scale=0.0, num_steps=0, seed=0, labels="",
                       denoise=False, use_denoiser=True)
  config.distill = dict(depth=4 if on_tpu else 2, width=width, head_dim=head_dim, mlp_ratio=4,
                        num_steps=20_000 if on_tpu else 1000, batch_size=batch_size, learning_rate=1e-4,
                        target="inverse", log_every=100, checkpoint_every=1000)

  if args["smoke"]:
    apply_smoke(config, args["steps"])
  return config

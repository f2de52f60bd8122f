"""A jitted sampler over EMA parameters: images in [-1, 1] from an NTM (D6) or the TarFlow baseline.

NTM: x_1 ~ N(0, I), u_T = f_T(x_1) in one pass, T predictor steps in u-space decoded level by level
from a KV cache over levels (optionally with Gaussian guidance), then one KV-cached inversion of f_T.
A flow-matching model (D9) takes T Euler or ancestral steps on the same grid (`sample.sampler`).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from ntm_jax import denoise as denoise_lib
from ntm_jax import data, distill, images, restore, sharding, text_features
from ntm_jax.models import patches
from ntm_jax.models.config import ModelConfig


def make_sample_fn(graphdef, cfg: ModelConfig, num_samples: int, *, temperature: float = 1.0,
                   num_steps: int | None = None, guidance_scale: float = 0.0, denoise: bool = False,
                   denoiser_graphdef=None, out_sharding=None, sampler: str = "euler"):
  """A jitted fn(params, key, labels or None[, denoiser_params]) -> images [num_samples, H, W, C], model space.

  `denoise` (NTM only) inverts every level of the sampled trajectory in one batch and returns the
  trajectory-score estimate of x_0 at the cleanest noisy level (C.11) instead of the sampled x_0.
  With `denoiser_graphdef` (a distilled denoiser, C.12) x_0 = g_phi(u_0, y): no inversion of f_T at all.
  `out_sharding` (for example replicated over a mesh) lets every process of a multi-host job read the images.
  `sampler` ("euler" or "ancestral") is the flow-matching model's; NTM and TarFlow ignore it.
  """
  if (denoise or denoiser_graphdef is not None) and cfg.kind != "ntm":
    raise ValueError("denoising needs an NTM (its trajectory); the TarFlow baseline has none")
  if denoise and denoiser_graphdef is not None:
    raise ValueError("choose one of sample.denoise (score denoising) and the distilled denoiser")
  if cfg.kind == "flow_matching" and guidance_scale:
    raise ValueError("guidance is not implemented for the flow-matching samplers: set sample.guidance_scale=0")

  def sample(params, key, labels, denoiser_params=None):
    model = nnx.merge(graphdef, params)
    if cfg.kind == "tarflow":
      tokens = model.sample(key, num_samples, labels, temperature=temperature)
    elif cfg.kind == "flow_matching":
      tokens = model.sample(key, num_samples, labels, num_steps=num_steps, sampler=sampler, temperature=temperature)
    else:
      distilled = denoiser_graphdef is not None
      out = model.sample_trajectory(key, num_samples, labels, num_steps=num_steps, temperature=temperature,
                                    guidance_scale=guidance_scale, decode_all_levels=denoise,
                                    invert=not distilled)
      if distilled:
        tokens = nnx.merge(denoiser_graphdef, denoiser_params)(out["u"][:, 0], labels)
      else:
        tokens = out["x0"]
      if denoise:
        times = model.time_grid(num_steps, out["x"].dtype)
        tokens = denoise_lib.denoise_trajectory(model, out["x"], times, labels)[:, 0]
    return jnp.clip(patches.unpatchify(tokens, cfg.image), -1.0, 1.0)

  return jax.jit(sample, out_shardings=out_sharding)


def parse_labels(text: str, num_samples: int, num_classes: int):
  """Labels for `num_samples` samples from "3" or "0,1,2" (cycled), or the default cycle over classes."""
  if not num_classes:
    if text:
      raise ValueError(f"sample.labels={text!r} was given but the model is unconditional")
    return None
  values = [int(v) for v in text.split(",") if v.strip()] if text else list(range(num_classes))
  bad = [v for v in values if not -1 <= v < num_classes]
  if bad:
    raise ValueError(f"sample.labels {bad} are outside 0..{num_classes - 1} (or -1 for the null class)")
  return jnp.asarray([values[i % len(values)] for i in range(num_samples)], jnp.int32)


def read_prompts(spec) -> list[str]:
  """Prompts from `sample.prompts` ("a red circle|two blue squares") and/or `sample.prompts_file` (one a line)."""
  prompts = [p.strip() for p in spec.get("prompts", "").split("|") if p.strip()]
  path = spec.get("prompts_file", "")
  if path:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"sample.prompts_file {path!r} does not exist")
    with open(path) as f:
      prompts += [line.strip() for line in f if line.strip()]
  return prompts


def default_prompts(config: ml_collections.ConfigDict, num: int) -> list[str]:
  """Prompts for sample grids when none are given: the fixed evaluation prompts for `shapes`, else the
  captions of the first examples of the evaluation split."""
  if config.data.name == "shapes":
    from ntm_jax import shapes_eval  # pylint: disable=import-outside-toplevel
    return [p.caption() for p in shapes_eval.fixed_prompts()[:num]]
  source = data.load_split(config.data.name, config.eval.split, config.data.data_dir)
  return [text_features.caption_text(source.source[i]["caption"]) for i in range(min(num, source.num_examples))]


def sampling_condition(config: ml_collections.ConfigDict, model_cfg: ModelConfig, num_samples: int):
  """(condition, captions) for `num_samples` samples: class labels from `sample.labels`, or prompts (cycled)
  encoded by the text encoder; captions is the prompt of each sample (None without text)."""
  spec = config.sample
  kind = model_cfg.condition_kind
  if kind != "text":
    if read_prompts(spec):
      raise ValueError("sample.prompts was given but the model is not text-conditional")
    return parse_labels(spec.labels, num_samples, model_cfg.num_classes), None
  if spec.labels:
    raise ValueError("sample.labels was given but the model is text-conditional: use sample.prompts")
  prompts = read_prompts(spec) or default_prompts(config, num_samples)
  captions = [prompts[i % len(prompts)] for i in range(num_samples)]
  max_tokens = config.text.max_tokens
  if config.text.encoder != "minilm":
    raise ValueError("prompts need the MiniLM encoder (text.encoder='minilm'); a model trained on precomputed "
                     "text embeddings samples from embeddings of the same encoder")
  return {k: jnp.asarray(v) for k, v in text_features.encode_prompts(captions, max_tokens).items()}, captions


def sample_checkpoint(config: ml_collections.ConfigDict, workdir: str, checkpoint: str = "best") -> dict:
  """--mode=sample: draws `config.sample.num_samples` images from a checkpoint's EMA parameters.

  If the workdir holds a distilled denoiser (--mode=distill) and `sample.use_denoiser` is on, it replaces
  the inversion of f_T.

  Writes WORKDIR/samples/sample_<step>_T<T>_w<scale>_seed<seed>.png (a grid) and .npz (`images` uint8 and
  `model_space` float32 [B, H, W, C], `labels`, `captions`); returns the paths and the sampling time after compilation.
  """
  mesh = sharding.make_mesh(config.mesh.to_dict())
  graphdef, params, step, model_cfg = restore.restore_ema_params(config, workdir, checkpoint, mesh)
  spec = config.sample
  num_classes = nnx.merge(graphdef, params).num_classes
  labels, captions = sampling_condition(config, model_cfg, spec.num_samples)
  num_steps = spec.num_steps or None
  sampler = spec.get("sampler", "euler")  # flow-matching runs only
  if model_cfg.kind == "tarflow" and num_steps:
    raise ValueError("sample.num_steps applies to NTM; the TarFlow baseline has no trajectory")
  denoiser = None
  if model_cfg.kind == "ntm" and spec.use_denoiser and not spec.denoise and model_cfg.condition_kind != "text":
    denoiser = distill.restore_denoiser(config, workdir, model_cfg.image, num_classes)
  sample_fn = make_sample_fn(graphdef, model_cfg, spec.num_samples, temperature=spec.temperature,
                             num_steps=num_steps, guidance_scale=spec.guidance_scale, denoise=spec.denoise,
                             denoiser_graphdef=denoiser[0] if denoiser else None,
                             out_sharding=NamedSharding(mesh, PartitionSpec()), sampler=sampler)
  key = jax.random.key(spec.seed)
  # The small denoiser is restored unsharded: replicate it onto the model's mesh.
  denoiser_params = jax.device_put(denoiser[1], NamedSharding(mesh, PartitionSpec())) if denoiser else None
  compiled = sample_fn.lower(params, key, labels, denoiser_params).compile()
  start = time.perf_counter()
  model_space = np.asarray(jax.block_until_ready(compiled(params, key, labels, denoiser_params)))
  seconds = time.perf_counter() - start
  uint8 = images.to_uint8(model_space, config.data.num_levels)
  steps_label = num_steps or (model_cfg.grid.num_steps if model_cfg.kind != "tarflow" else 0)
  stem = os.path.join(workdir, "samples", f"sample_{step}_T{steps_label}_w{spec.guidance_scale:g}_seed{spec.seed}"
                      + ("_denoised" if spec.denoise else "") + ("_distilled" if denoiser else "")
                      + (f"_{sampler}" if model_cfg.kind == "flow_matching" else ""))
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    images.save_grid_png(uint8, stem + ".png", scale=4, captions=captions)
    np.savez(stem + ".npz", images=uint8, model_space=model_space.astype(np.float32),
             labels=np.asarray(labels) if labels is not None and captions is None else np.zeros((0,), np.int32),
             captions=np.asarray(captions or [], dtype=str))
  return {"png": stem + ".png", "npz": stem + ".npz", "step": step, "seconds": seconds,
          "images_per_s": spec.num_samples / seconds, "distilled_denoiser_step": denoiser[2] if denoiser else None}

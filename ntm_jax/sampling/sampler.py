"""The jitted sampler over EMA parameters, and `--mode=sample`: images in [-1, 1] from any model (D6).

The sampler is its own program: it restores only the EMA parameters (and a distilled denoiser's, when the
run has one) and shares nothing with training but the models. What a sample is made of is the model's
business (ntm_jax.models.generative): for NTM, x_1 ~ N(0, I), u_T = f_T(x_1) in one pass, T predictor steps
decoded level by level from a KV cache over levels (optionally with Gaussian guidance), then one KV-cached
inversion of f_T, or the distilled denoiser, or trajectory-score denoising; the TarFlow baseline inverts its
flow token by token; flow matching takes T Euler or ancestral steps on the same grid.
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

from ntm_jax import data, latents, models
from ntm_jax.data import text_features
from ntm_jax.data.builders import shapes_prompts
from ntm_jax.models.denoiser import Denoiser
from ntm_jax.parallel import checkpoint
from ntm_jax.parallel import mesh as mesh_lib
from ntm_jax.sampling import images

# config.sample fields that are sampling options, with the value that means "the model's default".
_OPTION_DEFAULTS = {"num_steps": 0, "temperature": 1.0, "guidance_scale": 0.0, "denoise": False, "sampler": "",
                    "inversion": "sequential", "jacobi_tolerance": models.JACOBI_TOLERANCE, "jacobi_max_iterations": 0}


def sample_options(spec, **overrides) -> dict:
  """The sampling options a `config.sample` section (and `overrides`) asks for: only those that differ from
  the default, so a model is asked only for what it is meant to do (and refuses what it cannot)."""
  values = {name: spec.get(name, default) for name, default in _OPTION_DEFAULTS.items()} | overrides
  return {name: value for name, value in values.items() if value != _OPTION_DEFAULTS[name]}


def make_sample_fn(graphdef, num_samples: int, options: dict | None = None, *, denoiser_graphdef=None,
                   out_sharding=None):
  """A jitted fn(params, key, condition or None[, denoiser_params]) -> images [num_samples, H, W, C].

  `options` are the model's sampling options (`sample_options`). With `denoiser_graphdef` (a distilled
  denoiser, C.12) x_0 = g_phi(u_0, y): no inversion of f_T. `out_sharding` (for example replicated over a
  mesh) lets every process of a multi-host job read the images.
  """
  options = dict(options or {})

  def sample(params, key, condition, denoiser_params=None):
    extra = {"denoiser": nnx.merge(denoiser_graphdef, denoiser_params)} if denoiser_graphdef is not None else {}
    images_model_space = nnx.merge(graphdef, params).sample(key, num_samples, condition, **options, **extra)
    return jnp.clip(images_model_space, -1.0, 1.0)

  return jax.jit(sample, out_shardings=out_sharding)


# -- conditions: class labels or prompts ----------------------------------------------------------------
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
  """Prompts for sample grids when none are given: the judge's seen prompts for `shapes`, else the
  captions of the first examples of the evaluation split."""
  if config.data.name == "shapes":
    return [p.caption() for p in shapes_prompts.seen_prompts()[:num]]
  source = data.load_split(config.data.name, config.eval.split, config.data.data_dir)
  return [text_features.caption_text(source.source[i]["caption"]) for i in range(min(num, source.num_examples))]


def sampling_condition(config: ml_collections.ConfigDict, model_cfg: models.ModelConfig, num_samples: int):
  """(condition, captions) for `num_samples` samples: class labels from `sample.labels`, or prompts (cycled)
  encoded by the text encoder; captions is the prompt of each sample (None without text)."""
  spec = config.sample
  if model_cfg.condition_kind != "text":
    if read_prompts(spec):
      raise ValueError("sample.prompts was given but the model is not text-conditional")
    return parse_labels(spec.labels, num_samples, model_cfg.num_classes), None
  if spec.labels:
    raise ValueError("sample.labels was given but the model is text-conditional: use sample.prompts")
  prompts = read_prompts(spec) or default_prompts(config, num_samples)
  captions = [prompts[i % len(prompts)] for i in range(num_samples)]
  if config.text.encoder != "minilm":
    raise ValueError("prompts need the MiniLM encoder (text.encoder='minilm'); a model trained on precomputed "
                     "text embeddings samples from embeddings of the same encoder")
  encoded = text_features.encode_prompts(captions, config.text.max_tokens)
  return {k: jnp.asarray(v) for k, v in encoded.items()}, captions


# -- the distilled denoiser -----------------------------------------------------------------------------
def denoiser_directory(workdir: str) -> str:
  return os.path.join(workdir, "denoiser")


def restore_denoiser(config: ml_collections.ConfigDict, workdir: str, model_cfg: models.ModelConfig):
  """(graphdef, params, step) of the newest distilled denoiser in WORKDIR/denoiser, or None if there is none."""
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Denoiser.for_model(config.distill, model_cfg)))
  params, step = checkpoint.restore_item(denoiser_directory(workdir), abstract)
  return None if params is None else (graphdef, params, step)


def dependent_evaluations(graphdef, params, options: dict, denoiser=None) -> int:
  """The sampling path's count of dependent network evaluations per image (GenerativeModel.dependent_evaluations)."""
  extra = {"denoiser": denoiser[0]} if denoiser else {}
  return nnx.merge(graphdef, params).dependent_evaluations(**options, **extra)


def model_gflops_per_image(graphdef, params, options: dict, denoiser=None, jacobi_iterations=None) -> float:
  """The sampling path's model FLOPs per image in GFLOP, every loop iteration counted
  (GenerativeModel.sample_flops; Jacobi at its cap unless `jacobi_iterations`, all blocks together)."""
  extra = {"denoiser": nnx.merge(*denoiser[:2])} if denoiser else {}
  return nnx.merge(graphdef, params).sample_flops(**options, **extra, jacobi_iterations=jacobi_iterations) / 1e9


def takes_denoiser(model_cfg: models.ModelConfig) -> bool:
  """Whether the model can sample through a distilled denoiser (it lists the option)."""
  return "denoiser" in models.model_class(model_cfg).sample_options


def denoiser_to_use(config: ml_collections.ConfigDict, workdir: str, model_cfg: models.ModelConfig, mesh):
  """(graphdef, params replicated over `mesh`, step) of the run's distilled denoiser where the sampler should use
  it (`sample.use_denoiser` on, no score denoising, and a denoiser trained: --mode=distill); else None."""
  spec = config.sample
  if not spec.get("use_denoiser", False) or spec.denoise or not takes_denoiser(model_cfg):
    return None
  denoiser = restore_denoiser(config, workdir, model_cfg)
  if denoiser is None:
    return None
  # The small denoiser is restored unsharded: replicate it onto the model's mesh.
  return denoiser[0], jax.device_put(denoiser[1], NamedSharding(mesh, PartitionSpec())), denoiser[2]


# -- --mode=sample ----------------------------------------------------------------------------------------
def sample_checkpoint(config: ml_collections.ConfigDict, workdir: str, which: str = "best") -> dict:
  """--mode=sample: draws `config.sample.num_samples` images from a checkpoint's EMA parameters.

  If the workdir holds a distilled denoiser (--mode=distill) and `sample.use_denoiser` is on, it replaces
  the inversion of f_T.

  Writes WORKDIR/samples/sample_<step>_T<T>_w<scale>_seed<seed>.png (a grid) and .npz (`images` uint8 and
  `model_space` float32 [B, H, W, C]: a latent model's latents, `labels`, `captions`); returns the paths
  and the sampling time after compilation (a latent model's decoding included).
  """
  space = latents.space_of(config)  # a latent model's samples are decoded to images
  mesh = mesh_lib.make_mesh(config.mesh.to_dict())
  graphdef, params, step, model_cfg = checkpoint.restore_params(config, workdir, which, mesh)
  spec = config.sample
  condition, captions = sampling_condition(config, model_cfg, spec.num_samples)
  options = sample_options(spec)
  denoiser = denoiser_to_use(config, workdir, model_cfg, mesh)
  replicated = NamedSharding(mesh, PartitionSpec())
  sample_fn = make_sample_fn(graphdef, spec.num_samples, options, denoiser_graphdef=denoiser[0] if denoiser else None,
                             out_sharding=replicated)
  key = jax.random.key(spec.seed)
  denoiser_params = denoiser[1] if denoiser else None
  with mesh_lib.use(mesh):
    compiled = sample_fn.lower(params, key, condition, denoiser_params).compile()
    start = time.perf_counter()
    model_space = np.asarray(jax.block_until_ready(compiled(params, key, condition, denoiser_params)))
    seconds = time.perf_counter() - start
  pixels = space.to_pixels(model_space)  # a latent model's decoder runs here (and compiles the first time)
  if space.decodes:  # time the decode too, after its compilation, so images/s covers it
    start = time.perf_counter()
    pixels = space.to_pixels(model_space)
    seconds += time.perf_counter() - start
  uint8 = images.to_uint8(pixels, space.pixel_levels)
  stem = os.path.join(workdir, "samples", f"sample_{step}_T{spec.num_steps or model_cfg.num_steps}"
                      f"_w{spec.guidance_scale:g}_seed{spec.seed}" + ("_denoised" if spec.denoise else "")
                      + ("_distilled" if denoiser else "") + (f"_{options['sampler']}" if "sampler" in options else ""))
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    images.save_grid_png(uint8, stem + ".png", scale=4, captions=captions)
    np.savez(stem + ".npz", images=uint8, model_space=model_space.astype(np.float32),
             labels=np.asarray(condition) if condition is not None and captions is None else np.zeros((0,), np.int32),
             captions=np.asarray(captions or [], dtype=str))
  result = {"png": stem + ".png", "npz": stem + ".npz", "step": step, "seconds": seconds,
            "images_per_s": spec.num_samples / seconds, "distilled_denoiser_step": denoiser[2] if denoiser else None,
            "dependent_evaluations": dependent_evaluations(graphdef, params, options, denoiser),
            "model_gflops_per_image": model_gflops_per_image(graphdef, params, options, denoiser)}
  if options.get("inversion") == "jacobi" and denoiser is None and not options.get("denoise"):
    # What Jacobi took on these samples (the evaluations above count its cap): the same key, the same u_0.
    count = jax.jit(lambda p, k, c: nnx.merge(graphdef, p).jacobi_iterations(k, spec.num_samples, c, **options))
    with mesh_lib.use(mesh):
      result["jacobi_iterations"] = [int(i) for i in jax.device_get(count(params, key, condition))]
    result["model_gflops_per_image_taken"] = model_gflops_per_image(graphdef, params, options,
                                                                    jacobi_iterations=sum(result["jacobi_iterations"]))
  return result

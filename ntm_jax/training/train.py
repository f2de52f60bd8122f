"""Training: `train_and_evaluate(config, workdir)`, one linear function in banner-marked sections.

The state is one pytree {step, params, opt_state, ema}; the step is a pure function jitted with explicit
shardings over the ('data', 'fsdp', 'tensor') mesh of `config.mesh` (ntm_jax.parallel.mesh): the batch over
data and fsdp, parameters, EMA and AdamW moments over fsdp, heads and MLP units over tensor. Randomness is
`fold_in(seed, step)` and dequantisation (a latent's noise augmentation, in a latent space) happens on
device, so a run resumed from a checkpoint (which also holds the data iterator) computes bit-for-bit the
steps an uninterrupted run would have. The model is trained through its `loss`
(ntm_jax.models.generative), whichever model it is, on the data of its space (ntm_jax.latents).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from ntm_jax import data, latents, models
from ntm_jax.evaluation import bits_per_dim
from ntm_jax.models import conditioning, flow_matching_init
from ntm_jax.models.config import ModelConfig
from ntm_jax.parallel import checkpoint
from ntm_jax.parallel import mesh as mesh_lib
from ntm_jax.sampling import images, sampler
from ntm_jax.training import finetune, metric_writer, preemption
from ntm_jax.training import optimizer as optim
from ntm_jax.training import state as state_lib
from ntm_jax.training.progress import Progress


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or Inf; training stops and the checkpoints on disk stay as they were."""


@dataclasses.dataclass
class TrainingSetup:
  """What the train loop, the sharding tests and `--mode=compile` need: shardings and the jitted step."""

  mesh: jax.sharding.Mesh
  model_cfg: ModelConfig
  graphdef: nnx.GraphDef
  state: dict | None           # None when built with initialise=False (ahead-of-time compilation)
  abstract_state: dict         # ShapeDtypeStructs with the shardings: what a restore or a compile needs
  state_shardings: dict
  batch_sharding: NamedSharding
  step_fn: Callable
  num_params: int
  # Fine-tuning from flow matching (config.init_from): the frozen teacher, whose parameters the step takes
  # as a fourth argument.
  teacher: finetune.Teacher | None = None

  @property
  def step_arguments(self) -> tuple:
    """The step's abstract arguments after the state, batch and key: what `--mode=compile` lowers it with."""
    return (self.teacher.abstract_params,) if self.teacher else ()


def loss_options(config: ml_collections.ConfigDict) -> dict:
  """Options of the model's loss from `config.train`: the pairwise (t, s) mode of C.7 (`pairwise_num_steps`)."""
  spec = config.train.get("pairwise_num_steps", "")
  if not spec:
    return {}
  try:
    choices = tuple(int(v) for v in str(spec).split(",") if v.strip())
  except ValueError:
    raise ValueError(f"train.pairwise_num_steps must list step counts like '4,8,16', got {spec!r}") from None
  if not choices or min(choices) < 1:
    raise ValueError(f"train.pairwise_num_steps must list step counts >= 1, got {spec!r}")
  return {"pairwise_num_steps": choices}


def build_training(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, initialise: bool = True,
                   space: latents.PixelSpace | None = None) -> TrainingSetup:
  """Shards the train state over `mesh`, jits the train step and (if `initialise`) creates the state.

  The state is created inside a jit with sharded outputs, so no device ever holds the whole model. The
  step turns stored examples into model inputs through `space` (pixels by default; a latent run passes its
  LatentSpace).
  """
  space = space or latents.PixelSpace(int(config.data.pixel_levels))
  model_cfg = models.model_config_from_dict(config.model)
  options = loss_options(config)
  models.model_class(model_cfg).check_loss_options(model_cfg, options)
  tx = optim.make_optimizer(config.opt, config.train.num_steps)
  graphdef, abstract = state_lib.abstract_state(model_cfg, tx)
  state_shardings = mesh_lib.state_shardings(abstract, mesh)
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharding = NamedSharding(mesh, mesh_lib.logical_to_spec(("batch",), (config.data.batch_size,), mesh))
  state = None
  if initialise:
    with mesh_lib.use(mesh):
      state = jax.jit(lambda: state_lib.initial_state(model_cfg, tx, config.seed)[1],
                      out_shardings=state_shardings)()
  abstract = mesh_lib.with_shardings(abstract, state_shardings)
  teacher = finetune.read_teacher(config, model_cfg, mesh)
  step_fn = jax.jit(
      functools.partial(
          train_step, graphdef=graphdef, optimizer=tx, space=space,
          label_dropout=config.train.label_dropout, condition_kind=model_cfg.condition_kind,
          ema_decay=config.opt.ema_decay, loss_normaliser=model_cfg.loss_normaliser, loss_options=options,
          teacher=teacher),
      in_shardings=(state_shardings, batch_sharding, replicated) + (
          (jax.tree.map(lambda x: x.sharding, teacher.abstract_params),) if teacher else ()),
      out_shardings=(state_shardings, replicated),
      donate_argnums=(0,))
  num_params = sum(x.size for x in jax.tree.leaves(abstract["params"]))
  return TrainingSetup(mesh, model_cfg, graphdef, state, abstract, state_shardings, batch_sharding, step_fn,
                       num_params, teacher)


def train_step(state, batch, base_key, teacher_params=None, *, graphdef, optimizer, space: latents.PixelSpace,
               label_dropout: float, condition_kind: str, ema_decay: float, loss_normaliser: int,
               loss_options: dict | None = None, teacher: finetune.Teacher | None = None):
  """One AdamW step on the model's loss; returns (new state, metrics). Pure: jit it.

  With a flow-matching `teacher` (and its `teacher_params`), the loss adds the mean alignment of C.8 with
  the teacher's annealed weight.
  """
  key = jax.random.fold_in(base_key, state["step"])
  dequant_key, loss_key, drop_key, dropout_key = jax.random.split(key, 4)
  batch_images = space.to_model(batch["image"], dequant_key)  # dequantised pixels, or noise-augmented latents
  # Drop labels or captions to the null condition with p = label_dropout, for guidance.
  condition = conditioning.drop(drop_key, conditioning.from_batch(batch, condition_kind), label_dropout)

  def loss_fn(params):
    loss, parts = nnx.merge(graphdef, params).loss(loss_key, batch_images, condition, dropout_key=dropout_key,
                                                   **(loss_options or {}))
    if teacher is not None:
      weight, aligned = teacher.alignment_loss(state["step"], parts, condition, teacher_params)
      parts = {**parts, "nll_per_dim": loss, "mean_alignment": aligned, "alignment_weight": weight}
      loss = loss + weight * aligned
    return loss, parts

  (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state,
               "ema": optim.ema_update(state["ema"], params, state["step"], ema_decay)}
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(params),
             "update_norm": optax.tree.norm(updates)}
  for name, value in parts.items():
    if value.ndim == 1:  # per-example parts, reported per dimension like the loss
      metrics[f"loss_parts/{name}"] = jnp.mean(value) / loss_normaliser
    elif value.ndim == 0:  # scalars: the NLL beside the mean alignment and its weight
      metrics[name] = value
  return new_state, metrics


def _write_sample_grid(samples, step, workdir, writer, space: latents.PixelSpace, captions=None):
  grid = images.to_uint8(space.to_pixels(samples), space.pixel_levels)
  os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
  path = images.save_grid_png(grid, os.path.join(workdir, "samples", f"step_{step:07d}.png"), scale=4,
                              captions=captions)
  writer.write_images(step, {"samples": images.make_grid(grid)[None]})
  return path


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from `workdir` if it holds checkpoints) and returns the last evaluation results."""
  # ---------------------------------------------------------------------------------------------
  # Config, logging and workdir.
  # ---------------------------------------------------------------------------------------------
  model_cfg = models.model_config_from_dict(config.model)
  num_steps = config.train.num_steps
  space = latents.space_of(config)  # pixels, or the latents of config.latent.autoencoder
  space.check_metric(config.eval.best_metric)
  os.makedirs(workdir, exist_ok=True)
  writer = metric_writer.create_writer(workdir)
  is_main = jax.process_index() == 0
  logging.info("process %d of %d holds %d of %d devices", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())

  # ---------------------------------------------------------------------------------------------
  # Mesh, sharded model and optimizer state, the jitted step.
  # ---------------------------------------------------------------------------------------------
  mesh = mesh_lib.make_mesh(config.mesh.to_dict())
  logging.info("mesh %s over %d devices", dict(mesh.shape), mesh.size)
  batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  data.check_batch_size(config.data.batch_size, batch_devices)
  setup = build_training(config, mesh, space=space)
  graphdef, state, batch_sharding, step_fn = setup.graphdef, setup.state, setup.batch_sharding, setup.step_fn
  logging.info("model %s with %d parameters", model_cfg.kind, setup.num_params)

  # ---------------------------------------------------------------------------------------------
  # Data.
  # ---------------------------------------------------------------------------------------------
  train_data, eval_data = (space.load_split(config, split, model_cfg) for split in ("train", config.eval.split))
  train_iter = data.train_iterator(train_data, config.data.batch_size, config.seed, batch_devices)
  base_key = jax.random.key(config.seed)

  # ---------------------------------------------------------------------------------------------
  # Resume: the newest checkpoint in the workdir that restores, else start from scratch.
  # ---------------------------------------------------------------------------------------------
  checkpointer = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                         max_to_keep=config.train.keep_checkpoints)
  restored, restored_step = checkpointer.restore_latest(setup.abstract_state, train_iter)
  if restored is not None:
    state = restored
    logging.info("resumed from step %d", restored_step)
    print(f"resumed from checkpoint step {restored_step} in {checkpointer.directory}", flush=True)
  start_step = int(jax.device_get(state["step"]))
  if is_main:  # only now: a refused checkpoint (another model's) keeps the config it was trained with
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  teacher_args = ()
  if setup.teacher is not None:
    # The frozen flow-matching model: the mean-alignment teacher on every step, and the start at step 0.
    teacher = setup.teacher.with_params(config.init_from.checkpoint, mesh)
    teacher_args = (teacher.params,)
    if start_step == 0:
      params = flow_matching_init.ntm_params_from_flow_matching(graphdef, state["params"], teacher.graphdef,
                                                                teacher.params)
      params = jax.device_put(params, setup.state_shardings["params"])
      state = {**state, "params": params, "ema": jax.tree.map(jnp.copy, params)}
      print(f"initialised from flow-matching step {teacher.step} ({config.init_from.checkpoint}) in "
            f"{teacher.workdir}", flush=True)
  if start_step == 0:
    writer.write_hparams({"num_parameters": setup.num_params, "kind": model_cfg.kind})

  # ---------------------------------------------------------------------------------------------
  # Evaluation and samples (EMA parameters).
  # ---------------------------------------------------------------------------------------------
  bound_fn = bits_per_dim.make_bound_fn(graphdef, space, config.eval.importance_samples, mesh)
  # The evaluation grids: the config's temperature, sampler and (for conditional models) guidance; the
  # model's own T, no denoising (--mode=sample honours every option).
  grid_options = sampler.sample_options(config.sample, num_steps=0, denoise=False)
  if model_cfg.condition_kind == "none":
    grid_options.pop("guidance_scale", None)
  sample_fn = sampler.make_sample_fn(graphdef, config.sample.num_samples, grid_options,
                                     out_sharding=NamedSharding(mesh, PartitionSpec()))
  condition_for_grid, captions_for_grid = (sampler.sampling_condition(config, model_cfg, config.sample.num_samples)
                                           if config.sample.num_samples else (None, None))
  best = checkpoint.BestCheckpoint(os.path.join(workdir, "best"), config.eval.best_metric)

  def run_eval(step):
    results = bits_per_dim.evaluate_bits_per_dim(
        graphdef, state["ema"], model_cfg, eval_data, space=space, batch_size=config.eval.batch_size,
        importance_samples=config.eval.importance_samples, seed=config.seed, bound_fn=bound_fn, mesh=mesh)
    writer.write_scalars(step, {f"eval/{config.eval.split}/{k}": v for k, v in results.items()})
    is_best = best.offer(step, state["ema"], results)
    prefix = space.metric_prefix
    print(f"step {step}: {config.eval.split} {space.unit} {results[prefix + '_elbo']:.4f} +- "
          f"{results[prefix + '_elbo_se']:.4f} (ELBO), {results[prefix + '_iw']:.4f} "
          f"(IW, M={config.eval.importance_samples})"
          f"{' (best so far, kept)' if is_best else f' (best stays step {best.best_step()})'}", flush=True)
    if config.sample.num_samples:
      # Every process takes part in the sharded sampler; only process 0 writes the grid.
      grid = sample_fn(state["ema"], jax.random.fold_in(base_key, step), condition_for_grid)
      if is_main:
        logging.info("wrote %s", _write_sample_grid(grid, step, workdir, writer, space, captions_for_grid))
    return results

  # ---------------------------------------------------------------------------------------------
  # Train loop.
  # ---------------------------------------------------------------------------------------------
  learning_rate = optim.learning_rate_schedule(config.opt, num_steps)
  last_saved = restored_step
  results = {}
  progress = Progress(num_steps)
  preempted_at = None
  try:
    # Under the mesh and its rules, the models' activation constraints take effect.
    with mesh_lib.use(mesh), preemption.PreemptionWatch() as preemption_watch:
      if start_step == 0:
        results = run_eval(0)
      for step in range(start_step + 1, num_steps + 1):
        local_batch = next(train_iter)
        batch = {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in local_batch.items()}
        state, metrics = step_fn(state, batch, base_key, *teacher_args)
        loss = float(jax.device_get(metrics["loss"]))
        if not np.isfinite(loss):
          saved = (f"The last good checkpoint (step {last_saved}) in {checkpointer.directory} was left as it was."
                   if last_saved is not None else "No checkpoint had been saved yet.")
          raise NonFiniteLossError(f"the loss is {loss} at step {step}; training stopped. {saved}")
        progress.tick()
        if step % config.train.log_every == 0 or step == num_steps:
          metrics = jax.device_get(metrics)
          rates = progress.report(step)
          metrics.update(learning_rate=learning_rate(step), **rates)
          writer.write_scalars(step, {f"train/{k}": v for k, v in metrics.items()})
          aligned = (f" (nll {metrics['nll_per_dim']:.4f}, mean alignment {metrics['mean_alignment']:.5f} x "
                     f"{metrics['alignment_weight']:.3f})" if "mean_alignment" in metrics else "")
          print(f"step {step}/{num_steps} loss {loss:.4f}{aligned} | {Progress.line(rates)}", flush=True)
        # SIGTERM (a preemptible VM about to go): every process saves this step and stops.
        preempted = step < num_steps and preemption_watch.reached(step)
        if preempted or step % config.train.checkpoint_every == 0 or step == num_steps:
          checkpointer.save(step, state, train_iter, force=True)
          last_saved = step
        if preempted:
          preempted_at = step
          break
        if step % config.train.eval_every == 0 or step == num_steps:
          results = run_eval(step)
  finally:
    checkpointer.wait_until_finished()  # the preemption checkpoint is on disk before the process goes
    writer.flush()
  if preempted_at is not None:
    raise preemption.Preempted(preempted_at, checkpointer.directory)
  if is_main and results:
    with open(os.path.join(workdir, "eval_results.json"), "w") as f:
      json.dump({"step": num_steps, "split": config.eval.split, **results}, f, indent=2)
  return results

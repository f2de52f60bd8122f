"""Training: `train_and_evaluate(config, workdir)`, one linear function in banner-marked sections.

The state is one pytree {step, params, opt_state, ema}; the step is a pure function jitted with explicit
shardings over the ('data', 'fsdp', 'tensor') mesh of `config.mesh` (ntm_jax.sharding): the batch over data
and fsdp, parameters, EMA and AdamW moments over fsdp, heads and MLP units over tensor. Randomness is
`fold_in(seed, step)` and dequantisation happens on device, so a run resumed from a checkpoint (which
also holds the data iterator) computes bit-for-bit the steps an uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from ntm_jax import (bits, conditioning, data, evaluate, from_flow_matching, images, metric_writer, optim, restore,
                     sample, sharding, train_state)
from ntm_jax.best_checkpoint import BestCheckpoint
from ntm_jax.checkpoint import Checkpointer
from ntm_jax.models import model_config_from_dict
from ntm_jax.models.config import ModelConfig


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
  optimizer: optax.GradientTransformation
  num_classes: int
  condition_kind: str  # "none", "label" or "text"
  num_params: int
  # Fine-tuning from flow matching (config.init_from): the frozen teacher the step takes as a 4th argument
  # (its config and graphdef here; its parameters as ShapeDtypeStructs with their shardings).
  teacher: from_flow_matching.FlowMatchingRun | None = None
  teacher_abstract_params: object = None

  @property
  def step_arguments(self) -> tuple:
    """The step's abstract arguments after the state: what `--mode=compile` lowers it with."""
    return (self.teacher_abstract_params,) if self.teacher else ()


def build_training(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                   initialise: bool = True) -> TrainingSetup:
  """Shards the train state over `mesh`, jits the train step and (if `initialise`) creates the state.

  The state is created inside a jit with sharded outputs, so no device ever holds the whole model.
  """
  model_cfg = model_config_from_dict(config.model)
  optimizer = optim.make_optimizer(config.opt, config.train.num_steps)
  graphdef, abstract = train_state.abstract_state(model_cfg, optimizer)
  state_shardings = sharding.state_shardings(abstract, mesh)
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharding = NamedSharding(mesh, sharding.logical_to_spec(("batch",), (config.data.batch_size,), mesh))
  state = None
  if initialise:
    with jax.set_mesh(mesh):
      state = jax.jit(lambda: train_state.initial_state(model_cfg, optimizer, config.seed)[1],
                      out_shardings=state_shardings)()
  abstract = sharding.with_shardings(abstract, state_shardings)
  teacher, teacher_abstract, alignment = _teacher(config, model_cfg, mesh)
  step_fn = jax.jit(
      functools.partial(
          train_step, graphdef=graphdef, optimizer=optimizer, num_levels=config.data.num_levels,
          label_dropout=config.train.label_dropout, condition_kind=model_cfg.condition_kind,
          ema_decay=config.opt.ema_decay, loss_dims=_loss_dims(model_cfg),
          loss_options=_loss_options(config, model_cfg),
          teacher_graphdef=teacher.graphdef if teacher else None, alignment=alignment),
      in_shardings=(state_shardings, batch_sharding, replicated) + (
          (jax.tree.map(lambda x: x.sharding, teacher_abstract),) if teacher else ()),
      out_shardings=(state_shardings, replicated),
      donate_argnums=(0,))
  num_params = sum(x.size for x in jax.tree.leaves(abstract["params"]))
  return TrainingSetup(mesh, model_cfg, graphdef, state, abstract, state_shardings, batch_sharding, step_fn,
                       optimizer, model_cfg.num_classes, model_cfg.condition_kind, num_params, teacher,
                       teacher_abstract)


def _loss_options(config, model_cfg: ModelConfig) -> dict:
  """Keyword arguments of the model's loss: the pairwise (t, s) mode of C.7 (`train.pairwise_num_steps`)."""
  spec = config.train.get("pairwise_num_steps", "")
  if not spec:
    return {}
  try:
    choices = tuple(int(v) for v in str(spec).split(",") if v.strip())
  except ValueError:
    raise ValueError(f"train.pairwise_num_steps must list step counts like '4,8,16', got {spec!r}") from None
  if model_cfg.kind != "ntm":
    raise ValueError(f"train.pairwise_num_steps is an NTM training mode; model.kind is {model_cfg.kind!r}")
  if not model_cfg.predictor.markov:
    raise ValueError("train.pairwise_num_steps needs model.predictor.markov=True (one transition sees only x_t)")
  if not choices or min(choices) < 1:
    raise ValueError(f"train.pairwise_num_steps must list step counts >= 1, got {spec!r}")
  return {"pairwise_num_steps": choices}


def _teacher(config, model_cfg: ModelConfig, mesh):
  """(run, its parameters as sharded ShapeDtypeStructs, (lambda_0, anneal steps)) of `config.init_from.workdir`,
  or (None, None, None). The parameters themselves are restored by the train loop (a compile needs only shapes).
  """
  init_from = config.get("init_from")
  if not init_from or not init_from.workdir:
    return None, None, None
  run = from_flow_matching.read_run(init_from.workdir)
  from_flow_matching.check_compatible(model_cfg, run.model_cfg)
  run.graphdef, abstract = train_state.abstract_state(run.model_cfg, optim.make_optimizer(run.config.opt, 1))
  params = sharding.with_shardings(abstract["ema"], sharding.param_shardings(abstract["ema"], mesh))
  anneal_steps = init_from.alignment_anneal_steps or config.train.num_steps
  return run, params, (float(init_from.alignment_weight), int(anneal_steps))


def train_step(state, batch, base_key, teacher_params=None, *, graphdef, optimizer, num_levels: int,
               label_dropout: float, condition_kind: str, ema_decay: float, loss_dims: int,
               loss_options: dict | None = None, teacher_graphdef=None, alignment=None):
  """One AdamW step on the exact NLL; returns (new state, metrics). Pure: jit it.

  With a flow-matching `teacher_graphdef` (and its `teacher_params`), the loss adds the mean alignment of
  C.8 with weight alignment[0] cosine-annealed to 0 over alignment[1] steps.
  """
  key = jax.random.fold_in(base_key, state["step"])
  dequant_key, loss_key, drop_key, dropout_key = jax.random.split(key, 4)
  batch_images = bits.dequantize(batch["image"], dequant_key, num_levels)
  # Drop labels or captions to the null condition with p = label_dropout, for guidance.
  labels = conditioning.drop(drop_key, conditioning.from_batch(batch, condition_kind), label_dropout)

  def loss_fn(params):
    loss, parts = nnx.merge(graphdef, params).loss(loss_key, batch_images, labels, dropout_key=dropout_key,
                                                   **(loss_options or {}))
    if teacher_graphdef is not None:
      teacher = nnx.merge(teacher_graphdef, teacher_params)
      weight = from_flow_matching.alignment_weight(state["step"], *alignment)
      aligned = from_flow_matching.mean_alignment_loss(teacher, parts, labels)
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
      metrics[f"loss_parts/{name}"] = jnp.mean(value) / loss_dims
    elif value.ndim == 0:  # scalars: the NLL beside the mean alignment and its weight
      metrics[name] = value
  return new_state, metrics


def _loss_dims(model_cfg: ModelConfig) -> int:
  levels = model_cfg.grid.num_steps + 1 if model_cfg.kind == "ntm" else 1  # flow matching: one x_t
  return levels * model_cfg.image.num_dims


def _write_sample_grid(samples, step, workdir, writer, num_levels, captions=None):
  grid = images.to_uint8(jax.device_get(samples), num_levels)
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
  model_cfg = model_config_from_dict(config.model)
  num_steps, num_levels = config.train.num_steps, config.data.num_levels
  os.makedirs(workdir, exist_ok=True)
  writer = metric_writer.create_writer(workdir)
  is_main = jax.process_index() == 0
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  logging.info("process %d of %d holds %d of %d devices", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())

  # ---------------------------------------------------------------------------------------------
  # Mesh, sharded model and optimizer state, the jitted step.
  # ---------------------------------------------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh.to_dict())
  logging.info("mesh %s over %d devices", dict(mesh.shape), mesh.size)
  batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  data.check_batch_size(config.data.batch_size, batch_devices)
  setup = build_training(config, mesh)
  graphdef, state, batch_sharding, step_fn = setup.graphdef, setup.state, setup.batch_sharding, setup.step_fn
  conditional = setup.condition_kind != "none"
  logging.info("model %s with %d parameters", model_cfg.kind, setup.num_params)

  # ---------------------------------------------------------------------------------------------
  # Data.
  # ---------------------------------------------------------------------------------------------
  train_data = data.load_split(config.data.name, "train", config.data.data_dir)
  data.check_matches_config(train_data, model_cfg.image, config.data.name)
  if setup.condition_kind == "label" and not train_data.has_labels:
    raise ValueError(f"the model is class-conditional but data set {config.data.name!r} has no labels")
  eval_data = data.load_split(config.data.name, config.eval.split, config.data.data_dir)
  if setup.condition_kind == "text":
    train_data, eval_data = (data.with_text_features(d, config.data.name, config.text.encoder,
                                                     config.text.max_tokens) for d in (train_data, eval_data))
  train_iter = data.train_iterator(train_data, config.data.batch_size, config.seed, batch_devices)
  base_key = jax.random.key(config.seed)

  # ---------------------------------------------------------------------------------------------
  # Resume: the newest checkpoint in the workdir that restores, else start from scratch.
  # ---------------------------------------------------------------------------------------------
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.train.keep_checkpoints)
  restored, restored_step = checkpointer.restore_latest(setup.abstract_state, train_iter)
  if restored is not None:
    state = restored
    logging.info("resumed from step %d", restored_step)
    print(f"resumed from checkpoint step {restored_step} in {checkpointer.directory}", flush=True)
  start_step = int(jax.device_get(state["step"]))
  teacher_args = ()
  if setup.teacher is not None:
    # The frozen flow-matching model: the mean-alignment teacher on every step, and the start at step 0.
    teacher = from_flow_matching.restore_params(setup.teacher, config.init_from.checkpoint, mesh)
    teacher_args = (teacher.params,)
    if start_step == 0:
      params = from_flow_matching.ntm_params_from_flow_matching(graphdef, state["params"], teacher.graphdef,
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
  bound_fn = evaluate.make_bound_fn(graphdef, model_cfg, num_levels, config.eval.importance_samples, mesh)
  sample_fn = sample.make_sample_fn(graphdef, model_cfg, config.sample.num_samples,
                                    temperature=config.sample.temperature,
                                    guidance_scale=config.sample.guidance_scale if conditional else 0.0,
                                    out_sharding=NamedSharding(mesh, PartitionSpec()),
                                    sampler=config.sample.get("sampler", "euler"))
  labels_for_grid, captions_for_grid = sample.sampling_condition(config, model_cfg, config.sample.num_samples)

  best = BestCheckpoint(os.path.join(workdir, "best"), config.eval.best_metric)

  def run_eval(step):
    results = evaluate.evaluate_bits_per_dim(
        graphdef, state["ema"], model_cfg, eval_data, num_levels=num_levels, batch_size=config.eval.batch_size,
        importance_samples=config.eval.importance_samples, seed=config.seed, bound_fn=bound_fn, mesh=mesh)
    writer.write_scalars(step, {f"eval/{config.eval.split}/{k}": v for k, v in results.items()})
    is_best = best.offer(step, state["ema"], results)
    print(f"step {step}: {config.eval.split} bits/dim {results['bpd_elbo']:.4f} +- {results['bpd_elbo_se']:.4f} "
          f"(ELBO), {results['bpd_iw']:.4f} (IW, M={config.eval.importance_samples})"
          f"{' (best so far, kept)' if is_best else f' (best stays step {best.best_step()})'}", flush=True)
    if config.sample.num_samples:
      # Every process takes part in the sharded sampler; only process 0 writes the grid.
      grid = sample_fn(state["ema"], jax.random.fold_in(base_key, step), labels_for_grid)
      if is_main:
        logging.info("wrote %s", _write_sample_grid(grid, step, workdir, writer, num_levels, captions_for_grid))
    return results

  # ---------------------------------------------------------------------------------------------
  # Train loop.
  # ---------------------------------------------------------------------------------------------
  learning_rate = optim.learning_rate_schedule(config.opt, num_steps)
  last_saved = restored_step
  results = {}
  window_start, window_steps = time.perf_counter(), 0
  try:
    # Under the mesh, the models' activation constraints (sharding.constrain) take effect.
    with jax.set_mesh(mesh):
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
        window_steps += 1
        if step % config.train.log_every == 0 or step == num_steps:
          metrics = jax.device_get(metrics)
          elapsed = time.perf_counter() - window_start
          steps_per_sec = window_steps / elapsed
          eta = (num_steps - step) / steps_per_sec
          metrics.update(learning_rate=learning_rate(step),
                         steps_per_sec=steps_per_sec, eta_minutes=eta / 60)
          writer.write_scalars(step, {f"train/{k}": v for k, v in metrics.items()})
          aligned = (f" (nll {metrics['nll_per_dim']:.4f}, mean alignment {metrics['mean_alignment']:.5f} x "
                     f"{metrics['alignment_weight']:.3f})" if "mean_alignment" in metrics else "")
          print(f"step {step}/{num_steps} loss {loss:.4f}{aligned} | {steps_per_sec:.2f} steps/s | "
                f"ETA {eta / 60:.1f} min", flush=True)
          window_start, window_steps = time.perf_counter(), 0
        if step % config.train.checkpoint_every == 0 or step == num_steps:
          checkpointer.save(step, state, train_iter, force=True)
          last_saved = step
        if step % config.train.eval_every == 0 or step == num_steps:
          results = run_eval(step)
  finally:
    checkpointer.wait_until_finished()
    writer.flush()
  if is_main and results:
    with open(os.path.join(workdir, "eval_results.json"), "w") as f:
      json.dump({"step": num_steps, "split": config.eval.split, **results}, f, indent=2)
  return results


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, split: str = "test",
                        checkpoint: str = "best") -> dict:
  """Bits/dim over the full `split` of the EMA parameters of the `best` (by validation) or `latest` step."""
  mesh = sharding.make_mesh(config.mesh.to_dict())
  graphdef, params, step, model_cfg = restore.restore_ema_params(config, workdir, checkpoint, mesh)
  source = data.load_split(config.data.name, split, config.data.data_dir)
  data.check_matches_config(source, model_cfg.image, config.data.name)
  if model_cfg.condition_kind == "text":
    source = data.with_text_features(source, config.data.name, config.text.encoder, config.text.max_tokens)
  results = evaluate.evaluate_bits_per_dim(
      graphdef, params, model_cfg, source, num_levels=config.data.num_levels,
      batch_size=config.eval.batch_size, importance_samples=config.eval.importance_samples, seed=config.seed,
      mesh=mesh)
  results.update(step=step, split=split, checkpoint=checkpoint)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, f"eval_{split}.json"), "w") as f:
      json.dump(results, f, indent=2)
  return results

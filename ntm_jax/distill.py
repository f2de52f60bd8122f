"""The denoiser-distillation loop (NTM.md C.12), `--mode=distill`: g_phi(u_0, y) -> x_0 from the NTM's own samples.

No training data is read. Each step draws a fresh batch of trajectories from the trained NTM (EMA parameters
of its best checkpoint) and regresses g_phi(u_0) on the target, by mean squared error in x-space:
  target = "inverse"   the exact inversion f_T^-1(u_0): g_phi replaces the autoregressive inversion;
  target = "denoised"  the trajectory-score estimate of x_0 (C.11), as in the paper.
The denoiser has its own Orbax checkpoints (WORKDIR/denoiser, resumed automatically) and writes its metrics
under `distill/` to the run's TensorBoard and metrics.jsonl. Once it exists, --mode=sample uses it.
"""

from __future__ import annotations

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from ntm_jax import denoise, metric_writer, optim, restore
from ntm_jax.checkpoint import Checkpointer
from ntm_jax.models.denoiser import Denoiser, DenoiserConfig

TARGETS = ("inverse", "denoised")


def build_denoiser(config: ml_collections.ConfigDict, image, num_classes: int, seed: int = 0) -> Denoiser:
  spec = config.distill
  cfg = DenoiserConfig(depth=spec.depth, width=spec.width, head_dim=spec.head_dim, mlp_ratio=spec.mlp_ratio,
                       num_classes=num_classes)
  return Denoiser(cfg, image.num_tokens, image.token_dim, rngs=nnx.Rngs(seed))


def initial_state(denoiser: Denoiser, optimizer):
  graphdef, params = nnx.split(denoiser)
  return graphdef, {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(params)}


def restore_denoiser(config: ml_collections.ConfigDict, workdir: str, image, num_classes: int):
  """(graphdef, params, step) of the newest denoiser checkpoint in WORKDIR/denoiser, or None if there is none."""
  directory = os.path.join(workdir, "denoiser")
  if not os.path.isdir(directory):
    return None
  optimizer = optim.make_optimizer(_optimizer_settings(config), config.distill.num_steps)
  graphdef, state = initial_state(build_denoiser(config, image, num_classes), optimizer)
  restored, step = Checkpointer(directory, max_to_keep=2).restore_latest(jax.eval_shape(lambda: state))
  return None if restored is None else (graphdef, restored["params"], step)


def _optimizer_settings(config):
  """The model's AdamW settings with the distillation learning rate."""
  settings = ml_collections.ConfigDict(config.opt.to_dict())
  settings.learning_rate = config.distill.learning_rate
  return settings


def teacher_batch(model, key, batch_size: int, num_classes: int, target: str, temperature: float):
  """(u_0, x_0 target, labels) for one batch of the NTM's own samples."""
  label_key, sample_key = jax.random.split(key)
  labels = jax.random.randint(label_key, (batch_size,), 0, num_classes) if num_classes else None
  out = model.sample_trajectory(sample_key, batch_size, labels, temperature=temperature,
                                decode_all_levels=target == "denoised")
  if target == "denoised":
    x0 = denoise.denoise_trajectory(model, out["x"], model.time_grid(dtype=out["x"].dtype), labels)[:, 0]
  else:
    x0 = out["x0"]
  return jax.lax.stop_gradient(out["u"][:, 0]), jax.lax.stop_gradient(x0), labels


def make_step_fns(graphdef, den_graphdef, optimizer, teacher):
  """Jitted (train step, held-out errors) of the distillation; `teacher(model, key)` gives (u_0, x_0, labels)."""

  @functools.partial(jax.jit, donate_argnums=(0,))
  def step_fn(state, ntm_params, key):
    u0, x0, labels = teacher(nnx.merge(graphdef, ntm_params), key)

    def loss_fn(den_params):
      return jnp.mean(jnp.square(nnx.merge(den_graphdef, den_params)(u0, labels) - x0))

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    new_state = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
                 "opt_state": opt_state}
    return new_state, {"mse": loss, "grad_norm": optax.tree.norm(grads)}

  @jax.jit
  def held_out_errors(den_params, ntm_params, key):
    u0, x0, labels = teacher(nnx.merge(graphdef, ntm_params), key)
    predicted = nnx.merge(den_graphdef, den_params)(u0, labels)
    return {"mse": jnp.mean(jnp.square(predicted - x0)), "identity_mse": jnp.mean(jnp.square(u0 - x0))}

  return step_fn, held_out_errors


def distill(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the distilled denoiser of the NTM in `workdir`; returns held-out errors."""
  spec = config.distill
  if spec.target not in TARGETS:
    raise ValueError(f"distill.target must be one of {TARGETS}, got {spec.target!r}")
  graphdef, params, ntm_step, model_cfg = restore.restore_ema_params(config, workdir, "best")
  if model_cfg.kind != "ntm":
    raise ValueError(f"distillation needs an NTM checkpoint (a u-space trajectory); this one is {model_cfg.kind!r}")
  if model_cfg.condition_kind == "text":
    raise NotImplementedError("distilling a text-conditional NTM is not implemented yet (the denoiser takes "
                              "class labels only); sample it with the exact inversion")
  num_classes = nnx.merge(graphdef, params).num_classes
  optimizer = optim.make_optimizer(_optimizer_settings(config), spec.num_steps)
  den_graphdef, state = initial_state(build_denoiser(config, model_cfg.image, num_classes, config.seed),
                                       optimizer)
  checkpointer = Checkpointer(os.path.join(workdir, "denoiser"), max_to_keep=2)
  restored, restored_step = checkpointer.restore_latest(jax.eval_shape(lambda: state))
  if restored is not None:
    state = restored
    print(f"resumed the denoiser from step {restored_step} in {checkpointer.directory}", flush=True)

  teacher = functools.partial(teacher_batch, batch_size=spec.batch_size, num_classes=num_classes,
                              target=spec.target, temperature=config.sample.temperature)
  step_fn, held_out_errors = make_step_fns(graphdef, den_graphdef, optimizer, teacher)

  writer = metric_writer.create_writer(workdir)
  base_key = jax.random.fold_in(jax.random.key(config.seed), 1)
  start_step = int(jax.device_get(state["step"]))
  window_start, window_steps = time.perf_counter(), 0
  try:
    for step in range(start_step + 1, spec.num_steps + 1):
      state, metrics = step_fn(state, params, jax.random.fold_in(base_key, step))
      window_steps += 1
      if step % spec.log_every == 0 or step == spec.num_steps:
        metrics = jax.device_get(metrics)
        steps_per_sec = window_steps / (time.perf_counter() - window_start)
        eta = (spec.num_steps - step) / steps_per_sec
        writer.write_scalars(step, {f"distill/{k}": v for k, v in metrics.items()}
                             | {"distill/steps_per_sec": steps_per_sec})
        print(f"distill step {step}/{spec.num_steps} mse {float(metrics['mse']):.5f} | {steps_per_sec:.2f} "
              f"steps/s | ETA {eta / 60:.1f} min", flush=True)
        window_start, window_steps = time.perf_counter(), 0
      if step % spec.checkpoint_every == 0 or step == spec.num_steps:
        checkpointer.save(step, state, None, force=True)
  finally:
    checkpointer.wait_until_finished()
    writer.flush()
  # Held out: fresh NTM samples (a key the training steps never used).
  held_out_key = jax.random.fold_in(jax.random.key(config.seed), 2)
  errors = jax.device_get(held_out_errors(state["params"], params, held_out_key))
  results = {"ntm_step": ntm_step, "denoiser_step": int(jax.device_get(state["step"])), "target": spec.target,
             "held_out_mse": float(errors["mse"]), "held_out_identity_mse": float(errors["identity_mse"])}
  writer.write_scalars(results["denoiser_step"], {"distill/held_out_mse": results["held_out_mse"]})
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "denoiser_results.json"), "w") as f:
      json.dump(results, f, indent=2)
  return results

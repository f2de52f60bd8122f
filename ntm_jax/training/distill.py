"""The denoiser-distillation loop (NTM.md C.12), `--mode=distill`: g_phi(u_0, y) -> x_0 from the NTM's own samples.

No images are read. Each step draws a fresh batch of trajectories from the trained NTM (EMA parameters of its
best checkpoint, `GenerativeModel.distillation_batch`) and regresses g_phi(u_0) on the target, by mean squared
error in x-space. A class model's labels are drawn uniformly; a text model's captions are drawn from those of
its training split (a bank of the text features of up to `distill.caption_bank` examples, so a caption comes as
often as in the data), each replaced by the empty caption with probability train.label_dropout, so the
denoiser also learns the unconditional samples that guidance mixes in. Targets:
  target = "inverse"   the exact inversion f_T^-1(u_0): g_phi replaces the autoregressive inversion;
  target = "denoised"  the trajectory-score estimate of x_0 (C.11), as in the paper.
The denoiser has its own Orbax checkpoints (WORKDIR/denoiser, resumed automatically) and writes its metrics
under `distill/` to the run's TensorBoard and metrics.jsonl. Once it exists, --mode=sample uses it.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from ntm_jax import latents
from ntm_jax.models import conditioning
from ntm_jax.models.denoiser import Denoiser
from ntm_jax.models.ntm import check_distillation_target
from ntm_jax.parallel import checkpoint
from ntm_jax.sampling import sampler
from ntm_jax.training import metric_writer
from ntm_jax.training import optimizer as optim
from ntm_jax.training.progress import Progress

def initial_state(denoiser, optimizer):
  graphdef, params = nnx.split(denoiser)
  return graphdef, {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(params)}


def _optimizer_settings(config):
  """The model's AdamW settings with the distillation learning rate."""
  settings = ml_collections.ConfigDict(config.opt.to_dict())
  settings.learning_rate = config.distill.learning_rate
  return settings


def teacher_batch(model, key, batch_size: int, num_classes: int, target: str, temperature: float,
                  captions: dict | None = None, caption_dropout: float = 0.0):
  """(u_0, x_0 target, condition) for one batch of the model's own samples: labels drawn uniformly, or captions
  drawn from the bank `captions` (`caption_bank`), each dropped to the empty caption with probability
  `caption_dropout`."""
  label_key, sample_key = jax.random.split(key)
  if captions is not None:
    row_key, drop_key = jax.random.split(label_key)
    examples = captions["rows"]
    rows = examples[jax.random.randint(row_key, (batch_size,), 0, examples.shape[0])]
    condition = conditioning.drop(drop_key, jax.tree.map(lambda a: a[rows], captions["features"]), caption_dropout)
  else:
    condition = jax.random.randint(label_key, (batch_size,), 0, num_classes) if num_classes else None
  u0, x0 = model.distillation_batch(sample_key, batch_size, condition, target=target, temperature=temperature)
  return u0, x0, condition


def caption_bank(split, size: int, seed: int = 0) -> dict:
  """The captions the teacher samples for: the text features of `size` examples of a text model's training
  split drawn at random (all, if it has fewer), stored once per distinct caption ({"features": text features
  [distinct, ...], "rows": [size] each example's row}), so a caption is drawn as often as in the data."""
  examples = np.random.default_rng(seed).permutation(split.num_examples)[:size]
  features, row_of, rows = [], {}, []
  for example in examples:
    feature = split.text_features(split.source[int(example)])
    identity = b"".join(np.ascontiguousarray(feature[name]).tobytes() for name in sorted(feature))
    if identity not in row_of:
      row_of[identity] = len(features)
      features.append(feature)
    rows.append(row_of[identity])
  return {"features": {name: np.stack([f[name] for f in features]) for name in features[0]},
          "rows": np.asarray(rows, np.int32)}


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
  check_distillation_target(spec.target)
  graphdef, params, ntm_step, model_cfg = checkpoint.restore_params(config, workdir, "best")
  captions = None
  if model_cfg.condition_kind == "text":
    split = latents.space_of(config).load_split(config, "train", model_cfg)
    captions = jax.device_put(caption_bank(split, spec.caption_bank, config.seed))
  teacher = functools.partial(teacher_batch, batch_size=spec.batch_size, num_classes=model_cfg.num_classes,
                              target=spec.target, temperature=config.sample.temperature, captions=captions,
                              caption_dropout=config.train.label_dropout)
  # Traced once before anything is written: a model that cannot be distilled is refused by name here.
  jax.eval_shape(lambda p: teacher(nnx.merge(graphdef, p), jax.random.key(0)), params)
  tx = optim.make_optimizer(_optimizer_settings(config), spec.num_steps)
  den_graphdef, state = initial_state(Denoiser.for_model(spec, model_cfg, config.seed), tx)
  checkpointer = checkpoint.Checkpointer(sampler.denoiser_directory(workdir), max_to_keep=2)
  restored, restored_step = checkpointer.restore_latest(jax.eval_shape(lambda: state))
  if restored is not None:
    state = restored
    print(f"resumed the denoiser from step {restored_step} in {checkpointer.directory}", flush=True)

  step_fn, held_out_errors = make_step_fns(graphdef, den_graphdef, tx, teacher)

  writer = metric_writer.create_writer(workdir)
  base_key = jax.random.fold_in(jax.random.key(config.seed), 1)
  start_step = int(jax.device_get(state["step"]))
  progress = Progress(spec.num_steps)
  try:
    for step in range(start_step + 1, spec.num_steps + 1):
      state, metrics = step_fn(state, params, jax.random.fold_in(base_key, step))
      progress.tick()
      if step % spec.log_every == 0 or step == spec.num_steps:
        metrics = jax.device_get(metrics)
        rates = progress.report(step)
        writer.write_scalars(step, {f"distill/{k}": v for k, v in metrics.items()}
                             | {"distill/steps_per_sec": rates["steps_per_sec"]})
        print(f"distill step {step}/{spec.num_steps} mse {float(metrics['mse']):.5f} | {Progress.line(rates)}",
              flush=True)
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

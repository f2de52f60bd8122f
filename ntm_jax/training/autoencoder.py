"""Training the autoencoder of latent text-to-image (configs/autoencoder.py; `--mode=train` with
`config.trainer = "autoencoder"`); ntm_jax.latents loads a trained one.

A fork of the generative train loop, as big_vision's projects fork theirs: the same data pipeline, mesh,
AdamW + EMA, Orbax checkpoints (bit-exact resume), progress, TensorBoard and metrics.jsonl, but an L2
reconstruction loss and a validation MSE instead of bits/dim. Every evaluation writes a PNG of validation
images (odd columns) beside their reconstructions (even columns) and keeps the EMA parameters of the step
with the lowest validation MSE in WORKDIR/best. After the last step the per-channel latent mean and scale of
the best parameters are measured on the whole training split and stored beside that checkpoint
(best/latent_stats.json), so a flow trained on the latents sees them at unit scale.
"""

from __future__ import annotations

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from ntm_jax import data
from ntm_jax.data import dequantization
from ntm_jax.latents.autoencoders import STATS_FILE, autoencoder_config
from ntm_jax.models.autoencoder import Autoencoder, LatentStats
from ntm_jax.parallel import checkpoint
from ntm_jax.parallel import mesh as mesh_lib
from ntm_jax.sampling import images
from ntm_jax.training import metric_writer
from ntm_jax.training import optimizer as optim
from ntm_jax.training.progress import Progress


def to_model_space(images_int: jax.Array, pixel_levels: int) -> jax.Array:
  """Integer images 0..K-1 -> the centres of their bins in [-1, 1]."""
  return dequantization.bin_centres(images_int, pixel_levels)


def train_step(state, batch, base_key, *, graphdef, stats, optimizer, pixel_levels: int, ema_decay: float):
  """One AdamW step on the reconstruction loss; returns (new state, metrics). Pure: jit it."""
  key = jax.random.fold_in(base_key, state["step"])

  def loss_fn(params):
    return nnx.merge(graphdef, params, stats).loss(key, to_model_space(batch["image"], pixel_levels))

  (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state,
               "ema": optim.ema_update(state["ema"], params, state["step"], ema_decay)}
  return new_state, {"loss": loss, "latent_std": parts["latent_std"], "grad_norm": optax.tree.norm(grads)}


def validation_mse(reconstruct_fn, params, source: data.DataSource, batch_size: int, pixel_levels: int):
  """(mean squared error per pixel value over every example of `source`, the first batch's images and
  reconstructions)."""
  errors, first = [], None
  for batch in data.eval_batches(source, batch_size):
    x = to_model_space(jnp.asarray(batch["image"]), pixel_levels)
    x_hat = reconstruct_fn(params, x)
    per_example = np.asarray(jnp.mean(jnp.square(x_hat - x).reshape(x.shape[0], -1), axis=1))
    errors.append(per_example[batch["mask"] > 0])
    first = first if first is not None else (np.asarray(x), np.asarray(x_hat))
  return float(np.mean(np.concatenate(errors))), first


def measure_latent_stats(encode_fn, params, source: data.DataSource, batch_size: int, pixel_levels: int):
  """Per-channel mean and scale (std) of the latents of every example of `source`, in float64."""
  total = total_sq = count = 0.0
  for batch in data.eval_batches(source, batch_size):
    z = np.asarray(encode_fn(params, to_model_space(jnp.asarray(batch["image"]), pixel_levels)), np.float64)
    z = z[batch["mask"] > 0].reshape(-1, z.shape[-1])
    total, total_sq, count = total + z.sum(0), total_sq + (z * z).sum(0), count + z.shape[0]
  mean = total / count
  return mean, np.sqrt(np.maximum(total_sq / count - mean * mean, 1e-12))


def _write_reconstruction_grid(x, x_hat, step, workdir, writer, pixel_levels, num: int = 16):
  pairs = np.stack([x[:num], np.clip(x_hat[:num], -1, 1)], axis=1).reshape((-1,) + x.shape[1:])
  grid = images.to_uint8(pairs, pixel_levels)
  os.makedirs(os.path.join(workdir, "reconstructions"), exist_ok=True)
  path = images.save_grid_png(grid, os.path.join(workdir, "reconstructions", f"step_{step:07d}.png"), scale=4)
  writer.write_images(step, {"reconstructions": images.make_grid(grid)[None]})
  return path


def train_autoencoder(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from `workdir`) and returns the last validation results and the latent statistics."""
  cfg = autoencoder_config(config.autoencoder)
  num_steps, pixel_levels = config.train.num_steps, config.data.pixel_levels
  os.makedirs(workdir, exist_ok=True)
  writer = metric_writer.create_writer(workdir)
  is_main = jax.process_index() == 0

  # -- mesh, model, the jitted step (parameters replicated: the autoencoder is small; batches over the mesh)
  mesh = mesh_lib.make_mesh(config.mesh.to_dict())
  batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  data.check_batch_size(config.data.batch_size, batch_devices)
  graphdef, params, stats = nnx.split(Autoencoder(cfg, rngs=nnx.Rngs(config.seed)), nnx.Param, LatentStats)
  tx = optim.make_optimizer(config.opt, num_steps)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
           "ema": jax.tree.map(jnp.copy, params)}
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharding = NamedSharding(mesh, mesh_lib.logical_to_spec(("batch",), (config.data.batch_size,), mesh))
  state = jax.device_put(state, replicated)
  step_fn = jax.jit(functools.partial(train_step, graphdef=graphdef, stats=stats, optimizer=tx,
                                      pixel_levels=pixel_levels, ema_decay=config.opt.ema_decay),
                    in_shardings=(replicated, batch_sharding, replicated), out_shardings=(replicated, replicated),
                    donate_argnums=(0,))
  reconstruct_fn = jax.jit(lambda p, x: nnx.merge(graphdef, p, stats).reconstruct(x))
  encode_fn = jax.jit(lambda p, x: nnx.merge(graphdef, p, stats).encode(x))
  num_params = sum(x.size for x in jax.tree.leaves(params))

  # -- data and resume
  train_data = data.load_model_split(config, "train", cfg.image_shape, "none")
  eval_data = data.load_model_split(config, config.eval.split, cfg.image_shape, "none")
  train_iter = data.train_iterator(train_data, config.data.batch_size, config.seed, batch_devices)
  checkpointer = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                         max_to_keep=config.train.keep_checkpoints)
  restored, restored_step = checkpointer.restore_latest(jax.eval_shape(lambda: state), train_iter)
  if restored is not None:
    state = jax.device_put(restored, replicated)
    print(f"resumed from checkpoint step {restored_step} in {checkpointer.directory}", flush=True)
  start_step = int(jax.device_get(state["step"]))
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  if start_step == 0:
    writer.write_hparams({"num_parameters": num_params, "trainer": "autoencoder"})
  best = checkpoint.BestCheckpoint(os.path.join(workdir, "best"), "mse")
  base_key = jax.random.key(config.seed)

  def run_eval(step):
    mse, (x, x_hat) = validation_mse(reconstruct_fn, state["ema"], eval_data, config.eval.batch_size, pixel_levels)
    results = {"mse": mse, "psnr_db": 10 * math.log10(4.0 / mse)}  # images span 2, so the peak signal is 2^2
    writer.write_scalars(step, {f"eval/{config.eval.split}/{k}": v for k, v in results.items()})
    is_best = best.offer(step, state["ema"], results)
    print(f"step {step}: {config.eval.split} reconstruction MSE {mse:.5f} (PSNR {results['psnr_db']:.2f} dB)"
          f"{' (best so far, kept)' if is_best else f' (best stays step {best.best_step()})'}", flush=True)
    if is_main:
      _write_reconstruction_grid(x, x_hat, step, workdir, writer, pixel_levels)
    return results

  # -- train loop
  results, progress = {}, Progress(num_steps)
  try:
    with mesh_lib.use(mesh):
      if start_step == 0:
        results = run_eval(0)
      for step in range(start_step + 1, num_steps + 1):
        batch = {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in next(train_iter).items()}
        state, metrics = step_fn(state, batch, base_key)
        progress.tick()
        if step % config.train.log_every == 0 or step == num_steps:
          metrics = jax.device_get(metrics)
          if not np.isfinite(metrics["loss"]):
            raise FloatingPointError(f"the autoencoder's loss is {metrics['loss']} at step {step}; training stopped")
          rates = progress.report(step)
          writer.write_scalars(step, {f"train/{k}": v for k, v in {**metrics, **rates}.items()})
          print(f"step {step}/{num_steps} loss {float(metrics['loss']):.5f} | {Progress.line(rates)}", flush=True)
        if step % config.train.checkpoint_every == 0 or step == num_steps:
          checkpointer.save(step, state, train_iter, force=True)
        if step % config.train.eval_every == 0 or step == num_steps:
          results = run_eval(step)
  finally:
    checkpointer.wait_until_finished()
    writer.flush()

  # -- the latent statistics of the best parameters, over the whole training split
  best_params, best_step = best.restore(jax.eval_shape(lambda: state["ema"]))
  mean, scale = measure_latent_stats(encode_fn, best_params, train_data, config.eval.batch_size, pixel_levels)
  latent_stats = {"step": best_step, "mean": mean.tolist(), "scale": scale.tolist(),
                  "num_examples": train_data.num_examples}
  if is_main:
    with open(os.path.join(best.directory, STATS_FILE), "w") as f:
      json.dump(latent_stats, f, indent=2)
  print(f"latent statistics of step {best_step} over {train_data.num_examples} training images: mean "
        f"{np.round(mean, 3).tolist()}, scale {np.round(scale, 3).tolist()}", flush=True)
  return {**results, "best_step": best_step, "latent_stats": latent_stats}

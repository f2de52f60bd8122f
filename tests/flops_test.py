"""Model FLOPs from the architecture (ntm_jax.models.flops) against XLA's own count where both count the same
work: one unrolled pass with full attention, wide enough that the matmuls are nearly all of it."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from ntm_jax.models import build_model, flops
from ntm_jax.models.denoiser import Denoiser, DenoiserConfig
from tests.helpers import replace, tiny_config

WIDE = dict(width=128, head_dim=32, mlp_ratio=4)


def xla_flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def wide_model(kind="ntm", **overrides):
  cfg = tiny_config(height=4, width=4, channels=4, num_steps=1, dtype=jnp.float32, scan_layers=False, kind=kind,
                    **overrides)
  cfg = replace(cfg, transporter=replace(cfg.transporter, **WIDE), predictor=replace(cfg.predictor, **WIDE))
  return build_model(cfg, rngs=nnx.Rngs(0))


def test_a_full_attention_pass_matches_xlas_count():
  """The predictor over one level attends fully (block-causal over one block): XLA counts the same matmuls."""
  model = wide_model()
  image, batch = model.cfg.image, 8
  u = jnp.zeros((batch, 1, image.num_tokens, image.token_dim))
  counted = xla_flops(lambda u: model.predictor.network_output(u, jnp.array([0.0, 1.0])), u) / batch
  analytic = flops.predictor_pass(model.cfg.predictor, image.num_tokens, image.token_dim, 1)
  assert analytic == pytest.approx(counted, rel=0.1)


def test_a_flow_block_with_dense_pairs_matches_xlas_count():
  """XLA computes a causal block's scores densely: with N^2 pairs the analytic count is XLA's."""
  model = wide_model()
  image, batch = model.cfg.image, 8
  block = model.transporter.blocks[0]
  x = jnp.zeros((batch, image.num_tokens, image.token_dim))
  counted = xla_flops(lambda x: block.forward(x, jnp.zeros((batch,)))[0], x) / batch
  analytic = flops.flow_block_pass(model.cfg.transporter, image.num_tokens, image.token_dim,
                                   pairs=image.num_tokens ** 2)
  assert analytic == pytest.approx(counted, rel=0.1)
  assert flops.flow_block_pass(model.cfg.transporter, image.num_tokens, image.token_dim) < analytic  # causal


def test_the_denoiser_pass_matches_xlas_count():
  cfg = DenoiserConfig(depth=1, **WIDE)
  denoiser, batch = Denoiser(cfg, 16, 4, rngs=nnx.Rngs(0)), 8
  counted = xla_flops(lambda u: denoiser(u), jnp.zeros((batch, 16, 4))) / batch
  assert flops.denoiser_pass(cfg, 16, 4) == pytest.approx(counted, rel=0.1)


def test_sampling_counts_every_loop_iteration_and_each_path():
  model = wide_model(num_classes=3)
  cfg, image = model.cfg, model.cfg.image
  tokens, token_dim = image.num_tokens, image.token_dim
  block = flops.flow_block_pass(cfg.transporter, tokens, token_dim)
  sequential = model.sample_flops()
  # Jacobi at its cap: N - 1 full passes a block; one iteration in all costs one block pass.
  assert model.sample_flops(inversion="jacobi") - model.sample_flops(inversion="jacobi", jacobi_iterations=1) \
      == pytest.approx((cfg.transporter.num_blocks * (tokens - 1) - 1) * block)
  # Token by token: N - 1 one-token steps a block cost about one full causal pass each (their keys grow).
  inverse = flops.flow_inverse(cfg.transporter, tokens, token_dim)
  assert 0.8 * cfg.transporter.num_blocks * block < inverse < cfg.transporter.num_blocks * block
  # Guidance runs the predictor twice; the denoiser replaces the inversion.
  predictor = flops.predictor_pass(cfg.predictor, tokens, token_dim, cfg.num_steps)
  assert model.sample_flops(guidance_scale=1.0) - sequential == pytest.approx(predictor)
  denoiser = Denoiser(DenoiserConfig(depth=1, num_classes=3, **WIDE), tokens, token_dim, rngs=nnx.Rngs(0))
  assert sequential - model.sample_flops(denoiser=denoiser) == pytest.approx(
      inverse - flops.denoiser_pass(denoiser.cfg, tokens, token_dim))
  with pytest.raises(ValueError, match="sampler"):
    model.sample_flops(sampler="euler")


def test_training_counts_the_forward_pass_three_times():
  model = wide_model()
  cfg, image = model.cfg, model.cfg.image
  forward = ((cfg.num_steps + 1) * flops.flow_forward(cfg.transporter, image.num_tokens, image.token_dim)
             + flops.predictor_pass(cfg.predictor, image.num_tokens, image.token_dim, cfg.num_steps))
  assert model.train_flops() == pytest.approx(3 * forward)
  tarflow = wide_model(kind="tarflow")
  assert tarflow.train_flops() == pytest.approx(
      3 * flops.flow_forward(tarflow.cfg.transporter, image.num_tokens, image.token_dim))
  assert tarflow.sample_flops() == pytest.approx(flops.flow_inverse(tarflow.cfg.transporter, image.num_tokens,
                                                                    image.token_dim))

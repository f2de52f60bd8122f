"""Every attention implementation against the XLA reference (ntm_jax.models.attention).

On the CPU the splash kernel runs in the Pallas interpreter (the same kernel code a TPU compiles) and
"cudnn" runs jax.nn.dot_product_attention's XLA form (the same wrapper a GPU runs). Both compute their
softmax in float32 whatever the input dtype, so they are held to float32 tolerances; what must be exact
in any precision, a masked key's zero weight and zero gradient, is held to exactly zero.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from ntm_jax.models import attention, trajectory
from ntm_jax.parallel import mesh as mesh_lib
from tests import helpers

FUSED = ["splash", "cudnn"]
HEADS, HEAD_DIM = 2, 8


def _masks():
  """Every mask kind the models use: the transporter's, the predictor's (plain, Markov, captioned) and the
  denoiser's; a caption with padding and a dropped one (no real token) in the same batch."""
  prefix_valid = jnp.array([[True, True, True, False], [False, False, False, False]])
  return {
      "causal": attention.Mask.causal(12),
      "block_causal": attention.Mask.block_causal(3, 5),
      "within_block": attention.Mask.block_causal(3, 5, within_block_only=True),
      "full": attention.Mask.full(9),
      "block_causal_with_caption": attention.Mask.block_causal(3, 5).with_prefix(prefix_valid),
      # 364 tokens, padded to 384: splash's forward and backward tiles differ (384 x 128, 128 x 384).
      "long_block_causal_with_caption": attention.Mask.block_causal(3, 120).with_prefix(prefix_valid),
  }


def _qkv(length, seed=0, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(seed), 3)
  return [jax.random.normal(key, (2, length, HEADS, HEAD_DIM), dtype) for key in keys]


def _visible_rows(mask):
  """[B, L] rows whose output anything reads: every row but a padding token's (nothing sees those)."""
  length = mask.allowed.shape[0]
  if mask.segment_ids is None:
    return np.ones((2, length), bool)
  return np.asarray(mask.segment_ids) == 0


@pytest.mark.parametrize("implementation", FUSED)
@pytest.mark.parametrize("kind", list(_masks()))
def test_values_and_gradients_match_the_reference(implementation, kind):
  mask = _masks()[kind]
  q, k, v = _qkv(mask.allowed.shape[0])
  rows = jnp.asarray(_visible_rows(mask))[:, :, None, None]
  cotangent = jax.random.normal(jax.random.key(9), q.shape)

  def loss(attend, q, k, v):
    return jnp.sum(jnp.where(rows, attend(q, k, v), 0.0) * cotangent)

  reference = lambda q, k, v: attention.reference(q, k, v, mask.dense())  # noqa: E731
  fused = lambda q, k, v: attention.attend(q, k, v, mask, implementation)  # noqa: E731
  np.testing.assert_allclose(jnp.where(rows, fused(q, k, v), 0.0), jnp.where(rows, reference(q, k, v), 0.0),
                             atol=2e-6, rtol=0)
  want = jax.grad(loss, argnums=(1, 2, 3))(reference, q, k, v)
  got = jax.jit(jax.grad(loss, argnums=(1, 2, 3)), static_argnums=0)(fused, q, k, v)
  for name, g, w in zip("qkv", got, want):
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=0, err_msg=f"d loss / d {name}")


@pytest.mark.parametrize("implementation", FUSED)
def test_a_masked_key_gets_exactly_zero_gradient(implementation):
  """Every query row's gradient reaches exactly the keys and values its mask allows."""
  mask = _masks()["block_causal_with_caption"]
  q, k, v = _qkv(mask.allowed.shape[0], seed=1)
  dense = np.asarray(mask.dense())[:, 0]  # [B, L, L]
  for row in (0, 5, 9, 18):  # a caption token, then the first, second and last level
    grads = jax.grad(lambda k, v: jnp.sum(attention.attend(q, k, v, mask, implementation)[:, row] ** 2),
                     argnums=(0, 1))(k, v)
    for grad in grads:
      reach = np.abs(np.asarray(grad)).max(axis=(2, 3)) > 0  # [B, L]
      np.testing.assert_array_equal(reach, dense[:, row], err_msg=f"row {row}")


def test_splash_runs_per_shard_on_a_mesh_and_matches_one_device():
  """Under the data x fsdp x tensor mesh the kernel runs on each shard (examples over data and fsdp, heads
  over tensor): the same values as on one device."""
  mask = _masks()["block_causal_with_caption"]
  q, k, v = _qkv(mask.allowed.shape[0], seed=2)
  want = attention.attend(q, k, v, mask, "splash")
  mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, jax.devices()[:4])
  spec = NamedSharding(mesh, mesh_lib.logical_to_spec(("batch", "tokens", "heads", "head_dim"), q.shape, mesh))
  assert spec.spec[0] is not None and spec.spec[2] is not None, "the test must split examples and heads"
  with mesh_lib.use(mesh):
    per_shard = jax.jit(lambda q, k, v, ids: attention.attend(q, k, v, attention.Mask(mask.allowed, ids), "splash"))
    inputs = (*jax.device_put((q, k, v), spec), mask.segment_ids)
    assert "manual_computation" in per_shard.lower(*inputs).as_text()  # a shard_map, not a gathered kernel
    sharded = per_shard(*inputs)
  np.testing.assert_allclose(sharded, want, atol=1e-6, rtol=0)


def _tiny_text_ntm(implementation):
  return helpers.tiny_model(0, num_steps=3, text_dim=6, text_tokens=5, attention=implementation)


@pytest.mark.parametrize("implementation", FUSED)
def test_the_exactness_checks_pass_with_the_implementation(x64, implementation):
  """The model's exactness conditions with this implementation (float32 tolerances: its softmax is float32):
  the trajectory NLL equals the reference model's, the transporter round-trips and its log-det is the
  brute-force slogdet, and the predictor's block-causal mask gives cleaner levels exactly zero gradient."""
  model, reference = _tiny_text_ntm(implementation), _tiny_text_ntm("xla")
  image = model.cfg.image
  times = model.time_grid(dtype=jnp.float64)
  x0 = jax.random.normal(jax.random.key(0), (2, image.num_tokens, image.token_dim), jnp.float64)
  x = trajectory.sample_trajectory(jax.random.key(1), x0, times)
  text = helpers.text_condition(2, 5, 6, seed=2, lengths=[3, 0])
  np.testing.assert_allclose(model.trajectory_log_prob(x, times, text)["nll"],
                             reference.trajectory_log_prob(x, times, text)["nll"], rtol=1e-6)

  t = jnp.array([0.4, 0.7])
  for block in model.transporter.blocks:
    u, logdet = block.forward(x0, t)
    np.testing.assert_allclose(block.inverse(u, t), x0, atol=1e-5, rtol=0)  # the inverse decodes with XLA

    def scan_ordered_map(flat, block=block):
      z, _ = block.forward(block.from_scan_order(flat.reshape((1,) + x0.shape[1:])), t[:1])
      return block.to_scan_order(z).reshape(-1)

    # The first example's Jacobian (the brute force is the slow part).
    jac = jax.jacrev(scan_ordered_map)(block.to_scan_order(x0[:1]).reshape(-1))
    np.testing.assert_array_equal(np.triu(np.asarray(jac), 1), 0.0)  # exactly triangular
    np.testing.assert_allclose(logdet[0], jnp.linalg.slogdet(jac)[1], atol=1e-5)

  levels = jax.random.normal(jax.random.key(3), (1, 3, image.num_tokens, image.token_dim), jnp.float64)
  jac = jax.jacrev(lambda u: jnp.stack(model.predictor(u, times, jax.tree.map(lambda a: a[:1], text))))(levels)
  jac = np.abs(np.asarray(jac))  # [2, 1, T, N, c, 1, T, N, c]
  for k_out in range(3):
    for k_in in range(3):
      influence = jac[:, :, k_out, :, :, :, k_in].max()
      assert (influence == 0.0) if k_in < k_out else (influence > 1e-6), (k_out, k_in, influence)


def test_auto_picks_by_platform_and_unknown_names_are_refused(monkeypatch):
  assert attention.resolve("auto") == "xla"  # this CPU
  for platform, implementation in (("tpu", "splash"), ("gpu", "cudnn"), ("cpu", "xla")):
    monkeypatch.setattr(attention, "_platform", lambda platform=platform: platform)
    assert attention.resolve("auto") == implementation
  with pytest.raises(ValueError, match="unknown attention implementation 'flash'"):
    attention.resolve("flash")
  with pytest.raises(ValueError, match="transporter.attention must be one of"):
    helpers.tiny_config(attention="flash")


def test_splash_kernel_cost_counts_only_the_tiles_its_mask_visits():
  """The compile report adds the kernels' cost (XLA counts a Pallas call as nothing): computed tiles only."""
  q, k, v = _qkv(1152)  # nine 128-token blocks: the forward's tiles are 384 queries x 128 keys
  for mask, tiles in ((attention.Mask.full(1152), 27), (attention.Mask.block_causal(9, 128), 3 + 6 + 9)):
    with attention.kernel_costs(backward=False) as cost:
      jax.eval_shape(lambda q, k, v, mask=mask: attention.attend(q, k, v, mask, "splash"), q, k, v)
    # 2 matmuls of 2 FLOPs per multiply-add, per computed (query, key) pair, head and example.
    assert cost.calls == 1 and cost.flops == 2 * 2 * 2 * HEADS * tiles * 384 * 128 * HEAD_DIM


def test_splash_tiles_put_the_wide_side_outside_each_pass():
  tiles = attention.SplashTiles.for_length(1152)
  assert (tiles.forward_q, tiles.forward_kv, tiles.backward_q, tiles.backward_kv) == (384, 128, 128, 384)
  assert attention.SplashTiles.for_length(256) == attention.SplashTiles(256, 256, 256, 256)


def test_the_backward_kernel_cost_counts_dq_once_per_key_block():
  """The fused backward writes a partial dq for each key tile (XLA then sums them): the estimate moves them."""
  q, k, v = _qkv(1152)  # the backward's tiles: 128 queries x 384 keys, 3 key tiles
  costs = {}
  for backward in (False, True):
    with attention.kernel_costs(backward=backward) as costs[backward]:
      jax.eval_shape(lambda q, k, v: attention.attend(q, k, v, attention.Mask.full(1152), "splash"), q, k, v)
  # Per example and head, in float32 elements: the backward reads the query and output-gradient blocks of
  # each of its 27 tiles, passes k, v, dk, dv and the log-sum-exp and di rows (one [L, K] in all) once, and
  # writes a [L, K] dq per key tile.
  extra = 27 * 128 * 2 * HEAD_DIM + 5 * 1152 * HEAD_DIM + 3 * 1152 * HEAD_DIM
  assert costs[True].hbm_bytes - costs[False].hbm_bytes == 2 * HEADS * 4 * extra
  assert costs[True].flops - costs[False].flops == 2 * 5 * 2 * HEADS * 1152 * 1152 * HEAD_DIM


def test_the_kernel_cost_counts_every_layer_of_a_stack(x64):
  """A stack traces its layer once (scanned or unrolled) but runs it `depth` times: so does the estimate."""
  model = helpers.tiny_model(0, num_steps=2, depth=3, attention="splash")
  image = model.cfg.image
  u = jnp.zeros((1, 2, image.num_tokens, image.token_dim))
  with attention.kernel_costs(backward=False) as cost:
    jax.eval_shape(lambda u: model.predictor(u, model.time_grid(2)), u)
  assert cost.calls == 3


@pytest.mark.parametrize("remat", ["none", "save_matmuls", "full"])
def test_the_kernel_cost_counts_the_forward_that_remat_recomputes(x64, remat):
  """Under remat "save_matmuls" or "full" the compiled train step calls each forward kernel twice (its
  outputs are not kept; seen in the compiled HLO for v5e): with a backward pass the estimate counts both."""

  def kernel_cost(remat, backward):
    model = helpers.tiny_model(0, num_steps=2, depth=3, attention="splash", remat=remat)
    u = jnp.zeros((1, 2, model.cfg.image.num_tokens, model.cfg.image.token_dim))
    with attention.kernel_costs(backward=backward) as cost:
      jax.eval_shape(lambda u: model.predictor(u, model.time_grid(2)), u)
    return cost

  forward = kernel_cost("none", backward=False)
  assert forward.flops > 0 and kernel_cost(remat, backward=False).flops == forward.flops  # no backward, no recompute
  recompute = kernel_cost(remat, backward=True).hbm_bytes - kernel_cost("none", backward=True).hbm_bytes
  assert recompute == (forward.hbm_bytes if remat != "none" else 0)
  recompute = kernel_cost(remat, backward=True).flops - kernel_cost("none", backward=True).flops
  assert recompute == (forward.flops if remat != "none" else 0)

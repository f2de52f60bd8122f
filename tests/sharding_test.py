"""The device mesh and logical sharding on 8 simulated CPU devices (conftest sets XLA_FLAGS)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from ntm_jax.models import logical_axes
from ntm_jax.parallel import checkpoint
from ntm_jax.parallel import mesh as sharding
from ntm_jax.training import train
from tests.config_test import load_config

MESHES = {"data8": {"data": 8}, "fsdp8": {"fsdp": 8}, "data2_fsdp2_tensor2": {"data": 2, "fsdp": 2, "tensor": 2}}


def small_config(**mesh):
  """The digits smoke model (widths 32, 2 heads) with a batch of 16: divisible by every mesh above."""
  config = load_config("digits", "smoke,conditional")
  if mesh:
    config.mesh.update({"data": 1, **mesh})
  return config


def batch_of(config, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, config.data.pixel_levels, (config.data.batch_size, 8, 8, 1)).astype(np.int32),
          "label": rng.integers(0, 10, (config.data.batch_size,)).astype(np.int32)}


def run_steps(config, devices, num_steps=2):
  """(losses, final state on host) of `num_steps` train steps on a mesh over `devices`."""
  mesh = sharding.make_mesh(config.mesh.to_dict(), devices)
  setup = train.build_training(config, mesh)
  state = setup.state
  losses = []
  with sharding.use(mesh):
    for i in range(num_steps):
      batch = {k: jax.device_put(v, setup.batch_sharding) for k, v in batch_of(config, i).items()}
      state, metrics = setup.step_fn(state, batch, jax.random.key(0))
      losses.append(float(metrics["loss"]))
  return losses, jax.device_get(state), setup


def test_mesh_shape_fills_one_axis_and_names_bad_specs():
  assert sharding.mesh_shape({"data": -1}, 8) == {"data": 8, "fsdp": 1, "tensor": 1}
  assert sharding.mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert sharding.mesh_shape({"data": 1, "fsdp": -1, "dcn_data": 2}, 8) == {"data": 2, "fsdp": 4, "tensor": 1}
  with pytest.raises(ValueError, match="unknown mesh axes \\['model'\\]"):
    sharding.mesh_shape({"model": 2}, 8)
  with pytest.raises(ValueError, match="only one mesh axis may be -1"):
    sharding.mesh_shape({"data": -1, "fsdp": -1}, 8)
  with pytest.raises(ValueError, match="needs 6 devices, but there are 8"):
    sharding.mesh_shape({"data": 3, "fsdp": 2}, 8)
  with pytest.raises(ValueError, match="do not divide 8 devices"):
    sharding.mesh_shape({"data": -1, "fsdp": 3}, 8)


def test_logical_rules_skip_axes_that_do_not_divide_or_are_taken():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  assert sharding.logical_to_spec(("embed", "mlp"), (32, 128), mesh) == PartitionSpec("fsdp", "tensor")
  assert sharding.logical_to_spec(("batch", "tokens", "embed_act"), (8, 4, 32), mesh) == PartitionSpec(
      ("data", "fsdp"), None, None)
  # 11 classes: fsdp does not divide it, so that dimension stays whole.
  assert sharding.logical_to_spec(("classes", "embed"), (11, 32), mesh) == PartitionSpec(None, "fsdp")
  assert sharding.logical_to_spec(("embed", "embed"), (32, 32), mesh) == PartitionSpec("fsdp", None)
  assert sharding.logical_to_spec(("batch",), (6,), mesh) == PartitionSpec("data")
  with pytest.raises(ValueError, match="no rule"):
    sharding.logical_to_spec(("colour",), (3,), mesh)


def test_every_parameter_has_logical_axes():
  config = small_config(fsdp=8)
  setup = train.build_training(config, sharding.make_mesh(config.mesh.to_dict()))
  missing = []
  for path, variable in nnx.to_flat_state(setup.state["params"]):
    if variable.get_metadata().get("logical_axes") is None:
      missing.append("/".join(map(str, path)))
  assert not missing, f"parameters without logical axes: {missing}"


# CI runs the mesh that uses every axis; `-m slow` adds the pure data- and fsdp-parallel ones.
@pytest.mark.parametrize("name", [name if name == "data2_fsdp2_tensor2" else pytest.param(name, marks=pytest.mark.slow)
                                  for name in sorted(MESHES)])
def test_sharded_train_step_matches_one_device(name):
  config = small_config(**MESHES[name])
  single = small_config()
  single.mesh.update(data=1)
  losses_1, state_1, _ = run_steps(single, jax.devices()[:1])
  losses_8, state_8, _ = run_steps(config, jax.devices())
  np.testing.assert_allclose(losses_8, losses_1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(state_8["params"]), jax.tree.leaves(state_1["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fsdp_really_shards_parameters_and_optimizer_state():
  config = small_config(fsdp=8)
  setup = train.build_training(config, sharding.make_mesh(config.mesh.to_dict()))
  for part in ("params", "opt_state", "ema"):
    tree = setup.state[part]
    total = sum(x.nbytes for x in jax.tree.leaves(tree))
    per_device = sharding.per_device_bytes(tree)
    # Only layer norms, biases and counters stay whole: 2% of this tiny model, far less at real sizes.
    assert per_device < total / 8 * 1.2, (part, per_device, total)
    replicated = [x.shape for x in jax.tree.leaves(tree) if x.sharding.is_fully_replicated]
    assert all(np.prod(shape) <= 128 for shape in replicated), (part, replicated)


def test_sharded_initialisation_equals_the_unsharded_one():
  config = small_config(data=2, fsdp=2, tensor=2)
  sharded = train.build_training(config, sharding.make_mesh(config.mesh.to_dict())).state
  single = small_config()
  plain = train.build_training(single, sharding.make_mesh(single.mesh.to_dict(), jax.devices()[:1])).state
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(plain)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_checkpoint_saved_on_one_mesh_restores_onto_another(tmp_path):
  saved_config = small_config(fsdp=8)
  saved = train.build_training(saved_config, sharding.make_mesh(saved_config.mesh.to_dict())).state
  writer = checkpoint.Checkpointer(str(tmp_path), max_to_keep=1)
  writer.save(1, saved, None, force=True)
  writer.wait_until_finished()

  other_config = small_config(data=2, fsdp=2, tensor=2)
  other = train.build_training(other_config, sharding.make_mesh(other_config.mesh.to_dict()))
  restored, step = checkpoint.Checkpointer(str(tmp_path), max_to_keep=1).restore_latest(other.abstract_state)
  assert step == 1
  for a, b, want in zip(jax.tree.leaves(restored), jax.tree.leaves(saved), jax.tree.leaves(other.state_shardings)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.sharding.is_equivalent_to(want, a.ndim)


def test_activation_constraint_is_the_identity_without_a_mesh():
  x = jnp.arange(6.0).reshape(2, 3)
  assert logical_axes.constrain(x, ("batch", "embed_act")) is x
  with sharding.use(sharding.make_mesh({"data": 8})):  # under a mesh and its rules the layout is asked for
    assert "sharding_constraint" in str(jax.make_jaxpr(lambda y: logical_axes.constrain(y, ("batch", None)))(
        jnp.zeros((8, 3))))

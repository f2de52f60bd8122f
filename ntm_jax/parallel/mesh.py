"""The device mesh and logical-axis sharding (NTM.md D10).

Mesh axes are ('data', 'fsdp', 'tensor'). Model code never names a mesh axis: parameters carry logical axis
names in their metadata (`logical_axes`, ntm_jax.models.logical_axes), activations ask for a layout with
`logical_axes.constrain(x, logical names)`, and the one table `LOGICAL_AXIS_RULES` here maps logical names to
mesh axes, installed for everything traced inside `use(mesh)`:
batch over ('data', 'fsdp'), parameters' model dimension over 'fsdp' (ZeRO-3 style), attention heads and
the MLP hidden dimension over 'tensor'. A dimension that a mesh axis does not divide stays unsharded on
that axis (a 10-class embedding on fsdp = 8, say), so one model runs on any mesh.

The same code runs on one CPU (a 1x1x1 mesh), on 8 simulated CPU devices in the tests, and on a TPU pod,
where `make_mesh` lays the axes over ICI within a slice and the `dcn_*` axes over the data-centre network
between slices.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ntm_jax.models import logical_axes

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes, in the order they are tried. The only place that knows the mesh axis names.
LOGICAL_AXIS_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", ("data", "fsdp")),  # examples (activations, data batches)
    ("embed", ("fsdp",)),         # the model width of a parameter: ZeRO-3 sharding of weights
    ("heads", ("tensor",)),       # attention heads (parameters and activations)
    ("mlp", ("tensor",)),         # MLP hidden units (parameters and activations)
    ("embed_act", ()),            # the model width of an activation: replicated
    ("norm", ()),                 # layer-norm scales and biases: tiny, replicated
    ("tokens", ()),               # sequence positions
    ("head_dim", ()),
    ("token_dim", ()),            # numbers per patch token (c)
    ("classes", ()),
    ("time_features", ()),
    ("qkv", ()),
    ("text_dim", ()),             # the text encoder's width (its embeddings are inputs, not parameters)
    ("layers", ()),               # the stacked layers of a Transformer stack (scanned over, never split)
    ("conv_window", ()),          # the autoencoder's convolutions: small, replicated
    ("conv_in", ()),
    ("conv_out", ()),
    ("latent_channels", ()),
)
_RULES = dict(LOGICAL_AXIS_RULES)


def mesh_shape(spec: dict, num_devices: int) -> dict[str, int]:
  """Sizes of ('data', 'fsdp', 'tensor') from a config section; one size may be -1 (all the rest).

  `spec` is the config's `mesh` section: data, fsdp, tensor (ICI, within a slice) and the optional
  dcn_data, dcn_fsdp (across slices). Raises ValueError naming the problem when it does not fit.
  """
  known = set(MESH_AXES) | {f"dcn_{a}" for a in MESH_AXES}
  unknown = sorted(set(spec) - known)
  if unknown:
    raise ValueError(f"unknown mesh axes {unknown}; known: {sorted(known)}")
  sizes = {a: int(spec.get(a, 1)) * int(spec.get(f"dcn_{a}", 1)) for a in MESH_AXES}
  fill = [a for a in MESH_AXES if int(spec.get(a, 1)) == -1]
  if len(fill) > 1:
    raise ValueError(f"only one mesh axis may be -1 (fill), got {fill}")
  if any(int(spec.get(a, 1)) == 0 or int(spec.get(a, 1)) < -1 for a in known if a in spec):
    raise ValueError(f"mesh sizes must be positive or -1, got {dict(spec)}")
  if fill:
    axis = fill[0]
    rest = math.prod(abs(v) for a, v in sizes.items() if a != axis) * int(spec.get(f"dcn_{axis}", 1))
    if num_devices % rest:
      raise ValueError(f"mesh {dict(spec)}: the other axes ({rest} devices) do not divide {num_devices} devices")
    sizes[axis] = num_devices // rest * int(spec.get(f"dcn_{axis}", 1))
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(f"mesh {sizes} needs {math.prod(sizes.values())} devices, but there are {num_devices}")
  return sizes


def make_mesh(spec: dict | None = None, devices: Sequence | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh over `devices` (default: all), in Auto mode (GSPMD).

  With `dcn_*` sizes above 1 (multi-slice), the ICI part of each axis lies within a slice and the DCN part
  across slices, as `mesh_utils.create_hybrid_device_mesh` arranges it.
  """
  devices = list(jax.devices() if devices is None else devices)
  spec = dict(spec or {"data": -1})
  sizes = mesh_shape(spec, len(devices))
  dcn = [int(spec.get(f"dcn_{a}", 1)) for a in MESH_AXES]
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if math.prod(dcn) > 1:
    from jax.experimental import mesh_utils  # noqa: PLC0415  (only multi-slice needs it)
    ici = [sizes[a] // d for a, d in zip(MESH_AXES, dcn)]
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=devices)
  elif devices and devices[0].platform == "tpu":
    from jax.experimental import mesh_utils  # noqa: PLC0415
    grid = mesh_utils.create_device_mesh([sizes[a] for a in MESH_AXES], devices=devices)
  else:
    grid = np.asarray(devices).reshape([sizes[a] for a in MESH_AXES])
  return Mesh(grid, MESH_AXES, axis_types=auto)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """The PartitionSpec of an array with logical axis `names` on `mesh`.

  Each dimension takes the mesh axes its rule lists, skipping axes of size 1, axes an earlier dimension
  already took, and axes that do not divide the dimension.
  """
  if len(names) != len(shape):
    raise ValueError(f"logical axes {tuple(names)} do not match shape {tuple(shape)}")
  used: set[str] = set()
  spec = []
  for name, size in zip(names, shape):
    if name is not None and name not in _RULES:
      raise ValueError(f"logical axis {name!r} has no rule in LOGICAL_AXIS_RULES")
    taken = []
    for axis in _RULES.get(name, ()) if name else ():
      axis_size = mesh.shape[axis]
      if axis_size == 1 or axis in used or size % (math.prod(mesh.shape[a] for a in taken) * axis_size):
        continue
      taken.append(axis)
    used.update(taken)
    spec.append(None if not taken else taken[0] if len(taken) == 1 else tuple(taken))
  return PartitionSpec(*spec)


def _variable_spec(variable, mesh: Mesh) -> PartitionSpec:
  names = variable.get_metadata().get("logical_axes")
  shape = variable.get_value().shape
  if names is None:
    return PartitionSpec()
  return logical_to_spec(names, shape, mesh)


def param_shardings(params, mesh: Mesh):
  """NamedShardings of a parameter State (nnx Variables carrying `logical_axes`), same tree structure."""
  return jax.tree.map(lambda v: v.replace(NamedSharding(mesh, _variable_spec(v, mesh))), params,
                      is_leaf=lambda x: isinstance(x, nnx.Variable))


def _path_names(path) -> tuple[str, ...]:
  names = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        names.append(str(getattr(entry, attr)))
        break
  return tuple(names)


def state_shardings(state, mesh: Mesh):
  """Shardings of a whole train state {"params", ...} (arrays or ShapeDtypeStructs).

  A leaf whose path ends with a parameter's path and that has the parameter's shape (the parameters, the
  EMA copy, AdamW's moments) takes the parameter's sharding; everything else (step counters) is replicated.
  """
  params_leaves = jax.tree_util.tree_flatten_with_path(param_shardings(state["params"], mesh))[0]
  shapes = [leaf.shape for leaf in jax.tree.leaves(state["params"])]
  by_path = {_path_names(path): (sharding, shape) for (path, sharding), shape in zip(params_leaves, shapes)}
  longest_first = sorted(by_path, key=len, reverse=True)
  replicated = NamedSharding(mesh, PartitionSpec())

  def choose(path, leaf):
    names = _path_names(path)
    for candidate in longest_first:
      sharding, shape = by_path[candidate]
      if names[len(names) - len(candidate):] == candidate and leaf.shape == shape:
        return sharding
    return replicated

  return jax.tree_util.tree_map_with_path(choose, state)


def with_shardings(abstract_state, shardings):
  """ShapeDtypeStructs that carry their shardings: what a sharded restore or a compile takes."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings)


def _current_mesh_spec(names: Sequence[str | None], shape: Sequence[int]) -> PartitionSpec | None:
  """The rules applied to the mesh being traced under (None outside one of ours: leave the array alone)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
    return None
  return logical_to_spec(names, shape, mesh)


@contextlib.contextmanager
def use(mesh: Mesh):
  """Runs under `mesh` with this module's rules installed, so the models' activation constraints apply."""
  with jax.set_mesh(mesh), logical_axes.rules(_current_mesh_spec):
    yield


def per_device_bytes(tree) -> int:
  """Largest number of bytes any one device holds of the arrays in `tree`."""
  totals: dict = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
  return max(totals.values()) if totals else 0

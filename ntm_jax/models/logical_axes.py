"""Logical axis names of parameters and activations; whoever runs a model installs the rules for a mesh.

Models never name a mesh axis. A parameter carries its dimensions' logical names in its metadata
(`param_axes("embed", "mlp")`), and an activation asks for a layout with `constrain(x, names)`. The runner
(ntm_jax.parallel.mesh) installs, with `rules(resolve)`, the function that turns names and a shape into a
PartitionSpec for the current mesh; without installed rules `constrain` is the identity, so a model runs
unchanged on one device, in a test or in a notebook.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Sequence

import jax
from jax.sharding import PartitionSpec

Resolver = Callable[[Sequence[str | None], Sequence[int]], PartitionSpec | None]
_RESOLVER: contextvars.ContextVar[Resolver | None] = contextvars.ContextVar("ntm_jax_axis_rules", default=None)


def param_axes(*names: str | None) -> dict:
  """Parameter metadata naming each dimension's logical axis."""
  return {"logical_axes": names}


@contextlib.contextmanager
def rules(resolve: Resolver):
  """Within this context `constrain` lays activations out by `resolve(names, shape)` (None: leave it)."""
  token = _RESOLVER.set(resolve)
  try:
    yield
  finally:
    _RESOLVER.reset(token)


def spec_for(names: Sequence[str | None], shape: Sequence[int]) -> PartitionSpec | None:
  """The PartitionSpec the installed rules give an array of `shape` with these logical names (None: none)."""
  resolve = _RESOLVER.get()
  return resolve(names, shape) if resolve is not None else None


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """`with_sharding_constraint` by logical names under the installed rules; the identity without them."""
  spec = spec_for(names, x.shape)
  return x if spec is None else jax.lax.with_sharding_constraint(x, spec)

"""The config files build valid models, and the D8 baselines stay comparable in size."""

import importlib.util
import pathlib

import jax
import pytest
from flax import nnx

from ntm_jax.config_args import parse_arg
from ntm_jax.models import build_model, model_config_from_dict

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def parameter_count(config):
  model = build_model(model_config_from_dict(config.model), rngs=nnx.Rngs(0))
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("name", ["digits", "mnist"])
def test_variants_build_and_have_comparable_sizes(name):
  counts = {v: parameter_count(load_config(name, v)) for v in ("ntm", "gaussian", "tarflow")}
  assert load_config(name).model.kind == "ntm"
  assert load_config(name, "gaussian").model.transporter.num_blocks == 0
  assert load_config(name, "tarflow").model.kind == "tarflow"
  for variant in ("gaussian", "tarflow"):
    assert 0.75 < counts[variant] / counts["ntm"] < 1.33, counts


def test_config_arguments_are_checked():
  assert parse_arg("tarflow,steps=20", tarflow=False, steps=0) == {"tarflow": True, "steps": 20}
  with pytest.raises(ValueError, match="unknown config argument 'tarflwo'"):
    load_config("digits", "tarflwo")
  with pytest.raises(ValueError, match="choose one model variant"):
    load_config("digits", "tarflow,gaussian")
  with pytest.raises(ValueError, match="needs a value"):
    parse_arg("steps", steps=0)

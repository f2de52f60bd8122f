"""The config files build valid models, and the D8 baselines stay comparable in size."""

import pathlib

import jax
import pytest
from flax import nnx

from ntm_jax.config_args import load_config_file, parse_arg
from ntm_jax.models import build_model, count_parameters, model_config_from_dict

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(name, arg=None):
  return load_config_file(str(ROOT / "configs" / f"{name}.py"), arg)


def parameter_count(config):
  model = build_model(model_config_from_dict(config.model), rngs=nnx.Rngs(0))
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("name", ["digits", "mnist"])
def test_variants_build_and_have_comparable_sizes(name):
  counts = {v: parameter_count(load_config(name, v)) for v in ("ntm", "gaussian", "tarflow", "flow_matching")}
  assert load_config(name).model.kind == "ntm"
  assert load_config(name, "gaussian").model.transporter.num_blocks == 0
  assert load_config(name, "tarflow").model.kind == "tarflow"
  assert load_config(name, "flow_matching").model.kind == "flow_matching"
  for variant in ("gaussian", "tarflow", "flow_matching"):
    assert 0.75 < counts[variant] / counts["ntm"] < 1.33, counts


def test_config_arguments_are_checked():
  assert parse_arg("tarflow,steps=20", tarflow=False, steps=0) == {"tarflow": True, "steps": 20}
  with pytest.raises(ValueError, match="unknown config argument 'tarflwo'"):
    load_config("digits", "tarflwo")
  with pytest.raises(ValueError, match="choose one model variant"):
    load_config("digits", "tarflow,gaussian")
  with pytest.raises(ValueError, match="needs a value"):
    parse_arg("steps", steps=0)


def abstract_parameter_count(config):
  """Parameter count without allocating: the pod presets have billions."""
  return count_parameters(model_config_from_dict(config.model))


def test_t2i_presets_span_a_cpu_size_to_billions():
  counts = {size: abstract_parameter_count(load_config("t2i", f"size={size}"))
            for size in ("cpu", "base", "large", "xl", "3b")}
  assert counts["cpu"] < 5e6 < 1e8 < counts["base"] < counts["large"] < counts["xl"] < counts["3b"]
  assert counts["3b"] > 3e9, counts
  config = load_config("t2i", "size=base")
  assert config.model.image.height // config.model.image.patch_size == 16  # 256 tokens
  assert config.model.dtype == "bfloat16" and load_config("t2i").model.dtype == "float32"
  with pytest.raises(ValueError, match="unknown size 'huge'"):
    load_config("t2i", "size=huge")

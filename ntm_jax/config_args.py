"""Parsing of config-file arguments: `--config=configs/digits.py:tarflow,smoke,steps=200` (big_vision style)."""

from __future__ import annotations

from typing import Any


def parse_arg(arg: str | None, **defaults: Any) -> dict[str, Any]:
  """Parses "name,flag,key=value" against `defaults` and returns the merged values.

  A bare word sets a boolean default to True; key=value converts the value to the default's type.
  Words and keys that `defaults` does not have raise ValueError, so typos never pass silently.
  """
  values = dict(defaults)
  for token in filter(None, (arg or "").split(",")):
    key, has_value, raw = token.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known arguments: {sorted(defaults)}")
    default = defaults[key]
    if not has_value:
      if not isinstance(default, bool):
        raise ValueError(f"config argument {key!r} needs a value: {key}=...")
      values[key] = True
    elif isinstance(default, bool):
      if raw.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {key!r} must be true or false, got {raw!r}")
      values[key] = raw.lower() in ("true", "1")
    else:
      values[key] = type(default)(raw) if default is not None else raw
  return values


MODEL_VARIANTS = ("ntm", "gaussian", "tarflow", "flow_matching")


def parse_model_arg(arg: str | None, **defaults: Any) -> dict[str, Any]:
  """The arguments every image config takes: a model variant (ntm | gaussian | tarflow | flow_matching),
  `conditional`, `smoke` and `steps=N`, plus any config-specific `defaults`. Adds `variant` and `num_classes`."""
  args = parse_arg(arg, **{name: False for name in MODEL_VARIANTS}, conditional=False, smoke=False, steps=0,
                   **defaults)
  chosen = [name for name in MODEL_VARIANTS if args[name]]
  if len(chosen) > 1:
    raise ValueError(f"choose one model variant, got {chosen}")
  args["variant"] = chosen[0] if chosen else "ntm"
  args["num_classes"] = 10 if args["conditional"] else 0
  return args


def apply_model_variant(model: dict, variant: str, num_classes: int, text_dim=0) -> dict:
  """The D8 baselines from an NTM model section, at about the same parameter count.

  gaussian: f_T = identity (no transporter blocks); the predictor takes their budget (twice as deep).
  tarflow:  a plain TarFlow of 4 flow blocks with the transporter's block shape; conditioned like TarFlow,
            by an embedding added to every token (of the class, or of the caption's sentence embedding).
  flow_matching: the predictor backbone as a velocity network (D9), twice as deep like `gaussian`'s (unlike
            configs/flow_matching.py, which keeps NTM's predictor to initialise one from it); Euler sampling.
  """
  if variant == "gaussian":
    model["transporter"]["num_blocks"] = 0
    model["predictor"]["depth"] *= 2
  elif variant == "tarflow":
    model["kind"] = "tarflow"
    model["transporter"].update(num_blocks=4, num_classes=num_classes, text_dim=text_dim)
  elif variant == "flow_matching":
    model["kind"] = "flow_matching"
    model["transporter"]["num_blocks"] = 0
    # A velocity already carries the skip connection that x0_skip_data_std gives an x_0 prediction.
    model["predictor"].update(prediction="velocity", markov=True, depth=model["predictor"]["depth"] * 2,
                              x0_skip_data_std=0.0)
  return model


def fid_settings(**overrides) -> dict:
  """`config.fid`: --mode=fid_stats and --mode=fid (ntm_jax.evaluation.fid documents each key)."""
  settings = dict(inception_weights="", split="train", reference_images=0, reference="", num_samples=10_000,
                  batch_size=100, stats_dir="", nearest_k=3, input_size=299)
  settings.update(overrides)
  return settings


def finish_config(config, args: dict, text_dim=0):
  """Applies the variant (D8 baselines) and `smoke` of `parse_model_arg`'s `args` to a built config."""
  apply_model_variant(config.model, args["variant"], args["num_classes"], text_dim)
  if args["variant"] == "flow_matching":
    config.sample.sampler = "euler"
  if args["smoke"]:
    apply_smoke(config, args["steps"])
  return config


def apply_smoke(config, steps: int) -> None:
  """A tiny model and a few steps: what the tests and CI run end to end."""
  config.model.transporter.update(layers_per_block=1, width=32, head_dim=16)
  config.model.predictor.update(depth=1, width=32, head_dim=16)
  config.data.batch_size = 16
  config.train.update(num_steps=steps or 4, log_every=2, eval_every=4, checkpoint_every=2)
  config.eval.batch_size = 64
  config.sample.num_samples = 16
  config.distill.update(depth=1, width=32, head_dim=16, num_steps=4, batch_size=8, log_every=2,
                        checkpoint_every=2)


def _load_module(path: str):
  import importlib.util  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel

  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"ntm_jax_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config_file(path: str, arg: str | None = None):
  """`get_config(arg)` of the config file at `path` (what --config=path:arg gives, without the flags)."""
  return _load_module(path).get_config(arg)


def unknown_override(argv) -> str | None:
  """The first `--config.a.b=...` override in `argv` whose path the config file does not define."""
  config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if config_arg is None:
    return None
  path, _, arg = config_arg.partition(":")
  config = load_config_file(path, arg or None)
  for override in (a for a in argv if a.startswith("--config.")):
    keys = override[len("--config."):].split("=", 1)[0].split(".")
    node = config
    for depth, key in enumerate(keys):
      if not hasattr(node, "keys") or key not in node.keys():
        return ".".join(keys[:depth + 1])
      node = node[key]
  return None


def load_sibling_module(config_file: str, name: str):
  """The module configs/NAME.py beside `config_file`: configs that build on another one's base."""
  import os  # pylint: disable=import-outside-toplevel

  return _load_module(os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py"))


def load_sibling_config(config_file: str, name: str, arg: str | None = None):
  """`get_config(arg)` of configs/NAME.py beside `config_file`."""
  return load_sibling_module(config_file, name).get_config(arg)

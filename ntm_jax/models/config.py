"""Typed, validated model configurations, built from the ml_collections config in one place.

`ml_collections.ConfigDict` is what the command line edits; these frozen dataclasses are what the
modules read. Every check that can fail because of a user's config happens here, with a message that
names the offending field.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from ntm_jax.models import attention

_DTYPES = {"float32": jnp.float32, "float64": jnp.float64, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ImageConfig:
  """Image geometry: [H, W, C] images cut into p x p patches (D2)."""

  height: int
  width: int
  channels: int
  patch_size: int

  def __post_init__(self):
    for name in ("height", "width", "channels", "patch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"image.{name} must be >= 1, got {getattr(self, name)}")
    if self.height % self.patch_size or self.width % self.patch_size:
      raise ValueError(
          f"patch_size {self.patch_size} does not divide the image size {self.height}x{self.width}")

  @property
  def shape(self) -> tuple[int, int, int]:
    """[H, W, C] of one image."""
    return self.height, self.width, self.channels

  @property
  def num_tokens(self) -> int:
    return (self.height // self.patch_size) * (self.width // self.patch_size)

  @property
  def token_dim(self) -> int:
    return self.patch_size * self.patch_size * self.channels

  @property
  def num_dims(self) -> int:
    return self.height * self.width * self.channels


REMAT_POLICIES = ("none", "save_matmuls", "full")
ATTENTION_IMPLEMENTATIONS = attention.IMPLEMENTATIONS


@dataclasses.dataclass(frozen=True)
class StackConfig:
  """The shape of a network's Transformer stack (ntm_jax.models.transformer) and how it is run."""

  width: int = 128
  head_dim: int = 64
  mlp_ratio: int = 4
  dropout: float = 0.0  # residual dropout, training only
  remat: str = "none"  # what the backward pass keeps: "none", "save_matmuls" or "full"
  # "auto" (splash on TPU, cuDNN on GPU, XLA elsewhere), "xla", "splash" or "cudnn" (ntm_jax.models.attention).
  attention: str = "auto"

  def _check_stack(self, section: str) -> None:
    if self.width < 1 or self.head_dim < 1 or self.width % self.head_dim:
      raise ValueError(f"{section}.width {self.width} must be a positive multiple of head_dim {self.head_dim}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"{section}.dropout must be in [0, 1), got {self.dropout}")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"{section}.remat must be one of {REMAT_POLICIES}, got {self.remat!r}")
    if self.attention not in ATTENTION_IMPLEMENTATIONS:
      raise ValueError(f"{section}.attention must be one of {ATTENTION_IMPLEMENTATIONS}, got {self.attention!r}")


@dataclasses.dataclass(frozen=True)
class TransporterConfig(StackConfig):
  """The shallow TarFlow stack f_T (D3). `num_blocks = 0` makes f_T the identity."""

  num_blocks: int = 2
  layers_per_block: int = 4
  time_conditioned: bool = True
  # Only the plain TarFlow baseline is label- or text-conditioned: NTM's transporter never is (D3).
  num_classes: int = 0
  text_dim: int = 0  # > 0: the baseline adds a projection of the sentence embedding to every token

  def __post_init__(self):
    if self.num_blocks < 0 or self.layers_per_block < 1:
      raise ValueError(f"transporter needs num_blocks >= 0 and layers_per_block >= 1, got {self}")
    self._check_stack("transporter")


@dataclasses.dataclass(frozen=True)
class PredictorConfig(StackConfig):
  """The block-causal trajectory Transformer f_P (D4)."""

  depth: int = 4
  markov: bool = False  # attend only to the conditioning level itself (an ablation of D4)
  sigma_floor: float = 0.02
  # > 0: h = c_skip(t) u_t + network output, with EDM's c_skip for data of this std (0 = h is the output).
  x0_skip_data_std: float = 0.0
  # What the network's first output is: "x0" (h itself) or "velocity" v, with h = u_t - t v: the
  # flow-matching parameterisation, which an NTM initialised from a flow-matching model needs (D9).
  prediction: str = "x0"
  num_classes: int = 0  # 0 = unconditional
  # Text conditioning (D4): the encoder's width and the prefix length (padded caption tokens).
  text_dim: int = 0
  text_tokens: int = 0

  def __post_init__(self):
    self._check_stack("predictor")
    if self.depth < 1:
      raise ValueError(f"predictor.depth must be >= 1, got {self.depth}")
    if (self.text_dim > 0) != (self.text_tokens > 0):
      raise ValueError(f"predictor.text_dim and text_tokens must both be set or both be 0, got "
                       f"{self.text_dim} and {self.text_tokens}")
    if self.text_dim and self.num_classes:
      raise ValueError("the predictor is conditioned on classes or on text, not both")
    if self.prediction not in ("x0", "velocity"):
      raise ValueError(f"predictor.prediction must be 'x0' or 'velocity', got {self.prediction!r}")
    if self.prediction == "velocity" and self.x0_skip_data_std:
      raise ValueError("predictor.x0_skip_data_std is for prediction='x0': a velocity already carries the skip "
                       "(h = u_t - t v)")
    if self.sigma_floor < 0:
      raise ValueError(f"predictor.sigma_floor must be >= 0, got {self.sigma_floor}")


@dataclasses.dataclass(frozen=True)
class GridConfig:
  """The time grid t_k = shift(k / T), k = 0..T (D1)."""

  num_steps: int = 4
  shift: float = 1.0

  def __post_init__(self):
    if self.num_steps < 1:
      raise ValueError(f"grid.num_steps (T) must be >= 1, got {self.num_steps}")
    if self.shift <= 0:
      raise ValueError(f"grid.shift must be > 0, got {self.shift}")


KINDS = ("ntm", "tarflow", "flow_matching")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything needed to build any model of ntm_jax.models (NTM, TarFlow, FlowMatching)."""

  image: ImageConfig
  # "ntm" (gaussian = ntm with transporter.num_blocks = 0), "tarflow", or "flow_matching" (the predictor
  # backbone as a velocity network, D9; it uses the image, grid and predictor sections only).
  kind: str = "ntm"
  grid: GridConfig = GridConfig()
  transporter: TransporterConfig = TransporterConfig()
  predictor: PredictorConfig = PredictorConfig()
  dtype: Any = jnp.float32  # matmul dtype; log-dets, mu, sigma and z are never below float32
  param_dtype: Any = jnp.float32
  # Layer stacks run under jax.lax.scan (one traced layer: fast compiles of deep presets) or unrolled (the
  # same parameters; one straight-line program). Either way the parameters are stacked [depth, ...].
  scan_layers: bool = True

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"model.kind must be one of {KINDS}, got {self.kind!r}")
    if self.kind == "tarflow" and self.transporter.num_blocks < 1:
      raise ValueError("the tarflow baseline needs transporter.num_blocks >= 1")
    if self.kind != "tarflow" and (self.transporter.num_classes or self.transporter.text_dim):
      raise ValueError("NTM's transporter is never conditioned on labels or text (D3): condition the predictor")
    if self.kind == "flow_matching" and self.predictor.prediction != "velocity":
      raise ValueError("a flow_matching model predicts velocity: set model.predictor.prediction='velocity'")

  @property
  def num_steps(self) -> int:
    """T, the number of steps of the model's trajectory; 0 for the plain TarFlow, which has none."""
    return 0 if self.kind == "tarflow" else self.grid.num_steps

  @property
  def loss_normaliser(self) -> int:
    """What the training loss divides a per-example NLL by: the dimensions it models, (T + 1) D for an NTM
    trajectory, D for one image (TarFlow) or one x_t (flow matching)."""
    levels = self.grid.num_steps + 1 if self.kind == "ntm" else 1
    return levels * self.image.num_dims

  @property
  def num_classes(self) -> int:
    """Classes of a class-conditional model (0 otherwise), from the section that holds the condition."""
    return (self.transporter if self.kind == "tarflow" else self.predictor).num_classes

  @property
  def condition_kind(self) -> str:
    """What the model is conditioned on: "none", "label" or "text"."""
    section = self.transporter if self.kind == "tarflow" else self.predictor
    return "text" if section.text_dim else "label" if section.num_classes else "none"


def _dtype(name):
  if not isinstance(name, str):
    return name
  if name not in _DTYPES:
    raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(_DTYPES)}")
  return _DTYPES[name]


def _build(cls, section, name):
  """Builds a dataclass from a dict-like config section, refusing keys the dataclass lacks."""
  values = dict(section) if section is not None else {}
  known = {field.name for field in dataclasses.fields(cls)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ValueError(f"unknown config key(s) in {name}: {unknown}; known keys: {sorted(known)}")
  try:
    return cls(**values)
  except TypeError as error:  # a required field is missing
    raise ValueError(f"incomplete config section {name}: {error}") from None


def model_config_from_dict(model) -> ModelConfig:
  """Builds a `ModelConfig` from the `config.model` ConfigDict (or a plain nested dict)."""
  model = dict(model)
  sections = {
      "image": ImageConfig, "grid": GridConfig, "transporter": TransporterConfig,
      "predictor": PredictorConfig,
  }
  kwargs = {key: _build(cls, model.pop(key, None), f"model.{key}") for key, cls in sections.items()}
  for key in ("dtype", "param_dtype"):
    if key in model:
      kwargs[key] = _dtype(model.pop(key))
  for key in ("kind", "scan_layers"):
    if key in model:
      kwargs[key] = model.pop(key)
  if model:
    raise ValueError(f"unknown config key(s) in model: {sorted(model)}")
  return ModelConfig(**kwargs)

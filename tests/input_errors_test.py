"""Bad input gets a clear error that names the problem."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntm_jax.models import config as model_config
from tests import helpers


@pytest.fixture(scope="module")
def model():
  return helpers.tiny_model(0, dtype=jnp.float32, height=4, width=4, patch_size=2)


@pytest.mark.parametrize("shape,message", [
    ((2, 4, 4), r"must have shape \[batch, 4, 4, 1\].*got \(2, 4, 4\)"),     # wrong rank
    ((2, 8, 8, 1), r"must have shape \[batch, 4, 4, 1\].*got \(2, 8, 8, 1\)"),  # wrong size
    ((2, 4, 4, 3), r"must have shape \[batch, 4, 4, 1\]"),                    # wrong channels
])
def test_wrong_image_shape_is_named(model, shape, message):
  with pytest.raises(ValueError, match=message):
    model.loss(jax.random.key(0), jnp.zeros(shape))


def test_wrong_image_shape_is_caught_under_jit(model):
  with pytest.raises(ValueError, match="must have shape"):
    jax.jit(lambda images: model.loss(jax.random.key(0), images)[0])(jnp.zeros((2, 5, 4, 1)))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_images_are_refused(model, bad):
  images = np.zeros((2, 4, 4, 1), np.float32)
  images[1, 2, 3, 0] = bad
  with pytest.raises(ValueError, match="NaN or Inf"):
    model.loss(jax.random.key(0), images)


def test_patch_size_that_does_not_divide_the_image():
  with pytest.raises(ValueError, match="patch_size 3 does not divide the image size 8x8"):
    model_config.ImageConfig(8, 8, 1, 3)


def test_number_of_steps_below_one():
  with pytest.raises(ValueError, match=r"num_steps \(T\) must be >= 1"):
    model_config.GridConfig(num_steps=0)


def test_trajectory_and_grid_must_agree(model):
  x = jnp.zeros((1, 3, 4, 4))
  with pytest.raises(ValueError, match="grid of T \\+ 1 = 3 times"):
    model.trajectory_log_prob(x, model.time_grid(4))


def test_unknown_and_missing_config_keys_are_named():
  base = {"image": {"height": 8, "width": 8, "channels": 1, "patch_size": 2}}
  assert model_config.model_config_from_dict(base).image.num_tokens == 16
  with pytest.raises(ValueError, match=r"unknown config key\(s\) in model.predictor: \['dept'\]"):
    model_config.model_config_from_dict({**base, "predictor": {"dept": 3}})
  with pytest.raises(ValueError, match=r"unknown config key\(s\) in model: \['colour'\]"):
    model_config.model_config_from_dict({**base, "colour": 1})
  with pytest.raises(ValueError, match="incomplete config section model.image"):
    model_config.model_config_from_dict({"image": {"height": 8}})
  with pytest.raises(ValueError, match="unknown dtype 'float8'"):
    model_config.model_config_from_dict({**base, "dtype": "float8"})


def test_conditional_model_without_labels(model):
  conditional = helpers.tiny_model(0, num_classes=3, dtype=jnp.float32)
  with pytest.raises(ValueError, match="class-conditional: pass labels"):
    conditional.loss(jax.random.key(0), jnp.zeros((2, 2, 4, 1)))

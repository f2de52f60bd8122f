"""The best-by-validation checkpoint: only the lowest metric is kept, across restarts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntm_jax.parallel.checkpoint import BestCheckpoint


def _params(value):
  return {"w": jnp.full((3,), value, jnp.float32)}


def test_keeps_the_lowest_metric_and_survives_a_restart(tmp_path):
  best = BestCheckpoint(str(tmp_path), "bpd_iw")
  assert best.restore(_params(0.0)) == (None, None)
  assert best.offer(10, _params(1.0), {"bpd_iw": 2.5})
  assert best.offer(20, _params(2.0), {"bpd_iw": 2.3})
  assert not best.offer(30, _params(3.0), {"bpd_iw": 2.4})

  restarted = BestCheckpoint(str(tmp_path), "bpd_iw")  # a resumed run compares against step 20
  assert restarted.best_step() == 20
  assert not restarted.offer(40, _params(4.0), {"bpd_iw": 2.35})
  params, step = restarted.restore(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _params(0.0)))
  assert step == 20
  np.testing.assert_array_equal(params["w"], np.full((3,), 2.0, np.float32))
  assert restarted.offer(50, _params(5.0), {"bpd_iw": 2.2})
  assert [p.name for p in tmp_path.iterdir() if p.name.isdigit()] == ["50"]


def test_an_unknown_metric_is_named(tmp_path):
  with pytest.raises(KeyError, match="bpd_typo"):
    BestCheckpoint(str(tmp_path), "bpd_typo").offer(1, _params(1.0), {"bpd_iw": 2.0, "bpd_elbo": 2.1})

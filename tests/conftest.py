"""Test setup: 8 simulated CPU devices and fast compiles (XLA flags set before jax is imported), a persistent
compilation cache and a float64 fixture."""

import os
import tempfile

from tests.xla_flags_for_tests import EIGHT_DEVICES

os.environ.setdefault("XLA_FLAGS", EIGHT_DEVICES)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the whole run: every xdist worker and every `python -m ntm_jax.main`
# subprocess a test starts (they inherit the environment). Many tests train, evaluate and sample the same smoke
# models, and on this CPU compiling them takes most of a test's time (a smoke training run: 32 s cold, 9 s
# warm). The cache is keyed by the program, the jax version and the flags, so a hit is the same executable.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"ntm_jax_tests_xla_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402  (must come after XLA_FLAGS)
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
  """Runs the test with 64-bit floats: the exactness tests compare to 1e-10 and need them."""
  with jax.enable_x64(True):
    yield


@pytest.fixture(scope="module")
def private_data_dir(tmp_path_factory):
  """Points NTM_JAX_DATA_DIR at a fresh directory, so each test process builds its own (tiny) data sets."""
  old = os.environ.get("NTM_JAX_DATA_DIR")
  os.environ["NTM_JAX_DATA_DIR"] = str(tmp_path_factory.mktemp("tfds"))
  yield
  if old is None:
    del os.environ["NTM_JAX_DATA_DIR"]
  else:
    os.environ["NTM_JAX_DATA_DIR"] = old

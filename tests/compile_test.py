"""--mode=compile: ahead-of-time compilation, for this machine's CPU devices (topology "cpu", in CI) and for
a TPU topology (needs libtpu: pip install '.[tpu]')."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from ntm_jax.parallel import compile as compile_lib
from ntm_jax.training.compile import compile_for_topology
from tests.config_test import load_config

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu is not installed (pip install -c constraints.txt -e '.[tpu]'); CI's default install has no "
           "libtpu, so the TPU compile runs where it is installed")


def tiny_config(topology="v5e:2x2", **mesh):
  config = load_config("digits", "smoke,conditional")
  config.mesh.update({"data": 1, "fsdp": -1, **mesh})
  config.compile.topology = topology
  return config


def test_compiles_train_step_and_sampler_for_this_machines_devices():
  report = compile_for_topology(tiny_config("cpu"))
  assert report["chips"] == 8 and report["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  train_step, sampler = report["programs"]
  for program in (train_step, sampler):
    assert 0 < program["per_chip_gib"] < program["hbm_gib"] and program["tflops_per_chip"] > 0
    assert program["compile_s"] > 0
  # XLA counts the inversion's loop body once: no roofline bound from its counts, the model FLOPs' time instead.
  assert sampler["mfu_bound"] is None and sampler["model_step_ms_at_peak"] > 0
  assert 0 < train_step["model_mfu_bound"] <= train_step["mfu_bound"]
  # No memory spaces on a CPU: the plan's traffic is every operand's, and its bounds exist where XLA's do.
  assert train_step["planned_hbm_gb_per_chip"] > 0 and train_step["planned_vmem_gb_per_chip"] == 0
  assert 0 < train_step["planned_model_mfu_bound"] <= train_step["planned_mfu_bound"] <= 1
  assert sampler["planned_mfu_bound"] is None
  assert "after memory-space assignment" in compile_lib.format_report(report)


@needs_libtpu
def test_compiles_train_step_and_sampler_for_a_tpu_topology():
  report = compile_for_topology(tiny_config())
  assert report["chips"] == 4 and report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  train_step, sampler = report["programs"]
  for program in (train_step, sampler):
    assert 0 < program["per_chip_gib"] < program["hbm_gib"] == 16
    assert program["tflops_per_chip"] > 0 and program["model_tflops_per_chip"] > 0
  assert 0 < train_step["model_mfu_bound"] <= train_step["mfu_bound"] <= 1  # smoke: unrolled layers
  assert sampler["mfu_bound"] is None and sampler["model_mfu_bound"] is None  # its inversion is a loop
  # The TPU compiler keeps operands in VMEM: what crosses HBM is less than XLA's count, so the bound is higher.
  assert 0 < train_step["planned_hbm_gb_per_chip"] < train_step["hbm_gb_per_chip"]
  assert train_step["planned_vmem_gb_per_chip"] > 0
  assert train_step["mfu_bound"] <= train_step["planned_mfu_bound"] <= 1
  assert "train step" in compile_lib.format_report(report)


def test_a_latent_preset_compiles_without_its_vae():
  """A pod preset over SD-VAE latents names a weights file this machine does not have; compiling its train step
  and sampler needs only the latent shape."""
  config = load_config("t2i", "smoke,res=64,latent=sd_vae:/no/such/vae.safetensors")
  config.mesh.update(data=1, fsdp=-1)
  config.compile.topology = "cpu"
  assert tuple(config.model.image.to_dict()[k] for k in ("height", "width", "channels")) == (8, 8, 4)
  report = compile_for_topology(config)
  assert all(0 < p["per_chip_gib"] < p["hbm_gib"] for p in report["programs"])


@needs_libtpu
def test_compiles_the_text_to_image_model_with_its_caption_prefix():
  """On a TPU topology attention "auto" is the splash kernel: it compiles with the caption prefix's segment
  ids, and the report adds the kernels' cost estimate to XLA's counts."""
  config = load_config("t2i", "smoke")
  config.mesh.update(data=1, fsdp=-1)
  report = compile_for_topology(config)
  assert report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1} and report["attention"] == "splash"
  assert all(0 < p["per_chip_gib"] < p["hbm_gib"] for p in report["programs"])
  train_step = report["programs"][0]
  assert 0 < train_step["kernel_tflops_per_chip"] < train_step["tflops_per_chip"]


@needs_libtpu
def test_this_libtpu_accepts_every_launcher_flag():
  """libtpu aborts on a flag it does not know: compile with launch/libtpu_flags.sh's flags in a fresh process."""
  launch = pathlib.Path(__file__).resolve().parents[1] / "launch" / "libtpu_flags.sh"
  flags = subprocess.run(["bash", "-c", f"source {launch} && echo $NTM_LIBTPU_FLAGS"], capture_output=True,
                         text=True, check=True).stdout.strip()
  assert flags.count("--xla") >= 5
  program = ("from tests.compile_test import tiny_config; from ntm_jax.training.compile import compile_for_topology; "
             "print(compile_for_topology(tiny_config())['chips'])")
  env = dict(os.environ, LIBTPU_INIT_ARGS=flags, ALLOW_MULTIPLE_LIBTPU_LOAD="1", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env,
                          cwd=launch.parents[1], check=False, timeout=600)
  assert result.returncode == 0 and result.stdout.strip().endswith("4"), result.stderr[-2000:]


@needs_libtpu
def test_multi_slice_puts_the_data_axis_across_slices():
  config = tiny_config(topology="v5e:2x2", data=1, fsdp=-1, dcn_data=2)
  config.compile.num_slices = 2
  report = compile_for_topology(config)
  assert report["chips"] == 8 and report["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
  assert all(p["per_chip_gib"] > 0 for p in report["programs"])


@needs_libtpu
def test_a_program_bigger_than_hbm_is_refused_with_the_numbers():
  config = tiny_config()
  config.data.batch_size = 65536  # activations far beyond a v5e chip's 16 GiB
  config.model.predictor.update(width=512, head_dim=64)
  with pytest.raises(compile_lib.CompiledMemoryError,
                     match=r"train step does not fit in a chip's HBM on v5e:2x2 .*exceeds available HBM"):
    compile_for_topology(config)


def test_unknown_generation_is_named():
  with pytest.raises(ValueError, match="unknown TPU generation 'v9'"):
    compile_lib.chip_of("v9:2x2")


def test_missing_libtpu_is_a_clear_error(monkeypatch):
  monkeypatch.setitem(sys.modules, "libtpu", None)  # what `import libtpu` sees when it is not installed
  with pytest.raises(compile_lib.MissingLibtpuError, match=r"needs libtpu: pip install .*\[tpu\]"):
    compile_lib.topology_devices("v5e:2x2")


def test_a_module_xla_cannot_print_back_gives_no_planned_traffic_but_a_report():
  """XLA refuses to print some large compiled modules (a RET_CHECK on asynchronous ops): the report goes on."""
  compiled = jax.jit(lambda x: x * 2).lower(jax.numpy.ones(4)).compile()

  class Unprintable:
    memory_analysis, cost_analysis = compiled.memory_analysis, compiled.cost_analysis

    def as_text(self):
      raise jax.errors.JaxRuntimeError("INTERNAL: RET_CHECK failure ... Async done requires its operand")

  program = compile_lib.program_report(Unprintable(), compile_lib.chip_of("cpu"), "step", model_flops=1.0)
  assert program["planned_hbm_gb_per_chip"] is None and program["planned_model_mfu_bound"] is None
  assert program["mfu_bound"] is not None
  report = {"topology": "cpu", "num_slices": 1, "chips": 1, "mesh": {}, "parameters": 0, "batch_size": 1,
            "programs": [program | {"compile_s": 0.0}]}
  assert "n/a (XLA could not print the compiled module)" in compile_lib.format_report(report)

"""Flow matching, then an NTM fine-tuned from it, end to end on the embedded digits (configs/flow_matching.py,
configs/finetune.py): the NTM's step-0 evaluation is the flow-matching model's, and bad inputs are named."""

import json
import os

import numpy as np
import pytest

from ntm_jax.sampling import sampler as sample
from ntm_jax.training import metric_writer, train
from tests.config_test import load_config

# One xdist worker runs the whole module (pyproject: --dist=loadgroup), so its trained module fixtures are
# built once, not once per worker.
pytestmark = [pytest.mark.usefixtures("private_data_dir"), pytest.mark.xdist_group("finetune")]


def smoke(name, arg=""):
  config = load_config(name, ",".join(filter(None, ["smoke", "steps=4", arg])))
  config.train.update(eval_every=1000, checkpoint_every=4)  # evaluate at steps 0 and 4
  config.sample.num_samples = 4
  return config


def validation_bpd(workdir, step):
  return next(r["eval/validation/bpd_iw"] for r in metric_writer.read_metrics(workdir)
              if r["step"] == step and "eval/validation/bpd_iw" in r)


@pytest.fixture(scope="module")
def flow_matching_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("fm"))
  config = smoke("flow_matching")
  results = train.train_and_evaluate(config, workdir)
  assert np.isfinite(results["bpd_iw"])
  return config, workdir


def test_flow_matching_samples_with_euler_and_ancestral_steps(flow_matching_run):
  config, workdir = flow_matching_run
  config.sample.update(num_samples=6, num_steps=4)
  draws = {}
  for sampler in ("euler", "ancestral"):
    config.sample.sampler = sampler
    out = sample.sample_checkpoint(config, workdir)
    assert out["png"].endswith(f"_{sampler}.png") and os.path.getsize(out["png"]) > 0
    draws[sampler] = np.load(out["npz"])["model_space"]
    assert draws[sampler].shape == (6, 8, 8, 1) and np.all(np.abs(draws[sampler]) <= 1.0)
  assert np.max(np.abs(draws["euler"] - draws["ancestral"])) > 1e-3
  config.sample.guidance_scale = 1.0
  with pytest.raises(ValueError, match="guidance is not implemented for flow matching"):
    sample.sample_checkpoint(config, workdir)


def test_finetuned_ntm_starts_as_the_flow_matching_model_and_logs_the_alignment(flow_matching_run, tmp_path, capsys):
  fm_config, fm_workdir = flow_matching_run
  workdir = str(tmp_path / "ntm")
  config = smoke("finetune", f"init_from={fm_workdir}")
  train.train_and_evaluate(config, workdir)
  assert f"initialised from flow-matching step 4 (best) in {fm_workdir}" in capsys.readouterr().out
  # Same data, same evaluation draws, same density: the same validation bits/dim at step 0.
  assert validation_bpd(workdir, 0) == pytest.approx(validation_bpd(fm_workdir, 4), rel=1e-5)
  records = [r for r in metric_writer.read_metrics(workdir) if "train/mean_alignment" in r]
  assert records and all(r["train/alignment_weight"] < 2.5 for r in records)
  assert all("train/nll_per_dim" in r for r in records)
  # A resumed fine-tune keeps its own parameters (the initialisation is for step 0 only).
  config.train.num_steps = 6
  train.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert "resumed from checkpoint step 4" in out and "initialised from" not in out
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["init_from"]["workdir"] == fm_workdir


def test_init_from_names_what_is_wrong(flow_matching_run, tmp_path):
  _, fm_workdir = flow_matching_run
  with pytest.raises(FileNotFoundError, match="has no config.json"):
    train.train_and_evaluate(smoke("finetune", f"init_from={tmp_path}"), str(tmp_path / "a"))
  config = smoke("finetune", f"init_from={fm_workdir}")
  config.model.predictor.markov = False
  with pytest.raises(ValueError, match="markov=True"):
    train.train_and_evaluate(config, str(tmp_path / "b"))
  ntm_workdir = tmp_path / "plain_ntm"  # what a plain NTM run leaves: its config.json (checked before weights)
  ntm_workdir.mkdir()
  (ntm_workdir / "config.json").write_text(smoke("digits").to_json())
  with pytest.raises(ValueError, match="holds a 'ntm' run, not a flow_matching one"):
    train.train_and_evaluate(smoke("finetune", f"init_from={ntm_workdir}"), str(tmp_path / "c"))


def test_pairwise_training_runs_and_refuses_a_block_causal_predictor(tmp_path):
  results = train.train_and_evaluate(smoke("finetune", "pairwise"), str(tmp_path / "pairwise"))
  assert np.isfinite(results["bpd_iw"])
  config = smoke("digits")
  config.train.pairwise_num_steps = "4,8"
  with pytest.raises(ValueError, match="needs model.predictor.markov=True"):
    train.train_and_evaluate(config, str(tmp_path / "block_causal"))

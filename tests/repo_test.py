"""The repository keeps its promises: CI runs exactly the test command the README gives."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
  ci_lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
  ci_pytest = [line for line in ci_lines if line.startswith("pytest")]
  assert len(ci_pytest) == 1, ci_pytest
  readme = (ROOT / "README.md").read_text()
  blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
  test_blocks = [block for block in blocks[:2] if ci_pytest[0] in block]
  assert test_blocks, "one of README's first two command blocks must run CI's pytest command"
  assert "-c constraints.txt" in test_blocks[0] and "-c constraints.txt" in (ROOT / ".ci/run").read_text()
  assert any("python -m ntm_jax.main --config=configs/digits.py" in block for block in blocks[:2])


def test_top_level_layout():
  for name in ("pyproject.toml", "README.md", "ntm_jax", "configs", "launch", "tests", "colab",
               "constraints.txt"):
    assert (ROOT / name).exists(), name

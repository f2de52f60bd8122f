"""The repository keeps its promises: CI runs exactly the test command the README gives."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
  ci_lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
  ci_pytest = [line for line in ci_lines if line.startswith("pytest")]
  assert len(ci_pytest) == 1, ci_pytest
  readme = (ROOT / "README.md").read_text()
  first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
  assert ci_pytest[0] in first_block, "README's first command block must end with CI's pytest command"
  assert "-c constraints.txt" in first_block and "-c constraints.txt" in (ROOT / ".ci/run").read_text()


def test_top_level_layout():
  for name in ("pyproject.toml", "README.md", "ntm_jax", "configs", "launch", "tests", "colab",
               "constraints.txt"):
    assert (ROOT / name).exists(), name

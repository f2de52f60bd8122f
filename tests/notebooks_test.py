"""Every notebook in colab/ runs top to bottom headlessly (nbclient), at the small size CI uses."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(path.name for path in (ROOT / "colab").glob("*.ipynb"))

pytestmark = pytest.mark.usefixtures("private_data_dir")


def execute(name: str) -> nbformat.NotebookNode:
  """Runs colab/NAME in a fresh kernel started in colab/ (with this process's environment); a failing
  cell raises nbclient's CellExecutionError with the cell and its traceback."""
  notebook = nbformat.read(ROOT / "colab" / name, as_version=4)
  NotebookClient(notebook, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(ROOT / "colab")}}).execute()
  return notebook


def printed(notebook) -> str:
  return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                 for output in cell.get("outputs", []))


def test_the_notebooks_are_there_and_stored_without_outputs():
  assert {"quickstart.ipynb", "likelihood_anomaly.ipynb", "text_to_image.ipynb"} <= set(NOTEBOOKS)
  for name in NOTEBOOKS:
    notebook = nbformat.read(ROOT / "colab" / name, as_version=4)
    nbformat.validate(notebook)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), name


# CI runs the quickstart (about two minutes a notebook); `-m slow` runs every notebook.
@pytest.mark.parametrize("name", [name if name == "quickstart.ipynb" else pytest.param(name, marks=pytest.mark.slow)
                                  for name in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
  # Small, with its runs in a temporary directory (the kernel also inherits the test data directory).
  monkeypatch.setenv("NTM_JAX_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("NTM_JAX_NOTEBOOK_WORKDIRS", str(tmp_path))
  text = printed(execute(name))
  assert "small run: True" in text
  if name == "quickstart.ipynb":
    assert "test bits/dim" in text
  if name == "likelihood_anomaly.ipynb":
    assert text.count("ROC-AUC of bits/dim") == 3
  if name == "text_to_image.ipynb":
    assert "sampled 4 prompts at guidance 0 and 3" in text

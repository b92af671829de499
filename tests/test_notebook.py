"""The quickstart notebook runs top to bottom (a real run on the packaged MiniLM)."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "examples" / "quickstart.ipynb", as_version=4)
    os.environ["PYTHONPATH"] = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    accuracy_cell = nb.cells[1].outputs[-1]["data"]["text/plain"]
    assert "target_accuracy" in accuracy_cell and "source_accuracy" in accuracy_cell
    predictions = nb.cells[3].outputs[-1]["data"]["text/plain"]
    assert "'label': 'negative'" in predictions or "'label': 'positive'" in predictions
    assert (tmp_path / "outputs" / "quickstart" / "config.json").is_file()

"""The quickstart notebook runs top to bottom unattended (on a small subset, as CI does)."""

import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "camlens_quickstart.ipynb"
DATA = Path(__file__).parent.parent.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None


@pytest.mark.slow
@pytest.mark.skipif(not DATA.exists(), reason="needs ../shared/data/cifar10-jpeg.tar.gz")
def test_notebook_runs_unattended(tmp_path, monkeypatch):
    monkeypatch.setenv("CAMLENS_QUICK", "1")
    monkeypatch.setenv("CAMLENS_DATA", str(DATA))
    monkeypatch.setenv("CAMLENS_OUT", str(tmp_path / "out"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert (tmp_path / "out" / "report" / "report.html").is_file()
    assert (tmp_path / "out" / "brief" / "curves.png").is_file()
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # samples, curves, the Grad-CAM grid


OWN_MODEL = NOTEBOOK.parent / "your_own_model.ipynb"


def test_your_own_model_notebook_runs_unattended_and_is_committed_without_outputs(
    tmp_path, monkeypatch
):
    """A plain loop on the bundled sample with the Watch, then the report: no data needed."""
    nb = nbformat.read(OWN_MODEL, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None
    monkeypatch.setenv("CAMLENS_OUT", str(tmp_path / "out"))
    client = nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(OWN_MODEL.parent)}},
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert (tmp_path / "out" / "report" / "report.html").is_file()
    strips = tmp_path / "out" / "watch" / "over-epochs.json"
    assert json.loads(strips.read_text())["epochs"] == [2, 4, 6]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the strips, shown

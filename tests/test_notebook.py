"""examples/quickstart.ipynb runs headless, top to bottom, and shows its tables and figures."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def _html(cell) -> str:
    return "".join(o.get("data", {}).get("text/html", "") for o in cell.get("outputs", []))


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's tempfile.mkdtemp() lands here
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the cell on the first error
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    by_source = {c.source.splitlines()[-1]: c for c in code}
    assert "<table" in _html(by_source["audit"])
    train = by_source["result"]
    assert "<img" in _html(train)  # the training curves
    log = "".join(o.get("text", "") for o in train.outputs if o.output_type == "stream")
    assert "epoch 1/" in log and "\r" not in log and "\x1b[" not in log  # plain lines, no redrawn bars
    assert "ipywidgets" not in str(train.outputs)
    metrics = _html(by_source["metrics"])
    assert "95% interval" in metrics and metrics.count("<img") == 2  # confusion matrix and ROC
    assert "<img" in _html(by_source['run.explain(image, method="gradcam")'])
    assert "<table" in _html(by_source["predictions"])
    assert "report.html" in str(by_source["run.report()"].outputs)

"""The quickstart notebook (examples/quickstart.ipynb) runs top to bottom in a real Jupyter kernel against the real
default model (nbclient; any cell's error fails), and is kept in git without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"
ARTIFACTS = ROOT / "test-artifacts" / "notebook"


def test_the_quickstart_is_stored_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def test_the_quickstart_runs_in_a_real_kernel(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    html = [o["data"]["text/html"] for c in nb.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    views = [h for h in html if 'class="hs-snap"' in h]
    assert len(views) == 2  # the maps and the similarity matrix drew themselves
    assert sum('class="hs-plotly"' in v for v in views) == 1  # plotly.js travels with the first view only
    saved = tmp_path / "quickstart-snapshot.html"
    assert 0 < saved.stat().st_size <= 8_000_000
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, ARTIFACTS / "quickstart.ipynb")  # executed, for a person to look at

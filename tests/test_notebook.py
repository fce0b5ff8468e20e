"""The quickstart notebook (examples/quickstart.ipynb) runs top to bottom in a real Jupyter kernel against the real
default model (nbclient; any cell's error fails), and is kept in git without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from pypdf import PdfReader

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
    assert len(views) == 3  # the maps, the similarity matrix and the ablation's before/after drew themselves
    assert sum('class="hs-plotly"' in v for v in views) == 1  # plotly.js travels with the first view only
    assert '"ablation":{' in views[2]
    saved = tmp_path / "quickstart-snapshot.html"
    assert 0 < saved.stat().st_size <= 8_000_000 and '"ablation":{' in saved.read_text()
    pdf = PdfReader(tmp_path / "quickstart-maps.pdf")
    assert len(pdf.pages) == 1 and "L3H5" in pdf.pages[0].extract_text()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, ARTIFACTS / "quickstart.ipynb")  # executed, for a person to look at

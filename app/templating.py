"""What the page routers share: the Jinja2 templates and the vendored plotly.js (a leaf: no routes)."""

from __future__ import annotations

from pathlib import Path

import plotly
from fastapi.templating import Jinja2Templates

ROOT = Path(__file__).resolve().parents[1]
templates = Jinja2Templates(directory=ROOT / "templates")
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"  # served from the installed package

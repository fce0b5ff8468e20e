"""What a snapshot carries besides its data: plotly.js (gzipped, base64) and the page's CSS scoped to the view.

plotly.js comes from the installed `plotly` package, as the server's /vendor/plotly.min.js does, never a CDN.
The CSS is the page's own stylesheet with every rule scoped under `.hs-snap`, so a view inside a notebook
styles itself and nothing around it.
"""

from __future__ import annotations

import base64
import gzip
import re
from functools import cache
from pathlib import Path

import plotly

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "static"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
SCOPE = ".hs-snap"
_DOCUMENT = {":root", "html", "body", "html, body"}


@cache
def plotly_gz_base64() -> str:
    """plotly.min.js gzipped and base64-encoded (≈ 2 MB instead of 4.8 MB); computed once per process."""
    return base64.b64encode(gzip.compress(PLOTLY_JS.read_bytes(), compresslevel=9, mtime=0)).decode("ascii")


def _scoped_selector(selector: str) -> str:
    selector = selector.strip()
    if selector in _DOCUMENT:
        return SCOPE
    return f"{SCOPE} {selector}"


def scope_css(css: str) -> str:
    """Every rule of `css` applied only inside `.hs-snap` (document rules such as :root and body apply to it)."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    out: list[str] = []
    i = 0
    while i < len(css):
        brace = css.find("{", i)
        if brace < 0:
            break
        head = css[i:brace].strip()
        depth, j = 1, brace + 1
        while depth:
            depth += {"{": 1, "}": -1}.get(css[j], 0)
            j += 1
        block = css[brace + 1 : j - 1]
        if head.startswith("@media") or head.startswith("@supports"):
            out.append(f"{head} {{{scope_css(block)}}}")
        elif head.startswith("@"):
            out.append(f"{head} {{{block}}}")
        else:
            out.append(",".join(_scoped_selector(s) for s in head.split(",")) + f" {{{block}}}")
        i = j
    return "\n".join(out)


@cache
def snapshot_css() -> str:
    """The page's stylesheet scoped to the view, plus the snapshot's own few rules."""
    page = scope_css((STATIC / "css" / "headscope.css").read_text(encoding="utf-8"))
    own = (STATIC / "css" / "snapshot.css").read_text(encoding="utf-8")
    return page + "\n" + own

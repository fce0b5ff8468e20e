"""Vector figures from Python (`save_svg`, `save_pdf`): Plotly's static export through kaleido 0.2.1, whose
Chromium comes in its wheel. Read back: one page of the figure's size, its head and token labels as text."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pypdf import PdfReader

import headscope
from headscope.figures import _text, export

TEXT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def scope(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[headscope.Scope]:
    data = tmp_path_factory.mktemp("figures")
    with headscope.open(str(tiny_dirs["llama"]), device="cpu", dtype="float32", data_dir=data) as opened:
        yield opened


def _pdf_text(path: Path) -> tuple[PdfReader, str]:
    reader = PdfReader(path)
    return reader, "".join(page.extract_text() for page in reader.pages)


def test_maps_save_as_a_one_page_pdf_with_their_labels_as_text(scope: headscope.Scope, tmp_path: Path) -> None:
    maps = scope.attention(TEXT, heads=["L1H2", "L0H1"])
    figure = maps.figure()
    path = maps.save_pdf(tmp_path / "maps.pdf")
    assert path.read_bytes().startswith(b"%PDF-")
    reader, text = _pdf_text(path)
    assert len(reader.pages) == 1
    box = reader.pages[0].mediabox
    width, height = figure["layout"]["width"], figure["layout"]["height"]
    assert float(box.width) / float(box.height) == pytest.approx(width / height, rel=0.02)  # the figure's shape
    squeezed = re.sub(r"\s+", "", text)
    assert "L1H2" in squeezed and "L0H1" in squeezed  # panel titles, as text
    for token in ("·Mary", "·John", "·store"):  # token labels as the page shows them, as text
        assert token in squeezed, token
    # the figure holds the numbers it draws: each map as asked, nothing above the diagonal
    z = np.asarray(figure["data"][1]["z"], dtype=np.float64)
    lower = np.tril_indices(len(maps.tokens))
    np.testing.assert_array_equal(z[lower], maps.map("L0H1")[lower])
    assert np.isnan(z[np.triu_indices(len(maps.tokens), 1)]).all()


def test_svg_keeps_text_as_text_and_every_figure_exports(scope: headscope.Scope, tmp_path: Path) -> None:
    maps = scope.attention(TEXT, heads="L1H2")
    svg = maps.save_svg(tmp_path / "map.svg").read_text(encoding="utf-8")
    assert svg.startswith("<svg") and "<text" in svg and ">L1H2<" in svg.replace("<b>", "").replace("</b>", "")
    assert "·Mary" in svg and "<image" in svg  # the heatmap itself is Plotly's raster layer inside the SVG
    sim = scope.similarity(TEXT, "js")
    reader, text = _pdf_text(sim.save_pdf(tmp_path / "sim.pdf"))
    assert len(reader.pages) == 1 and "L1H3" in text and "Headsimilarity(js)" in re.sub(r"\s+", "", text)
    imp = scope.importance(TEXT)
    reader, text = _pdf_text(imp.save_pdf(tmp_path / "importance.pdf"))
    assert len(reader.pages) == 1 and {"L0", "L1", "H3", "|∂loss/∂gate|"} <= set(text.split())
    clean, corrupted = "When Mary and John went, John gave it to", "When Mary and John went, Mary gave it to"
    drawn = scope.patch(clean, corrupted, " Mary", " John").figure()["data"][0]
    assert drawn["zmin"] == -drawn["zmax"] < 0  # signed scores: a diverging scale centred on 0


def test_labels_show_tokens_as_text_and_bad_formats_are_refused() -> None:
    assert _text(" <b>x</b>") == "·&lt;b&gt;x&lt;/b&gt;"  # markup in a token stays text
    assert _text("\n") == "↵" and _text("") == "∅" and _text("a" * 20) == "a" * 13 + "…"
    with pytest.raises(ValueError, match="svg, pdf"):
        export({"data": [], "layout": {}}, "png")

"""The Circuit page (/circuit) on a real server: the graph draws the API's top-n edges; an edge gets its exact value."""

from __future__ import annotations

import json
import random
import re
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from tests.browser.pages import download
from tests.support import prompts
from tests.support.server import Server

pytestmark = pytest.mark.browser

IOI = {**prompts.IOI, "direction": "denoise"}


def post(url: str, path: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def edge_id(e: dict[str, Any]) -> str:
    return f"{e['source']}>{e['target']}:{e['channel']}"


def drawn(page: Any) -> tuple[list[str], list[str], list[float]]:
    """(edge ids in the handles trace, node ids in the nodes trace, line widths of the edge traces)."""
    return tuple(  # type: ignore[return-value]
        page.eval_on_selector(
            "#graph",
            """el => {
              const t = (name) => el.data.find((d) => d.name === name);
              const lines = el.data.filter((d) => d.meta && d.meta.edge !== undefined);
              return [t('edge handles').text, t('nodes').customdata, lines.map((d) => d.line.width)];
            }""",
        )
    )


def wait_graph(page: Any, before: int) -> None:
    page.wait_for_function(
        "b => Number(document.getElementById('graph').dataset.painted || 0) > b", arg=before, timeout=120_000
    )


def click_handle(page: Any, index: int) -> None:
    """A real mouse click on edge `index`'s handle (its midpoint marker)."""
    x, y = page.eval_on_selector(
        "#graph",
        """(el, i) => {
          const h = el.data.find((d) => d.name === 'edge handles');
          const xa = el._fullLayout.xaxis, ya = el._fullLayout.yaxis, r = el.getBoundingClientRect();
          return [r.left + xa._offset + xa.l2p(h.x[i]), r.top + ya._offset + ya.l2p(h.y[i])];
        }""",
        index,
    )
    page.mouse.move(x, y)
    page.mouse.click(x, y)


def test_circuit_draws_the_top_edges_and_patches_a_clicked_edge_exactly(
    page: Any, tiny_server: Server, artifacts: Path
) -> None:
    page.set_viewport_size({"width": 1280, "height": 720})
    page.goto(tiny_server.url + "/circuit")
    page.wait_for_selector("body[data-ready]")
    assert page.input_value("#clean") == IOI["clean"] and page.input_value("#answer") == " Mary"
    page.click("#run")
    wait_graph(page, 0)

    api = post(tiny_server.url, "/api/circuit", {**IOI, "method": "eap-ig", "steps": 5, "top_n": 300})
    edges, nodes, widths = drawn(page)
    top = [edge_id(e) for e in api["edges"][:30]]
    assert edges == top
    touched = {n for e in api["edges"][:30] for n in (e["source"], e["target"])}
    assert set(nodes) == touched and len(nodes) == len(touched)
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]  # width follows |score|
    assert page.eval_on_selector("#faith", "el => el.data[0].x.length") >= 2  # the faithfulness curve is drawn

    # the slider prunes to the top n, nodes to those the kept edges touch; the URL keeps n
    page.fill("#topn", "5")
    page.dispatch_event("#topn", "input")
    edges, nodes, _ = drawn(page)
    assert edges == top[:5]
    assert set(nodes) == {n for e in api["edges"][:5] for n in (e["source"], e["target"])}
    assert parse_qs(urlparse(page.url).query)["n"] == ["5"]

    # clicking an edge shows its exact path-patching value beside the estimate
    click_handle(page, 1)
    page.wait_for_selector("#detail[data-exact]")
    edge = api["edges"][1]
    assert page.get_attribute("#detail", "data-exact") == edge_id(edge)
    exact = post(
        tiny_server.url,
        "/api/path_patch",
        {**IOI, "edges": [{k: edge[k] for k in ("source", "target", "channel")}]},
    )
    cells = page.locator("#edge-table td.num").all_text_contents()
    assert float(cells[0]) == pytest.approx(edge["score"], abs=1e-4)
    assert float(cells[1]) == pytest.approx(exact["metric"] - exact["metric_corrupted"], abs=1e-4)
    assert parse_qs(urlparse(page.url).query)["edge"] == [edge_id(edge)]
    page.screenshot(path=str(artifacts / "circuit-1280x720.png"))

    # a head links to the Heads view on the clean prompt with that head selected
    heads = [n for n in (edge["source"], edge["target"]) if re.fullmatch(r"L\d+H\d+", n)]
    links = page.locator("#detail a.head-link")
    assert links.count() == len(heads)
    for head, link in zip(heads, links.all(), strict=True):
        q = parse_qs(urlparse(str(link.get_attribute("href"))).query)
        assert q["text"] == [IOI["clean"]] and q["head"] == [head]


def synthetic_circuit(n_layers: int, n_heads: int, n_kv: int, n_edges: int) -> dict[str, Any]:
    """A /api/circuit answer for a model of SmolLM2's shape: edges from earlier senders to later receivers."""
    rng = random.Random(0)
    heads = [f"L{layer}H{h}" for layer in range(n_layers) for h in range(n_heads)]
    senders = ["emb", *heads, *(f"M{layer}" for layer in range(n_layers))]

    def layer(node: str) -> int:
        return -1 if node == "emb" else int(re.findall(r"\d+", node)[0])

    edges = []
    while len(edges) < n_edges:
        s = rng.choice(senders)
        to = rng.randint(layer(s) + 1, n_layers)
        ch = rng.choice(["q", "k", "v", "in"])
        if to == n_layers:
            t, ch = "logits", "in"
        elif ch == "in":
            t = f"M{to}"
        else:
            t = f"L{to}H{rng.randrange(n_heads)}" if ch == "q" else f"L{to}KV{rng.randrange(n_kv)}"
        edges.append({"source": s, "target": t, "channel": ch, "score": rng.gauss(0, 1) / (1 + len(edges))})
    edges.sort(key=lambda e: -abs(e["score"]))
    pair = {"tokens_clean": ["a", " to"], "position": 1, "direction": "denoise"}
    return {
        **pair,
        "method": "eap-ig",
        "steps": 5,
        "metric": {"clean": 3.2, "corrupted": -2.9},
        "node_scores": [{"id": s, "score": 0.0} for s in senders],
        "edges": edges,
        "n_edges": 32_000,
        "wiring": "sequential blocks",
        "faithfulness": [
            {"n_edges": n, "metric": 0.0, "recovered": min(1, n / 200)} for n in (1, 2, 5, 10, 20, 50, 100, 200)
        ],
    }


def test_circuit_stays_readable_at_30_layers_by_9_heads(page: Any, tiny_server: Server, artifacts: Path) -> None:
    """SmolLM2's shape (30 × 9, 3 KV heads), answers stubbed: only the nodes the kept edges touch are drawn."""
    model = {"name": "SmolLM2-135M (stub)", "n_layers": 30, "n_heads": 9, "n_kv_heads": 3}
    answer = synthetic_circuit(30, 9, 3, 300)
    page.route("**/api/model", lambda r: r.fulfill(json={**post_model(tiny_server.url), **model}))
    page.route("**/api/circuit", lambda r: r.fulfill(json=answer))
    page.set_viewport_size({"width": 1280, "height": 720})
    page.goto(tiny_server.url + "/circuit?n=40")
    page.wait_for_selector("body[data-ready]")
    page.click("#run")
    wait_graph(page, 0)
    edges, nodes, _ = drawn(page)
    assert edges == [edge_id(e) for e in answer["edges"][:40]]
    assert set(nodes) == {n for e in answer["edges"][:40] for n in (e["source"], e["target"])}
    ticks = page.eval_on_selector("#graph", "el => el._fullLayout.yaxis.ticktext")
    assert ticks[0] == "emb" and ticks[-1] == "logits" and len(ticks) == 32
    page.screenshot(path=str(artifacts / "circuit-30x9-1280x720.png"))


def post_model(url: str) -> Any:
    with urllib.request.urlopen(url + "/api/model", timeout=30) as r:
        return json.load(r)


def test_circuit_shows_the_api_error_for_unequal_prompts(page: Any, tiny_server: Server) -> None:
    page.watch.allow("422")
    page.goto(tiny_server.url + "/circuit")
    page.wait_for_selector("body[data-ready]")
    page.fill("#corrupted", "When Mary went to the store, Mary gave a drink to")
    page.click("#run")
    page.wait_for_selector("#error:not([hidden])")
    assert "same number" in page.inner_text("#error-text")
    assert page.get_attribute("#error", "data-code")


def hover_text(page: Any, index: int) -> str:
    """The hover template of edge `index`'s handle."""
    return str(
        page.eval_on_selector(
            "#graph", "(el, i) => el.data.find((d) => d.name === 'edge handles').hovertemplate[i]", index
        )
    )


def test_circuit_over_the_builtin_ioi_pairs_draws_mean_scores_with_their_cis(
    page: Any, tiny_server: Server, artifacts: Path
) -> None:
    page.set_viewport_size({"width": 1280, "height": 720})
    page.goto(tiny_server.url + "/circuit")
    page.wait_for_selector("body[data-ready]")
    page.select_option("#pair-set", "builtin:ioi-pairs")
    assert page.is_disabled("#clean") and "32 pairs" in page.inner_text("#pairs-note")
    page.click("#run")
    wait_graph(page, 0)
    api = post(
        tiny_server.url,
        "/api/circuit_pairs",
        {"pair_set": "builtin:ioi-pairs", "method": "eap-ig", "steps": 5, "top_n": 300, "direction": "denoise"},
    )
    edges, nodes, widths = drawn(page)
    assert edges == [edge_id(e) for e in api["edges"][:30]]  # the graph is drawn from the mean scores
    assert set(nodes) == {n for e in api["edges"][:30] for n in (e["source"], e["target"])}
    assert widths == sorted(widths, reverse=True)
    first = api["edges"][0]
    low, high = (float(x) for x in re.findall(r"\[([^,\]]+), ([^\]]+)\]", hover_text(page, 0))[0])
    assert low == pytest.approx(first["ci_low"], abs=2e-3) and high == pytest.approx(first["ci_high"], abs=2e-3)
    assert "95% CI over 32 pairs" in hover_text(page, 0)
    assert "mean over 32 pairs" in page.inner_text("#summary") and "(95% CI)" in page.inner_text("#summary")
    assert page.eval_on_selector("#faith", "el => (el.data || []).length") == 0  # the curve is one pair's
    assert parse_qs(urlparse(page.url).query)["pair_set"] == ["builtin:ioi-pairs"]

    # an edge's details: its mean, CI and pairs, and a dot per pair
    click_handle(page, 0)
    page.wait_for_selector("#detail[data-spread]")
    assert page.get_attribute("#detail", "data-spread") == edge_id(first)
    cells = page.locator("#edge-table td.num").all_text_contents()
    assert float(cells[0]) == pytest.approx(first["score"], abs=1e-4)
    low, high = (float(x) for x in cells[1].strip("[]").split(","))
    assert low == pytest.approx(first["ci_low"], abs=1e-3) and high == pytest.approx(first["ci_high"], abs=1e-3)
    assert cells[2] == "32"
    assert page.eval_on_selector("#pair-spread", "el => el.data[0].x.length") == 32
    page.screenshot(path=str(artifacts / "circuit-pairs-1280x720.png"))

    # opening the pair where the edge is largest runs that pair alone
    before = int(page.get_attribute("#graph", "data-painted") or 0)
    page.click("#open-pair")
    wait_graph(page, before)
    assert page.input_value("#pair-set") == "" and not page.is_disabled("#clean") and page.is_visible("#clean")
    assert page.eval_on_selector("#faith", "el => el.data[0].x.length") >= 2


def test_circuit_over_uploaded_pairs(page: Any, tiny_server: Server, tmp_path: Path) -> None:
    page.watch.allow("422")
    pairs = [
        {**{k: IOI[k] for k in ("clean", "corrupted", "answer", "wrong")}},
        {
            "clean": "When Anna and Paul went to the park, Paul gave a ball to",
            "corrupted": "When Anna and Paul went to the park, Anna gave a ball to",
            "answer": " Anna",
            "wrong": " Paul",
        },
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(pairs[0]) + "\n{not json\n")
    good = tmp_path / "pairs.jsonl"
    good.write_text("\n".join(json.dumps(p) for p in pairs) + "\n\n")
    page.goto(tiny_server.url + "/circuit")
    page.wait_for_selector("body[data-ready]")
    with page.expect_file_chooser() as chooser:
        page.select_option("#pair-set", "upload")
    chooser.value.set_files(str(bad))
    page.wait_for_selector("#error:not([hidden])")
    assert "bad.jsonl: line 2: not valid JSON" in page.inner_text("#error-text")
    page.set_input_files("#pairs-file", str(good))
    page.wait_for_function(
        "() => document.getElementById('pairs-note').textContent.includes('2 pairs from pairs.jsonl')"
    )
    page.click("#run")
    wait_graph(page, 0)
    api = post(tiny_server.url, "/api/circuit_pairs", {"pairs": pairs, "top_n": 300})
    assert drawn(page)[0] == [edge_id(e) for e in api["edges"][:30]]
    assert "95% CI over 2 pairs" in hover_text(page, 0)

    # more pairs than a request measures: the first 64 are kept, and the page says so
    many = tmp_path / "many.jsonl"
    many.write_text("\n".join(json.dumps(pairs[i % 2]) for i in range(70)))
    page.set_input_files("#pairs-file", str(many))
    note_says(page, "the first 64 of 70 pairs in many.jsonl (a request measures at most 64)")

    # a pair the server refuses: the one error bar names it
    page.set_input_files("#pairs-file", str(_write(tmp_path, [pairs[0], {**pairs[1], "answer": " Maryland Mary"}])))
    note_says(page, "2 pairs from refused.jsonl")
    page.click("#run")
    page.wait_for_function("() => document.getElementById('error-text').textContent.includes('pair 2: answer')")


def note_says(page: Any, text: str) -> None:
    page.wait_for_function("t => document.getElementById('pairs-note').textContent.includes(t)", arg=text)


def _write(tmp_path: Path, pairs: list[dict[str, str]]) -> Path:
    path = tmp_path / "refused.jsonl"
    path.write_text("\n".join(json.dumps(p) for p in pairs))
    return path


def test_circuit_position_token_view_links_exports_and_history(page: Any, tiny_server: Server) -> None:
    query = "&".join(f"{k}={urllib.parse.quote(v)}" for k, v in IOI.items() if k != "direction")
    page.goto(tiny_server.url + f"/circuit?{query}&pos=12&method=eap")
    page.wait_for_selector("body[data-ready]")
    wait_graph(page, 0)  # a link with a pair runs it
    assert page.input_value("#position") == "12" and "position 12" in page.inner_text("#summary")
    api = post(tiny_server.url, "/api/circuit", {**IOI, "method": "eap", "position": 12, "top_n": 300})
    assert drawn(page)[0] == [edge_id(e) for e in api["edges"][:30]]

    # a head's token view: the Trace page at the position read, that head, on either prompt
    head_edge = next(i for i, e in enumerate(api["edges"][:30]) if re.fullmatch(r"L\d+H\d+", e["source"]))
    click_handle(page, head_edge)
    page.wait_for_selector("#detail[data-exact]")
    head = api["edges"][head_edge]["source"]
    layer, h = (int(x) for x in re.findall(r"\d+", head))
    hrefs = [str(a.get_attribute("href")) for a in page.locator("#detail a.token-link").all()][:2]
    for href, which in zip(hrefs, ("clean", "corrupted"), strict=True):
        q = parse_qs(urlparse(href).query)
        assert urlparse(href).path == "/trace" and q["clean"] == [IOI["clean"]] and q["tok"] == ["12"]
        assert q.get("tl", ["0"]) == [str(layer)] and q["th"] == [str(h)]  # layer 0 is the default
        assert q.get("tp", ["clean"]) == [which]

    # SVG of the graph and of the faithfulness curve, as drawn
    for button in ("#graph-svg", "#faith-svg"):
        assert download(page, button).lstrip().startswith(b"<svg")
    saved = download(page, "#circuit-html").decode()  # every figure on screen, as drawn, in one file
    assert "<html" in saved.lower() and "Circuit · graph" in saved and "Faithfulness · faith" in saved

    # Back and Forward ask again when the question in the URL changed
    page.select_option("#method", "eap-ig")
    painted = int(page.get_attribute("#graph", "data-painted") or 0)
    page.click("#run")
    wait_graph(page, painted)
    assert "EAP-IG" in page.inner_text("#summary")
    painted = int(page.get_attribute("#graph", "data-painted") or 0)
    page.go_back()  # the selected edge of the EAP run
    page.wait_for_function("b => Number(document.getElementById('graph').dataset.painted) > b", arg=painted)
    page.wait_for_function("() => document.getElementById('summary').textContent.startsWith('EAP,')")
    assert page.input_value("#method") == "eap" and parse_qs(urlparse(page.url).query)["method"] == ["eap"]

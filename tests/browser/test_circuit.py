"""The Circuit page (/circuit) on a real server: the graph draws the API's top-n edges; an edge gets its exact value."""

from __future__ import annotations

import json
import random
import re
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from tests.support.server import Server

pytestmark = pytest.mark.browser

IOI = {
    "clean": "When Mary and John went to the store, John gave a drink to",
    "corrupted": "When Mary and John went to the store, Mary gave a drink to",
    "answer": " Mary",
    "wrong": " John",
    "direction": "denoise",
}


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

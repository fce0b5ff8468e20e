"""The page's own guards (issue 16, item 6): the API key prompt, text-only el(), bounded caches, no leaked listeners."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.browser.pages import open_app, run_prompt, show_head
from tests.support.server import API_KEY, Server

pytestmark = pytest.mark.browser


def answer_key(page: Any, key: str) -> None:
    page.wait_for_selector("#api-key-dialog[open]")
    page.fill("#api-key-input", key)
    page.press("#api-key-input", "Enter")


def test_the_page_asks_for_the_api_key_once_and_again_after_a_401(
    page: Any, keyed_server: Server, artifacts: Path
) -> None:
    page.watch.allow("status of 401")
    refused: list[str] = []
    page.on("response", lambda r: "/api/" in r.url and r.status == 401 and refused.append(r.url))
    page.goto(keyed_server.url + "/")
    answer_key(page, "not-the-key")
    page.wait_for_selector("#api-key-dialog[open] .key-error")  # refused: asked again, saying why
    page.screenshot(path=str(artifacts / "tiny-api-key.png"))
    answer_key(page, API_KEY)
    page.wait_for_selector("body[data-ready]")
    assert page.locator("#grid .cell").count() == 8  # the page works: model card, first run
    n_refused = len(refused)
    run_prompt(page, "The cat sat on the mat. The cat")
    show_head(page, "L1H2")
    assert len(refused) == n_refused  # asked once: every later request carried the key
    assert page.evaluate("sessionStorage.getItem('headscope:api-key')") == API_KEY
    page.reload()  # kept for the tab: no second prompt
    page.wait_for_selector("body[data-ready]")
    assert page.locator("#api-key-dialog").count() == 0
    # the server no longer takes that key (say, it was rotated): the page asks again
    page.evaluate("sessionStorage.setItem('headscope:api-key', 'rotated')")
    page.fill("#prompt", "A new text")  # the live token count is the first request to be refused
    answer_key(page, API_KEY)
    page.wait_for_function("() => document.querySelector('#token-count').dataset.tokens === '3'")
    run_prompt(page, "A new text")
    assert page.evaluate("sessionStorage.getItem('headscope:api-key')") == API_KEY


def test_el_refuses_markup_and_the_map_cache_is_bounded(page: Any, tiny_server: Server) -> None:
    open_app(page, tiny_server.url)
    out = page.evaluate(
        """async () => {
          const { el } = await import('/static/js/lib/util.js');
          const { BoundedCache } = await import('/static/js/lib/cache.js');
          const refused = [];
          for (const key of ['innerHTML', 'outerHTML', 'srcdoc']) {
            try { el('div', { [key]: '<b>x</b>' }); } catch (e) { refused.push(key); }
          }
          const text = el('div', {}, '<b>x</b>');
          const cache = new BoundedCache(10, (v) => v.length);
          cache.set('a', [1, 2, 3, 4]); cache.set('b', [1, 2, 3, 4]); cache.get('a'); cache.set('c', [1, 2, 3, 4]);
          const big = new BoundedCache(10, (v) => v.length);
          big.set('x', [1]); big.set('huge', new Array(50).fill(0));
          return { refused, html: text.innerHTML, keys: [...cache.entries.keys()], total: cache.total,
                   bigKeys: [...big.entries.keys()] };
        }"""
    )
    assert out["refused"] == ["innerHTML", "outerHTML", "srcdoc"]
    assert out["html"] == "&lt;b&gt;x&lt;/b&gt;"  # children are always text
    assert out["keys"] == ["a", "c"] and out["total"] == 8  # least recently used ("b") went first
    assert out["bigKeys"] == ["huge"]  # the newest stays even over the budget, alone


SPY = """() => {
  window.__abortListeners = 0;
  const add = AbortSignal.prototype.addEventListener;
  const remove = AbortSignal.prototype.removeEventListener;
  const live = new WeakMap();
  AbortSignal.prototype.addEventListener = function (type, fn, opts) {
    if (type === 'abort') { window.__abortListeners++; live.set(fn, true); }
    return add.call(this, type, fn, opts);
  };
  AbortSignal.prototype.removeEventListener = function (type, fn, opts) {
    if (type === 'abort' && live.get(fn)) { window.__abortListeners--; live.delete(fn); }
    return remove.call(this, type, fn, opts);
  };
}"""


def test_a_retried_request_leaves_no_abort_listener_behind(page: Any, tiny_server: Server) -> None:
    page.add_init_script(f"({SPY})()")
    busy = {"n": 0}

    def once_busy(route: Any) -> None:
        busy["n"] += 1
        if busy["n"] == 1:  # the first similarity request finds the server busy: the page waits and retries
            route.fulfill(status=503, headers={"retry-after": "1"}, json={"error": "busy", "detail": "queue full"})
        else:
            route.continue_()

    page.route("**/api/similarity", once_busy)
    page.watch.allow("status of 503")
    open_app(page, tiny_server.url)
    run_prompt(page, "The cat sat on the mat. The cat")
    page.click('.tabs button[data-view="similarity"]')
    page.wait_for_selector("#simplot[data-painted]")
    assert busy["n"] == 2
    assert page.evaluate("window.__abortListeners") == 0

"""static/js/lib/sse.js, the one Server-Sent Events reader of the pages, against the text/event-stream format: fields
split across chunks (CRLF and multi-byte characters included), comments, multi-line data, and an early stop."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest

from tests.browser.pages import open_app
from tests.support.server import Server

pytestmark = pytest.mark.browser

READ = """async ({ chunks, stopAfter }) => {
  const { readEvents } = await import("/static/js/lib/sse.js");
  const bytes = chunks.map((c) => Uint8Array.from(c));
  let cancelled = false;
  const body = new ReadableStream({
    start(ctl) {
      for (const b of bytes) ctl.enqueue(b);
      if (stopAfter === null) ctl.close(); // else the stream stays open, as a running job's does
    },
    cancel() {
      cancelled = true;
    },
  });
  const events = [];
  for await (const e of readEvents(new Response(body))) {
    events.push(e);
    if (events.length === stopAfter) break;
  }
  return { events, cancelled };
}"""


def split(text: str, at: list[int]) -> list[list[int]]:
    """The UTF-8 bytes of `text` cut at byte offsets `at` (a cut may fall inside a character)."""
    raw = text.encode()
    edges = [0, *at, len(raw)]
    return [list(raw[a:b]) for a, b in pairwise(edges)]


def test_events_are_parsed_as_the_format_says(page: Any, tiny_server: Server) -> None:
    open_app(page, tiny_server.url)
    text = 'event: progress\r\ndata: {"done": 1}\r\n\r\n: keep-alive\n\ndata: a\ndata: b é\n\nevent: end\ndata:{}\n\n'
    raw = text.encode()
    cuts = [raw.index(b"\r\n") + 1, raw.index(b"keep"), raw.index("é".encode()) + 1, len(raw) - 3]
    got = page.evaluate(READ, {"chunks": split(text, cuts), "stopAfter": None})
    assert got["events"] == [
        {"event": "progress", "data": '{"done": 1}'},  # one line end, though "\r" and "\n" came apart
        {"event": "message", "data": "a\nb é"},  # no event name: "message"; data lines joined; é whole
        {"event": "end", "data": "{}"},  # no space after the colon
    ]


def test_leaving_the_loop_cancels_the_stream(page: Any, tiny_server: Server) -> None:
    open_app(page, tiny_server.url)
    got = page.evaluate(READ, {"chunks": split("event: progress\ndata: 1\n\n", []), "stopAfter": 1})
    assert got["events"] == [{"event": "progress", "data": "1"}] and got["cancelled"] is True

"""Async scenarios over real ASGI: a runner, and a client that leaves mid-request with slow, watched work (the
disconnect scenario that the generation and scheduler tests share: the work must be closed, and nothing may run
after it)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

Y = TypeVar("Y")
R = TypeVar("R")


def run_async(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """asyncio.run in a thread of its own (the browser tests' Playwright keeps a loop in this one)."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=target)
    t.start()
    t.join(60)
    if errors:
        raise errors[0]


@dataclass
class Watch:
    """When each piece of the work was made, and when the work was closed (time.monotonic())."""

    made: list[float] = field(default_factory=list)
    closed: list[float] = field(default_factory=list)

    def slow(self, work: Generator[Y, None, R], delay_s: float) -> Generator[Y, None, R]:
        """`work`, each piece noted and then held `delay_s` (a slow slice, so the client leaves mid-way)."""
        try:
            while True:
                try:
                    piece = next(work)
                except StopIteration as done:
                    result: R = done.value
                    return result
                self.made.append(time.monotonic())
                time.sleep(delay_s)
                yield piece
        finally:
            work.close()
            self.closed.append(time.monotonic())

    def wrap(self, real: Callable[..., Generator[Y, None, R]], delay_s: float) -> Callable[..., Generator[Y, None, R]]:
        """`real` (a function returning the work), its work watched and slowed: a stand-in for monkeypatch."""
        return lambda *args, **kwargs: self.slow(real(*args, **kwargs), delay_s)


def post_scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """The ASGI scope of a POST to `path` from a loopback client."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), *headers, (b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
        "scheme": "http",
        "root_path": "",
    }


async def leave_midway(
    app: Any,
    path: str,
    body: bytes,
    watch: Watch,
    after: int,
    headers: list[tuple[bytes, bytes]] | None = None,
    sent: list[dict[str, Any]] | None = None,
) -> float:
    """POST `body`, disconnect once `after` pieces were made, and wait until the work is closed.

    Checks that it was closed within 5 s and that nothing more was made in the 0.3 s after; the messages the
    app sent go to `sent`. Returns when the client left.
    """
    gone = asyncio.Event()
    asked = False

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if sent is not None:
            sent.append(message)

    call = asyncio.create_task(app(post_scope(path, headers or []), receive, send))
    while len(watch.made) < after:
        await asyncio.sleep(0.01)
    gone.set()
    left = time.monotonic()
    await asyncio.wait_for(call, 10)
    while not watch.closed and time.monotonic() - left < 5:
        await asyncio.sleep(0.01)
    assert watch.closed, "the work was not closed within 5 s of the disconnect"
    n = len(watch.made)
    await asyncio.sleep(0.3)
    assert len(watch.made) == n, "work ran after it was closed"
    return left

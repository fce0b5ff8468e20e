"""The HeadScope app run in this process: its lifespan (model loading, the model worker) and its requests
driven on an event loop of its own, in a thread, exactly as a server would run them (a minimal ASGI client)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.types import ASGIApp, Message

T = TypeVar("T")


class InProcess:
    """An ASGI app started (lifespan) on a background loop; `send` is a transport.Send to it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="headscope-asgi", daemon=True)
        self.thread.start()
        self._startup: asyncio.Future[Message] = self.loop.create_future()
        self._shutdown: asyncio.Future[Message] | None = None
        self._stop = asyncio.Event()
        self._lifespan = asyncio.run_coroutine_threadsafe(self._run_lifespan(), self.loop)
        started = self._call(self._wait(self._startup))
        if started["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"the app failed to start: {started.get('message', '')}")

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    @staticmethod
    async def _wait(future: asyncio.Future[Message]) -> Message:
        return await future

    async def _run_lifespan(self) -> None:
        sent_startup = False

        async def receive() -> Message:
            nonlocal sent_startup
            if not sent_startup:
                sent_startup = True
                return {"type": "lifespan.startup"}
            await self._stop.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message: Message) -> None:
            if message["type"].startswith("lifespan.startup"):
                self._startup.set_result(message)
            elif self._shutdown is not None:
                self._shutdown.set_result(message)

        await self.app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)

    async def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        raw_path, _, query = path.partition("?")
        done = asyncio.Event()
        sent_body = False
        status = 500
        out_headers: dict[str, str] = {}
        chunks: list[bytes] = []

        async def receive() -> Message:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body or b"", "more_body": False}
            await done.wait()  # the client stays until the answer is complete
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                out_headers.update({k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message["headers"]})
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    done.set()

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": raw_path,
            "raw_path": raw_path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
            + [(b"host", b"headscope.local"), (b"content-length", str(len(body or b"")).encode())],
            "client": ("127.0.0.1", 0),
            "server": ("headscope.local", 80),
            "state": {},
        }
        try:
            await self.app(scope, receive, send)
        finally:
            done.set()
        return status, out_headers, b"".join(chunks)

    def send(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        return self._call(self._request(method, path, body, headers))

    def close(self) -> None:
        """Shut the app down (its lifespan's end: jobs interrupted, the model worker joined) and stop the loop."""
        if not self.thread.is_alive():
            return

        async def stop() -> None:
            self._shutdown = self.loop.create_future()
            self._stop.set()
            await asyncio.wait_for(self._shutdown, 60)

        self._call(stop())
        self._lifespan.result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

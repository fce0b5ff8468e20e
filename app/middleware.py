"""ASGI middleware: body-size limit, API key, security headers. Pure ASGI, so streaming bodies are counted too."""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

OPEN_PATHS = ("/api/health", "/api/ready")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


async def _send_error(send: Send, status: int, code: str, detail: str) -> None:
    body = json.dumps({"error": code, "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class Guard:
    """Rejects oversized bodies (413) and requests without the API key (401); adds security headers."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        api_key: str | None,
        upload_paths: tuple[str, ...] = (),
        max_upload_bytes: int = 0,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.api_key = api_key
        self.upload_paths = upload_paths  # exact paths that take file uploads, limited by max_upload_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path: str = scope["path"]
        if self.api_key and not path.startswith(OPEN_PATHS) and not self._authorized(headers):
            await _send_error(
                send, 401, "unauthorized", "send the API key as 'Authorization: Bearer KEY' or 'X-API-Key'"
            )
            return
        limit = self.max_upload_bytes if path in self.upload_paths else self.max_body_bytes
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _send_error(send, 413, "body_too_large", f"request body over {limit} bytes")
            return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        async def secured_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                extra: list[tuple[bytes, bytes]] = [(b"x-content-type-options", b"nosniff")]
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                if content_type.startswith(b"text/html"):
                    extra += [(b"content-security-policy", CSP.encode()), (b"referrer-policy", b"no-referrer")]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, limited_receive, secured_send)
        except _TooLarge:
            if not started:
                await _send_error(send, 413, "body_too_large", f"request body over {limit} bytes")

    def _authorized(self, headers: dict[str, Any]) -> bool:
        assert self.api_key is not None
        given = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
        return bool(given) and hmac.compare_digest(given.encode(), self.api_key.encode())

"""ASGI middleware: body-size limit, API key, security headers.

Pure ASGI: the body is read here, up to the limit, before the app sees any of it, so the limit holds however
the body arrives (with a Content-Length, chunked, or in many small messages) and a body over it is always 413.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response

OPEN_PATHS = frozenset({"/api/health", "/api/ready"})  # exact paths that need no API key
# The page shells, their scripts and the API schema hold no data; a browser cannot send a header when it
# navigates, so these load without the key (GET and HEAD only) and the page then asks for it.
OPEN_PAGES = frozenset({"/", "/trace", "/corpus", "/lecture", "/docs", "/redoc", "/openapi.json"})
OPEN_ASSET_DIRS = ("/static/", "/vendor/")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


async def _read_body(receive: Receive, limit: int) -> Message | None:
    """The whole request body as one message, or None once it passes `limit` bytes.

    A disconnect before the body ends is returned as it came, for the app to see.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return message
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}


def _open(path: str, method: str) -> bool:
    """Whether a request needs no API key: health and readiness, or reading a page shell or asset."""
    if path in OPEN_PATHS:
        return True
    reading = method in ("GET", "HEAD")
    return reading and (path in OPEN_PAGES or (path.startswith(OPEN_ASSET_DIRS) and ".." not in path))


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
        if self.api_key and not _open(path, scope["method"]) and not self._authorized(headers):
            detail = "send the API key as 'Authorization: Bearer KEY' or 'X-API-Key'"
            await error_response(401, "unauthorized", detail)(scope, receive, send)
            return
        limit = self.max_upload_bytes if path in self.upload_paths else self.max_body_bytes
        too_large = error_response(413, "body_too_large", f"request body over {limit} bytes")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await too_large(scope, receive, send)
            return
        first = await _read_body(receive, limit)
        if first is None:
            await too_large(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            """The body read above once, then whatever the server sends next (a disconnect)."""
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            assert first is not None
            return first

        async def secured_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra: list[tuple[bytes, bytes]] = [(b"x-content-type-options", b"nosniff")]
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                if content_type.startswith(b"text/html"):
                    extra += [(b"content-security-policy", CSP.encode()), (b"referrer-policy", b"no-referrer")]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, replay, secured_send)

    def _authorized(self, headers: dict[str, str]) -> bool:
        assert self.api_key is not None
        given = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
        return bool(given) and hmac.compare_digest(given.encode(), self.api_key.encode())

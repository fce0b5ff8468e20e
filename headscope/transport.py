"""One typed client for both ways of reaching HeadScope: HTTP to a server, or the app itself in this process.

Both send the same requests to the same routes and read the same answers, so `open()` and `connect()` give
the same numbers and the same errors by construction; limits and checks stay the server's.
"""

from __future__ import annotations

import gzip
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from headscope.errors import HeadScopeError

# (method, path with query, body, headers) → (status, headers with lower-case names, body)
Send = Callable[[str, str, bytes | None, dict[str, str]], tuple[int, dict[str, str], bytes]]
RETRIED = {"busy", "not_ready"}  # 503s worth waiting for (Retry-After); load_failed and out_of_memory are not
MAX_RETRIES = 3


class Client:
    """JSON requests over a `Send`; an error answer raises HeadScopeError with the server's code and detail."""

    def __init__(self, send: Send, api_key: str | None = None, close: Callable[[], None] | None = None) -> None:
        self._send = send
        self._headers = {"X-API-Key": api_key} if api_key else {}
        self._close = close

    def request(
        self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None, retry: bool = True
    ) -> Any:
        """The parsed JSON answer (None for an empty one, e.g. 204); a busy server is asked again (`retry`)."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        if query:
            path = f"{path}?{urllib.parse.urlencode(query)}"
        data = None if body is None else json.dumps(body).encode()
        headers = {**self._headers, "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in range(MAX_RETRIES + 1):
            status, got, raw = self._send(method, path, data, headers)
            if got.get("content-encoding") == "gzip":
                raw = gzip.decompress(raw)
            answer = json.loads(raw) if raw else None
            if status < 400:
                return answer
            code = answer.get("error", f"http_{status}") if isinstance(answer, dict) else f"http_{status}"
            detail = answer.get("detail") if isinstance(answer, dict) else raw.decode(errors="replace")
            if retry and status == 503 and code in RETRIED and attempt < MAX_RETRIES:
                time.sleep(min(5.0, float(got.get("retry-after", 1))))
                continue
            raise HeadScopeError(status, code, detail)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._close is not None:
            self._close()


def http(url: str, timeout_s: float = 600.0) -> Send:
    """A Send over HTTP(S) to the server at `url` (urllib: no dependency beyond the standard library)."""
    base = url.rstrip("/")

    def send(method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(base + path, data=body, method=method, headers=headers)
        request.add_header("Accept-Encoding", "gzip")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as res:
                return res.status, {k.lower(): v for k, v in res.headers.items()}, res.read()
        except urllib.error.HTTPError as err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()
        except (urllib.error.URLError, OSError) as err:
            raise HeadScopeError(0, "unreachable", f"no answer from {base}: {err}") from err

    return send

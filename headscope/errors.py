"""The one exception the client raises: the server's error shape, `{"error": code, "detail": ...}`, typed."""

from __future__ import annotations

from typing import Any


class HeadScopeError(Exception):
    """An error answer from HeadScope, in-process or over HTTP alike.

    Attributes:
        status: the HTTP status (422 invalid input, 503 busy or not ready, …; 0 when no server answered).
        code: the machine-readable code (`invalid_input`, `invalid_request`, `busy`, `unauthorized`, …).
        message: what went wrong, in words (the detail, or its field errors joined).
        detail: the detail as the server sent it (a string, or a list of field errors).
    """

    def __init__(self, status: int, code: str, detail: Any = None) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        self.message = describe(detail) or code
        super().__init__(f"{status} {code}: {self.message}")


def describe(detail: Any) -> str:
    """A detail in words: a string as it is, field errors as `loc: msg; …` (as the page shows them)."""
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg', '')}"
            for d in detail
            if isinstance(d, dict)
        )
    return detail if isinstance(detail, str) else ""

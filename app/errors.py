"""The errors every layer raises, each with its HTTP status and code (a leaf: no torch, no FastAPI).

The web layer turns them into the one error shape, `{"error": str, "detail": ...}` (app.api.errors).
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """An error with an HTTP status and a machine-readable code."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.detail = detail


class InvalidInput(ServiceError):
    status = 422
    code = "invalid_input"


class NotFound(ServiceError):
    """404: no such dataset, job or other named resource."""

    status = 404
    code = "not_found"


class Conflict(ServiceError):
    """409: the resource exists but is in a state that forbids the request (e.g. deleting a built-in set)."""

    status = 409
    code = "conflict"


class Unavailable(ServiceError):
    """503: retry later."""

    status = 503
    code = "unavailable"


class Busy(Unavailable):
    code = "busy"


class NotReady(Unavailable):
    code = "not_ready"


class LoadFailed(ServiceError):
    """503 for good: the model failed to load, so this process will never be ready (/api/health says so)."""

    status = 503
    code = "load_failed"


class OutOfMemory(Unavailable):
    code = "out_of_memory"


class Cancelled(ServiceError):
    """Background work that was cancelled (or closed at shutdown) before it finished."""

    status = 409
    code = "cancelled"


class ClientGone(ServiceError):
    """The client of a long request disconnected; the work was stopped. Nobody reads the response."""

    status = 499
    code = "client_closed_request"

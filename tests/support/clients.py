"""The app under a TestClient: built from a model name, a directory or a loaded model, entered and ready."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from fastapi.testclient import TestClient

from app.config import Settings
from app.inspect.model.loaded import Loaded
from app.main import create_app


def wait_ready(client: TestClient, timeout: float = 120.0) -> None:
    """Poll /api/ready until the model has loaded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/api/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise TimeoutError("the app did not become ready")


def make_client(model: str | Loaded, **overrides: Any) -> Iterator[TestClient]:
    """A TestClient over create_app, entered (lifespan runs) and ready."""
    if isinstance(model, str):
        settings = Settings(model=model, device="cpu", dtype="float32", **overrides)
        app = create_app(settings)
    else:
        app = create_app(Settings(model=model.name, **overrides), loaded=model)
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client

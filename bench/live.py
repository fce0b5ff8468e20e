"""The real server over real HTTP in the bench's own process: uvicorn on a loopback port, the already loaded model.

Served rows time a request as a client meets it (TCP, JSON, the event loop, the model worker) while the in-process
baseline runs on the very same model object in the same process, so a ratio compares the two paths and nothing else.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from app.config import Settings
from app.inspect.model.loaded import Loaded
from app.main import create_app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(
    loaded: Loaded, data_dir: Path, timeout_s: float = 600.0, **settings: Any
) -> Iterator[tuple[httpx.Client, Any]]:
    """(an HTTP client of the server, the app) with `loaded` served on 127.0.0.1, as `python -m app serve` runs it.

    The client gives up on a call after `timeout_s` (httpx.TimeoutException)."""
    port = _free_port()
    config = Settings(
        model=loaded.name,
        data_dir=data_dir,
        max_tokens=loaded.adapter.layout.max_positions,
        port=port,
        **settings,
    )
    app = create_app(config, loaded=loaded)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.001)  # as app.__main__ does for the server
    thread = threading.Thread(target=server.run, name="bench-uvicorn", daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=timeout_s) as client:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if client.get("/api/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("the server did not become ready")
                time.sleep(0.05)
            yield client, app
    finally:
        server.should_exit = True
        thread.join(60)
        sys.setswitchinterval(switch)

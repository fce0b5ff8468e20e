"""Shared fixtures: tiny model directories, loaded tiny models, and app clients that wait until ready."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.inspect.loading import load
from app.inspect.model.loaded import Loaded
from app.main import create_app
from tests.tiny import save_tiny


@pytest.fixture(scope="session", autouse=True)
def temporary_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test writes into the repo's data/: an app built without a data_dir (or a server subprocess) uses this."""
    before = os.environ.get("HEADSCOPE_DATA_DIR")
    os.environ["HEADSCOPE_DATA_DIR"] = str(tmp_path_factory.mktemp("data"))
    yield
    if before is None:
        os.environ.pop("HEADSCOPE_DATA_DIR", None)
    else:
        os.environ["HEADSCOPE_DATA_DIR"] = before


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved tiny model directory per supported family."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: save_tiny(root / arch, arch) for arch in ("llama", "gpt2", "gpt_neox")}


@pytest.fixture(scope="session")
def tiny_loaded(tiny_dirs: dict[str, Path]) -> dict[str, Loaded]:
    """The tiny models loaded through the real loading path (CPU, float32)."""
    return {arch: load(str(path), device="cpu", dtype="float32") for arch, path in tiny_dirs.items()}


def wait_ready(client: TestClient, timeout: float = 120.0) -> None:
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


@pytest.fixture(scope="module")
def client(tiny_loaded: dict[str, Loaded]) -> Iterator[TestClient]:
    """An app serving the tiny llama (GQA) model."""
    yield from make_client(tiny_loaded["llama"])

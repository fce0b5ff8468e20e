"""Shared fixtures: tiny model directories, loaded tiny models, and app clients (tiny and real), ready to use."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.inspect.loading import load
from app.inspect.model.loaded import Loaded
from tests.support.clients import make_client
from tests.support.models import ARCHS, save_tiny


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
    """One saved tiny model directory per family in ARCHS."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: save_tiny(root / arch, arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def tiny_loaded(tiny_dirs: dict[str, Path]) -> dict[str, Loaded]:
    """The tiny models loaded through the real loading path (CPU, float32)."""
    return {arch: load(str(path), device="cpu", dtype="float32") for arch, path in tiny_dirs.items()}


@pytest.fixture(scope="module")
def client(tiny_loaded: dict[str, Loaded]) -> Iterator[TestClient]:
    """An app serving the tiny llama (GQA) model."""
    yield from make_client(tiny_loaded["llama"])


@pytest.fixture(scope="module")
def gpt2_client(tiny_dirs: dict[str, Path]) -> Iterator[TestClient]:
    """An app serving the tiny GPT-2 (MHA, biases), loaded from its directory by path."""
    yield from make_client(str(tiny_dirs["gpt2"]))


@pytest.fixture(scope="module")
def real() -> Iterator[TestClient]:
    """An app serving the real default model (SmolLM2-135M); for `slow` tests."""
    yield from make_client("smollm2-135m")

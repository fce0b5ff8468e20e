"""Browser-test fixtures: a real server subprocess, headless Debian Chromium, and a page that fails on any JS error."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.models import save_tiny
from tests.support.server import API_KEY, Server, serve

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = os.environ.get("HEADSCOPE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1600, "height": 1000}


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The tiny llama (2 layers, 4 query heads, 2 KV heads, GPT-2 tokenizer) behind a real server."""
    root = tmp_path_factory.mktemp("browser")
    model = save_tiny(root / "tiny-llama", "llama")
    with serve(str(model), root) as server:
        yield server


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The tiny llama behind a server started with HEADSCOPE_API_KEY=API_KEY, its corpus store in a tmp dir."""
    root = tmp_path_factory.mktemp("keyed")
    model = save_tiny(root / "tiny-llama", "llama")
    with serve(str(model), root, api_key=API_KEY, data_dir=str(root / "data")) as server:
        yield server


@pytest.fixture(scope="module")
def smollm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real default model (SmolLM2-135M) behind a real server; for `slow` tests."""
    with serve("smollm2-135m", tmp_path_factory.mktemp("smollm")) as server:
        yield server


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium (see .ci/run)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Watch:
    """What the page did that a test must not allow: JS errors, console errors, dialogs."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.allowed: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("console", self._console)

        def on_dialog(d: Any) -> None:
            self.dialogs.append(f"{d.type}: {d.message}")
            d.dismiss()

        page.on("dialog", on_dialog)

    def allow(self, fragment: str) -> None:
        """Tolerate console errors containing `fragment` (a test that provokes an HTTP error on purpose)."""
        self.allowed.append(fragment)

    def _console(self, message: Any) -> None:
        if message.type == "error" and not any(f in message.text for f in self.allowed):
            self.errors.append(f"console.error: {message.text}")


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page (own context, so no state leaks); any JS error or dialog during the test fails it."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    watch = Watch(pg)
    pg.watch = watch
    yield pg
    context.close()
    assert not watch.errors, "JavaScript errors on the page:\n" + "\n".join(watch.errors)
    assert not watch.dialogs, f"the page opened dialogs: {watch.dialogs}"

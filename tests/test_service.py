"""The model worker: validation before queueing, bounded queue, deadlines, OOM recovery, metrics, security."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient

from app.config import Settings
from app.errors import Busy
from app.inspect.model.loaded import Loaded
from app.service import Service
from tests.support.clients import make_client
from tests.support.disconnect import run_async

TEXT = "Heads, heads, everywhere heads."


def _service(loaded: Loaded, **overrides: object) -> Service:
    svc = Service(Settings(model=loaded.name, **overrides), loaded)  # type: ignore[arg-type]
    svc.ready = True
    return svc


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/attention", {"text": "", "heads": [{"layer": 0, "head": 0}]}),
        ("/api/attention", {"text": "word " * 50, "heads": [{"layer": 0, "head": 0}]}),  # over max_tokens
        ("/api/attention", {"text": "hi", "heads": [{"layer": 5, "head": 0}]}),
        ("/api/ablate", {"text": "hi", "ablate": [], "unknown": 1}),
        ("/api/ablate", {"text": "hi", "ablate": [{"layer": 0, "head": "x"}]}),
        ("/api/heads", {"text": ["not", "text"]}),
        ("/api/similarity", {"text": "hi", "metric": "js", "layer": 9}),
    ],
)
def test_invalid_requests_never_reach_the_model(
    tiny_loaded: dict[str, Loaded],
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    body: dict,  # type: ignore[type-arg]
) -> None:
    for client in make_client(tiny_loaded["llama"], max_tokens=20):
        svc = client.app.state.service  # type: ignore[attr-defined]
        calls: list[object] = []
        monkeypatch.setattr(svc, "call", lambda *a, **k: calls.append(a))  # noqa: B023 - used in this iteration
        monkeypatch.setattr("app.inspect.engine.runs.analyse", lambda *a, **k: calls.append(a))  # noqa: B023
        r = client.post(path, json=body)
        assert r.status_code == 422, r.text
        assert set(r.json()) == {"error", "detail"}
        assert calls == []


def test_full_queue_answers_503_at_once(tiny_loaded: dict[str, Loaded]) -> None:
    svc = _service(tiny_loaded["llama"], queue_size=2)
    release = threading.Event()

    async def scenario() -> None:
        first = asyncio.create_task(svc.call(release.wait, 10))
        second = asyncio.create_task(svc.call(lambda: "second"))
        await asyncio.sleep(0.05)
        assert svc.queue_depth == 2
        start = time.perf_counter()
        with pytest.raises(Busy):
            await svc.call(lambda: "third")
        assert time.perf_counter() - start < 0.05
        release.set()
        assert await first is True
        assert await second == "second"
        assert svc.queue_depth == 0

    run_async(scenario)
    svc.shutdown()


def test_a_request_past_its_deadline_is_dropped_and_never_runs(tiny_loaded: dict[str, Loaded]) -> None:
    svc = _service(tiny_loaded["llama"], queue_timeout_s=0.1)
    ran: list[str] = []

    async def scenario() -> None:
        slow = asyncio.create_task(svc.call(time.sleep, 0.3))
        await asyncio.sleep(0.01)
        with pytest.raises(Busy, match="past the"):
            await svc.call(lambda: ran.append("late"))
        await slow

    run_async(scenario)
    assert ran == []
    svc.shutdown()


@pytest.mark.parametrize("error", [MemoryError, torch.OutOfMemoryError])
def test_out_of_memory_is_a_503_and_the_next_request_succeeds(
    tiny_loaded: dict[str, Loaded], monkeypatch: pytest.MonkeyPatch, error: type[BaseException]
) -> None:
    import app.inspect.engine.runs as runs

    real = runs.analyse
    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise error("injected")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    for client in make_client(tiny_loaded["llama"]):
        monkeypatch.setattr(runs, "analyse", flaky)
        r = client.post("/api/attention", json={"text": "out of memory once", "layers": [0]})
        assert r.status_code == 503 and r.json()["error"] == "out_of_memory"
        assert r.headers["retry-after"]
        ok = client.post("/api/attention", json={"text": "out of memory once", "layers": [0]})
        assert ok.status_code == 200
        assert "headscope_out_of_memory_total 1.0" in client.get("/metrics").text


def test_not_ready_until_loaded(tiny_loaded: dict[str, Loaded]) -> None:
    svc = Service(Settings(model="x"), tiny_loaded["llama"])
    with pytest.raises(Exception, match="loading"):

        async def go() -> None:
            await svc.call(lambda: 1)

        run_async(go)
    svc.shutdown()


def test_metrics_count_requests_by_route_and_status(client: TestClient) -> None:
    client.post("/api/tokenize", json={"text": "count me"})
    client.post("/api/tokenize", json={"text": ""})
    client.post("/api/attention", json={"text": TEXT, "heads": [{"layer": 0, "head": 0}]})
    text = client.get("/metrics").text
    assert 'headscope_requests_total{method="POST",route="/api/tokenize",status="200"}' in text
    assert 'headscope_requests_total{method="POST",route="/api/tokenize",status="422"}' in text
    for name in (
        "headscope_queue_depth",
        "headscope_queue_wait_seconds_bucket",
        "headscope_model_seconds_bucket",
        "headscope_tokens_per_request_bucket",
        "headscope_request_seconds_bucket",
    ):
        assert name in text


def test_api_key_guards_all_data_but_lets_the_page_load(tiny_loaded: dict[str, Loaded]) -> None:
    for c in make_client(tiny_loaded["llama"], api_key="s3cret"):
        assert c.get("/api/health").status_code == 200
        assert c.get("/api/ready").status_code == 200
        # the page shells and their assets hold no data: a browser navigating to them cannot send the key
        for path in ("/", "/trace", "/corpus", "/static/js/heads/main.js", "/vendor/plotly.min.js", "/docs"):
            assert c.get(path).status_code == 200, path
        for path in ("/api/model", "/metrics", "/api/roles", "/api/datasets", "/static", "/staticx/a.js"):
            r = c.get(path)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", path
        for method, path in (("POST", "/"), ("POST", "/api/attention"), ("DELETE", "/static/js/heads/main.js")):
            assert c.request(method, path).status_code == 401, (method, path)
        assert c.get("/api/model", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/api/model", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/api/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_security_headers_and_cors(client: TestClient, tiny_loaded: dict[str, Loaded]) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    api = client.get("/api/model", headers={"Origin": "http://evil.example"})
    assert api.headers["x-content-type-options"] == "nosniff"
    assert "access-control-allow-origin" not in api.headers  # CORS is off unless configured
    for c in make_client(tiny_loaded["llama"], cors_origins=["http://lab.example"]):
        r = c.get("/api/model", headers={"Origin": "http://lab.example"})
        assert r.headers["access-control-allow-origin"] == "http://lab.example"


def test_settings_bind_loopback_by_default() -> None:
    assert Settings().host == "127.0.0.1"
    assert not any(name in Settings.model_fields for name in ("path", "model_path"))


def test_ready_is_503_while_shutting_down(tiny_loaded: dict[str, Loaded]) -> None:
    for c in make_client(tiny_loaded["llama"]):
        svc = c.app.state.service  # type: ignore[attr-defined]
        svc.stopping = True  # what the lifespan sets when SIGTERM arrives
        r = c.get("/api/ready")
        assert r.status_code == 503 and r.headers["retry-after"]
        assert c.get("/api/health").status_code == 200
        assert c.post("/api/tokenize", json={"text": "x"}).status_code == 200  # no model work needed
        busy = c.post("/api/attention", json={"text": "x", "layers": [0]})
        assert busy.status_code == 503 and busy.json()["error"] == "not_ready"
        svc.stopping = False

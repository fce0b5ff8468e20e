"""Settings are checked at start (exit 2 naming the setting); a model that fails to load later makes health 503."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.__main__ import checked_settings, main
from app.config import Settings
from app.main import create_app
from tests.support.clients import wait_ready

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["serve", "--dtype", "float99"], "HEADSCOPE_DTYPE (--dtype)"),
        (["serve", "--device", "gpu"], "HEADSCOPE_DEVICE (--device)"),
        (["serve", "--device-map", "everywhere"], "HEADSCOPE_DEVICE_MAP (--device-map)"),
        (["serve", "--port", "70000"], "HEADSCOPE_PORT (--port)"),
        (["serve", "--max-tokens", "0"], "HEADSCOPE_MAX_TOKENS (--max-tokens)"),
        (["serve", "--model", "qwen2"], "HEADSCOPE_MODEL (--model)"),
        (["prepare", "--model", "no-such-model"], "HEADSCOPE_MODEL (--model)"),
    ],
)
def test_a_bad_setting_stops_the_start_with_a_message_naming_it(
    argv: list[str], named: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="app"):
        assert main(argv) == 2
    assert f"invalid setting {named}" in caplog.text


def test_an_unavailable_device_is_refused_at_start(
    tiny_dirs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with caplog.at_level(logging.ERROR, logger="app"):
        assert checked_settings({"model": str(tiny_dirs["llama"]), "device": f"cuda:{n_cuda}"}) is None
    assert "invalid setting HEADSCOPE_DEVICE (--device)" in caplog.text and "not available" in caplog.text
    assert checked_settings({"model": str(tiny_dirs["llama"]), "device": "cpu", "dtype": "bfloat16"}) is not None


def test_the_environment_variable_is_checked_like_the_flag() -> None:
    """The real process: HEADSCOPE_DTYPE=float99 exits non-zero at once, naming the variable, no traceback."""
    env = {**os.environ, "HEADSCOPE_DTYPE": "float99"}
    done = subprocess.run(
        [sys.executable, "-m", "app", "serve"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "invalid setting HEADSCOPE_DTYPE (--dtype)" in done.stderr and "float99" in done.stderr
    assert "Traceback" not in done.stderr


def test_settings_are_typed() -> None:
    with pytest.raises(ValueError, match="dtype"):
        Settings(dtype="float99")  # type: ignore[arg-type]
    assert Settings(device="cuda:1", dtype="bfloat16", device_map="auto").device == "cuda:1"


def test_health_reports_a_model_that_failed_to_load(tmp_path: Path) -> None:
    """Docker's healthcheck curls /api/health: after a failed load it must fail too, saying why."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama", "vocab_size": -1}')
    app = create_app(Settings(model=str(broken), device="cpu", warmup=False))
    with TestClient(app, raise_server_exceptions=False) as client:
        with pytest.raises(TimeoutError):
            wait_ready(client, timeout=20)
        health = client.get("/api/health")
        assert health.status_code == 503, health.text
        assert health.json()["error"] == "load_failed" and "failed to load" in health.json()["detail"]
        ready = client.get("/api/ready")
        assert ready.status_code == 503 and ready.json()["error"] == "load_failed"
        # every endpoint says the same thing (issue 26, item 6), not "the model is still loading"
        for r in (client.get("/api/model"), client.post("/api/tokenize", json={"text": "hi"})):
            assert r.status_code == 503 and r.json() == health.json(), r.text


def test_health_is_ok_while_loading_and_after(tiny_dirs: dict[str, Path]) -> None:
    app = create_app(Settings(model=str(tiny_dirs["gpt2"]), device="cpu", dtype="float32"))
    with TestClient(app) as client:
        assert client.get("/api/health").json() == {"status": "ok"}
        wait_ready(client)
        assert client.get("/api/health").json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("ray_address", "not an address", "HEADSCOPE_RAY_ADDRESS"),
        ("ray_workers", 0, "HEADSCOPE_RAY_WORKERS"),
        ("ray_gpus_per_worker", -1, "HEADSCOPE_RAY_GPUS_PER_WORKER"),
    ],
)
def test_bad_ray_settings_stop_the_start_with_a_message_naming_them(
    setting: str, value: object, named: str, tiny_dirs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="app"):
        assert checked_settings({"model": str(tiny_dirs["llama"]), setting: value}) is None
    assert f"invalid setting {named}" in caplog.text
    for good in ("local", "auto", "ray://head:10001", "10.0.0.5:6379"):
        assert checked_settings({"model": str(tiny_dirs["llama"]), "ray_address": good}) is not None

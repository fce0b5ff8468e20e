"""The code stays lint-clean, formatted, and type-checked (mypy strict on app/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_lint_and_format() -> None:
    lint = _run("ruff", "check", "app", "tests", "bench")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = _run("ruff", "format", "--check", "app", "tests", "bench")
    assert (ROOT / "bench").is_dir()
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy_strict_on_app() -> None:
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_lints_and_installs_like_the_makefile() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    docker = (ROOT / "Dockerfile").read_text()
    assert "RUN make env" in docker  # the image installs exactly what the Makefile installs
    assert "USER 10001" in docker and "HEALTHCHECK" in docker and "EXPOSE 8000" in docker
    assert "HEADSCOPE_HOST=0.0.0.0" in docker

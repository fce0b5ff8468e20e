"""The real server process on loopback: body limits on the wire, graceful SIGTERM, liveness under load, a load test.

The load and SIGTERM tests take minutes of CPU: they are marked `load`, which `make test-fast` leaves out.
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.server import Server, serve

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
LONG = " ".join(f"word{i % 97}" for i in range(4000))  # far more than 2048 tokens; trimmed per test


def text_of(client: httpx.Client, url: str, n_tokens: int, salt: int) -> str:
    """A text of exactly n_tokens tokens (distinct per salt, so each forces a model run)."""
    words = f"salt{salt} " + LONG
    ids = client.post(url + "/api/tokenize", json={"text": words}, timeout=30)
    assert ids.status_code == 422  # LONG is over the limit: cut by characters until it fits
    lo, hi = 1, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        r = client.post(url + "/api/tokenize", json={"text": words[:mid]}, timeout=30)
        if r.status_code == 200 and r.json()["n_tokens"] <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return words[:lo]


@pytest.fixture(scope="module")
def server(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(str(tiny_dirs["llama"]), tmp_path_factory.mktemp("logs"), max_tokens="2048", queue_size="16") as s:
        yield s


def test_a_chunked_body_over_the_limit_is_413_on_the_wire(server: Server) -> None:
    """A real client streaming 3 MB with Transfer-Encoding: chunked (no Content-Length) against the 1 MB limit."""

    def body() -> Iterator[bytes]:
        yield b'{"text": "'
        for _ in range(48):
            yield b"a" * 65536
        yield b'"}'

    with httpx.Client(timeout=60) as c:
        r = c.post(server.url + "/api/ablate", content=body(), headers={"content-type": "application/json"})
        assert r.request.headers["transfer-encoding"] == "chunked" and "content-length" not in r.request.headers
        assert r.status_code == 413, r.text
        assert r.json() == {"error": "body_too_large", "detail": "request body over 1000000 bytes"}
        small = c.post(
            server.url + "/api/tokenize",
            content=iter([b'{"text":', b' "hi"}']),
            headers={"content-type": "application/json"},
        )
        assert small.status_code == 200 and small.json()["n_tokens"] == 1
        assert c.get(server.url + "/api/health").status_code == 200  # and the server is fine


@pytest.mark.load
def test_health_stays_fast_while_8_max_size_requests_are_in_flight(server: Server) -> None:
    with httpx.Client() as c:
        texts = [text_of(c, server.url, 2048, salt) for salt in range(8)]
    # The heavy requests run in curl processes, so the probe measures the server, not this process's GIL.
    procs = []
    for i, text in enumerate(texts):
        body = {"text": text, "ablate": [{"layer": 0, "head": 1}]}
        if i < 2:
            body["maps"] = [{"layer": 1, "head": 0}]  # a full 2048×2048 map in the response
        procs.append(
            subprocess.Popen(
                [
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-H",
                    "content-type: application/json",
                    "--data-binary",
                    json.dumps(body),
                    server.url + "/api/ablate",
                ],
                stdout=subprocess.PIPE,
            )
        )
    latencies: list[float] = []
    with httpx.Client() as probe:
        time.sleep(0.2)
        while any(p.poll() is None for p in procs) and len(latencies) < 5000:
            start = time.perf_counter()
            assert probe.get(server.url + "/api/health").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.01)
    statuses = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert statuses == ["200"] * 8
    assert len(latencies) >= 20, "the heavy requests finished before the probe could measure"
    p99 = statistics.quantiles(latencies, n=100)[98]
    print(f"health under load: p99 {p99 * 1000:.1f} ms, median {statistics.median(latencies) * 1000:.1f} ms")
    assert p99 < 0.05, f"health p99 {p99 * 1000:.1f} ms over {len(latencies)} probes"


@pytest.mark.load
def test_load_8_clients_for_30_seconds(server: Server) -> None:
    """Bounded loop on loopback: zero errors other than documented 503s; reports throughput and p99."""
    duration = 30.0
    bodies = [
        ("/api/attention", {"text": "The cat sat on the mat.", "heads": [{"layer": 1, "head": 2}]}),
        ("/api/ablate", {"text": "The cat sat on the mat.", "ablate": [{"layer": 0, "head": 1}]}),
        ("/api/heads", {"text": "The dog sat on the log."}),
        ("/api/similarity", {"text": "The dog sat on the log.", "metric": "js"}),
        ("/api/tokenize", {"text": "tokens please"}),
        ("/api/overview", {"text": "A bird on a wire."}),
    ]
    results: list[tuple[int, float]] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        end = time.monotonic() + duration
        n = 0
        with httpx.Client(timeout=30) as c:
            while time.monotonic() < end and n < 100_000:
                path, body = bodies[(i + n) % len(bodies)]
                body = {**body, "text": body["text"] + f" #{(i * 7 + n) % 20}"}  # some cache hits, some misses
                start = time.perf_counter()
                status = c.post(server.url + path, json=body).status_code
                with lock:
                    results.append((status, time.perf_counter() - start))
                n += 1

    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(client, range(8)))
    elapsed = time.monotonic() - start
    statuses = [s for s, _ in results]
    unexpected = [s for s in statuses if s not in (200, 503)]
    assert unexpected == [], f"unexpected statuses: {sorted(set(unexpected))}"
    latencies = [t for s, t in results if s == 200]
    report = {
        "requests": len(results),
        "ok": statuses.count(200),
        "busy_503": statuses.count(503),
        "throughput_rps": round(len(results) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p99_ms": round(statistics.quantiles(latencies, n=100)[98] * 1000, 1),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "load.json").write_text(json.dumps(report, indent=2))
    print("load test:", report)
    assert report["ok"] > 100


@pytest.mark.load
def test_sigterm_finishes_in_flight_requests_and_exits_0(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    with serve(str(tiny_dirs["gpt2"]), tmp_path) as s, httpx.Client(timeout=120) as c:
        text = text_of(c, s.url, 1000, 1)  # tiny GPT-2 has 1024 positions
        box: dict[str, int] = {}

        def slow() -> None:
            r = c.post(s.url + "/api/importance", json={"text": text, "method": "ablation"})
            box["status"] = r.status_code

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.5)
        s.proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert box.get("status") == 200, s.output()[-2000:]
        assert s.proc.wait(timeout=30) == 0

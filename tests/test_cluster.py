"""Corpus jobs on Ray: a two-node cluster on this host (one CPU each) against the in-process numbers.

The cluster (ray.cluster_utils) starts once for the module and stops at its end; every Ray process binds
127.0.0.1. The app under test joins it with HEADSCOPE_RAY_ADDRESS and two actors, one per node.
"""

from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before ray is imported: Ray binds loopback only

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
from fastapi.testclient import TestClient
from ray.cluster_utils import Cluster

from app.config import Settings
from app.corpus.jobs import Jobs
from app.inspect.model.loaded import Loaded
from app.main import create_app
from tests.support.clients import wait_ready
from tests.test_jobs import TEXTS, dataset, jobs_of, open_client, wait_state

pytestmark = pytest.mark.load  # starts processes: minutes of CPU on 2 cores

MANY = [f"{t} Text {i}: {t.lower()}" for i, t in enumerate(TEXTS * 3)]  # 24 texts, enough batches to act mid-job


def listening() -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket on this host, IPv4 and IPv6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":
                address, port = local.split(":")
                found.add((address, int(port, 16)))
    return found


# 127.0.0.1, ::ffff:127.0.0.1 and ::1 as /proc/net writes them
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Cluster]:
    before = listening()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "node_ip_address": "127.0.0.1"},
    )
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    try:
        opened = listening() - before
        assert opened and all(address in LOOPBACK for address, _ in opened), opened
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def on_ray(ray_cluster: Cluster, tiny_loaded: dict[str, Loaded], tiny_dirs: dict[str, Path]) -> Iterator[TestClient]:
    """The app with its corpus jobs on the two-node cluster (actors load the tiny llama from its directory)."""
    loaded = tiny_loaded["llama"]
    settings = Settings(model=str(tiny_dirs["llama"]), dtype="float32", ray_address=ray_cluster.address, ray_workers=2)
    app = create_app(settings, loaded=loaded)
    jobs: Jobs = app.state.jobs
    jobs.max_batch_tokens, jobs.max_batch_texts = 40, 3  # as in tests/test_jobs.py: the same batches
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        assert jobs.cluster is not None
        assert jobs.cluster.started.wait(300) and jobs.cluster.error is None, jobs.cluster.error
        yield client


def in_process(loaded: Loaded, tmp_path: Path, texts: list[str], body: dict[str, Any]) -> dict[str, Any]:
    """The same job run in the server's own model worker: its /heads and /similarity."""
    for client in open_client(loaded, tmp_path / "in-process"):
        job = client.post("/api/jobs", json={**body, "dataset": dataset(client, texts)}).json()
        assert wait_state(client, job["id"], {"done", "failed"})["state"] == "done"
        return {
            "heads": client.get(f"/api/jobs/{job['id']}/heads").json(),
            "similarity": client.get(f"/api/jobs/{job['id']}/similarity").json(),
        }
    raise AssertionError("no client")


def assert_same(a: dict[str, Any], b: dict[str, Any], tol: float = 1e-6) -> None:
    """Every head's statistics equal within `tol` (means, spreads and the seeded bootstrap CIs), same counts."""
    assert a["n_texts"] == b["n_texts"] and a["metrics"] == b["metrics"]
    for ha, hb in zip(a["heads"], b["heads"], strict=True):
        for metric in a["metrics"]:
            assert ha[metric]["n"] == hb[metric]["n"]
            for field in ("mean", "std", "ci_low", "ci_high"):
                assert ha[metric][field] == pytest.approx(hb[metric][field], abs=tol, nan_ok=True), (metric, field)


def actors(client: TestClient) -> list[Any]:
    cluster = jobs_of(client).cluster
    assert cluster is not None
    return cluster.actors


def test_a_job_on_ray_has_the_in_process_numbers(
    on_ray: TestClient, tiny_loaded: dict[str, Loaded], tmp_path: Path
) -> None:
    body = {"analyses": ["roles", "importance", "similarity"], "importance": "gradient", "max_tokens": 32}
    job = on_ray.post("/api/jobs", json={**body, "dataset": dataset(on_ray, TEXTS)}).json()
    ended = wait_state(on_ray, job["id"], {"done", "failed", "interrupted"}, timeout=120)
    assert ended["state"] == "done", ended
    heads = on_ray.get(f"/api/jobs/{job['id']}/heads").json()
    reference = in_process(tiny_loaded["llama"], tmp_path, TEXTS, body)
    assert_same(heads, reference["heads"])
    sim = on_ray.get(f"/api/jobs/{job['id']}/similarity").json()
    np.testing.assert_allclose(sim["matrix"], reference["similarity"]["matrix"], atol=1e-6)
    backend = on_ray.get("/api/jobs").json()["backend"]
    assert backend == {"backend": "ray", "address": jobs_of(on_ray).cluster.config.address, "workers": 2,
                       "state": "ready", "error": None}  # fmt: skip
    pids = {ray.get(a.status.remote())[0] for a in actors(on_ray)}
    assert len(pids) == 2 and os.getpid() not in pids  # measured by two actor processes, not the server


def test_killing_an_actor_mid_job_loses_and_repeats_nothing(
    on_ray: TestClient, tiny_loaded: dict[str, Loaded], tmp_path: Path
) -> None:
    body = {"analyses": ["roles"], "max_tokens": 32}
    job = on_ray.post("/api/jobs", json={**body, "dataset": dataset(on_ray, MANY)}).json()
    victim = actors(on_ray)[0]
    pid = ray.get(victim.status.remote())[0]
    deadline = time.monotonic() + 60
    while on_ray.get(f"/api/jobs/{job['id']}").json()["progress"]["done"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    ray.kill(victim, no_restart=False)  # Ray restarts it and runs its task again
    ended = wait_state(on_ray, job["id"], {"done", "failed", "interrupted"}, timeout=180)
    assert ended["state"] == "done", ended
    assert ended["progress"]["done"] == ended["progress"]["total"] == len(MANY)
    assert ray.get(victim.status.remote())[0] != pid  # the actor really died and came back
    heads = on_ray.get(f"/api/jobs/{job['id']}/heads").json()
    assert heads["n_texts"] == len(MANY)  # each text stored once: a second commit of a text fails the job
    assert_same(heads, in_process(tiny_loaded["llama"], tmp_path, MANY, body)["heads"])


def test_cancel_stops_every_actor_within_seconds(on_ray: TestClient) -> None:
    body = {"analyses": ["roles", "importance"], "importance": "ablation", "max_tokens": 32}
    job = on_ray.post("/api/jobs", json={**body, "dataset": dataset(on_ray, MANY)}).json()
    deadline = time.monotonic() + 60
    while on_ray.get(f"/api/jobs/{job['id']}").json()["progress"]["done"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert on_ray.delete(f"/api/jobs/{job['id']}").json()["state"] == "cancelled"
    stopped_by = time.monotonic() + 5
    while any(ray.get(a.status.remote())[1] for a in actors(on_ray)):
        assert time.monotonic() < stopped_by, "an actor still measures 5 s after the cancel"
        time.sleep(0.05)
    done = on_ray.get(f"/api/jobs/{job['id']}").json()["progress"]["done"]
    time.sleep(1.0)
    after = on_ray.get(f"/api/jobs/{job['id']}").json()
    assert after["state"] == "cancelled" and after["progress"]["done"] == done < len(MANY)


def test_losing_every_actor_interrupts_the_job_and_resume_finishes_it(
    on_ray: TestClient, tiny_loaded: dict[str, Loaded], tmp_path: Path
) -> None:
    body = {"analyses": ["roles"], "max_tokens": 32}
    job = on_ray.post("/api/jobs", json={**body, "dataset": dataset(on_ray, MANY)}).json()
    deadline = time.monotonic() + 60
    while on_ray.get(f"/api/jobs/{job['id']}").json()["progress"]["done"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for actor in actors(on_ray):
        ray.kill(actor, no_restart=True)  # the whole cluster's workers, for good
    lost = wait_state(on_ray, job["id"], {"done", "failed", "interrupted"}, timeout=60)
    assert lost["state"] == "interrupted" and "Ray" in lost["error"], lost
    assert on_ray.get("/api/ready").status_code == 200  # the server itself goes on
    assert on_ray.post("/api/attention", json={"text": "still here", "layers": [0]}).status_code == 200
    resumed = on_ray.post(f"/api/jobs/{job['id']}/resume")
    assert resumed.status_code == 202, resumed.text
    ended = wait_state(on_ray, job["id"], {"done", "failed", "interrupted"}, timeout=180)
    assert ended["state"] == "done", ended
    heads = on_ray.get(f"/api/jobs/{job['id']}/heads").json()
    assert heads["n_texts"] == len(MANY)
    assert_same(heads, in_process(tiny_loaded["llama"], tmp_path, MANY, body)["heads"])

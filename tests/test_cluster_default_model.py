"""Corpus jobs on Ray with the default model: two actors on a two-node cluster on this host, each loading it.

A module of its own: its cluster's two CPUs go to these actors (tests/test_cluster.py's tiny-model actors
hold the other cluster's).
"""

from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before ray is imported: Ray binds loopback only

import time
from collections.abc import Iterator

import pytest
import ray
import torch
from fastapi.testclient import TestClient
from ray.cluster_utils import Cluster

from app.config import Settings
from app.main import create_app
from tests.support.clients import wait_ready
from tests.test_cluster import actors, assert_same, ray_cluster
from tests.test_jobs import TEXTS, dataset, jobs_of, wait_state

pytestmark = [pytest.mark.load, pytest.mark.slow]
__all__ = ["ray_cluster"]  # the fixture, imported to be used here


@pytest.fixture(scope="module")
def real_on_ray(ray_cluster: Cluster) -> Iterator[TestClient]:
    """The default model served, its corpus jobs on two actors that each load it from the registry."""
    settings = Settings(
        model="smollm2-135m", device="cpu", dtype="float32", ray_address=ray_cluster.address, ray_workers=2
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client, timeout=300)
        cluster = jobs_of(client).cluster
        assert cluster is not None
        assert cluster.started.wait(600) and cluster.error is None, cluster.error
        yield client


def test_the_default_model_on_ray_has_the_in_process_numbers(real_on_ray: TestClient) -> None:
    jobs = jobs_of(real_on_ray)
    jobs.max_batch_tokens, jobs.max_batch_texts = 96, 2  # three batches of two texts
    body = {"analyses": ["roles", "importance"], "importance": "gradient", "max_tokens": 40}
    ds = dataset(real_on_ray, TEXTS[:6])
    heads = {}
    threads = torch.get_num_threads()
    for backend in ("ray", "in-process"):
        cluster = jobs.cluster
        if backend == "in-process":
            jobs.cluster = None  # the same server and batches, measured by its own model worker,
            jobs.service.set_threads(1)  # with one thread like each actor (its one CPU), so sums add up alike
            assert jobs.service.set_threads(1) == 1  # it reached the model thread
        try:
            job = real_on_ray.post("/api/jobs", json={**body, "dataset": ds}).json()
            ended = wait_state(real_on_ray, job["id"], {"done", "failed", "interrupted"}, timeout=300)
        finally:
            jobs.cluster = cluster
            jobs.service.set_threads(threads)
        assert ended["state"] == "done", ended
        heads[backend] = real_on_ray.get(f"/api/jobs/{job['id']}/heads").json()
    assert_same(heads["ray"], heads["in-process"])


def test_cancel_stops_an_actor_in_the_middle_of_a_long_batch(real_on_ray: TestClient) -> None:
    jobs = jobs_of(real_on_ray)
    jobs.max_batch_tokens, jobs.max_batch_texts = 256, 4
    body = {"analyses": ["importance"], "importance": "ablation", "max_tokens": 40}  # 270 ablations a batch
    job = real_on_ray.post("/api/jobs", json={**body, "dataset": dataset(real_on_ray, TEXTS)}).json()
    deadline = time.monotonic() + 120
    while sum(ray.get(a.status.remote())[1] for a in actors(real_on_ray)) < 2:  # both actors mid-batch
        assert time.monotonic() < deadline
        time.sleep(0.1)
    answered = real_on_ray.post("/api/attention", json={"text": "The server's own model is free.", "layers": [0]})
    assert answered.status_code == 200  # interactive requests do not wait for the cluster's batches
    assert real_on_ray.get(f"/api/jobs/{job['id']}").json()["state"] == "running"
    assert real_on_ray.delete(f"/api/jobs/{job['id']}").json()["state"] == "cancelled"
    cancelled = time.monotonic()
    while any(ray.get(a.status.remote())[1] for a in actors(real_on_ray)):
        assert time.monotonic() - cancelled < 5, "an actor still measures 5 s after the cancel"
        time.sleep(0.05)
    after = real_on_ray.get(f"/api/jobs/{job['id']}").json()
    assert after["state"] == "cancelled" and after["progress"]["done"] == 0  # both batches were cut short

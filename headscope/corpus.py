"""Corpus mode from Python: datasets stored by the server, and jobs over them (start, progress, results)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from headscope.results import Result, _pandas
from headscope.transport import Client
from headscope.views import Context, Similarity

if TYPE_CHECKING:
    import pandas as pd

STATS = ("mean", "std", "n", "ci_low", "ci_high")
ENDED = {"done", "failed", "cancelled", "interrupted"}


class Datasets:
    """`scope.datasets`: list, create, get and delete the server's datasets (built-ins have ids `builtin:...`)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self) -> list[dict[str, Any]]:
        """[{id, name, n_texts, n_tokens, builtin, created}], built-in sets first."""
        out: list[dict[str, Any]] = self._client.request("GET", "/api/datasets")["datasets"]
        return out

    def create(self, name: str, texts: Iterable[str]) -> dict[str, Any]:
        """Store a list of texts; returns {id, name, n_texts, n_tokens, ...}."""
        out: dict[str, Any] = self._client.request("POST", "/api/datasets", {"name": name, "texts": list(texts)})
        return out

    def get(self, dataset_id: str) -> dict[str, Any]:
        out: dict[str, Any] = self._client.request("GET", f"/api/datasets/{dataset_id}")
        return out

    def delete(self, dataset_id: str) -> None:
        self._client.request("DELETE", f"/api/datasets/{dataset_id}")


class JobHeads(Result):
    """GET /api/jobs/{id}/heads: `to_pandas()` has layer, head, kv_group and `<metric>_<stat>` for each metric
    computed and each of mean, std, n, ci_low, ci_high."""

    def to_pandas(self) -> pd.DataFrame:
        rows = []
        for h in self.raw["heads"]:
            row = {"layer": h["layer"], "head": h["head"], "kv_group": h.get("kv_group")}
            for metric, value in h.items():
                if isinstance(value, dict):
                    row.update({f"{metric}_{s}": value.get(s) for s in STATS})
            rows.append(row)
        return _pandas().DataFrame(rows)


class Job:
    """A corpus job: `progress()`, `wait()` (a progress bar in a notebook), `heads()`, `similarity()`, `cancel()`."""

    def __init__(self, client: Client, context: Context, raw: dict[str, Any]) -> None:
        self._client = client
        self._context = context
        self.id: str = raw["id"]
        self.raw = raw

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.raw.get('state')}>"

    def progress(self) -> dict[str, Any]:
        """GET /api/jobs/{id}: {state, progress: {done, total, tokens, tokens_per_s}, error, ...}."""
        self.raw = self._client.request("GET", f"/api/jobs/{self.id}")
        return self.raw

    def wait(self, progress: bool = True, poll_s: float = 0.5, timeout_s: float | None = None) -> dict[str, Any]:
        """Poll until the job ends (done, failed, cancelled or interrupted), with a tqdm bar when `progress`."""
        bar = tqdm(total=None, unit="text", desc=self.id, disable=not progress)
        started = time.monotonic()
        try:
            while True:
                state = self.progress()
                p = state.get("progress") or {}
                bar.total = p.get("total")
                bar.n = p.get("done", 0)
                bar.refresh()
                if state["state"] in ENDED:
                    return state
                if timeout_s is not None and time.monotonic() - started > timeout_s:
                    raise TimeoutError(f"job {self.id} still {state['state']} after {timeout_s} s")
                time.sleep(poll_s)
        finally:
            bar.close()

    def heads(self) -> JobHeads:
        """Per-head statistics over the texts (partial while the job runs)."""
        return JobHeads(self._client.request("GET", f"/api/jobs/{self.id}/heads"))

    def similarity(self, measure: str = "js") -> Similarity:
        """The heads × heads matrix averaged over the texts."""
        raw = self._client.request("GET", f"/api/jobs/{self.id}/similarity", params={"metric": measure})
        return Similarity(raw, f"corpus job {self.id}", self._context)

    def cancel(self) -> dict[str, Any]:
        self.raw = self._client.request("DELETE", f"/api/jobs/{self.id}")
        return self.raw


class Jobs:
    """`scope.jobs`: start a job over a dataset, list them, reopen one by id."""

    def __init__(self, client: Client, context: Context) -> None:
        self._client = client
        self._context = context

    def start(
        self,
        dataset: str,
        analyses: Iterable[str] = ("roles",),
        importance: str = "gradient",
        max_tokens: int | None = None,
    ) -> Job:
        """POST /api/jobs: `analyses` from roles, importance, similarity; texts cut to `max_tokens`."""
        body: dict[str, Any] = {"dataset": dataset, "analyses": list(analyses), "importance": importance}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        return Job(self._client, self._context, self._client.request("POST", "/api/jobs", body))

    def get(self, job_id: str) -> Job:
        return Job(self._client, self._context, self._client.request("GET", f"/api/jobs/{job_id}"))

    def list(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self._client.request("GET", "/api/jobs")["jobs"]
        return out

"""The static atlas of a job on the tiny model: every file written, its data what the API and the projection give,
(tests/browser/test_atlas.py opens the pages from file://)."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.__main__ import main as cli
from app.atlas import build as atlas
from app.corpus import qk_space
from app.errors import Conflict
from app.inspect.engine import runs
from app.inspect.model.loaded import Loaded
from tests.test_examples_deciles import corpus
from tests.test_jobs import dataset, open_client, wait_state

TEXTS = corpus(16, seed=21)


def read_data(path: Path) -> Any:
    """The value a data script sets (window["NAME"] = {...};)."""
    text = path.read_text(encoding="utf-8")
    return json.loads(text[text.index("= ") + 2 : text.rindex(";")])


def atlas_of(loaded: Loaded, root: Path) -> Iterator[tuple[Any, ...]]:
    """A finished job (roles and similarity) over TEXTS on the tiny model, and its atlas in root/site."""
    for client in open_client(loaded, root / "data"):
        body = {"dataset": dataset(client, TEXTS), "analyses": ["roles", "similarity"], "max_tokens": 16, "seed": 2}
        job = wait_state(client, client.post("/api/jobs", json=body).json()["id"], {"done", "failed"})
        assert job["state"] == "done", job
        jobs = client.app.state.jobs  # type: ignore[attr-defined]
        written = atlas.build(loaded, jobs.datasets, jobs.store, job["id"], root / "site")
        yield client, job["id"], written, loaded


@pytest.fixture(scope="module")
def built(tiny_loaded: dict[str, Loaded], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, ...]]:
    yield from atlas_of(tiny_loaded["llama"], tmp_path_factory.mktemp("atlas"))


def test_every_head_has_a_page_and_its_data_is_the_apis(built: tuple[Any, ...]) -> None:
    client, job, written, loaded = built
    out: Path = written.out
    assert written.heads == 8 and (out / "index.html").exists() and (out / "atlas.js").exists()
    assert sorted(p.name for p in out.glob("L*H*.html")) == sorted(f"L{ly}H{h}.html" for ly in (0, 1) for h in range(4))
    assert written.bytes == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    shared = read_data(out / "data" / "job.js")
    heads = client.get(f"/api/jobs/{job}/heads").json()
    assert shared["heads"]["n_texts"] == heads["n_texts"] == len(TEXTS)
    metric = shared["metric"]
    for mine, theirs in zip(shared["heads"]["heads"], heads["heads"], strict=True):
        assert mine[metric] == theirs[metric]
    sim = client.get(f"/api/jobs/{job}/similarity", params={"metric": "js"}).json()
    np.testing.assert_allclose(shared["similarity"]["matrix"], sim["matrix"], atol=1e-12)
    one = read_data(out / "data" / "L1H3.js")
    api = client.get(f"/api/jobs/{job}/heads/1/3/examples", params={"metric": metric, "k": 5}).json()
    assert [e["text_index"] for e in one["top"]["examples"]] == [e["text_index"] for e in api["examples"]]
    dec = client.get(
        f"/api/jobs/{job}/heads/1/3/examples", params={"metric": metric, "k": 1, "sample": "deciles", "seed": 2}
    ).json()
    assert one["deciles"]["examples"] == dec["examples"] and one["deciles"]["bounds"] == dec["bounds"]
    # the points: the sample's q and k of L1H3 (KV head 1), projected; checked against a text run alone
    sample = shared["sample"]
    m = len(sample["position"])
    assert m == sample["seen"] == sum(min(len(runs.encode(loaded.tokenizer, t)), 16) for t in TEXTS)
    q, k = [], []
    for i, pos in zip(sample["text_index"], sample["position"], strict=True):
        qk = runs.analyse(loaded, "", token_ids=runs.encode(loaded.tokenizer, TEXTS[i])[:16]).qk[1]
        q.append(qk.q[0, 3, pos].numpy())
        k.append(qk.k[0, 1, pos].numpy())
        assert sample["token"][len(q) - 1] == loaded.tokenizer.decode(
            [runs.encode(loaded.tokenizer, TEXTS[i])[pos]], clean_up_tokenization_spaces=False
        )
    want = qk_space.project(np.array(q), np.array(k)).coords
    got = np.frombuffer(base64.b64decode(one["qk"]["xy_f16"]), dtype="<f2").reshape(2 * m, 2).astype(np.float64)
    np.testing.assert_allclose(got, want, atol=2e-3 * np.abs(want).max())  # float16 on the wire


def test_a_job_of_another_model_has_no_atlas(
    built: tuple[Any, ...], tiny_loaded: dict[str, Loaded], tmp_path: Path
) -> None:
    client, job, _, _ = built
    jobs = client.app.state.jobs  # type: ignore[attr-defined]
    with pytest.raises(Conflict, match="ran on"):
        atlas.build(tiny_loaded["gpt2"], jobs.datasets, jobs.store, job, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_the_cli_refuses_an_unknown_job(tmp_path: Path, tiny_dirs: dict[str, Path], monkeypatch: Any) -> None:
    monkeypatch.setenv("HEADSCOPE_DATA_DIR", str(tmp_path / "data"))
    code = cli(["atlas", "--job", "job_nope", "--out", str(tmp_path / "site"), "--model", str(tiny_dirs["llama"])])
    assert code == 2 and not (tmp_path / "site").exists()


def test_the_atlas_button_downloads_the_same_site_as_a_zip(built: tuple[Any, ...]) -> None:
    """GET /api/jobs/{id}/atlas (the Corpus page's Atlas button): the files `build` wrote, byte for byte."""
    client, job, written, _ = built
    got = client.get(f"/api/jobs/{job}/atlas")
    assert got.status_code == 200 and got.headers["content-type"] == "application/zip"
    assert got.headers["content-disposition"] == f'attachment; filename="{job}-atlas.zip"'
    archive = zipfile.ZipFile(io.BytesIO(got.content))
    out: Path = written.out
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert sorted(archive.namelist()) == files and "index.html" in files and "data/L1H3.js" in files
    for name in ("index.html", "data/job.js", "data/L1H3.js", "L0H2.html", "atlas.js"):
        assert archive.read(name) == (out / name).read_bytes(), name
    missing = client.get("/api/jobs/job_000000000000/atlas")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"

"""Corpus datasets: the SQLite store, the built-in sets, upload parsing and the /api/datasets endpoints."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.corpus import builtin, upload
from app.corpus.datasets import DatasetStore
from app.corpus.jobstore import JobRecord, JobStore
from app.corpus.sqlite import DB_FILE
from app.errors import Conflict, InvalidInput, NotFound
from app.inspect.engine.runs import encode
from app.inspect.model.loaded import Loaded
from tests.support.clients import make_client

MAX_TEXTS = 20
MAX_UPLOAD = 64_000
TEXTS = ["The cat sat on the mat.", "Ünïcödé — 日本語 😀\nsecond line", "  padded  ", "a\u2028b"]


# -- the store -----------------------------------------------------------------------------------


def rows(data_dir: Path) -> tuple[int, int]:
    """(datasets, texts) rows in the store file, read through a connection of its own."""
    with sqlite3.connect(data_dir / DB_FILE) as conn:
        datasets = conn.execute("SELECT COUNT(*) FROM datasets").fetchone()[0]
        texts = conn.execute("SELECT COUNT(*) FROM dataset_texts").fetchone()[0]
    return datasets, texts


def test_store_round_trip(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path, MAX_TEXTS)
    info = store.create("mine", TEXTS, n_tokens=42)
    assert re.fullmatch(r"ds_[0-9a-f]{12}", info.id)
    assert (info.name, info.n_texts, info.n_tokens, info.builtin) == ("mine", 4, 42, False)
    assert store.get(info.id) == info
    assert store.texts(info.id) == TEXTS  # byte for byte: nothing stripped or normalised
    assert store.page(info.id, 1, 2) == (4, TEXTS[1:3])
    assert store.page(info.id, 10, 5) == (4, [])
    second = store.create("second", ["x"], n_tokens=1)
    assert [d.id for d in store.list()] == [*builtin.IDS, info.id, second.id]
    assert rows(tmp_path) == (2, 5)


def test_store_persists_across_restart(tmp_path: Path) -> None:
    first = DatasetStore(tmp_path, MAX_TEXTS)
    kept = first.create("kept", TEXTS, n_tokens=7)
    gone = first.create("gone", ["bye"], n_tokens=1)
    first.close()
    second = DatasetStore(tmp_path, MAX_TEXTS)
    assert second.get(kept.id) == kept and second.texts(kept.id) == TEXTS
    second.delete(gone.id)
    third = DatasetStore(tmp_path, MAX_TEXTS)  # while the second is still open: WAL readers see the commit
    assert [d.id for d in third.list() if not d.builtin] == [kept.id]
    with pytest.raises(NotFound):
        third.texts(gone.id)


def test_store_errors_leave_it_unchanged(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path, max_texts=3)
    store.create("one", ["a"], n_tokens=1)
    bad: list[tuple[str, list[str], type[Exception]]] = [
        ("empty", [], InvalidInput),
        ("too many", ["a", "b", "c", "d"], InvalidInput),
        ("blank text", ["a", " \n "], InvalidInput),
        ("surrogate", ["a", "\ud800"], InvalidInput),
        ("", ["a"], InvalidInput),
        ("x" * 201, ["a"], InvalidInput),
    ]
    for name, texts, error in bad:
        with pytest.raises(error):
            store.create(name, texts, n_tokens=1)
    for dataset_id, error in [("builtin:ioi", Conflict), ("ds_000000000000", NotFound), ("builtin:nope", NotFound)]:
        with pytest.raises(error):
            store.delete(dataset_id)
    with pytest.raises(NotFound):
        store.get("ds_000000000000")
    assert rows(tmp_path) == (1, 1)


def test_create_is_all_or_nothing(tmp_path: Path) -> None:
    """A failure on the third insert (a trigger planted in the file) leaves no dataset and no texts behind."""
    store = DatasetStore(tmp_path, MAX_TEXTS)
    store.create("before", ["a"], n_tokens=1)
    with sqlite3.connect(tmp_path / DB_FILE) as conn:
        conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON dataset_texts WHEN NEW.text = 'boom' "
            "BEGIN SELECT RAISE(ABORT, 'planted failure'); END"
        )
    with pytest.raises(sqlite3.IntegrityError, match="planted failure"):
        store.create("half", ["ok", "ok too", "boom", "never"], n_tokens=4)
    assert rows(tmp_path) == (1, 1)
    assert [d.name for d in store.list() if not d.builtin] == ["before"]
    assert store.create("after", ["fine"], n_tokens=1).n_texts == 1  # the connection is usable afterwards


def test_store_is_thread_safe(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path, MAX_TEXTS)
    made: list[str] = []

    def work(worker: int) -> None:
        for i in range(5):
            info = store.create(f"w{worker}-{i}", [f"text {worker} {i}"] * 3, n_tokens=3)
            made.append(info.id)
            assert store.texts(info.id) == [f"text {worker} {i}"] * 3

    threads = [threading.Thread(target=work, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 30
    assert rows(tmp_path) == (30, 90)


def test_the_dataset_and_job_stores_share_one_file_each_through_its_own_connection(tmp_path: Path) -> None:
    datasets, jobs = DatasetStore(tmp_path, MAX_TEXTS), JobStore(tmp_path)
    info = datasets.create("mine", TEXTS, n_tokens=4)
    job = JobRecord("job_1", info.id, ["roles"], "gradient", 8, 0, "queued", created="2025-01-01T00:00:00+00:00")
    jobs.create(job)
    datasets.close()  # one store closing leaves the other's connection open
    assert jobs.get("job_1") == job
    assert sorted(p.name for p in tmp_path.glob("*.sqlite")) == [DB_FILE]
    with sqlite3.connect(tmp_path / DB_FILE) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"datasets", "dataset_texts", "jobs", "job_texts", "job_batches", "job_similarity"}
    jobs.close()
    reopened, jobs = DatasetStore(tmp_path, MAX_TEXTS), JobStore(tmp_path)  # as a restarted server opens them
    assert reopened.get(info.id) == info and jobs.get("job_1") == job
    reopened.close()
    jobs.close()


# -- built-in sets -------------------------------------------------------------------------------


def test_builtins_are_deterministic_and_well_formed() -> None:
    for dataset_id, generate in builtin.GENERATORS.items():
        first, again = generate(), generate()
        assert first == again and first, dataset_id  # generated anew, not a cached object
        assert all(isinstance(t, str) and t.strip() for t in first)
        assert list(builtin.texts(dataset_id)) == first

    for text in builtin.induction():
        words = text.split()
        half = len(words) // 2
        assert words[:half] == words[half:] and len(set(words[:half])) == half  # one repeat, nothing else

    for text in builtin.ioi():
        people = [w.strip(",.") for w in text.split() if w.strip(",.") in builtin.PEOPLE]
        a, b, subject = people
        assert a != b and subject == b and not text.endswith(a)  # the answer (indirect object) is a
    assert "When Mary and John went to the store, John gave a drink to" in builtin.ioi()

    docs = builtin.stdlib_docs()
    low, high = builtin.PARAGRAPH_CHARS
    assert 100 <= len(docs) <= builtin.STDLIB_MAX_TEXTS and len(set(docs)) == len(docs)
    assert all(low <= len(p) <= high and ">>>" not in p and "\n" not in p for p in docs)


def test_induction_repeats_token_for_token(tiny_loaded: dict[str, Loaded]) -> None:
    """Under a GPT-2 BPE tokenizer the second half is the same tokens again: prefix matching finds repeats."""
    tokenizer = tiny_loaded["gpt2"].tokenizer
    for text in builtin.induction()[:20]:
        half = text[: len(text) // 2]
        tail = encode(tokenizer, " " + half)
        ids = encode(tokenizer, text)
        assert ids[-len(tail) :] == tail and len(ids) < 128


# -- upload parsing ------------------------------------------------------------------------------


def test_jsonl_and_txt_parsing() -> None:
    jsonl = '{"text": "one"}\r\n\n{"text": "two\\nlines", "id": 3}\n{"text": "a\u2028b"}\n'
    assert upload.jsonl_texts(jsonl) == ["one", "two\nlines", "a\u2028b"]
    txt = "first doc\nstill first\r\n\r\n  second  \n \t \n\n\nthird"
    assert upload.txt_texts(txt) == ["first doc\nstill first", "second", "third"]
    assert upload.read_file("dir/x.TXT", "\ufeffbom\n\nnext".encode()) == ["bom", "next"]
    assert upload.file_name("C:\\Users\\me\\texts.jsonl") == "texts.jsonl"


@pytest.mark.parametrize(
    ("filename", "data", "message"),
    [
        ("a.jsonl", b'{"text": "ok"}\n\n{"text": broken}\n', "line 3: not valid JSON"),
        ("a.jsonl", b'{"text": "ok"}\n["text"]\n', "line 2: expected an object"),
        ("a.jsonl", b'{"text": 5}\n', "line 1: expected an object"),
        ("a.txt", b"fine\n\n\xff\xfe bad", "not UTF-8 (byte 6, line 3)"),
        ("a.csv", b"text\nx\n", "send a .jsonl"),
        ("noext", b"x", "send a .jsonl"),
    ],
)
def test_bad_files_say_what_is_wrong(filename: str, data: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        upload.read_file(filename, data)


def test_token_counter_matches_encode(tiny_loaded: dict[str, Loaded]) -> None:
    tokenizer = tiny_loaded["gpt2"].tokenizer
    counter = upload.TokenCounter()
    assert counter.count(tokenizer, TEXTS) == sum(len(encode(tokenizer, t)) for t in TEXTS)


# -- the API -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def api(tiny_loaded: dict[str, Loaded], data_dir: Path) -> Iterator[TestClient]:
    yield from make_client(
        tiny_loaded["llama"], data_dir=data_dir, max_dataset_texts=MAX_TEXTS, max_upload_bytes=MAX_UPLOAD
    )


def ids(client: TestClient) -> list[str]:
    response = client.get("/api/datasets")
    assert response.status_code == 200
    return [d["id"] for d in response.json()["datasets"]]


def assert_error(response: Any, status: int, code: str) -> Any:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == code
    assert "Traceback" not in response.text
    return body["detail"]


def test_api_json_upload_round_trip(api: TestClient, tiny_loaded: dict[str, Loaded]) -> None:
    tokenizer = tiny_loaded["llama"].tokenizer
    r = api.post("/api/datasets", json={"name": "notes", "texts": TEXTS})
    assert r.status_code == 201, r.text
    info = r.json()
    assert set(info) == {"id", "name", "n_texts", "n_tokens", "builtin", "created"}
    assert re.fullmatch(r"ds_[0-9a-f]{12}", info["id"])
    assert info["n_tokens"] == sum(len(encode(tokenizer, t)) for t in TEXTS)
    assert (info["name"], info["n_texts"], info["builtin"]) == ("notes", 4, False)
    assert ids(api)[:3] == list(builtin.IDS) and info["id"] in ids(api)

    detail = api.get(f"/api/datasets/{info['id']}").json()
    assert detail == {**info, "sample": TEXTS}
    page = api.get(f"/api/datasets/{info['id']}/texts", params={"offset": 1, "limit": 2}).json()
    assert page == {"total": 4, "texts": [{"index": 1, "text": TEXTS[1]}, {"index": 2, "text": TEXTS[2]}]}

    assert api.delete(f"/api/datasets/{info['id']}").status_code == 204
    assert info["id"] not in ids(api)
    for response in (
        api.get(f"/api/datasets/{info['id']}"),
        api.get(f"/api/datasets/{info['id']}/texts"),
        api.delete(f"/api/datasets/{info['id']}"),
    ):
        assert_error(response, 404, "not_found")


def test_api_builtins(api: TestClient, tiny_loaded: dict[str, Loaded]) -> None:
    tokenizer = tiny_loaded["llama"].tokenizer
    listed = {d["id"]: d for d in api.get("/api/datasets").json()["datasets"]}
    for dataset_id in builtin.IDS:
        texts = builtin.texts(dataset_id)
        info = listed[dataset_id]
        assert info["builtin"] and info["n_texts"] == len(texts)
        assert info["n_tokens"] == sum(len(encode(tokenizer, t)) for t in texts)
        detail = api.get(f"/api/datasets/{dataset_id}").json()
        assert detail["sample"] == list(texts[:5])
        page = api.get(f"/api/datasets/{dataset_id}/texts", params={"offset": 3, "limit": 4}).json()
        assert page["total"] == len(texts) and [t["text"] for t in page["texts"]] == list(texts[3:7])
        assert_error(api.delete(f"/api/datasets/{dataset_id}"), 409, "conflict")
    assert ids(api)[:3] == list(builtin.IDS)


SURROGATE = b'{"name": "s", "texts": ["ok", "\\ud800"]}'
BAD_JSON: list[tuple[str, bytes, str, int, str]] = [
    ("empty texts", b'{"name": "e", "texts": []}', "application/json", 422, "invalid_request"),
    ("no name", b'{"texts": ["a"]}', "application/json", 422, "invalid_request"),
    ("extra field", b'{"name": "x", "texts": ["a"], "path": "/etc"}', "application/json", 422, "invalid_request"),
    ("empty text", b'{"name": "x", "texts": ["a", ""]}', "application/json", 422, "invalid_request"),
    ("blank text", b'{"name": "x", "texts": ["a", "  \\n "]}', "application/json", 422, "invalid_input"),
    ("not a string", b'{"name": "x", "texts": ["a", 3]}', "application/json", 422, "invalid_request"),
    ("too many", json.dumps({"name": "x", "texts": ["a"] * (MAX_TEXTS + 1)}).encode(), "", 422, "invalid_input"),
    ("not UTF-8", b'{"name": "x", "texts": ["\xff"]}', "application/json", 422, "invalid_input"),
    ("not JSON", b'{"name": "x", "texts": [', "application/json", 422, "invalid_request"),
    ("lone surrogate", SURROGATE, "application/json", 422, "invalid_request"),
    ("other media type", b'{"name": "x", "texts": ["a"]}', "text/plain", 422, "invalid_input"),
    ("too large", json.dumps({"name": "x", "texts": ["a" * MAX_UPLOAD]}).encode(), "", 413, "body_too_large"),
]


@pytest.mark.parametrize(("case", "body", "media", "status", "code"), BAD_JSON, ids=[c[0] for c in BAD_JSON])
def test_api_bad_json_is_a_4xx_and_changes_nothing(
    api: TestClient, data_dir: Path, case: str, body: bytes, media: str, status: int, code: str
) -> None:
    before, counts = ids(api), rows(data_dir)
    headers = {"content-type": media} if media else {}
    assert_error(api.post("/api/datasets", content=body, headers=headers), status, code)
    assert ids(api) == before and rows(data_dir) == counts


def test_api_at_the_limit_is_accepted(api: TestClient) -> None:
    r = api.post("/api/datasets", json={"name": "full", "texts": [f"text {i}" for i in range(MAX_TEXTS)]})
    assert r.status_code == 201 and r.json()["n_texts"] == MAX_TEXTS
    assert api.delete(f"/api/datasets/{r.json()['id']}").status_code == 204


def test_api_unknown_ids_and_bad_paging(api: TestClient) -> None:
    for dataset_id in ("ds_000000000000", "builtin:nope", "nothing"):
        assert_error(api.get(f"/api/datasets/{dataset_id}"), 404, "not_found")
        assert_error(api.delete(f"/api/datasets/{dataset_id}"), 404, "not_found")
    for params in ({"offset": -1}, {"limit": 0}, {"limit": 1001}, {"offset": "x"}):
        assert_error(api.get("/api/datasets/builtin:ioi/texts", params=params), 422, "invalid_request")


def test_api_file_uploads(api: TestClient) -> None:
    lines = b'{"text": "first"}\n{"text": "second", "source": "x"}\n\n'
    r = api.post("/api/datasets", files={"file": ("corpus.jsonl", lines)}, data={"name": "from jsonl"})
    assert r.status_code == 201, r.text
    jsonl = r.json()
    r = api.post("/api/datasets", files={"file": ("docs/notes.txt", b"one\ntwo\n\nthree\n")})
    assert r.status_code == 201, r.text
    txt = r.json()
    assert (jsonl["name"], jsonl["n_texts"]) == ("from jsonl", 2)
    assert (txt["name"], txt["n_texts"]) == ("notes.txt", 2)  # the name defaults to the file's own name
    assert api.get(f"/api/datasets/{txt['id']}").json()["sample"] == ["one\ntwo", "three"]
    for info in (jsonl, txt):
        assert api.delete(f"/api/datasets/{info['id']}").status_code == 204


BAD_FILES: list[tuple[str, dict[str, Any], str]] = [
    ("malformed line", {"files": {"file": ("a.jsonl", b'{"text": "a"}\n{"text": "b"\n')}}, "line 2"),
    ("not UTF-8", {"files": {"file": ("a.txt", b"ok\n\n\xc3\x28")}}, "not UTF-8"),
    ("lone surrogate", {"files": {"file": ("a.jsonl", b'{"text": "a"}\n{"text": "\\ud800"}')}}, "text 1 is not valid"),
    ("empty file", {"files": {"file": ("a.txt", b"\n \n\n")}}, "no texts"),
    ("too many", {"files": {"file": ("a.txt", b"\n\n".join(b"t" for _ in range(MAX_TEXTS + 1)))}}, "at most"),
    ("wrong suffix", {"files": {"file": ("a.pdf", b"%PDF")}}, "send a .jsonl"),
    ("no file", {"data": {"name": "x"}, "files": {"other": ("a.txt", b"x")}}, "'file' field"),
]


def test_a_bad_json_line_says_where_in_words(api: TestClient) -> None:
    """Python's JSON messages end in "at" for a position they leave out: the detail completes the sentence."""
    files = {"file": ("a.jsonl", b'{"text": "a"}\n{"text": "b\n')}
    detail = assert_error(api.post("/api/datasets", files=files), 422, "invalid_input")
    assert detail == "line 2: not valid JSON: unterminated string starting at column 10"
    files = {"file": ("a.jsonl", b'{"text": oops}\n')}
    detail = assert_error(api.post("/api/datasets", files=files), 422, "invalid_input")
    assert detail == "line 1: not valid JSON: expecting value at column 10"


@pytest.mark.parametrize(("case", "request_args", "message"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_api_bad_files_are_422_and_change_nothing(
    api: TestClient, data_dir: Path, case: str, request_args: dict[str, Any], message: str
) -> None:
    before, counts = ids(api), rows(data_dir)
    detail = assert_error(api.post("/api/datasets", **request_args), 422, "invalid_input")
    assert message in detail
    assert ids(api) == before and rows(data_dir) == counts


def test_api_malformed_or_oversized_multipart(api: TestClient, data_dir: Path) -> None:
    before, counts = ids(api), rows(data_dir)
    for content_type in ("multipart/form-data; boundary=xyz", "multipart/form-data"):
        r = api.post("/api/datasets", content=b"--xyz\r\ngarbage", headers={"content-type": content_type})
        assert_error(r, 422, "invalid_input")
    big = b"\n\n".join(b"word " * 100 for _ in range(MAX_UPLOAD // 400))
    assert_error(api.post("/api/datasets", files={"file": ("big.txt", big)}), 413, "body_too_large")
    assert ids(api) == before and rows(data_dir) == counts

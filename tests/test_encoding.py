"""Compact attention maps (`encoding: "f16"`) against the JSON form, and gzip on large responses (not on SSE)."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.inspect.model.loaded import Loaded
from tests.support.clients import make_client

TEXT = "The cat sat on the mat. The cat sat on the mat, and then the dog sat on the cat's mat again."


@pytest.fixture(scope="module")
def client(tiny_loaded: dict[str, Loaded]) -> Iterator[TestClient]:
    yield from make_client(tiny_loaded["llama"])


def decoded(m: dict) -> np.ndarray:  # type: ignore[type-arg]
    """A map's weights_f16 as a float32 matrix of its `shape`."""
    raw = base64.b64decode(m["weights_f16"], validate=True)
    return np.frombuffer(raw, dtype="<f2").astype(np.float32).reshape(m["shape"])


def attention(client: TestClient, text: str, **body: object) -> dict:  # type: ignore[type-arg]
    r = client.post("/api/attention", json={"text": text, **body})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_f16_decodes_to_the_json_weights(client: TestClient) -> None:
    heads = [{"layer": 1, "head": 3}, {"layer": 0, "head": 1}]
    plain = attention(client, TEXT, heads=heads)
    compact = attention(client, TEXT, heads=heads, encoding="f16")
    assert compact["tokens"] == plain["tokens"] and compact["token_ids"] == plain["token_ids"]
    t = len(plain["token_ids"])
    for p, c in zip(plain["maps"], compact["maps"], strict=True):
        assert (c["layer"], c["head"]) == (p["layer"], p["head"])
        assert set(c) == {"layer", "head", "shape", "weights_f16"}  # no `weights` beside it
        assert c["shape"] == [t, t]
        got, want = decoded(c), np.array(p["weights"], dtype=np.float64)
        # float16: relative error ≤ 2⁻¹¹ for normal numbers, absolute ≤ 2⁻²⁵ below 2⁻¹⁴ (subnormals)
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=6e-8)
        future = np.triu(np.ones((t, t), dtype=bool), k=1)
        assert (got[future] == 0).all() and (want[future] == 0).all()  # causal zeros stay exact zeros
        assert (got[~future] > 0).any()


def test_json_stays_the_default_and_unknown_encodings_are_422(client: TestClient) -> None:
    heads = [{"layer": 0, "head": 0}]
    assert set(attention(client, TEXT, heads=heads)["maps"][0]) == {"layer", "head", "weights"}
    assert attention(client, TEXT, heads=heads, encoding="json") == attention(client, TEXT, heads=heads)
    r = client.post("/api/attention", json={"text": TEXT, "heads": heads, "encoding": "f8"})
    assert r.status_code == 422 and set(r.json()) == {"error", "detail"}


def test_ablate_maps_in_f16_decode_to_its_json_maps(client: TestClient) -> None:
    """The maps under an ablation come compact too (the page's before/after view asks for them so)."""
    body = {"text": TEXT, "ablate": [{"layer": 0, "head": 1}], "maps": [{"layer": 1, "head": 3}]}
    plain = client.post("/api/ablate", json=body).json()
    compact = client.post("/api/ablate", json={**body, "encoding": "f16"}).json()
    assert compact["kl_per_position"] == plain["kl_per_position"]  # only the maps' form differs
    (p,), (c,) = plain["maps"], compact["maps"]
    assert set(c) == {"layer", "head", "shape", "weights_f16"} and set(p) == {"layer", "head", "weights"}
    np.testing.assert_allclose(decoded(c), np.array(p["weights"]), rtol=1e-3, atol=6e-8)
    bad = client.post("/api/ablate", json={**body, "encoding": "f8"})
    assert bad.status_code == 422 and set(bad.json()) == {"error", "detail"}


WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "while",
    "dogs",
    "ran",
    "past",
    "seven",
    "green",
    "houses",
    "and",
    "one",
    "old",
    "tree",
    "near",
    "the",
    "river",
]


def long_text(client: TestClient, n: int) -> str:
    """A varied text of exactly `n` tokens: seeded random words, cut by the served tokenizer."""
    tokenizer = client.app.state.service.model.tokenizer  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    ids = tokenizer.encode(" ".join(rng.choice(WORDS, size=n + 10)), add_special_tokens=False)[:n]
    text: str = tokenizer.decode(ids)
    assert len(client.post("/api/tokenize", json={"text": text}).json()["token_ids"]) == n
    return text


def wire_bytes(client: TestClient, body: dict, accept_encoding: str) -> tuple[int, dict, str | None]:  # type: ignore[type-arg]
    """(bytes on the wire, decoded JSON, Content-Encoding) of one /api/attention response."""
    with client.stream("POST", "/api/attention", json=body, headers={"Accept-Encoding": accept_encoding}) as r:
        assert r.status_code == 200
        raw = b"".join(r.iter_raw())
        encoding = r.headers.get("content-encoding")
    return len(raw), json.loads(gzip.decompress(raw) if encoding == "gzip" else raw), encoding


def test_one_head_at_2048_tokens_is_at_most_3_mb(client: TestClient) -> None:
    text = long_text(client, 2048)
    body = {"text": text, "heads": [{"layer": 1, "head": 2}], "encoding": "f16"}
    size, out, encoding = wire_bytes(client, body, "gzip")
    assert encoding == "gzip"
    assert out["maps"][0]["shape"] == [2048, 2048]
    m = decoded(out["maps"][0])
    np.testing.assert_allclose(m.sum(axis=1), 1.0, rtol=2e-3)  # rows of a softmax, each value rounded
    assert size <= 3_000_000, size
    plain_size, _, plain_encoding = wire_bytes(client, body, "identity")
    assert plain_encoding is None and plain_size > 4 * (2048 * 2048 * 2 // 3)  # uncompressed: base64 of 2 bytes/weight


def test_large_json_is_gzipped_when_accepted_and_small_is_not(client: TestClient) -> None:
    body = {"text": long_text(client, 256), "heads": [{"layer": 0, "head": 0}]}
    zipped, out, encoding = wire_bytes(client, body, "gzip")
    plain, same, plain_encoding = wire_bytes(client, body, "identity")
    assert encoding == "gzip" and plain_encoding is None
    assert out == same and zipped < plain / 2
    small = client.post("/api/tokenize", json={"text": "hi"}, headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers  # under the minimum size: not worth compressing


def test_event_streams_are_not_compressed(client: TestClient) -> None:
    body = {"text": TEXT, "ablate": [{"layer": 0, "head": 0}], "max_new_tokens": 32}
    headers = {"Accept": "text/event-stream", "Accept-Encoding": "gzip"}
    with client.stream("POST", "/api/generate", json=body, headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in r.headers
        raw = b"".join(r.iter_raw())
    assert b"event: end" in raw  # plain text, readable as it arrives

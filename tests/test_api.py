"""The JSON API through the app factory: every endpoint, the contract's fields, every error case."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.inspect.model.loaded import Loaded
from tests.support.checks import hook_count
from tests.support.clients import make_client

TEXT = "The cat sat on the mat. The cat sat on the mat."


def post(client: TestClient, path: str, **body: object) -> dict:  # type: ignore[type-arg]
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def assert_error(r, status: int, code: str | None = None) -> dict:  # type: ignore[no-untyped-def,type-arg]
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"}
    assert "Traceback" not in r.text and "/work/" not in r.text
    if code:
        assert body["error"] == code
    return body  # type: ignore[no-any-return]


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/api/health").json() == {"status": "ok"}
    assert client.get("/api/ready").status_code == 200


def test_model_card_reports_layout_and_kv_cost(client: TestClient) -> None:
    m = client.get("/api/model").json()
    assert (m["n_layers"], m["n_heads"], m["n_kv_heads"], m["head_dim"], m["d_model"]) == (2, 4, 2, 8, 32)
    assert m["kv_groups"] == [[0, 1], [2, 3]]
    assert m["kv_cache_bytes_per_token"] == 2 * 2 * 2 * 8 * 4  # K and V · layers · kv heads · head_dim · fp32
    assert m["kv_cache"]["mha"] == 2 * m["kv_cache_bytes_per_token"]
    assert m["kv_cache"]["mqa"] == m["kv_cache_bytes_per_token"] // 2
    assert m["device"] == "cpu" and m["dtype"] == "float32" and m["max_tokens"] == 2048
    assert m["architecture"] == "llama" and m["n_params"] > 0 and m["vocab_size"] == 50257


def test_tokenize(client: TestClient) -> None:
    out = post(client, "/api/tokenize", text="Hello world")
    assert out == {"tokens": ["Hello", " world"], "token_ids": [15496, 995], "n_tokens": 2}


def test_attention_heads_and_layers(client: TestClient, tiny_loaded: dict[str, Loaded]) -> None:
    out = post(client, "/api/attention", text=TEXT, heads=[{"layer": 1, "head": 3}, {"layer": 0, "head": 1}])
    assert [(m["layer"], m["head"]) for m in out["maps"]] == [(1, 3), (0, 1)]
    t = len(out["token_ids"])
    assert len(out["tokens"]) == t
    for m in out["maps"]:
        w = m["weights"]
        assert len(w) == t and all(len(row) == t for row in w)
        for q, row in enumerate(w):
            assert math.isclose(sum(row), 1.0, abs_tol=1e-5)
            assert all(v == 0 for v in row[q + 1 :])
    by_layer = post(client, "/api/attention", text=TEXT, layers=[1])
    assert [(m["layer"], m["head"]) for m in by_layer["maps"]] == [(1, h) for h in range(4)]
    assert by_layer["maps"][3]["weights"] == out["maps"][0]["weights"]
    assert hook_count(tiny_loaded["llama"].model) == 0  # no hook left behind after requests


def test_follow_up_request_reuses_the_cached_run(client: TestClient) -> None:
    svc = client.app.state.service  # type: ignore[attr-defined]
    text = "A fresh text for the cache test."
    post(client, "/api/attention", text=text, heads=[{"layer": 0, "head": 0}])
    misses = svc.cache.misses
    post(client, "/api/attention", text=text, heads=[{"layer": 1, "head": 2}])
    post(client, "/api/ablate", text=text, ablate=[{"layer": 0, "head": 0}])
    assert svc.cache.misses == misses  # neither request ran the baseline again


def test_ablate_contract(client: TestClient) -> None:
    out = post(
        client, "/api/ablate", text=TEXT, ablate=[{"layer": 0, "head": 1}], top_k=3, maps=[{"layer": 1, "head": 0}]
    )
    t = len(out["token_ids"])
    for side in ("baseline", "ablated"):
        pred = out[side]
        assert len(pred["token_logprobs"]) == t - 1
        assert math.isclose(pred["loss"], -sum(pred["token_logprobs"]) / (t - 1), rel_tol=1e-5)
        assert len(pred["top_k"]) == 3 and set(pred["top_k"][0]) == {"token", "id", "prob"}
    assert len(out["kl_per_position"]) == t and out["kl_last"] == out["kl_per_position"][-1]
    assert math.isclose(out["delta_loss"], out["ablated"]["loss"] - out["baseline"]["loss"], abs_tol=1e-6)
    assert out["kl_last"] > 0
    assert [(m["layer"], m["head"]) for m in out["maps"]] == [(1, 0)]
    empty = post(client, "/api/ablate", text=TEXT, ablate=[])
    assert empty["kl_last"] == 0 and empty["delta_loss"] == 0
    mean = post(client, "/api/ablate", text=TEXT, ablate=[{"layer": 0, "head": 1}], mode="mean")
    assert mean["kl_last"] != out["kl_last"]


def test_similarity(client: TestClient) -> None:
    js = post(client, "/api/similarity", text=TEXT, metric="js", order="layer")
    n = 8
    assert [(h["layer"], h["head"]) for h in js["heads"]] == [(ly, h) for ly in range(2) for h in range(4)]
    m = js["matrix"]
    assert len(m) == n and all(len(r) == n for r in m)
    for i in range(n):
        assert m[i][i] == 0
        for j in range(n):
            assert m[i][j] == m[j][i] and 0 <= m[i][j] <= math.log(2) + 1e-9
    cos = post(client, "/api/similarity", text=TEXT, metric="cosine", order="cluster")
    assert all(math.isclose(cos["matrix"][i][i], 1.0, abs_tol=1e-6) for i in range(n))
    assert sorted((h["layer"], h["head"]) for h in cos["heads"]) == sorted((ly, h) for ly in range(2) for h in range(4))
    assert [c["layer"] for c in cos["collapse"]] == [0, 1]
    group = post(client, "/api/similarity", text=TEXT, layer=1, kv_head=1)
    assert [(h["layer"], h["head"]) for h in group["heads"]] == [(1, 2), (1, 3)]


def test_importance(client: TestClient) -> None:
    grad = post(client, "/api/importance", text=TEXT, method="gradient")
    assert len(grad["scores"]) == 2 and len(grad["scores"][0]) == 4
    assert all(v >= 0 for row in grad["scores"] for v in row)
    assert grad["normalized"] is not None
    abl = post(client, "/api/importance", text=TEXT, method="ablation")
    one = post(client, "/api/ablate", text=TEXT, ablate=[{"layer": 1, "head": 2}])
    assert math.isclose(abl["scores"][1][2], one["delta_loss"], abs_tol=1e-5)


def test_heads_and_overview(client: TestClient) -> None:
    out = post(client, "/api/heads", text=TEXT)
    assert len(out["heads"]) == 8
    first = out["heads"][0]
    keys = {"layer", "head", "kv_group", "entropy", "confidence", "previous_token", "self", "first_token"}
    assert keys | {"duplicate_token", "induction", "text_induction", "entropy_ratio"} == set(first)
    assert [h["kv_group"] for h in out["heads"][:4]] == [0, 0, 1, 1]
    assert first["duplicate_token"] is not None  # the text repeats
    ov = post(client, "/api/overview", text=TEXT, thumb=8)
    assert ov["thumb_size"] == 8 and (ov["n_layers"], ov["n_heads"]) == (2, 4)
    import base64

    assert len(base64.b64decode(ov["thumbnails"])) == 2 * 4 * 8 * 8
    assert ov["stats"]["previous_token"][0][0] == pytest.approx(first["previous_token"])


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/api/attention", {"text": "", "heads": [{"layer": 0, "head": 0}]}, 422),
        ("/api/attention", {"text": "hi"}, 422),
        ("/api/attention", {"text": "hi", "heads": [{"layer": 2, "head": 0}]}, 422),
        ("/api/attention", {"text": "hi", "heads": [{"layer": 0, "head": 4}]}, 422),
        ("/api/attention", {"text": "hi", "heads": [{"layer": -1, "head": 0}]}, 422),
        ("/api/attention", {"text": "hi", "layers": [7]}, 422),
        ("/api/attention", {"text": "hi", "heads": [], "model": "../../etc"}, 422),
        ("/api/ablate", {"text": "hi", "ablate": [{"layer": 0, "head": 9}]}, 422),
        ("/api/ablate", {"text": "hi", "mode": "half"}, 422),
        ("/api/ablate", {"text": "hi", "top_k": 0}, 422),
        ("/api/similarity", {"text": "hi", "metric": "euclid"}, 422),
        ("/api/similarity", {"text": "hi", "kv_head": 0}, 422),
        ("/api/similarity", {"text": "hi", "layer": 0, "kv_head": 2}, 422),
        ("/api/importance", {"text": "hi", "method": "magic"}, 422),
        ("/api/importance", {"text": "hi"}, 422),  # one token: no next-token loss
        ("/api/heads", {"text": 5}, 422),
        ("/api/tokenize", {}, 422),
    ],
)
def test_bad_input_gets_422_in_the_error_shape(client: TestClient, path: str, body: dict, status: int) -> None:  # type: ignore[type-arg]
    assert_error(client.post(path, json=body), status)


def test_too_many_tokens_names_both_numbers(tiny_loaded: dict[str, Loaded]) -> None:
    for c in make_client(tiny_loaded["llama"], max_tokens=5):
        body = assert_error(c.post("/api/attention", json={"text": "one two three four five six", "layers": [0]}), 422)
        assert "6 tokens" in body["detail"] and "at most 5" in body["detail"]
        assert c.post("/api/tokenize", json={"text": "one two"}).status_code == 200


def test_malformed_json_non_finite_and_oversized_bodies(client: TestClient) -> None:
    assert_error(client.post("/api/ablate", content=b"{not json", headers={"content-type": "application/json"}), 422)
    nan = b'{"text": "hi", "ablate": [], "top_k": NaN}'
    assert_error(client.post("/api/ablate", content=nan, headers={"content-type": "application/json"}), 422)
    big = b'{"text": "' + b"a" * 1_100_000 + b'"}'
    assert_error(client.post("/api/tokenize", content=big, headers={"content-type": "application/json"}), 413)
    assert_error(client.get("/api/nothing"), 404)


def test_map_budget_limits_response_size(tiny_loaded: dict[str, Loaded]) -> None:
    for c in make_client(tiny_loaded["llama"], max_map_cells=100):
        body = assert_error(
            c.post("/api/attention", json={"text": "one two three four five six", "layers": [0, 1]}), 422
        )
        assert "fewer heads" in body["detail"]


def test_openapi_documents_every_route(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in (
        "/api/health",
        "/api/ready",
        "/api/model",
        "/api/tokenize",
        "/api/attention",
        "/api/ablate",
        "/api/similarity",
        "/api/importance",
        "/api/heads",
        "/api/overview",
    ):
        assert path in spec["paths"]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_everything_from_this_server_under_a_csp_without_inline_scripts(
    client: TestClient, page: str
) -> None:
    import re

    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", r.text, re.S)
    assert scripts and all('src="/' in attrs and not body.strip() for attrs, body in scripts)  # no inline code
    assert "http://" not in r.text and "https://" not in r.text  # no CDN
    for src in re.findall(r'(?:src|href)="(/[^"]+)"', r.text):
        asset = client.get(src)
        assert asset.status_code == 200 and len(asset.content) > 100, src
    assert client.get("/vendor/docs/../../../etc/passwd").status_code == 404


def test_app_loads_a_model_directory_by_path(gpt2_client: TestClient) -> None:
    m = gpt2_client.get("/api/model").json()
    assert m["architecture"] == "gpt2" and m["n_kv_heads"] == 4 and m["kv_groups"] == [[0], [1], [2], [3]]
    out = post(gpt2_client, "/api/ablate", text=TEXT, ablate=[{"layer": 0, "head": h} for h in range(4)])
    assert out["kl_last"] > 0


def test_max_tokens_is_capped_by_the_models_positions(tiny_loaded: dict[str, Loaded]) -> None:
    for c in make_client(tiny_loaded["gpt2"], max_tokens=5000):  # GPT-2 has 1024 positions
        assert c.get("/api/model").json()["max_tokens"] == 1024
        body = assert_error(c.post("/api/tokenize", json={"text": "hi " * 1100}), 422)
        assert "at most 1024" in body["detail"]


# -- one rule per kind of mistake (issue 16, defect 11), stated in the OpenAPI description -----------------

WHITESPACE_BODIES = [
    ("/api/tokenize", {}),
    ("/api/attention", {"layers": [0]}),
    ("/api/ablate", {}),
    ("/api/similarity", {}),
    ("/api/importance", {}),
    ("/api/heads", {}),
    ("/api/overview", {}),
]


@pytest.mark.parametrize(("path", "extra"), WHITESPACE_BODIES)
def test_whitespace_only_text_is_refused_everywhere(client: TestClient, path: str, extra: dict) -> None:  # type: ignore[type-arg]
    for text in (" ", "\n\n\t ", ""):
        body = assert_error(client.post(path, json={"text": text, **extra}), 422, "invalid_request")
        wrong = "must not be empty" if not text else "must hold a character other than whitespace"
        assert body["detail"] == f"text: {wrong}"
    post(client, path, text=" a b", **extra)  # leading whitespace is fine when there is something else


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({}, "text: is required"),
        ({"text": "a b", "mode": "half"}, "mode: must be 'zero' or 'mean'"),
        ({"text": "a b", "top_k": "many"}, "top_k: must be a whole number"),
        ({"text": 5}, "text: must be a string"),
    ],
)
def test_a_field_error_is_one_sentence_like_every_other_error(client: TestClient, body: dict, detail: str) -> None:  # type: ignore[type-arg]
    """Every error's detail is text in words (issue 26, item 5): a field error names the field, not a list."""
    err = assert_error(client.post("/api/ablate", json=body), 422, "invalid_request")
    assert err["detail"] == detail


@pytest.mark.parametrize("layer", [-1, 2, 10_001, 10**30])
def test_a_layer_out_of_range_is_one_error_everywhere(client: TestClient, layer: int) -> None:
    """Negative, just past the model, past any fixed cap: the same code and a detail naming the model's bound."""
    cases = [
        ("/api/attention", {"heads": [{"layer": layer, "head": 0}]}, "heads"),
        ("/api/attention", {"layers": [layer]}, "layers"),
        ("/api/ablate", {"ablate": [{"layer": layer, "head": 0}]}, "ablate"),
        ("/api/ablate", {"maps": [{"layer": layer, "head": 0}]}, "maps"),
        ("/api/similarity", {"layer": layer}, "layer"),
    ]
    for path, extra, field in cases:
        body = assert_error(client.post(path, json={"text": TEXT, **extra}), 422, "invalid_input")
        assert body["detail"] == f"{field}: layer {layer} out of range; the model has layers 0..1", path


@pytest.mark.parametrize("head", [-1, 4, 10**30])
def test_a_head_or_kv_head_out_of_range_is_the_same_error(client: TestClient, head: int) -> None:
    for path, extra, field in [
        ("/api/attention", {"heads": [{"layer": 0, "head": head}]}, "heads"),
        ("/api/ablate", {"ablate": [{"layer": 1, "head": head}]}, "ablate"),
    ]:
        body = assert_error(client.post(path, json={"text": TEXT, **extra}), 422, "invalid_input")
        assert body["detail"] == f"{field}: head {head} out of range; the model has heads 0..3"
    body = assert_error(client.post("/api/similarity", json={"text": TEXT, "layer": 0, "kv_head": head}), 422)
    assert body == {
        "error": "invalid_input",
        "detail": f"kv_head: KV head {head} out of range; the model has KV heads 0..1",
    }


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_json_body_without_the_json_content_type_says_so(client: TestClient, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    for path, body in [("/api/tokenize", b'{"text": "hi"}'), ("/api/ablate", b'{"text": "hi", "ablate": []}')]:
        r = client.post(path, content=body, headers=headers)
        err = assert_error(r, 422, "invalid_request")
        assert (
            "Content-Type: application/json" in err["detail"] and (content_type or "no Content-Type") in err["detail"]
        )
    assert (
        client.post(
            "/api/tokenize", content=b'{"text": "hi"}', headers={"content-type": "application/json"}
        ).status_code
        == 200
    )


def test_attention_needs_a_head_whether_the_lists_are_absent_or_empty(client: TestClient) -> None:
    for extra in ({}, {"heads": []}, {"layers": []}, {"heads": [], "layers": []}):
        body = assert_error(client.post("/api/attention", json={"text": TEXT, **extra}), 422, "invalid_input")
        assert "`heads`" in body["detail"] and "`layers`" in body["detail"]
    assert len(post(client, "/api/attention", text=TEXT, heads=[], layers=[1])["maps"]) == 4
    assert post(client, "/api/ablate", text=TEXT, ablate=[])["kl_last"] == 0  # no heads off: the unchanged model


def test_the_openapi_description_states_each_rule(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    rules = spec["info"]["description"]
    for phrase in (
        "Content-Type: application/json",
        "whitespace-only",
        "negative or huge alike",
        "both empty",
        "chunked",
    ):
        assert phrase in rules, phrase
    fields = spec["components"]["schemas"]
    assert "non-whitespace" in fields["TextIn"]["properties"]["text"]["description"]
    assert fields["TextIn"]["properties"]["text"]["pattern"] == r"\S"
    assert "model's bounds" in fields["HeadRef"]["properties"]["layer"]["description"]
    assert "maximum" not in fields["HeadRef"]["properties"]["layer"]  # the bound is the model's, not a fixed cap
    assert "both empty" in fields["AttentionIn"]["properties"]["heads"]["description"]


# -- one error shape from one builder; the limits hold however a request arrives -------------------------


def test_every_error_source_builds_its_body_in_errors_py(
    tiny_loaded: dict[str, Loaded], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Handlers, the middleware (401, 413) and /api/ready all go through errors.error_body."""
    from app.api import errors

    monkeypatch.setattr(errors, "error_body", lambda code, detail: {"error": code, "detail": detail, "via": "one"})
    for c in make_client(tiny_loaded["llama"], api_key="k" * 16, max_body_bytes=2048):
        key = {"x-api-key": "k" * 16}
        sources = [
            c.get("/api/model"),  # 401 from the middleware
            c.post("/api/tokenize", headers=key, content=b"x" * 4096),  # 413 from the middleware
            c.post("/api/tokenize", headers=key, json={"text": 5}),  # 422 from a handler
            c.get("/api/nothing", headers=key),  # 404
        ]
        assert [r.status_code for r in sources] == [401, 413, 422, 404]
        assert all(r.json()["via"] == "one" for r in sources), [r.text for r in sources]
        c.app.state.service.stopping = True  # type: ignore[attr-defined]
        try:
            not_ready = c.get("/api/ready")
        finally:
            c.app.state.service.stopping = False  # type: ignore[attr-defined]
        assert not_ready.status_code == 503 and not_ready.json()["via"] == "one"
        assert not_ready.headers["retry-after"] == "2"


def test_a_chunked_body_over_the_limit_is_413(client: TestClient) -> None:
    """No Content-Length: the middleware counts what arrives (3 MB in 64 KB chunks against a 1 MB limit)."""
    chunk = b"a" * 65536

    def chunked() -> Iterator[bytes]:
        yield b'{"text": "'
        for _ in range(48):
            yield chunk
        yield b'"}'

    for path in ("/api/tokenize", "/api/ablate"):
        r = client.post(path, content=chunked(), headers={"content-type": "application/json"})
        assert r.request.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.request.headers
        body = assert_error(r, 413, "body_too_large")
        assert "over" in body["detail"]
    small = client.post(
        "/api/tokenize", content=iter([b'{"text": ', b'"hi"}']), headers={"content-type": "application/json"}
    )
    assert small.status_code == 200 and small.json()["n_tokens"] == 1


def test_the_upload_limit_holds_for_chunked_uploads_too(tiny_loaded: dict[str, Loaded]) -> None:
    """POST /api/datasets has its own, larger limit (max_upload_bytes); chunked bodies are counted against it."""
    for c in make_client(tiny_loaded["llama"], max_upload_bytes=100_000, max_body_bytes=2048):
        over = iter([b"a" * 60_000, b"b" * 60_000])
        assert_error(c.post("/api/datasets", content=over, headers={"content-type": "text/plain"}), 413)
        under = c.post(
            "/api/datasets", content=iter([b"a" * 30_000, b"b" * 30_000]), headers={"content-type": "text/plain"}
        )
        assert under.status_code != 413  # over the JSON limit, under the upload limit: the router decides


def test_open_paths_are_matched_exactly(tiny_loaded: dict[str, Loaded]) -> None:
    for c in make_client(tiny_loaded["llama"], api_key="s" * 16):
        assert c.get("/api/health").status_code == 200 and c.get("/api/ready").status_code == 200
        for path in ("/api/healthz", "/api/health/", "/api/ready/../model", "/api/readyz"):
            assert_error(c.get(path), 401, "unauthorized")
        assert c.get("/api/model", headers={"authorization": "Bearer " + "s" * 16}).status_code == 200

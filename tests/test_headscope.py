"""`import headscope`: a Scope in this process (`open`) and one over HTTP (`connect`, a real server on 127.0.0.1)
give the same numbers and the same typed errors, on the tiny llama."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import headscope
from headscope.heads import parse, refs
from headscope.transport import Client, http
from tests.support.checks import FLOAT32_ATOL
from tests.support.server import free_port, serve

TEXT = "When Mary and John went to the store, John gave a drink to Mary. When Mary and John went"
# Maps travel as float16 (the API's compact encoding) either way: two float32 computations within rounding can
# round to neighbouring float16 values, one float16 ulp apart (≤ 2⁻¹¹ ≈ 4.9e-4 below 1).
F16_ULP = 2**-11
Pair = tuple[headscope.Scope, headscope.Scope]


@pytest.fixture(scope="module")
def scopes(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """(open, connect) on the same tiny llama directory: in this process, and behind `python -m app serve`."""
    model = str(tiny_dirs["llama"])
    root = tmp_path_factory.mktemp("headscope")
    with serve(model, root) as server:
        local = headscope.open(model, device="cpu", dtype="float32", data_dir=root / "data")
        try:
            yield local, headscope.connect(server.url)
        finally:
            local.close()


def test_both_scopes_describe_the_same_model(scopes: Pair) -> None:
    local, remote = scopes
    for key in ("n_layers", "n_heads", "n_kv_heads", "kv_groups", "device", "dtype", "max_tokens"):
        assert local.model[key] == remote.model[key], key
    assert local.roles == remote.roles and local.roles


def test_attention_is_the_same_in_process_and_over_http(scopes: Pair) -> None:
    local, remote = scopes
    heads = ["L1H2", (0, 1), {"layer": 1, "head": 0}]
    a, b = local.attention(TEXT, heads), remote.attention(TEXT, heads)
    assert a.tokens == b.tokens and a.heads == b.heads == [(1, 2), (0, 1), (1, 0)]
    maps = a.to_numpy()
    n = len(a.tokens)
    assert maps.shape == (3, n, n) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, b.to_numpy(), atol=F16_ULP, rtol=0)
    assert np.allclose(maps.sum(-1), 1, atol=1e-2) and not np.triu(maps, 1).any()  # rows sum to 1, causal
    np.testing.assert_array_equal(a.map("L0H1"), maps[1])
    assert tuple(a.to_torch().shape) == (3, n, n)
    every = local.attention("one two three")
    assert len(every.heads) == local.model["n_layers"] * local.model["n_heads"]


def test_ablate_heads_and_dla_are_the_same_in_process_and_over_http(scopes: Pair) -> None:
    local, remote = scopes
    x, y = local.ablate(TEXT, ["L0H1", "L1H3"]), remote.ablate(TEXT, ["L0H1", "L1H3"])
    assert x.delta_loss == pytest.approx(y.delta_loss, abs=FLOAT32_ATOL) and x.delta_loss != 0
    assert x.kl_last == pytest.approx(y.kl_last, abs=FLOAT32_ATOL)
    np.testing.assert_allclose(x.to_numpy(), y.to_numpy(), atol=FLOAT32_ATOL)
    assert [t["id"] for t in x["ablated"]["top_k"]] == [t["id"] for t in y["ablated"]["top_k"]]

    p, q = local.heads(TEXT).to_pandas(), remote.heads(TEXT).to_pandas()
    assert list(p.columns) == ["layer", "head", "kv_group", *[r["name"] for r in local.roles]]
    assert len(p) == local.model["n_layers"] * local.model["n_heads"]
    np.testing.assert_allclose(p.to_numpy(float), q.to_numpy(float), atol=FLOAT32_ATOL)

    d, e = local.dla(TEXT), remote.dla(TEXT)
    assert d.to_numpy().shape == (local.model["n_layers"], local.model["n_heads"])
    np.testing.assert_allclose(d.to_numpy(), e.to_numpy(), atol=FLOAT32_ATOL)
    assert d["target"] == e["target"] and d.logit == pytest.approx(e.logit, abs=FLOAT32_ATOL)
    parts = d.to_numpy().sum() + d.mlp.sum() + d["embed"] + d["other"]
    assert parts == pytest.approx(d.logit, abs=1e-3)  # the contract: the terms add up to the logit


def test_the_other_methods_answer_with_their_documented_shapes(scopes: Pair) -> None:
    local, _ = scopes
    L, H = local.model["n_layers"], local.model["n_heads"]
    ov = local.overview(TEXT, thumb=8)
    assert ov.to_numpy().shape == (L, H, 8, 8) and list(ov.to_pandas().columns[:2]) == ["layer", "head"]
    sim = local.similarity(TEXT, "cosine")
    assert sim.to_numpy().shape == (L * H, L * H) and np.allclose(np.diag(sim.to_numpy()), 1, atol=1e-5)
    assert list(sim.to_pandas().index[:2]) == ["L0H0", "L0H1"]
    imp = local.importance(TEXT)
    assert imp.to_numpy().shape == (L, H) and (imp.to_numpy() >= 0).all() and len(imp.top(3)) == 3
    assert list(imp.to_pandas().columns) == ["layer", "head", "gradient"]
    lens = local.logit_lens(TEXT)
    assert lens.to_numpy().shape == (L,) and len(lens.to_pandas()) == L
    gen = local.generate("Hello", heads="L0H0", max_new_tokens=3)
    assert isinstance(gen.text, str) and gen.ablated_text is not None
    clean, corrupted = "When Mary and John went, John gave it to", "When Mary and John went, Mary gave it to"
    patch = local.patch(clean, corrupted, answer=" Mary", wrong=" John")
    assert patch.to_numpy().shape == (L, H)


def test_circuit_methods_are_the_same_in_process_and_over_http(scopes: Pair, tmp_path: Path) -> None:
    local, remote = scopes
    clean, corrupted = "When Mary and John went, John gave it to", "When Mary and John went, Mary gave it to"
    pair = {"answer": " Mary", "wrong": " John"}
    a, b = (
        local.circuit(clean, corrupted, method="eap", top_n=0, **pair),
        remote.circuit(clean, corrupted, method="eap", top_n=0, **pair),
    )
    table = a.to_pandas()
    assert list(table.columns) == ["source", "target", "channel", "score"] and len(table) == a["n_edges"]
    np.testing.assert_allclose(table["score"], b.to_pandas()["score"], atol=FLOAT32_ATOL)
    assert (np.abs(table["score"].to_numpy())[:-1] >= np.abs(table["score"].to_numpy())[1:]).all()  # |score| desc
    for node, score in a.node_scores().items():  # a sender's score is the sum of its outgoing edges
        assert score == pytest.approx(table.loc[table["source"] == node, "score"].sum(), abs=1e-4), node
    every = local.path_patch(clean, corrupted, "all", **pair)
    assert every.metric == pytest.approx(every["metric_clean"], abs=1e-4) and every.recovered == pytest.approx(
        1, abs=1e-4
    )
    source, target, channel, _ = a.edges()[0]
    one = remote.path_patch(clean, corrupted, [(source, target, channel)], **pair)
    assert one.metric == pytest.approx(local.path_patch(clean, corrupted, [(source, target, channel)], **pair).metric)

    pairs = [{"clean": clean, "corrupted": corrupted, **pair}] * 2
    over = local.circuit_pairs(pairs=pairs, method="eap", top_n=5)
    assert over.over_pairs and list(over.to_pandas().columns)[-3:] == ["ci_low", "ci_high", "n"]
    assert over.edges()[0][3] == pytest.approx(a.edges()[0][3], abs=1e-5)  # the mean of two equal pairs

    comp, same = local.composition("k"), remote.composition("k")
    m = comp.to_numpy()
    assert m.shape == (len(comp.senders), len(comp.receivers)) and comp.senders[0] == "L0H0"
    later = np.array(
        [[int(r[1 : r.index("H")]) > int(s[1 : s.index("H")]) for r in comp.receivers] for s in comp.senders]
    )
    assert np.isnan(m[~later]).all() and np.isfinite(m[later]).all()  # only later receivers have a score
    np.testing.assert_allclose(m[later], same.to_numpy()[later], atol=1e-6)
    assert comp.top(1)[0][2] == pytest.approx(np.nanmax(m))
    svg = comp.save_svg(tmp_path / "k.svg").read_text()
    assert svg.startswith("<svg") and "K-composition" in svg and comp.receivers[-1] in svg
    hc = local.head_circuits("L1H0")
    assert hc.qk_singular_values.shape == hc.ov_singular_values.shape and -1 <= hc.copying_score <= 1
    assert (np.diff(hc.ov_singular_values) <= 0).all() and hc.token_map()
    qk = remote.qk_attribution(TEXT, "L1H2", query_pos=-1, key_pos=3)
    assert qk.total == pytest.approx(qk.score, abs=1e-4)
    assert sum(qk.query_sums().values()) == pytest.approx(qk.score, abs=1e-4)
    assert list(qk.to_pandas().columns) == ["query_node", "key_node", "value"]


def test_errors_are_typed_with_the_servers_code_and_message(scopes: Pair) -> None:
    remote = scopes[1]
    caught = []
    for scope in scopes:
        with pytest.raises(headscope.HeadScopeError) as err:
            scope.attention(TEXT, heads=[(99, 0)])
        caught.append(err.value)
    assert {(e.status, e.code, e.message) for e in caught} == {
        (422, "invalid_input", "heads: layer 99 out of range; the model has layers 0..1")
    }
    with pytest.raises(headscope.HeadScopeError) as err:
        remote.heads("   ")
    assert err.value.status == 422 and err.value.code == "invalid_request" and "text" in err.value.message
    with pytest.raises(headscope.HeadScopeError) as err:
        remote.jobs.get("job_000000000000")
    assert err.value.status == 404 and err.value.code == "not_found"
    with pytest.raises(headscope.HeadScopeError) as err:
        headscope.connect(f"http://127.0.0.1:{free_port()}")
    assert err.value.code == "unreachable" and err.value.status == 0


def test_corpus_jobs_run_from_python(scopes: Pair) -> None:
    _, remote = scopes
    ds = remote.datasets.create("two texts", ["one two three one two three", "a b c a b c"])
    job = remote.jobs.start(ds["id"], analyses=["roles"], max_tokens=16)
    assert job.wait(progress=False, poll_s=0.1, timeout_s=60)["state"] == "done"
    table = job.heads().to_pandas()
    assert {"entropy_mean", "entropy_ci_low", "entropy_n"} <= set(table.columns)
    assert table["entropy_n"].max() == 2


def test_heads_are_tuples_labels_or_dicts() -> None:
    assert parse("L3H5") == parse((3, 5)) == parse({"layer": 3, "head": 5}) == (3, 5)
    assert refs("l2h0") == refs((2, 0)) == [{"layer": 2, "head": 0}]
    assert refs([(1, 2), "L0H3"]) == [{"layer": 1, "head": 2}, {"layer": 0, "head": 3}]
    with pytest.raises(ValueError, match="L3H5"):
        parse("head 3")


def test_connect_with_an_api_key(scopes: Pair, tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    """A server started with HEADSCOPE_API_KEY: no key or a wrong one raises its 401 at connect(), with its code
    and message, and so does a request sent with a wrong key; the right key gives what open() gives."""
    key = "s3cret-key-for-the-test"
    detail = "send the API key as 'Authorization: Bearer KEY' or 'X-API-Key'"
    with serve(str(tiny_dirs["llama"]), tmp_path, api_key=key, data_dir=str(tmp_path / "data")) as server:
        for given in (None, "wrong-key"):
            with pytest.raises(headscope.HeadScopeError) as err:
                headscope.connect(server.url, api_key=given)
            assert (err.value.status, err.value.code, err.value.message) == (401, "unauthorized", detail)
        keyed = headscope.connect(server.url, api_key=key)
        got = keyed.attention(TEXT, "L1H2").to_numpy()
        np.testing.assert_allclose(got, scopes[0].attention(TEXT, "L1H2").to_numpy(), atol=F16_ULP, rtol=0)
        wrong = headscope.Scope(Client(http(server.url), api_key="wrong-key"))
        with pytest.raises(headscope.HeadScopeError) as err:
            wrong.heads(TEXT)
        assert (err.value.status, err.value.code, err.value.message) == (401, "unauthorized", detail)

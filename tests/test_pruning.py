"""The pruning curve against a hand-written output-projection hook; attention parameter counts and the head-count
trade-off against the state dict and the closed forms; the /api/prune_curve and /api/head_tradeoff contracts."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from app.inspect.engine import runs
from app.inspect.engine.steps import drain
from app.inspect.intervene.importance import gradient_importance
from app.inspect.intervene.pruning import (
    dataset_curve,
    importance_order,
    prune_counts,
    random_order,
    text_curve,
)
from app.inspect.model.loaded import Loaded
from app.inspect.observe.tradeoff import Biases, attention_params, biases, divisors, head_tradeoff, projection_params
from tests.support.checks import hook_count
from tests.support.models import ARCHS, tiny_loaded

TEXT = "In the beginning the heads attended to nothing, and then to everything at once."
OTHER = "A second text, so a dataset curve averages over two different texts."


def reference_loss(loaded: Loaded, ids: list[int], heads: set[tuple[int, int]]) -> float:
    """Mean next-token loss of the full model with `heads` zeroed by a plain pre-hook on the output projection."""
    layout = loaded.adapter.layout
    handles = []
    for layer in range(layout.n_layers):
        off = [h for lay, h in heads if lay == layer]

        def zero(module: torch.nn.Module, args: tuple[torch.Tensor, ...], off: list[int] = off) -> tuple[torch.Tensor]:
            x = args[0].clone()  # (1, T, n_heads * head_dim), heads side by side
            for h in off:
                x[..., h * layout.head_dim : (h + 1) * layout.head_dim] = 0
            return (x,)

        handles.append(loaded.adapter.out_proj(layer).register_forward_pre_hook(zero))
    try:
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = loaded.model(x).logits.double()
    finally:
        for h in handles:
            h.remove()
    return float(torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:]))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("order", ["importance", "random"])
def test_curve_equals_output_projection_hook(arch: str, order: str) -> None:
    loaded = tiny_loaded(arch, seed=5)
    run = runs.analyse(loaded, TEXT)
    curve = drain(text_curve(loaded, run, order, steps=5, seeds=[3, 4]))  # type: ignore[arg-type]
    n = loaded.adapter.layout.n_layers * loaded.adapter.layout.n_heads
    assert curve.n_pruned == prune_counts(n, 5) == [0, 2, 4, 6, 8]
    assert len(curve.orders) == (1 if order == "importance" else 2)
    for k, head_order in enumerate(curve.orders):
        assert sorted(head_order) == [(layer, h) for layer in range(2) for h in range(4)]
        for i, count in enumerate(curve.n_pruned):
            ref = reference_loss(loaded, run.token_ids, set(head_order[:count]))
            assert float(curve.losses[k, i]) == pytest.approx(ref, abs=1e-5)
    assert hook_count(loaded.model) == 0


def test_first_point_is_the_models_own_loss_and_last_switches_every_head_off() -> None:
    loaded = tiny_loaded("gpt2", seed=1)
    run = runs.analyse(loaded, TEXT)
    curve = drain(text_curve(loaded, run, "random", steps=3, seeds=[0, 1, 2]))
    x = torch.tensor([run.token_ids])
    with torch.no_grad():
        own = float(loaded.model(x, labels=x).loss)
    assert curve.losses[:, 0].tolist() == pytest.approx([own] * 3, abs=1e-5)
    every = {(layer, h) for layer in range(2) for h in range(4)}
    assert curve.losses[:, -1].tolist() == pytest.approx([reference_loss(loaded, run.token_ids, every)] * 3, abs=1e-5)
    assert float(curve.losses[0, -1]) != pytest.approx(own, abs=1e-3)  # the ablation does something


def test_importance_order_is_the_gradient_scores_order() -> None:
    loaded = tiny_loaded("llama", seed=2)
    run = runs.analyse(loaded, TEXT)
    curve = drain(text_curve(loaded, run, "importance", steps=3))
    scores = gradient_importance(loaded, run.token_ids)
    order = curve.orders[0]
    assert order == importance_order(scores)
    ranked = [float(scores[layer, h]) for layer, h in order]
    assert ranked == sorted(ranked)
    assert torch.equal(curve.scores, scores)  # type: ignore[arg-type]
    ties = importance_order(torch.zeros(2, 3))
    assert ties == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


def test_random_orders_are_reproducible_by_seed() -> None:
    assert random_order(30, 9, 7) == random_order(30, 9, 7)
    assert random_order(30, 9, 7) != random_order(30, 9, 8)
    loaded = tiny_loaded("llama", seed=2)
    one = drain(text_curve(loaded, runs.analyse(loaded, TEXT), "random", steps=4, seeds=[5, 6]))
    two = drain(text_curve(loaded, runs.analyse(loaded, TEXT), "random", steps=4, seeds=[6]))
    assert two.orders[0] == one.orders[1]
    assert two.losses[0].tolist() == pytest.approx(one.losses[1].tolist(), abs=1e-6)


def test_thresholds_and_bisection() -> None:
    loaded = tiny_loaded("llama", seed=6)
    run = runs.analyse(loaded, TEXT)
    rise = 0.002  # a random tiny model's loss moves by millinats: a small rise crosses between the points
    coarse = drain(text_curve(loaded, run, "random", steps=3, seeds=range(4), rise=rise))
    fine = drain(text_curve(loaded, run, "random", steps=3, seeds=range(4), rise=rise, refine=True))
    assert not all(t.exact for t in coarse.thresholds)  # something to bisect
    base = float(coarse.losses[0, 0])
    for k, (c, f) in enumerate(zip(coarse.thresholds, fine.thresholds, strict=True)):
        row = coarse.losses[k].tolist()
        over = next((i for i, loss in enumerate(row) if loss > base + rise), None)
        assert c.n_pruned == (coarse.n_pruned[-1] if over is None else coarse.n_pruned[over - 1])
        assert f.exact
        order = fine.orders[k]
        assert reference_loss(loaded, run.token_ids, set(order[: f.n_pruned])) <= base + rise + 1e-6
        assert f.loss == pytest.approx(reference_loss(loaded, run.token_ids, set(order[: f.n_pruned])), abs=1e-5)
        if f.n_pruned < 8:
            assert reference_loss(loaded, run.token_ids, set(order[: f.n_pruned + 1])) > base + rise - 1e-6
        assert c.n_pruned <= f.n_pruned  # bisection only searches after the last point under


def test_dataset_curve_is_the_mean_over_texts() -> None:
    loaded = tiny_loaded("gpt_neox", seed=3)
    texts = [runs.encode(loaded.tokenizer, t) for t in (TEXT, OTHER)]
    curve = drain(dataset_curve(loaded, texts, "importance", steps=3))
    scores = (gradient_importance(loaded, texts[0]) + gradient_importance(loaded, texts[1])) / 2
    assert curve.orders[0] == importance_order(scores)
    assert curve.n_texts == 2
    for i, count in enumerate(curve.n_pruned):
        heads = set(curve.orders[0][:count])
        mean = sum(reference_loss(loaded, ids, heads) for ids in texts) / 2
        assert float(curve.losses[0, i]) == pytest.approx(mean, abs=1e-5)


# -- attention parameters and the trade-off table ---------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_attention_params_equal_the_state_dict(arch: str) -> None:
    loaded = tiny_loaded(arch)
    state = loaded.model.state_dict()
    names = {
        "llama": ("model.layers.{}.self_attn.", {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o"}),
        "gpt2": ("transformer.h.{}.attn.", {"c_attn": "qkv", "c_proj": "o"}),
        "gpt_neox": ("gpt_neox.layers.{}.attention.", {"query_key_value": "qkv", "dense": "o"}),
    }
    prefix, roles = names[arch]
    counted = attention_params(loaded.adapter)
    layout = loaded.adapter.layout
    for layer, params in enumerate(counted):
        sums = dict.fromkeys(("q", "k", "v", "o", "qkv"), 0)
        for key, tensor in state.items():
            for module, role in roles.items():
                if key.startswith(prefix.format(layer) + module + "."):
                    sums[role] += tensor.numel()
        if arch != "llama":  # fused, MHA: a third each
            sums["q"] = sums["k"] = sums["v"] = sums["qkv"] // 3
        assert (params.q, params.k, params.v, params.o) == (sums["q"], sums["k"], sums["v"], sums["o"])
        bias = biases(loaded.adapter)
        assert params == projection_params(layout.d_model, layout.n_heads, layout.n_kv_heads, layout.head_dim, bias)
    if arch == "llama":
        assert counted[0].k == counted[0].q // 2  # GQA: 2 KV heads for 4 query heads
    if arch == "gpt2":
        assert counted[0].o == 32 * 32 + 32  # the bias counts


def test_tradeoff_table_matches_closed_forms() -> None:
    layout = tiny_loaded("llama").adapter.layout  # d_model 32, 2 layers
    none = Biases(False, False, False, False)
    rows = head_tradeoff(layout, none, width=4)
    assert [r.n_heads for r in rows] == [h for h in divisors(32) if 32 // h >= 8 for _ in divisors(h)]
    for r in rows:
        assert r.head_dim * r.n_heads == 32
        assert r.params.q == r.params.o == 32 * 32  # width fixed: independent of the number of heads
        assert r.params.k == r.params.v == 32 * r.n_kv_heads * r.head_dim
        assert r.kv_cache_bytes_per_token == 2 * 2 * r.n_kv_heads * r.head_dim * 4
        assert r.kind == ("MHA" if r.n_kv_heads == r.n_heads else "MQA" if r.n_kv_heads == 1 else "GQA")
    mha = {r.n_heads: r for r in rows if r.kind == "MHA"}
    assert {r.params.total for r in mha.values()} == {4 * 32 * 32}
    assert {r.kv_cache_bytes_per_token for r in mha.values()} == {2 * 2 * 32 * 4}
    assert [(r.n_kv_heads, r.kind) for r in rows if r.n_heads == 4] == [(4, "MHA"), (2, "GQA"), (1, "MQA")]
    with_bias = projection_params(32, 4, 2, 8, Biases(True, True, True, True))
    assert with_bias.total == 4 * 32 * 32 - 2 * 32 * 16 + (32 + 16 + 16 + 32)


# -- the API ---------------------------------------------------------------------------------------------------


def test_prune_curve_api(client: TestClient, tiny_loaded: dict[str, Loaded]) -> None:
    r = client.post("/api/prune_curve", json={"text": TEXT, "order": "importance", "steps": 3, "refine": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["order"] == "importance" and body["n_heads"] == 8
    assert [p["n_pruned"] for p in body["points"]] == [0, 4, 8]
    assert body["points"][0]["loss_low"] is None and len(body["pruned_order"]) == 1
    loaded = tiny_loaded["llama"]
    ids = runs.encode(loaded.tokenizer, TEXT)
    imp = client.post("/api/importance", json={"text": TEXT, "method": "gradient"}).json()["scores"]
    order = [(h["layer"], h["head"]) for h in body["pruned_order"][0]]
    assert [imp[layer][h] for layer, h in order] == sorted(imp[layer][h] for layer, h in order)
    for p in body["points"]:
        assert p["loss"] == pytest.approx(reference_loss(loaded, ids, set(order[: p["n_pruned"]])), abs=1e-5)
    ablate = client.post("/api/ablate", json={"text": TEXT}).json()
    assert body["points"][0]["loss"] == pytest.approx(ablate["baseline"]["loss"], abs=1e-5)
    (t,) = body["thresholds"]
    assert t["exact"] and body["threshold_n_pruned"] == t["n_pruned"]

    r = client.post("/api/prune_curve", json={"text": TEXT, "order": "random", "steps": 3, "seeds": 3, "seed": 10})
    body = r.json()
    assert body["seeds"] == [10, 11, 12] and body["band"]
    for p in body["points"]:
        assert p["loss_low"] <= p["loss"] <= p["loss_high"]
        assert p["loss"] == pytest.approx(sum(p["losses"]) / 3)
    assert body["threshold_n_pruned"] == pytest.approx(sum(t["n_pruned"] for t in body["thresholds"]) / 3)


def test_prune_curve_on_a_dataset(client: TestClient) -> None:
    made = client.post("/api/datasets", json={"name": "two", "texts": [TEXT, OTHER, "x"]}).json()
    body = {"dataset": made["id"], "order": "random", "steps": 3, "seeds": 2, "max_tokens": 8}
    r = client.post("/api/prune_curve", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["n_texts"] == 2 and out["n_tokens"] == 16 and out["dataset"] == made["id"]  # "x": one token, out
    assert client.post("/api/prune_curve", json={**body, "dataset": "ds_nope"}).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"order": "importance"},  # neither text nor dataset
        {"text": TEXT, "dataset": "builtin:ioi"},
        {"text": "Hi", "order": "random"},  # one token
        {"text": TEXT, "order": "alphabetical"},
        {"text": TEXT, "steps": 1},
        {"text": TEXT, "seeds": 0},
        {"dataset": "builtin:ioi", "refine": True},
        {"dataset": "builtin:ioi", "max_texts": 65},
    ],
)
def test_prune_curve_rejects_bad_input(client: TestClient, body: dict[str, object]) -> None:
    r = client.post("/api/prune_curve", json=body)
    assert r.status_code == 422, r.text
    assert set(r.json()) == {"error", "detail"}


def test_model_card_and_tradeoff_api(gpt2_client: TestClient, tiny_loaded: dict[str, Loaded]) -> None:
    card = gpt2_client.get("/api/model").json()
    state = tiny_loaded["gpt2"].model.state_dict()
    for layer, p in enumerate(card["attention_params"]):
        qkv = sum(t.numel() for k, t in state.items() if k.startswith(f"transformer.h.{layer}.attn.c_attn."))
        o = sum(t.numel() for k, t in state.items() if k.startswith(f"transformer.h.{layer}.attn.c_proj."))
        assert p == {"q": qkv // 3, "k": qkv // 3, "v": qkv // 3, "o": o}
    t = gpt2_client.get("/api/head_tradeoff").json()
    assert t["biases"] == ["q", "k", "v", "o"] and t["real"]["closed_form"]
    assert t["real"]["params"] == card["attention_params"][0]
    assert t["real"]["kv_cache_bytes_per_token"] == card["kv_cache_bytes_per_token"]
    (real,) = [c for c in t["configs"] if c["real"]]
    assert (real["n_heads"], real["n_kv_heads"], real["kind"]) == (4, 4, "MHA")
    assert real["params"] == t["real"]["params"]

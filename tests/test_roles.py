"""Head-role scores: a hand-planted previous-token head is found; thumbnails are block means."""

from __future__ import annotations

import math

import pytest
import torch

from app.inspect.engine import runs
from app.inspect.observe import metrics, probe, roles
from tests.support.models import as_loaded, tiny_loaded, tiny_model

T = 8


def planted_previous_token_model() -> torch.nn.Module:
    """A GPT-2 whose layer-0 head 0 attends to the previous token, built by hand.

    Token embeddings are zero and position i's embedding is +s at dim i and −s at dim 16+i, so
    after ln_1 the residual is ±4 one-hots of the position. Head 0's query maps position i to
    c·e_{i−1} and its key maps position j to e_j, so q_i·k_j is large only for j = i − 1. All
    other query/key weights are zero: those heads attend uniformly.
    """
    model = tiny_model("gpt2", seed=0)
    block = model.transformer.h[0]
    d = model.config.n_embd
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
        model.transformer.wpe.weight.zero_()
        for i in range(T):
            model.transformer.wpe.weight[i, i] = 1.0
            model.transformer.wpe.weight[i, 16 + i] = -1.0
        block.ln_1.weight.fill_(1.0)
        block.ln_1.bias.zero_()
        w, b = block.attn.c_attn.weight, block.attn.c_attn.bias  # (d, 3d): columns q | k | v
        w[:, : 2 * d] = 0
        b[: 2 * d] = 0
        for i in range(1, T):
            w[i, i - 1] = 10.0  # query of head 0 (columns 0..7)
        for j in range(T):
            w[j, d + j] = 1.0  # key of head 0 (columns d..d+7)
    return model


def test_planted_previous_token_head_is_found() -> None:
    loaded = as_loaded(planted_previous_token_model())
    run = runs.analyse(loaded, "", token_ids=list(range(100, 100 + T)))
    stats = roles.head_stats(run, loaded.adapter.layout)
    prev = stats["previous_token"][0]
    assert float(prev[0]) > 0.99
    assert float(prev[1:].max()) < 0.4
    # the other layer-0 heads are uniform: entropy ratio 1, confidence = mean 1/(q+1)
    assert torch.allclose(stats["entropy_ratio"][0, 1:], torch.ones(3), atol=1e-4)
    expected_conf = sum(1 / (q + 1) for q in range(T)) / T
    assert torch.allclose(stats["confidence"][0, 1:], torch.full((3,), expected_conf), atol=1e-4)


def test_stats_are_chunk_independent_and_thumbnails_are_block_means(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    loaded = tiny_loaded("llama")
    layout = loaded.adapter.layout
    text = "one two three four five six seven eight nine ten one two three four five six seven eight"
    whole = roles.head_stats(runs.analyse(loaded, text), layout, thumb=5)
    assert roles.rows_per_chunk(layout.n_heads, 18) >= 18  # one chunk holds this whole text...
    sizes: list[int] = []

    def three_rows(n_heads: int, t: int) -> int:
        sizes.append(t)
        return 3  # ...so force chunks of 3 rows (rows_per_chunk itself never goes below 16)

    monkeypatch.setattr(roles, "rows_per_chunk", three_rows)
    chunked = roles.head_stats(runs.analyse(loaded, text), layout, thumb=5)
    assert sizes and sizes[0] > 3 * 4  # the forced size was used, on a text spanning several chunks
    for name in ("entropy", "entropy_ratio", "confidence", "previous_token", "first_token", "duplicate_token"):
        torch.testing.assert_close(whole[name], chunked[name])
    assert whole["duplicate_token"] is not None and float(whole["duplicate_token"].max()) > 0
    run = runs.analyse(loaded, text)
    t = run.n_tokens
    edges = roles.bin_edges(t, 5)
    maps = run.maps(1, [2], layout.group_size)[0]
    for i in range(5):
        for j in range(5):
            block = maps[edges[i] : edges[i + 1], edges[j] : edges[j + 1]].mean()
            assert abs(float(chunked.thumbnails[1, 2, i, j]) - float(block)) < 1e-6  # type: ignore[index]


def test_induction_probe_is_seeded_and_repeats() -> None:
    a, b = probe.probe_tokens(1000), probe.probe_tokens(1000)
    assert torch.equal(a, b)
    assert torch.equal(a[:, : probe.PROBE_LENGTH], a[:, probe.PROBE_LENGTH :])
    scores = probe.induction_scores(tiny_loaded("gpt_neox"))
    assert scores.shape == (2, 4)
    assert ((scores >= 0) & (scores <= 1)).all()


@pytest.mark.parametrize("rows", [None, 3])  # None: one chunk; 3: chunks of 3 rows, cells far from each chunk's start
def test_fast_statistics_equal_their_definitions_on_the_maps(monkeypatch, rows) -> None:  # type: ignore[no-untyped-def]
    if rows is not None:
        monkeypatch.setattr(roles, "rows_per_chunk", lambda n_heads, t: rows)
    loaded = tiny_loaded("gpt_neox", seed=2)
    layout = loaded.adapter.layout
    run = runs.analyse(loaded, "Seven swans swim; seven swans sing; and the seventh swan sleeps.")
    stats = roles.head_stats(run, layout, thumb=4)
    t, ids = run.n_tokens, run.token_ids
    earlier = [[j for j in range(q) if ids[j] == ids[q]] for q in range(t)]  # earlier copies of q's token
    dup_rows = [q for q in range(t) if earlier[q]]
    assert len(dup_rows) >= 2 and stats["duplicate_token"] is not None and stats["text_induction"] is not None
    for layer in range(layout.n_layers):
        maps = run.maps(layer, list(range(layout.n_heads)), layout.group_size)  # reference path, (H, T, T)
        entropy = -(maps * torch.log(maps + metrics.EPS)).sum(-1)  # (H, T): each row's, in nats
        torch.testing.assert_close(stats["entropy"][layer], entropy.mean(-1), atol=1e-5, rtol=1e-5)
        ratio = torch.stack([entropy[:, q] / math.log(q + 1) for q in range(1, t)], -1).mean(-1)
        torch.testing.assert_close(stats["entropy_ratio"][layer], ratio, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(stats["confidence"][layer], maps.amax(-1).mean(-1), atol=1e-6, rtol=1e-6)
        prev = torch.stack([maps[:, q, q - 1] for q in range(1, t)], -1).mean(-1)
        torch.testing.assert_close(stats["previous_token"][layer], prev, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(stats["first_token"][layer], maps[:, :, 0].mean(-1), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(stats["self"][layer], maps.diagonal(dim1=1, dim2=2).mean(-1))
        dup = torch.stack([maps[:, q, earlier[q]].sum(-1) for q in dup_rows], -1).mean(-1)
        torch.testing.assert_close(stats["duplicate_token"][layer], dup, atol=1e-6, rtol=1e-6)
        ind = torch.stack([maps[:, q, [j + 1 for j in earlier[q]]].sum(-1) for q in dup_rows], -1).mean(-1)
        torch.testing.assert_close(stats["text_induction"][layer], ind, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("rows", [16, 8, 5, 3])  # 16 and 8: whole bins per chunk (one reshaped sum); 5, 3: split bins
def test_thumbnails_are_block_means_for_any_chunking(monkeypatch, rows) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(roles, "rows_per_chunk", lambda n_heads, t: rows)
    loaded = tiny_loaded("llama", seed=1)
    layout = loaded.adapter.layout
    run = runs.analyse(loaded, "", token_ids=[(7 * i) % 50 + 3 for i in range(16)])
    thumbs = roles.head_stats(run, layout, thumb=4).thumbnails
    assert thumbs is not None
    for layer in range(layout.n_layers):
        maps = run.maps(layer, list(range(layout.n_heads)), layout.group_size)  # (H, 16, 16)
        blocks = maps.view(layout.n_heads, 4, 4, 4, 4).mean((2, 4))  # (H, row bin, key bin)
        torch.testing.assert_close(thumbs[layer], blocks, atol=1e-6, rtol=1e-6)

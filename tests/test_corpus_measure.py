"""Batched corpus measurement: each text's numbers equal the one-text path's, with right or left padding."""

from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest
import torch

from app.corpus import measure
from app.inspect.engine import runs
from app.inspect.engine.steps import drain
from app.inspect.intervene import importance
from app.inspect.model.loaded import Loaded
from app.inspect.observe import metrics, probe, registry, roles, similarity
from tests.support.checks import hook_count
from tests.support.models import tiny_loaded

TEXTS = [
    "The cat sat on the mat. The cat sat on the mat again.",
    "Hello world",
    "one two three one two three four",
    "A",  # one token: no loss, no importance
    "Repeated phrase here, repeated phrase here, and again a repeated phrase.",
]
TOL = 1e-5
ARCHS = ("llama", "gpt2", "gpt_neox")


@pytest.fixture(scope="module", params=ARCHS)
def loaded(request: pytest.FixtureRequest) -> Loaded:
    return tiny_loaded(request.param)


def items(loaded: Loaded) -> list[tuple[int, list[int]]]:
    return [(10 + i, runs.encode(loaded.tokenizer, text)) for i, text in enumerate(TEXTS)]


def alone(loaded: Loaded, ids: list[int]) -> runs.Run:
    return runs.analyse(loaded, "", token_ids=ids)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_roles_and_gradient_match_one_text_at_a_time(loaded: Loaded, padding: measure.Padding) -> None:
    layout = loaded.adapter.layout
    batch = items(loaded)
    assert len({len(ids) for _, ids in batch}) > 2  # real padding
    result = drain(
        measure.measure_batch_steps(loaded, batch, frozenset({"roles", "importance"}), "gradient", padding=padding)
    )
    assert [t.index for t in result.texts] == [i for i, _ in batch]
    for (_, ids), text in zip(batch, result.texts, strict=True):
        assert text.n_tokens == len(ids)
        run = alone(loaded, ids)
        stats = roles.head_stats(run, layout)
        assert measure.role_metrics() == [m.name for m in registry.METRICS if m.on == "text"]
        assert set(text.values) == {*measure.role_metrics(), "importance"}
        for metric, ref in stats.scores.items():
            got = text.values[metric]
            assert got.shape == (layout.n_layers, layout.n_heads) and got.dtype == np.float64
            if ref is None:
                assert np.isnan(got).all(), metric
            else:
                np.testing.assert_allclose(got, ref.double().numpy(), atol=TOL, rtol=0, err_msg=metric)
        if len(ids) > 1:
            grad = importance.gradient_importance(loaded, ids).double().numpy()
            np.testing.assert_allclose(text.values["importance"], grad, atol=TOL, rtol=0)
        else:
            assert np.isnan(text.values["importance"]).all()
        cells = roles.where(run, layout)
        for metric in measure.role_metrics():
            np.testing.assert_array_equal(text.where[metric], cells[metric].numpy(), err_msg=metric)
        assert (text.where["importance"] == -1).all() and (text.where["entropy"] == -1).all()
    # some text repeats a token and some does not: both branches ran
    assert any(np.isnan(t.values["text_induction"]).all() for t in result.texts)
    assert any(np.isfinite(t.values["text_induction"]).all() for t in result.texts)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_similarity_sums_match_one_text_matrices(loaded: Loaded, padding: measure.Padding) -> None:
    layout = loaded.adapter.layout
    batch = items(loaded)
    result = drain(measure.measure_batch_steps(loaded, batch, frozenset({"similarity"}), "gradient", padding=padding))
    heads = [(ly, h) for ly in range(layout.n_layers) for h in range(layout.n_heads)]
    for metric in ("js", "cosine"):
        total = sum(
            similarity.head_similarity(alone(loaded, ids), layout, heads, metric, "layer").matrix.double().numpy()
            for _, ids in batch
        )
        np.testing.assert_allclose(result.similarity_sum[metric], total, atol=TOL, rtol=0)
    assert all(t.values == {} for t in result.texts)


def test_gradient_in_small_steps_is_the_gradient_of_one_backward(
    loaded: Loaded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One block per forward segment, LM-head pieces of 3 positions, the backward chunk by chunk: still each text's
    own gradient importance, and the steps are many."""
    batch = items(loaded)
    monkeypatch.setattr(measure, "SLICE_TOKENS", 3)
    steps = measure.measure_batch_steps(loaded, batch, frozenset({"importance"}), "gradient")
    pauses = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result = done.value
            break
        pauses += 1
        assert hook_count(loaded.model) == 0 and torch.is_grad_enabled()  # paused with nothing changed
    n_pieces = sum(-(-(len(ids) - 1) // 3) for _, ids in batch if len(ids) > 1)
    assert pauses >= 2 * loaded.adapter.layout.n_layers + n_pieces // 2  # blocks forward and backward, LM-head pieces
    for (_, ids), text in zip(batch, result.texts, strict=True):
        if len(ids) > 1:
            grad = importance.gradient_importance(loaded, ids).double().numpy()
            np.testing.assert_allclose(text.values["importance"], grad, atol=TOL, rtol=0)


def test_similarity_in_steps_of_one_query_row_is_the_matrix_at_once(loaded: Loaded) -> None:
    """A corpus job computes each text's JS matrix a few query rows per step: the rows' sums add up to the whole."""
    layout = loaded.adapter.layout
    run = alone(loaded, items(loaded)[0][1])
    heads = [(ly, h) for ly in range(layout.n_layers) for h in range(layout.n_heads)]
    steps = similarity.similarity_steps(run, layout, heads, "js", "layer", step_work=1)  # one row per step
    pauses = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            sliced = done.value
            break
        pauses += 1
    assert pauses == run.n_tokens - 1
    whole = similarity.similarity_steps(run, layout, heads, "js", "layer", step_work=1 << 62)
    np.testing.assert_allclose(sliced.matrix.numpy(), drain(whole).matrix.numpy(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_ablation_matches_the_single_head_sweep(padding: measure.Padding, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = tiny_loaded("gpt2")  # GPT-2: the out-projection bias stays when a head is zeroed
    batch = items(loaded)[:3]
    monkeypatch.setattr(measure, "SLICE_TOKENS", 40)  # several forwards per layer, a few blocks per step
    result = drain(measure.measure_batch_steps(loaded, batch, frozenset({"importance"}), "ablation", padding=padding))
    for (_, ids), text in zip(batch, result.texts, strict=True):
        sweep = importance.ablation_sweep(loaded, alone(loaded, ids))
        np.testing.assert_allclose(text.values["importance"], sweep.delta_loss.double().numpy(), atol=TOL, rtol=0)


def test_ablation_steps_yield_between_forwards_with_no_hook_left(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job's slice ends at each ablation forward (and each block of the batch's own forward, each piece of its
    LM head): the model worker is never held for a whole sweep, and the numbers do not depend on the slicing."""
    loaded = tiny_loaded("llama")
    batch = items(loaded)[:2]
    whole = drain(measure.measure_batch_steps(loaded, batch, frozenset({"importance"}), "ablation"))
    monkeypatch.setattr(measure, "SLICE_TOKENS", 1)  # one head per forward, one block per step
    steps = measure.measure_batch_steps(loaded, batch, frozenset({"importance"}), "ablation")
    pauses = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result = done.value
            break
        pauses += 1
        assert hook_count(loaded.model) == 0  # paused with the model as it was
    layout = loaded.adapter.layout
    assert pauses >= layout.n_layers * layout.n_heads + layout.n_layers  # the sweep's forwards + the batch's blocks
    for a, b in zip(result.texts, whole.texts, strict=True):
        np.testing.assert_allclose(a.values["importance"], b.values["importance"], atol=1e-6)


def test_left_padding_needs_position_ids() -> None:
    """The tests above can fail: without explicit positions, a left-padded GPT-2 text moves along its
    absolute position table (RoPE scores depend only on relative positions, so Llama and NeoX would not show it)."""
    loaded = tiny_loaded("gpt2")
    batch = items(loaded)[:2]
    padded = measure.pad([ids for _, ids in batch], "left", loaded.device)
    kwargs = padded.inputs()
    del kwargs["position_ids"]
    with torch.inference_mode():
        hidden = loaded.adapter.backbone()(**kwargs).last_hidden_state
    short = 1 if len(batch[1][1]) < len(batch[0][1]) else 0
    ref = alone(loaded, batch[short][1]).hidden
    assert (hidden[short, padded.windows[short]] - ref).abs().max() > 1e-3


def test_text_induction_equals_the_probe_score_on_the_probe() -> None:
    loaded = tiny_loaded("gpt_neox")
    layout = loaded.adapter.layout
    row = probe.probe_tokens(layout.vocab_size)[0].tolist()
    assert len(set(row[: probe.PROBE_LENGTH])) == probe.PROBE_LENGTH  # no repeat within a copy
    run = alone(loaded, row)
    stats = roles.head_stats(run, layout)
    assert stats["text_induction"] is not None
    for layer in range(layout.n_layers):
        mass, n_rows = metrics.induction_mass(run.maps(layer, list(range(layout.n_heads)), layout.group_size), 50)
        torch.testing.assert_close(stats["text_induction"][layer], mass / n_rows, atol=1e-6, rtol=0)


def test_prefix_matching_against_its_definition() -> None:
    loaded = tiny_loaded("llama")
    layout = loaded.adapter.layout
    ids = [5, 7, 5, 9, 7, 5, 5]
    run = alone(loaded, ids)
    stats = roles.head_stats(run, layout)
    assert stats["text_induction"] is not None
    cells = roles.where(run, layout)
    for layer in range(layout.n_layers):
        maps = run.maps(layer, list(range(layout.n_heads)), layout.group_size).double()
        for head in range(layout.n_heads):
            total, rows, best = 0.0, 0, (-1.0, -1, -1)
            for q in range(len(ids)):
                targets = {j + 1 for j in range(q) if ids[j] == ids[q]}
                if targets:
                    rows += 1
                    total += sum(float(maps[head, q, k]) for k in targets)
                    best = max([best, *((float(maps[head, q, k]), -q, -k) for k in targets)])
            assert abs(float(stats["text_induction"][layer, head]) - total / rows) < 1e-6
            assert tuple(cells["text_induction"][layer, head]) == (-best[1], -best[2])
            prev = [float(maps[head, q, q - 1]) for q in range(1, len(ids))]
            assert tuple(cells["previous_token"][layer, head]) == (1 + int(np.argmax(prev)), int(np.argmax(prev)))
            own = int(np.argmax([float(maps[head, q, q]) for q in range(1, len(ids))])) + 1  # query 0 skipped
            assert tuple(cells["self"][layer, head]) == (own, own)
            sink = int(np.argmax([float(maps[head, q, 0]) for q in range(1, len(ids))])) + 1
            assert tuple(cells["first_token"][layer, head]) == (sink, 0)
            sure = int(np.argmax([float(maps[head, q].max()) for q in range(1, len(ids))])) + 1
            assert tuple(cells["confidence"][layer, head]) == (sure, int(maps[head, sure].argmax()))
            copies = [(float(maps[head, q, j]), q, j) for q in range(len(ids)) for j in range(q) if ids[j] == ids[q]]
            top = max(copies, key=lambda c: c[0])
            assert tuple(cells["duplicate_token"][layer, head]) == top[1:]


def test_heads_endpoint_reports_text_induction(client) -> None:  # type: ignore[no-untyped-def]
    repeated = client.post("/api/heads", json={"text": "a b c d a b c d"}).json()["heads"]
    assert all(isinstance(h["text_induction"], float) for h in repeated)
    single = client.post("/api/heads", json={"text": "The cat sat."}).json()["heads"]
    assert all(h["text_induction"] is None for h in single)


def test_length_batches_are_bucketed_bounded_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.integers(1, 200, 300)] + [500]
    batches = measure.length_batches(lengths, max_batch_tokens=1024, max_batch_texts=16)
    assert batches == measure.length_batches(lengths, 1024, 16)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) <= 16 and (len(b) * longest <= 1024 or len(b) == 1)
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)  # shortest first: similar lengths share a batch
    assert [500] in [[lengths[i] for i in b] for b in batches]  # too long for the budget: alone


def live_tensor_bytes() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on some deprecated torch objects warns
        warnings.simplefilter("ignore")
        return sum(o.numel() * o.element_size() for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_memory_is_bounded_by_the_batch() -> None:
    """Nothing accumulates across batches; a batch returns only small per-text and per-head arrays."""
    loaded = tiny_loaded("llama")
    layout = loaded.adapter.layout
    batch = items(loaded)
    analyses = frozenset({"roles", "importance", "similarity"})
    for i in range(4):  # warm up: first calls may fill caches of transformers or torch (per shape)
        drain(measure.measure_batch_steps(loaded, batch[i : i + 2], analyses, "gradient"))
    before = live_tensor_bytes()
    n = layout.n_layers * layout.n_heads
    for i in range(4):
        result = drain(measure.measure_batch_steps(loaded, batch[i : i + 2], analyses, "gradient"))
        assert all(m.shape == (n, n) for m in result.similarity_sum.values())
        for text in result.texts:
            assert all(v.shape == (layout.n_layers, layout.n_heads) for v in text.values.values())
            assert all(w.shape == (layout.n_layers, layout.n_heads, 2) for w in text.where.values())
        del result, text
    assert live_tensor_bytes() - before <= 0  # captures, hidden states and gates are all freed


def test_a_text_without_tokens_counts_nowhere() -> None:
    loaded = tiny_loaded("gpt2")
    layout = loaded.adapter.layout
    batch = [(0, []), *items(loaded)[:2]]
    analyses = frozenset({"roles", "importance", "similarity"})
    result = drain(measure.measure_batch_steps(loaded, batch, analyses, "gradient"))
    without = drain(measure.measure_batch_steps(loaded, batch[1:], analyses, "gradient"))
    assert [t.index for t in result.texts] == [0, 10, 11] and result.texts[0].n_tokens == 0
    assert set(result.texts[0].values) == {*measure.role_metrics(), "importance"}
    assert all(np.isnan(v).all() for v in result.texts[0].values.values())
    assert all((w == -1).all() for w in result.texts[0].where.values())
    for got, ref in zip(result.texts[1:], without.texts, strict=True):
        for metric, value in ref.values.items():
            np.testing.assert_array_equal(got.values[metric], value)
    for metric, total in without.similarity_sum.items():
        np.testing.assert_allclose(result.similarity_sum[metric], total, atol=1e-12)
    empty = drain(measure.measure_batch_steps(loaded, [(5, [])], analyses, "gradient"))
    n = layout.n_layers * layout.n_heads
    assert all(m.shape == (n, n) and not m.any() for m in empty.similarity_sum.values())

"""The one next-token helper against a direct full-vocabulary log-softmax in float64, for every consumer.

Prediction (runs.predict), comparison (ablation.compare: KL at every position) and the sweep's loss
(next_token over B rows: the sweep's, pruning's and corpus jobs') each read app.inspect.engine.nexttoken; each
quantity is checked here against the definition, across LM-head chunk boundaries and with the
baseline's log-probs kept or computed again.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from app.inspect.engine import nexttoken, runs
from app.inspect.engine.memo import Memo
from app.inspect.intervene import ablation, importance
from tests.support.models import ARCHS, tiny_loaded

TEXT = "The quick brown fox jumps over the lazy dog, and the dog sleeps under the old tree."


def _reference_logprobs(loaded, hidden: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """log-softmax of the unembedding of (..., d) hidden states, in float64, every vocabulary entry at once."""
    head = loaded.adapter.lm_head()
    logits = hidden.double() @ head.weight.double().T
    if getattr(head, "bias", None) is not None:
        logits = logits + head.bias.double()
    return torch.log_softmax(logits, dim=-1)


def _targets(run: runs.Run) -> torch.Tensor:
    return torch.tensor(run.token_ids[1:])


@pytest.fixture(params=[3, 512], ids=["chunk3", "chunk512"])
def chunk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """LM-head chunk size: 3 splits the text into many chunks (the last one short), 512 keeps it whole."""
    monkeypatch.setattr(nexttoken, "LOGIT_CHUNK", request.param)
    return int(request.param)


@pytest.mark.parametrize("arch", ARCHS)
def test_prediction_equals_the_float64_log_softmax(arch: str, chunk: int) -> None:
    loaded = tiny_loaded(arch, seed=3)
    run = runs.analyse(loaded, TEXT)
    assert run.n_tokens > 2 * chunk or chunk == 512
    ref = _reference_logprobs(loaded, run.hidden)  # (T, V)
    tgt = _targets(run)
    want = ref[:-1].gather(1, tgt[:, None])[:, 0]  # (T-1,)
    pred = runs.predict(loaded.adapter.lm_head(), run, 5)
    torch.testing.assert_close(torch.tensor(pred.token_logprobs, dtype=torch.float64), want, atol=2e-5, rtol=0)
    assert pred.loss == pytest.approx(float(-want.mean()), abs=2e-5)
    torch.testing.assert_close(pred.last_logprobs.double(), ref[-1], atol=2e-5, rtol=0)
    top = torch.topk(ref[-1].exp(), 5)
    assert [i for i, _ in pred.top_k] == top.indices.tolist()
    torch.testing.assert_close(
        torch.tensor([p for _, p in pred.top_k], dtype=torch.float64), top.values, atol=1e-6, rtol=1e-4
    )


@pytest.mark.parametrize("kept", [True, False], ids=["kept", "recomputed"])
@pytest.mark.parametrize("arch", ARCHS)
def test_comparison_equals_the_float64_definitions(
    arch: str, chunk: int, kept: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not kept:  # a long text: the baseline's log-probs do not fit and are computed again per chunk
        monkeypatch.setattr(runs, "BASELINE_CACHE_BYTES", 0)
    loaded = tiny_loaded(arch, seed=4)
    run = runs.analyse(loaded, TEXT)
    gen = torch.Generator().manual_seed(0)
    ablated = run.hidden + 5.0 * torch.randn(run.hidden.shape, generator=gen)  # (T, d): some other hidden state
    for _ in range(2):  # the first comparison computes the baseline, the second reads it from the run
        cmp = ablation.compare(loaded, run, ablated, 4)
        kept_base = run.memo.get(runs.BASELINE)
        assert kept_base is not None and (kept_base.chunks is not None) == kept
        p, q = _reference_logprobs(loaded, run.hidden), _reference_logprobs(loaded, ablated)  # (T, V) each
        kl = (p.exp() * (p - q)).sum(-1)  # (T,) KL(baseline ‖ ablated)
        assert float(kl.min()) > 1e-3  # the perturbation does change every position
        torch.testing.assert_close(torch.tensor(cmp.kl_per_position, dtype=torch.float64), kl, atol=5e-6, rtol=1e-5)
        assert cmp.kl_last == pytest.approx(float(kl[-1]), abs=2e-5, rel=1e-4)
        tgt = _targets(run)
        for pred, ref in ((cmp.baseline, p), (cmp.ablated, q)):
            want = ref[:-1].gather(1, tgt[:, None])[:, 0]
            torch.testing.assert_close(torch.tensor(pred.token_logprobs, dtype=torch.float64), want, atol=2e-5, rtol=0)
            assert [i for i, _ in pred.top_k] == torch.topk(ref[-1], 4).indices.tolist()
        assert cmp.delta_loss == pytest.approx(
            float(-q[:-1].gather(1, tgt[:, None]).mean() + p[:-1].gather(1, tgt[:, None]).mean()), abs=5e-5
        )


def test_identical_hidden_states_compare_to_exactly_zero() -> None:
    loaded = tiny_loaded("llama", seed=2)
    run = runs.analyse(loaded, TEXT)
    cmp = ablation.compare(loaded, run, run.hidden.clone(), 3)
    assert max(cmp.kl_per_position) == 0.0
    assert cmp.delta_loss == 0.0


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_loss_and_last_logprobs_equal_the_float64_log_softmax(arch: str, chunk: int) -> None:
    """The sweep's, pruning's and corpus jobs' statistics of B rows at once (and with a gradient)."""
    loaded = tiny_loaded(arch, seed=5)
    run = runs.analyse(loaded, TEXT)
    gen = torch.Generator().manual_seed(1)
    rows = run.hidden[None] + 5.0 * torch.randn((3, *run.hidden.shape), generator=gen)  # (3, T, d)
    tgt = _targets(run)
    ref = _reference_logprobs(loaded, rows)  # (3, T, V)
    want_loss = -ref[:, :-1].gather(2, tgt[None, :, None].expand(3, -1, 1))[..., 0].mean(1)  # (3,)
    with torch.inference_mode():
        stats = nexttoken.next_token(loaded.adapter.lm_head(), rows, tgt)
        loss, last = stats.loss, stats.last_logprobs
    torch.testing.assert_close(loss.double(), want_loss, atol=2e-5, rtol=0)
    torch.testing.assert_close(last.double(), ref[:, -1], atol=2e-5, rtol=0)
    # with a gradient flowing (gradient importance): the same values, and a gradient that matches float64
    leaf = rows.clone().requires_grad_(True)
    loss_g = nexttoken.next_token(loaded.adapter.lm_head(), leaf, tgt).loss
    (grad,) = torch.autograd.grad(loss_g.sum(), leaf)
    leaf64 = rows.double().requires_grad_(True)
    ref_loss = -_reference_logprobs(loaded, leaf64)[:, :-1].gather(2, tgt[None, :, None].expand(3, -1, 1)).mean((1, 2))
    (grad64,) = torch.autograd.grad(ref_loss.sum(), leaf64)
    torch.testing.assert_close(loss_g.detach().double(), want_loss, atol=2e-5, rtol=0)
    torch.testing.assert_close(grad.double(), grad64, atol=1e-6, rtol=1e-4)


def test_a_one_token_text_has_no_loss_but_a_prediction() -> None:
    loaded = tiny_loaded("gpt2")
    run = runs.analyse(loaded, "", token_ids=[464])
    pred = runs.predict(loaded.adapter.lm_head(), run, 3)
    assert pred.token_logprobs == [] and pred.loss is None
    ref = _reference_logprobs(loaded, run.hidden)[-1]
    assert [i for i, _ in pred.top_k] == torch.topk(ref, 3).indices.tolist()
    stats = nexttoken.next_token(loaded.adapter.lm_head(), run.hidden[None], _targets(run))
    assert stats.target_logprobs.shape == (1, 0) and float(stats.loss[0]) == 0.0


def test_the_sweep_reads_the_runs_baseline() -> None:
    """The sweep's baseline loss is the prediction's (one cached computation, not a second loop)."""
    loaded = tiny_loaded("llama", seed=1)
    run = runs.analyse(loaded, TEXT)
    fresh = dataclasses.replace(run, memo=Memo())
    sweep = importance.ablation_sweep(loaded, fresh, batch_size=4)
    assert runs.BASELINE in fresh.memo
    base_loss = runs.predict(loaded.adapter.lm_head(), fresh, 1).loss
    one = ablation.ablate(loaded, run, [(1, 2)], "zero", 1)
    assert one.baseline.loss == pytest.approx(base_loss, abs=0)
    assert float(sweep.delta_loss[1, 2]) == pytest.approx(one.delta_loss, abs=1e-5)


@pytest.mark.parametrize("kept", [True, False], ids=["kept", "recomputed"])
def test_an_ablation_after_the_prediction_runs_the_lm_head_once(kept: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The baseline is computed once per run (by the overview's prediction); a toggle then unembeds only its own
    hidden states, unless the baseline's log-probs were too large to keep."""
    if not kept:
        monkeypatch.setattr(runs, "BASELINE_CACHE_BYTES", 0)
    monkeypatch.setattr(nexttoken, "LOGIT_CHUNK", 4)
    loaded = tiny_loaded("llama", seed=6)
    run = runs.analyse(loaded, TEXT)
    chunks = -(-run.n_tokens // 4)
    calls: list[int] = []
    handle = loaded.adapter.lm_head().register_forward_hook(lambda m, a, out: calls.append(a[0].shape[-2]))
    try:
        runs.predict(loaded.adapter.lm_head(), run, 3)
        assert len(calls) == chunks
        for heads in ([(1, 0)], [(1, 0), (0, 2)], [(0, 1)]):
            calls.clear()
            ablation.ablate(loaded, run, heads, "zero", 3)
            assert len(calls) == (chunks if kept else 2 * chunks)
    finally:
        handle.remove()


@pytest.mark.parametrize("shape", [(1, 7, 50257), (3, 5, 1000)])
def test_log_softmax_written_over_the_logits_is_bit_identical(shape: tuple[int, int, int]) -> None:
    """logprob_chunks writes the log-softmax over the logits on CPU; torch must give the same bits."""
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 8
    want = torch.log_softmax(logits, dim=-1)
    got = torch.log_softmax(logits, dim=-1, out=logits)
    assert got.data_ptr() == logits.data_ptr()
    assert torch.equal(got, want)
    head = torch.nn.Linear(4, shape[-1], bias=False)
    hidden = torch.randn(shape[0], shape[1], 4)
    with torch.inference_mode():
        (chunk,) = list(nexttoken.logprob_chunks(head, hidden))
        assert torch.equal(chunk, torch.log_softmax(head(hidden), dim=-1))


@pytest.mark.parametrize("bias", [False, True])
def test_logits_in_the_scratch_buffer_are_bit_identical_and_reused(bias: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Scratch gives the head's own logits bit for bit, in one buffer across calls and chunk shapes."""
    monkeypatch.setattr(nexttoken, "LOGIT_CHUNK", 5)
    head = torch.nn.Linear(16, 1000, bias=bias)
    scratch = nexttoken.Scratch()
    pointers = set()
    with torch.inference_mode():
        for rows, tokens in ((3, 12), (2, 7), (2, 4), (3, 12)):  # chunks of 5, 5, 2; smaller; one contiguous; again
            hidden = torch.randn(rows, tokens, 16, generator=torch.Generator().manual_seed(rows * tokens))
            want = [torch.log_softmax(head(hidden[:, s : s + 5]), dim=-1) for s in range(0, tokens, 5)]
            for got, expected in zip(nexttoken.logprob_chunks(head, hidden, scratch), want, strict=True):
                assert torch.equal(got, expected)
                pointers.add(got.data_ptr())
    assert len(pointers) == 1  # every chunk of every call in the same memory
    with torch.enable_grad():  # a gradient needs the head's own graph: the scratch stays out of it
        fresh = scratch.logits(head, torch.randn(1, 2, 16))
        assert fresh.requires_grad and fresh.data_ptr() not in pointers


def test_the_sweep_with_a_scratch_buffer_equals_one_ablation_at_a_time() -> None:
    """Each head's sweep entry (logits in the reused buffer) equals ablating that head alone, to rounding."""
    loaded = tiny_loaded("llama")
    run = runs.analyse(loaded, TEXT)
    sweep = importance.ablation_sweep(loaded, run)
    for layer, head in ((0, 0), (1, 3)):
        alone = ablation.ablate(loaded, run, [(layer, head)], "zero", 3)
        assert alone.delta_loss is not None
        assert abs(float(sweep.delta_loss[layer, head]) - alone.delta_loss) < 1e-5
        assert abs(float(sweep.kl_last[layer, head]) - alone.kl_last) < 1e-5

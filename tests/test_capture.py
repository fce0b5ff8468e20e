"""Captured maps equal eager attention; capture never changes the model's output."""

from __future__ import annotations

import pytest
import torch

from app.inspect.engine import runs
from app.inspect.model import capture
from tests.support.checks import hook_count
from tests.support.models import ARCHS, tiny_loaded, tiny_model


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50000, (2, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding on the second row
    return ids, mask


@pytest.mark.parametrize("arch", ARCHS)
def test_maps_match_eager_output_attentions_with_left_padding(arch: str) -> None:
    ids, mask = _batch()
    eager = tiny_model(arch, attn="eager")
    with torch.no_grad():
        ref = eager(ids, attention_mask=mask, output_attentions=True).attentions
    model = tiny_model(arch)
    capture.install(model)
    with torch.no_grad(), capture.recording() as rec:
        model(ids, attention_mask=mask)
    group = model.config.num_attention_heads // getattr(model.config, "num_key_value_heads", 4)
    for layer, expected in enumerate(ref):
        got = capture.attention_maps(rec.captured[layer], list(range(4)), group)  # (B, H, T, T)
        torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(got[1, :, 4:, 4:], expected[1, :, 4:, 4:], atol=1e-5, rtol=0)
        assert got[1, :, 4:, :4].abs().max() == 0  # real tokens never attend to padding


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_bit_identical_to_sdpa_with_capture_on_and_off(arch: str) -> None:
    ids, mask = _batch()
    plain = tiny_model(arch)  # attn_implementation="sdpa"
    with torch.no_grad():
        expected = plain(ids, attention_mask=mask).logits
        expected_single = plain(ids[:1]).logits
    model = tiny_model(arch)
    capture.install(model)
    with torch.no_grad():
        off = model(ids, attention_mask=mask).logits
        with capture.recording():
            on = model(ids, attention_mask=mask).logits
            on_single = model(ids[:1]).logits
    assert torch.equal(off, expected)
    assert torch.equal(on, expected)
    assert torch.equal(on_single, expected_single)


@pytest.mark.parametrize("arch", ARCHS)
def test_run_maps_are_causal_distributions(arch: str) -> None:
    loaded = tiny_loaded(arch)
    before = hook_count(loaded.model)
    run = runs.analyse(loaded, "Attention is all you need, they said, and attention it was.")
    assert hook_count(loaded.model) == before  # analysis leaves no hook behind
    layout = loaded.adapter.layout
    t = run.n_tokens
    for layer in range(layout.n_layers):
        maps = run.maps(layer, list(range(layout.n_heads)), layout.group_size)
        assert maps.shape == (layout.n_heads, t, t)
        torch.testing.assert_close(maps.sum(-1), torch.ones(layout.n_heads, t))
        assert torch.triu(maps, diagonal=1).abs().max() == 0
        assert (maps >= 0).all()


def test_recording_only_keeps_requested_layers() -> None:
    model = tiny_model("llama")
    capture.install(model)
    with torch.no_grad(), capture.recording(layers=frozenset({1})) as rec:
        model(torch.tensor([[1, 2, 3]]))
    assert set(rec.captured) == {1}


def test_run_hidden_state_gives_the_model_logits() -> None:
    loaded = tiny_loaded("gpt2")
    run = runs.analyse(loaded, "The capital of France is")
    with torch.no_grad():
        logits = loaded.model(torch.tensor([run.token_ids])).logits[0]
    pred = runs.predict(loaded.adapter.lm_head(), run, 3)
    logp = torch.log_softmax(logits, -1)
    expected = logp[:-1].gather(1, torch.tensor(run.token_ids[1:])[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(pred.token_logprobs), expected)
    assert pred.top_k[0][0] == int(logits[-1].argmax())


def test_token_strings_are_decoded_text() -> None:
    loaded = tiny_loaded("llama")
    run = runs.analyse(loaded, "The capital of France")
    assert run.tokens == ["The", " capital", " of", " France"]
    assert "".join(run.tokens) == "The capital of France"

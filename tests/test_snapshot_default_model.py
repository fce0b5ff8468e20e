"""The size budgets of issue 24 on the real default model, in-process (`headscope.open`): a 512-token snapshot of
every head's thumbnail plus 9 full maps is at most 8 MB, and one 512-token head's notebook output at most 1 MB."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import headscope
from headscope.views import Notebook

pytestmark = pytest.mark.slow
PARAGRAPH = (
    "The study of attention heads began with a simple question: when a transformer reads a sentence, which earlier "
    "words does each position look at? Some heads attend to the previous token, others to the first token of the "
    "text, and a few copy what followed an earlier occurrence of the current token, which is how induction works. "
)


@pytest.fixture(scope="module")
def scope() -> Iterator[headscope.Scope]:
    with headscope.open("smollm2-135m", device="cpu", dtype="float32") as s:
        yield s


def text_of(scope: headscope.Scope, n_tokens: int) -> str:
    """The longest prefix of repeated English prose that is at most `n_tokens` tokens (exactly, here)."""
    long = PARAGRAPH * 20
    lo, hi = 0, len(long)
    while lo < hi:  # bisect on characters: the most that tokenizes to ≤ n_tokens
        mid = (lo + hi + 1) // 2
        if scope.tokenize(long[:mid])["n_tokens"] <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return long[:lo]


def test_a_512_token_snapshot_and_a_notebook_output_stay_within_budget(scope: headscope.Scope) -> None:
    text = text_of(scope, 512)
    assert scope.tokenize(text)["n_tokens"] == 512
    heads = [(layer, 4) for layer in range(0, 27, 3)]  # 9 heads across the depth
    view = scope.snapshot(text, heads=heads)
    page = view.to_html("512 tokens: every thumbnail and 9 maps")
    assert len(view.attention.to_numpy()) == 9 and view.overview.to_numpy().shape == (30, 9, 32, 32)
    assert len(page.encode()) <= 8_000_000, len(page.encode())
    Notebook.plotly_sent = True  # a later output of the notebook: plotly.js came with the first
    one = scope.attention(text, heads="L3H5")._repr_html_()
    assert len(one.encode()) <= 1_000_000, len(one.encode())

"""Metrics against their published definitions, on hand-made maps."""

from __future__ import annotations

import math

import pytest
import torch

from app.inspect.observe import metrics


def random_maps(n: int, t: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, t, t, generator=gen) * 2
    scores = scores.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
    return torch.softmax(scores, -1)


def js_reference(p: torch.Tensor, q: torch.Tensor) -> float:
    """Direct definition: JS(P, Q) = ½ KL(P‖M) + ½ KL(Q‖M), M = (P + Q)/2, averaged over rows."""
    total = 0.0
    for pr, qr in zip(p.double(), q.double(), strict=True):
        m = (pr + qr) / 2
        kl_p = sum(float(a * math.log(a / b)) for a, b in zip(pr, m, strict=True) if a > 0)
        kl_q = sum(float(a * math.log(a / b)) for a, b in zip(qr, m, strict=True) if a > 0)
        total += 0.5 * kl_p + 0.5 * kl_q
    return total / p.shape[0]


def test_js_matches_definition_and_bounds() -> None:
    maps = random_maps(5, 7)
    js = metrics.js_divergence_matrix(maps, row_chunk=3)
    for i in range(5):
        for j in range(5):
            assert float(js[i, j]) == pytest.approx(js_reference(maps[i], maps[j]), abs=1e-5)
    assert torch.equal(js, js.T)
    assert (js.diagonal() == 0).all()
    assert (js >= 0).all() and (js <= math.log(2) + 1e-9).all()


def test_js_of_disjoint_rows_is_ln2_and_identical_heads_zero() -> None:
    t = 4
    prev = torch.zeros(t, t)
    prev[0, 0] = 1
    for q in range(1, t):
        prev[q, q - 1] = 1
    self_ = torch.eye(t)
    maps = torch.stack([prev, self_, prev])
    js = metrics.js_divergence_matrix(maps)
    # rows 1.. are disjoint (ln 2); row 0 is identical (0): mean = (t−1)/t · ln 2
    assert float(js[0, 1]) == pytest.approx((t - 1) / t * math.log(2), abs=1e-6)
    assert float(js[0, 2]) == pytest.approx(0.0, abs=1e-7)


def test_cosine_properties() -> None:
    maps = random_maps(4, 6)
    maps[3] = maps[1]
    cos = metrics.cosine_matrix(maps)
    assert torch.equal(cos, cos.T)
    torch.testing.assert_close(cos.diagonal(), torch.ones(4))
    assert float(cos[1, 3]) == pytest.approx(1.0, abs=1e-6)
    flat = maps.reshape(4, -1)
    expected = torch.nn.functional.cosine_similarity(flat[0], flat[2], dim=0)
    assert float(cos[0, 2]) == pytest.approx(float(expected), abs=1e-6)


def test_cluster_order_puts_duplicates_together() -> None:
    maps = random_maps(6, 8, seed=2)
    maps[4] = maps[0]
    order = metrics.cluster_order(metrics.js_divergence_matrix(maps))
    assert sorted(order) == list(range(6))
    assert abs(order.index(0) - order.index(4)) == 1


def test_entropy_and_role_sums() -> None:
    t = 5
    uniform = torch.tril(torch.ones(t, t))
    uniform = uniform / uniform.sum(-1, keepdim=True)
    scores = torch.zeros(t, t).masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), metrics.MASKED)
    probs, row_ent, top = metrics.softmax_stats(scores)
    torch.testing.assert_close(probs, uniform)
    definition = -(uniform * torch.log(uniform + metrics.EPS)).sum(-1)  # −Σ_k a_qk · log(a_qk + ε)
    torch.testing.assert_close(row_ent, definition, atol=1e-6, rtol=0)
    torch.testing.assert_close(top, uniform.amax(-1))
    expected = sum(math.log(q + 1) for q in range(t))
    assert float(row_ent.sum()) == pytest.approx(expected, abs=1e-5)
    ratio = row_ent[1:] / torch.log(torch.arange(2, t + 1).float())
    assert float(ratio.sum()) == pytest.approx(t - 1, abs=1e-5)  # every row with ≥ 2 keys is uniform


def test_duplicate_and_induction_mass() -> None:
    ids = torch.tensor([5, 6, 7, 5, 6, 7])
    maps = torch.zeros(1, 6, 6)
    maps[0, 0, 0] = 1
    for q in range(1, 6):
        maps[0, q, q - 1] = 1
    match = metrics.duplicate_match(ids, 0, 6, 6)  # (6, 6): key k < q holds q's token
    assert int(match.any(-1).sum()) == 3 and int(match.sum()) == 3  # the second copy's rows, each on its earlier copy
    assert float((maps * match).sum()) == 0.0  # a previous-token head never looks at earlier copies
    induction = torch.zeros(1, 6, 6)
    induction[0, :, 0] = 1
    for q in range(3, 6):
        induction[0, q] = 0
        induction[0, q, q - 3 + 1] = 1  # the token after the earlier copy
    mass, n = metrics.induction_mass(induction, period=3)
    assert n == 3 and float(mass[0]) == pytest.approx(3.0)

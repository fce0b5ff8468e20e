"""Checks shared by tests: hooks left behind, and two continuations that must agree to float32 rounding."""

from __future__ import annotations

from typing import Any

import pytest
import torch


def hook_count(model: torch.nn.Module) -> int:
    """Forward hooks and pre-hooks registered anywhere in the model."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# Two float32 computations of the same quantity that run different kernels (batch shape, thread count, CPU
# capability: AVX-512 vs AVX2 vs default) reduce in another order. Through a few tiny blocks and a log-softmax the
# results differ by a few ulps: at |x| ≈ 10 one ulp is 9.5e-7, so 1e-5 is ~10 ulps there and far below any real
# effect the tests look for (a head's ablation moves log-probs by ≥ 1e-3).
FLOAT32_ATOL = 1e-5


def assert_same_continuation(got: dict[str, Any], want: dict[str, Any], atol: float = FLOAT32_ATOL) -> None:
    """Two continuations (the API's shape): the same tokens exactly, log-probs within float32 rounding."""
    assert {k: v for k, v in got.items() if k != "logprobs"} == {k: v for k, v in want.items() if k != "logprobs"}
    assert got["logprobs"] == pytest.approx(want["logprobs"], abs=atol)

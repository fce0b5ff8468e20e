"""Small helpers shared by tests."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import PreTrainedModel

from app.inspect.model import capture
from app.inspect.model.adapters import Adapter
from app.inspect.model.loaded import Loaded
from tests.tiny import gpt2_tokenizer, tiny_model


def as_loaded(model: PreTrainedModel, name: str = "tiny") -> Loaded:
    """Wrap an in-memory model as the server would hold it (capture installed)."""
    capture.install(model)
    model.requires_grad_(False)
    return Loaded(
        name=name,
        model=model,
        tokenizer=gpt2_tokenizer(),
        adapter=Adapter(model),
        device=torch.device("cpu"),
        dtype=torch.float32,
    )


def tiny_loaded(arch: str = "llama", seed: int = 0) -> Loaded:
    return as_loaded(tiny_model(arch, seed), f"tiny-{arch}")


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

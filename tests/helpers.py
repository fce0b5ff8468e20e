"""Small helpers shared by tests."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from app.inspect import capture
from app.inspect.adapters import Adapter
from app.inspect.loading import Loaded
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

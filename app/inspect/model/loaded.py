"""`Loaded`: a model ready for inspection (the model, its tokenizer, its Adapter, device and dtype)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.inspect.model.adapters import Adapter


@dataclass
class Loaded:
    """A model ready for inspection."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    adapter: Adapter
    device: torch.device
    dtype: torch.dtype

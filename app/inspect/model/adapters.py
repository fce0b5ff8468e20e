"""Per-architecture facts: where the layers and attention output projections live, head layout."""

from __future__ import annotations

from functools import reduce

import torch
from torch import nn
from transformers import PreTrainedModel

from app.inspect.model import own_attention
from app.inspect.model.discovery import discover
from app.inspect.model.families import FAMILIES, QKV, QKV_FOUND, Layout

MAX_POSITIONS = ("max_position_embeddings", "n_positions", "max_seq_len")  # MPT's ALiBi table is max_seq_len long


class Adapter:
    """Architecture-independent access to one loaded causal LM."""

    def __init__(self, model: PreTrainedModel) -> None:
        model_type = getattr(model.config, "model_type", "?")
        self.model = model
        self.layout = _layout(model, model_type)
        family = FAMILIES.get(model_type)
        if family is None:  # found from the modules; capture.check_served then checks the maps can be reproduced
            lay = self.layout
            family = discover(model, lay.n_heads, lay.head_dim, lay.d_model, lay.n_layers)
        self.family = family
        self.gaps: dict[bool, str | None] = {}  # app.inspect.checks.tracing_gaps, by `dla`, found once
        self._readout_head: nn.Module | None = None  # lm_head()'s wrapper, made once

    @property
    def layers(self) -> nn.ModuleList:
        """The decoder blocks, in order."""
        found = reduce(getattr, self.family.layers.split("."), self.model)
        assert isinstance(found, nn.ModuleList)
        return found

    def set_layers(self, layers: nn.ModuleList) -> None:
        """Swap the decoder blocks (used to resume a forward at a later layer)."""
        *parent_path, last = self.family.layers.split(".")
        parent = reduce(getattr, parent_path, self.model)
        setattr(parent, last, layers)

    def attention(self, layer: int) -> nn.Module:
        """The attention module of block `layer`."""
        module: nn.Module = getattr(self.layers[layer], self.family.attention)
        return module

    def out_proj(self, layer: int) -> nn.Module:
        """The attention output projection of block `layer`; its input is the heads side by side."""
        module: nn.Module = getattr(self.attention(layer), self.family.out_proj)
        return module

    def qkv_projections(self, layer: int) -> list[nn.Module]:
        """Block `layer`'s query, key and value projections: [q, k, v], or [qkv] where the family fuses them."""
        attention = self.attention(layer)
        names = QKV.get(self.family.name) or next(
            (n for n in QKV_FOUND if all(hasattr(attention, a) for a in n)), QKV["llama"]
        )
        return [getattr(attention, name) for name in names]

    def qkv_clip(self, layer: int) -> float | None:
        """The bound queries, keys and values are clamped to (MPT's attention clip_qkv, OLMo's config), or None."""
        clip = getattr(self.attention(layer), "clip_qkv", None) or getattr(self.model.config, "clip_qkv", None)
        return float(clip) if clip else None

    def out_proj_bias(self, layer: int) -> torch.Tensor | None:
        """The output projection's bias (GPT-2 has one), or None."""
        bias = getattr(self.out_proj(layer), "bias", None)
        return bias if isinstance(bias, torch.Tensor) else None

    def final_norm(self) -> nn.Module:
        """The norm between the last block and the LM head (RMSNorm or LayerNorm)."""
        found: nn.Module = reduce(getattr, self.family.final_norm.split("."), self.model)
        return found

    def block_part(self, layer: int, path: str) -> nn.Module:
        """A submodule of block `layer` by dotted path (e.g. family.attn_norm, family.mlp_out, family.mlp)."""
        found: nn.Module = reduce(getattr, path.split("."), self.layers[layer])
        return found

    def mlp_output(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Block `layer`'s MLP on its normed input x (…, d) alone: (…, d).

        An MLP that adds the residual it is given (BLOOM, MPT) gets zeros; GPT-OSS's also returns router scores.
        """
        mlp = self.block_part(layer, self.family.mlp)
        out = mlp(x, torch.zeros_like(x)) if self.family.mlp_residual else mlp(x)
        found: torch.Tensor = out[0] if isinstance(out, tuple) else out
        return found

    def logit_scale(self) -> float:
        """What the CausalLM multiplies lm_head's logits by (Cohere's logit_scale, 1 / Granite's logits_scaling)."""
        cfg = self.model.config
        scale = float(getattr(self.model, "logit_scale", None) or getattr(cfg, "logit_scale", None) or 1.0)
        return scale / float(getattr(cfg, "logits_scaling", None) or 1.0)

    def final_softcap(self) -> float | None:
        """Gemma 2's final logit soft-cap: logits ← cap · tanh(logits / cap) after the scale; None without one."""
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return float(cap) if cap else None

    def readout(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's logits from lm_head's (…, vocab) output: the logit scale, then the final soft-cap."""
        scale, cap = self.logit_scale(), self.final_softcap()
        out = logits * scale if scale != 1.0 else logits
        return torch.tanh(out / cap) * cap if cap is not None else out

    def parallel_residual(self, layer: int) -> bool:
        """Whether the block adds attention and MLP to the same input (GPT-NeoX's default)."""
        return bool(getattr(self.layers[layer], "use_parallel_residual", False))

    def backbone(self) -> nn.Module:
        """The model without its LM head; its output is the final-normed hidden state."""
        base: nn.Module = self.model.base_model
        return base

    def unembedding(self) -> nn.Module:
        """The model's LM head module itself (Linear): logits before any logit scale or final soft-cap."""
        head = self.model.get_output_embeddings()  # type: ignore[no-untyped-call]
        assert isinstance(head, nn.Module)
        return head

    def lm_head(self) -> nn.Module:
        """Hidden states → the model's logits: the unembedding, wrapped in Readout where the family rescales
        or soft-caps its logits (Cohere, Granite, Gemma 2), so every caller's loss and probabilities are the model's.
        """
        head = self.unembedding()
        if self.logit_scale() == 1.0 and self.final_softcap() is None:
            return head
        if not isinstance(self._readout_head, Readout) or self._readout_head.head is not head:
            self._readout_head = Readout(head, self)
        return self._readout_head


class Readout(nn.Module):
    """The unembedding followed by the model's logit scale and final soft-cap; `weight`/`bias` are the head's."""

    def __init__(self, head: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.head = head
        self.readout = adapter.readout

    @property
    def weight(self) -> torch.Tensor:
        weight: torch.Tensor = getattr(self.head, "weight")  # noqa: B009
        return weight

    @property
    def bias(self) -> torch.Tensor | None:
        bias = getattr(self.head, "bias", None)
        return bias if isinstance(bias, torch.Tensor) else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.readout(self.head(hidden))  # (…, vocab)
        return logits


def _layout(model: PreTrainedModel, model_type: str) -> Layout:
    cfg = model.config
    n_heads = int(cfg.num_attention_heads)
    d_model = int(cfg.hidden_size)
    n_kv = own_attention.kv_heads(cfg) or getattr(cfg, "num_key_value_heads", None) or n_heads
    head_dim = getattr(cfg, "head_dim", None) or d_model // n_heads
    max_pos = next((getattr(cfg, name) for name in MAX_POSITIONS if getattr(cfg, name, None)), 0)
    return Layout(
        architecture=model_type,
        n_layers=int(cfg.num_hidden_layers),  # type: ignore[arg-type]
        n_heads=n_heads,
        n_kv_heads=int(n_kv),
        head_dim=int(head_dim),
        d_model=d_model,
        vocab_size=int(cfg.vocab_size),  # type: ignore[arg-type]
        max_positions=int(max_pos or 0),
    )

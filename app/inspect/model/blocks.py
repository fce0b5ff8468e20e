"""How a decoder block writes attention and MLP into the residual stream, and norms frozen at one point.

Direct logit attribution splits the stream into parts, so it needs each block's wiring: the norm before
attention, a norm on the attention output (Gemma 2/3, OLMo 2 — "sandwich" blocks), whether the MLP
reads the block input (parallel blocks: Phi, GPT-J, Cohere, NeoX/StableLM with `use_parallel_residual`)
or the stream after attention, the norm before the MLP, a norm on its output, and a multiplier on both
outputs (Granite's `residual_multiplier`). Structure cannot tell parallel from sequential, so the
families that differ from pre-norm sequential blocks are listed in PLANS (Falcon's plan depends on its
config: `falcon_plan`); `dla.check` verifies the plan against a real forward before DLA is served.

A norm is y = A ⊙ P(x) / σ(x) + B (P centres for LayerNorm, σ is the RMS of P(x)). Frozen at one input
x₀ (σ fixed at σ(x₀)) it is affine, so the parts of its input map to parts of its output that sum exactly
to y(x₀). `norm_form` finds A, P and B by trying the forms families use on a probe input.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal
from weakref import WeakKeyDictionary

import torch
from torch import nn
from transformers import PretrainedConfig

from app.inspect.model.adapters import Adapter


@dataclass(frozen=True, kw_only=True)
class BlockPlan:
    """One block's wiring; a norm path "" means there is none (identity)."""

    attn_norm: str
    attn_out_norm: str = ""  # applied to the attention output before it joins the stream
    mlp_norm: str  # for a parallel block with one shared norm, the same as attn_norm
    mlp_out_norm: str = ""
    parallel: bool = False  # the MLP reads the block input, not the stream after attention
    residual_multiplier: float = 1.0  # both outputs are scaled by it before they join the stream


_SANDWICH = BlockPlan(
    attn_norm="input_layernorm",
    attn_out_norm="post_attention_layernorm",
    mlp_norm="pre_feedforward_layernorm",
    mlp_out_norm="post_feedforward_layernorm",
)
# where the family is not pre-norm sequential; the residual multiplier is read from the config
PLANS: dict[str, BlockPlan] = {
    "gemma2": _SANDWICH,
    "gemma3_text": _SANDWICH,
    "olmo2": BlockPlan(
        attn_norm="", attn_out_norm="post_attention_layernorm", mlp_norm="", mlp_out_norm="post_feedforward_layernorm"
    ),
    "phi": BlockPlan(attn_norm="input_layernorm", mlp_norm="input_layernorm", parallel=True),
    "gptj": BlockPlan(attn_norm="ln_1", mlp_norm="ln_1", parallel=True),
    "cohere": BlockPlan(attn_norm="input_layernorm", mlp_norm="input_layernorm", parallel=True),
}


def falcon_plan(config: PretrainedConfig) -> BlockPlan:
    """Falcon's wiring, from its config as FalconDecoderLayer reads it: the new decoder architecture (40B, 180B) is
    parallel with a norm each (or one shared), the old one parallel with one shared norm (7B) or sequential (RW)."""
    new = bool(getattr(config, "new_decoder_architecture", False))
    if new and config.num_ln_in_parallel_attn == 2:
        return BlockPlan(attn_norm="ln_attn", mlp_norm="ln_mlp", parallel=True)
    if new or config.parallel_attn:
        return BlockPlan(attn_norm="input_layernorm", mlp_norm="input_layernorm", parallel=True)
    return BlockPlan(attn_norm="input_layernorm", mlp_norm="post_attention_layernorm")


def block_plan(adapter: Adapter, layer: int) -> BlockPlan:
    """The wiring of block `layer`: from PLANS (Falcon's from its config), else pre-norm sequential (parallel where
    the block says so)."""
    model_type = adapter.layout.architecture
    multiplier = float(getattr(adapter.model.config, "residual_multiplier", 1.0) or 1.0)
    if model_type in PLANS:
        return replace(PLANS[model_type], residual_multiplier=multiplier)
    if model_type == "falcon":
        return falcon_plan(adapter.model.config)
    fam = adapter.family
    return BlockPlan(
        attn_norm=fam.attn_norm,
        mlp_norm=fam.mlp_norm,
        parallel=adapter.parallel_residual(layer),  # GPT-NeoX, StableLM: two norms, both on the block input
        residual_multiplier=multiplier,
    )


def part(adapter: Adapter, layer: int, path: str) -> nn.Module:
    """Block `layer`'s submodule at `path`, or the identity for ""."""
    return adapter.block_part(layer, path) if path else nn.Identity()


@dataclass(frozen=True)
class NormForm:
    """y = A ⊙ P(x) · rsqrt(mean(P(x)²) + eps) + B, in float32 or wider (identity: scale None)."""

    scale: torch.Tensor | None  # A (d,), None for the identity
    bias: torch.Tensor | None  # B (d,)
    centred: bool
    eps: float


IDENTITY = NormForm(scale=None, bias=None, centred=False, eps=0.0)
Gain = Literal["w", "1+w", "1"]  # A is the weight, one plus the weight (Gemma) or ones (no weight)


@dataclass(frozen=True)
class NormKind:
    """Which candidate form a norm module has: structural, so found once per module; its tensors are read anew."""

    centred: bool  # P subtracts the mean (LayerNorm)
    gain: Gain


_kinds: WeakKeyDictionary[nn.Module, NormKind] = WeakKeyDictionary()  # per norm module, found by norm_form


class UnknownNorm(ValueError):
    """A norm whose output none of the known forms reproduces."""


def norm_form(norm: nn.Module) -> NormForm:
    """The form of `norm` with its current parameters; the kind is found once by matching candidates
    (gain w, 1 + w or none; centred or not) on a probe input (mean ≠ 0, so centring shows).

    Raises:
        UnknownNorm: no candidate reproduces the norm.
    """
    if isinstance(norm, nn.Identity):
        return IDENTITY
    weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
    param = next(norm.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    wide = torch.promote_types(dtype, torch.float32)
    d = weight.shape[0] if isinstance(weight, torch.Tensor) else _width(norm)
    eps_attr = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    eps = float(eps_attr) if isinstance(eps_attr, float | int) else 1e-5
    w = weight.detach().to(wide) if isinstance(weight, torch.Tensor) else None
    b = bias.detach().to(wide) if isinstance(bias, torch.Tensor) else None
    gains: dict[Gain, torch.Tensor | None] = {
        "w": w,
        "1+w": None if w is None else 1 + w,
        "1": torch.ones(d, device=device, dtype=wide),
    }
    if norm in _kinds:
        kind = _kinds[norm]
        return NormForm(gains[kind.gain], b, kind.centred, eps)
    gen = torch.Generator().manual_seed(0)
    probe = (torch.randn(d, generator=gen) * 2 + 0.7).to(device, dtype)  # (d,)
    with torch.inference_mode():
        expected = norm(probe[None])[0].to(wide)
    tol = 1e-3 if dtype.itemsize >= 4 else 3e-2  # bf16/fp16 outputs carry 2⁻⁸ relative rounding
    for centred in (False, True):
        for gain, scale in gains.items():
            form = NormForm(scale, b, centred, eps)
            if scale is not None and torch.allclose(apply_norm(form, probe.to(wide)), expected, rtol=tol, atol=tol):
                _kinds[norm] = NormKind(centred, gain)
                return form
    raise UnknownNorm(f"{type(norm).__name__} is not an RMSNorm, (1 + w) RMSNorm or LayerNorm")


def _width(norm: nn.Module) -> int:
    shape = getattr(norm, "normalized_shape", None)
    if isinstance(shape, tuple | list) and len(shape) == 1:
        return int(shape[0])
    raise UnknownNorm(f"{type(norm).__name__} has neither a weight nor a normalized_shape")


def apply_norm(form: NormForm, x: torch.Tensor) -> torch.Tensor:
    """The norm itself on (…, d) float input, by its form."""
    if form.scale is None:
        return x
    c = x - x.mean(-1, keepdim=True) if form.centred else x
    y = form.scale * c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + form.eps)
    return y if form.bias is None else y + form.bias


@dataclass(frozen=True)
class Frozen:
    """A norm frozen at one input: linear(v) = A ⊙ P(v) · s; norm(x₀) = linear(x₀) + const."""

    form: NormForm
    s: float

    def linear(self, v: torch.Tensor) -> torch.Tensor:
        """The frozen linear part on (…, d) float parts."""
        if self.form.scale is None:
            return v
        c = v - v.mean(-1, keepdim=True) if self.form.centred else v
        return self.form.scale * c * self.s

    def const(self, like: torch.Tensor) -> torch.Tensor:
        """B (d,), zeros (shaped, typed and placed like `like`) without a bias."""
        return self.form.bias.to(like.dtype) if self.form.bias is not None else torch.zeros_like(like)

    def adjoint(self, u: torch.Tensor) -> torch.Tensor:
        """g with u · linear(v) = g · v for every v (centring is self-adjoint)."""
        if self.form.scale is None:
            return u
        g = u * self.form.scale * self.s
        return g - g.mean() if self.form.centred else g


def freeze(norm: nn.Module, x0: torch.Tensor) -> Frozen:
    """`norm` frozen at the (d,) float input x0."""
    form = norm_form(norm)
    if form.scale is None:
        return Frozen(form, 1.0)
    c = x0 - x0.mean() if form.centred else x0
    return Frozen(form, float(torch.rsqrt(c.double().pow(2).mean() + form.eps)))

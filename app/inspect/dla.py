"""Direct logit attribution: each head's, MLP's and the embeddings' linear share of one logit at one position.

With the final norm's scale (and LayerNorm's mean) frozen at the run's value at the position, the logit
is linear in the residual stream, which is the embeddings plus every attention and MLP output. Each
part is recomputed at that one position from the run's cached block inputs and queries/keys (the
attention row from the captured q·kᵀ mixes the normed block inputs, which are then projected to values),
so no forward runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from app.inspect.adapters import Adapter
from app.inspect.loading import Loaded
from app.inspect.runs import Run


@dataclass
class Attribution:
    """The parts of logit[target] (− logit[contrast]) at one position; they sum to `logit`."""

    logit: float  # the model's own logit (difference)
    heads: torch.Tensor  # (n_layers, n_heads)
    mlp: torch.Tensor  # (n_layers,)
    embed: float  # token (and learned position) embeddings
    other: float  # every bias: output projections, MLP outputs, final norm, LM head


def value_states(adapter: Adapter, layer: int, normed: torch.Tensor) -> torch.Tensor:
    """The attention values of block `layer` for (T, d_model) normed inputs: (T, n_kv_heads, head_dim)."""
    layout, attn = adapter.layout, adapter.attention(layer)
    proj: Any = getattr(attn, {"llama": "v_proj", "gpt2": "c_attn", "gpt_neox": "query_key_value"}[adapter.family.name])
    width = layout.n_kv_heads * layout.head_dim
    family = adapter.family.name
    if family == "llama":
        v = proj(normed)  # (T, n_kv * head_dim)
    elif family == "gpt2":  # c_attn is a Conv1D (d, 3d): q, k, v side by side
        v = torch.addmm(proj.bias[2 * width :], normed, proj.weight[:, 2 * width :])
    elif family == "gpt_neox":  # query_key_value rows are per head: [q, k, v] of head_dim each
        hd = layout.head_dim
        w = proj.weight.view(layout.n_heads, 3 * hd, -1)[:, 2 * hd :].reshape(width, -1)
        b = None if proj.bias is None else proj.bias.view(layout.n_heads, 3 * hd)[:, 2 * hd :].reshape(width)
        v = F.linear(normed, w, b)
    else:
        raise NotImplementedError(f"no value projection for family {family!r}")
    values: torch.Tensor = v.view(normed.shape[0], layout.n_kv_heads, layout.head_dim)
    return values


def per_head(out_proj: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Each head's output through its columns of the output projection, bias excluded: (n_heads, d_model).

    z: (n_heads, head_dim), one position. Runs the projection on a block-diagonal input, so
    Linear (o_proj, dense) and GPT-2's Conv1D (c_proj) are handled alike.
    """
    n_heads, head_dim = z.shape
    eye = torch.eye(n_heads, dtype=z.dtype, device=z.device)
    blocks = (eye[:, :, None] * z[None]).reshape(n_heads, n_heads * head_dim)  # row h: z_h in its slice
    out: torch.Tensor = out_proj(blocks)
    bias = getattr(out_proj, "bias", None)
    return out - bias if isinstance(bias, torch.Tensor) else out


@dataclass
class Components:
    """The residual stream at one position, split into its parts (float32, each (…, d_model))."""

    embed: torch.Tensor  # (d,)
    heads: torch.Tensor  # (n_layers, n_heads, d)
    mlp: torch.Tensor  # (n_layers, d), MLP output bias excluded
    biases: torch.Tensor  # (d,): every output-projection and MLP-output bias, summed
    final: torch.Tensor  # (d,): the residual stream entering the final norm


@torch.inference_mode()
def components(loaded: Loaded, run: Run, position: int) -> Components:
    """Recompute every block's attention and MLP output at `position` from the run's cached block inputs."""
    adapter, layout = loaded.adapter, loaded.adapter.layout
    fam = adapter.family
    dtype = next(adapter.model.parameters()).dtype
    p = position
    heads, mlps = [], []
    biases = torch.zeros(layout.d_model, device=loaded.device)
    resid = run.layer_inputs[0][0, p].float()
    embed = resid
    for layer in range(layout.n_layers):
        x = run.layer_inputs[layer][0, : p + 1]  # (p+1, d): the block input up to the position
        normed = adapter.block_part(layer, fam.attn_norm)(x).float()  # (p+1, d)
        rows = run.maps(layer, list(range(layout.n_heads)), layout.group_size, slice(p, p + 1))[:, 0, : p + 1]
        # Σ_k a_k (W_V n_k + b_V) = W_V (Σ_k a_k n_k) + b_V, rows summing to 1: mix first, project n_heads rows
        mixed = rows.to(normed.device) @ normed  # (n_heads, d)
        v = value_states(adapter, layer, mixed.to(dtype)).float()  # (n_heads, n_kv, head_dim)
        kv = torch.arange(layout.n_heads, device=v.device) // layout.group_size
        z = v[torch.arange(layout.n_heads, device=v.device), kv]  # (n_heads, head_dim)
        out_proj = adapter.out_proj(layer)
        head_out = per_head(out_proj, z.to(dtype)).float()  # (n_heads, d)
        attn_bias = adapter.out_proj_bias(layer)
        attn_out = head_out.sum(0) + (0 if attn_bias is None else attn_bias.float())
        x_p = x[p].float()
        mlp_in = x_p if adapter.parallel_residual(layer) else x_p + attn_out
        mlp_norm = adapter.block_part(layer, fam.mlp_norm)
        mlp_out = adapter.block_part(layer, "mlp")(mlp_norm(mlp_in.to(dtype))).float()  # (d,)
        mlp_bias = getattr(adapter.block_part(layer, fam.mlp_out), "bias", None)
        if isinstance(mlp_bias, torch.Tensor):
            mlp_out = mlp_out - mlp_bias.float()
            biases = biases + mlp_bias.float()
        if attn_bias is not None:
            biases = biases + attn_bias.float()
        heads.append(head_out)
        mlps.append(mlp_out)
        resid = x_p + attn_out + mlp_out + (mlp_bias.float() if isinstance(mlp_bias, torch.Tensor) else 0)
    return Components(embed=embed, heads=torch.stack(heads), mlp=torch.stack(mlps), biases=biases, final=resid)


def frozen_direction(norm: nn.Module, resid: torch.Tensor, unembed: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The final norm frozen at `resid`, folded into an unembedding direction.

    Returns g (d,) and a constant c with  unembed · norm(x) = g · x + c  for x = resid exactly
    (RMSNorm: g = unembed ⊙ w / rms(resid); LayerNorm also centres g and c = unembed · bias).
    """
    weight = getattr(norm, "weight", None)
    w = weight.float() if isinstance(weight, torch.Tensor) else torch.ones_like(resid)
    if isinstance(norm, nn.LayerNorm):
        scale = torch.rsqrt(resid.var(unbiased=False) + norm.eps)
        g = unembed * w * scale
        bias = norm.bias
        const = float(unembed @ bias.float()) if isinstance(bias, torch.Tensor) else 0.0
        return g - g.mean(), const
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
    scale = torch.rsqrt(resid.pow(2).mean() + eps)
    return unembed * w * scale, 0.0


@torch.inference_mode()
def attribute(loaded: Loaded, run: Run, position: int, target: int, contrast: int | None = None) -> Attribution:
    """Direct logit attribution of logit[target] (− logit[contrast]) at `position` (≥ 0).

    Args:
        loaded: the model.
        run: the analysed text (its cached block inputs and queries/keys are used; no forward runs).
        position: query position, 0 ≤ position < n_tokens.
        target: token id whose logit is explained.
        contrast: optional token id; then the parts explain logit[target] − logit[contrast].
    """
    lm_head = loaded.adapter.lm_head()
    parts = components(loaded, run, position)
    weight: torch.Tensor = getattr(lm_head, "weight").float()  # noqa: B009 (typed as Tensor | Module)
    unembed = weight[target] - (weight[contrast] if contrast is not None else 0)
    g, const = frozen_direction(loaded.adapter.final_norm(), parts.final, unembed)
    bias = getattr(lm_head, "bias", None)
    if isinstance(bias, torch.Tensor):
        const += float(bias[target]) - (float(bias[contrast]) if contrast is not None else 0.0)
    logits = lm_head(run.hidden[position : position + 1]).float()[0]  # (vocab,)
    logit = float(logits[target]) - (float(logits[contrast]) if contrast is not None else 0.0)
    return Attribution(
        logit=logit,
        heads=(parts.heads @ g).cpu(),
        mlp=(parts.mlp @ g).cpu(),
        embed=float(parts.embed @ g),
        other=float(parts.biases @ g) + const,
    )

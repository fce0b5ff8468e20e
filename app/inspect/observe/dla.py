"""Direct logit attribution: each head's, MLP's and the embeddings' linear share of one logit at one position.

With every norm's scale (and LayerNorm's mean) frozen at the run's value at the position, the logit is
linear in the residual stream, which is the embeddings plus every attention and MLP write. Each part is
recomputed at that one position from the run's cached block inputs and queries/keys (the attention row
from the captured q·kᵀ mixes the normed block inputs, which are then projected to values), so no
forward runs. Block wiring (parallel blocks, norms on the attention and MLP outputs, Granite's residual
multiplier) comes from app.inspect.model.blocks: a norm on the attention output (Gemma 2/3, OLMo 2) is frozen
at the layer's whole attention output, so each head's write is that frozen linear map of its own output
and the heads' writes still sum to the norm's output. MoE MLPs are one term per layer.
A logit scale (Cohere, Granite) is linear and folded in. A final soft-cap (Gemma 2: cap·tanh(z/cap)) is
not linear: the parts explain the pre-cap logit z, and the model's own (capped) logit is reported beside it.
`check` runs the whole decomposition on a probe before DLA is served and names what does not hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from app.inspect.engine.hooks import recording_block_inputs, recording_head_outputs
from app.inspect.engine.runs import Run
from app.inspect.model import capture
from app.inspect.model.adapters import Adapter
from app.inspect.model.blocks import UnknownNorm, block_plan, freeze, part
from app.inspect.model.loaded import Loaded

PROBE_TOKENS = 8


@dataclass
class Attribution:
    """The parts of logit[target] (− logit[contrast]) at one position, before any final soft-cap.

    They sum to `logit`."""

    logit: float  # the model's logit (difference) before the final soft-cap: what the parts explain
    heads: torch.Tensor  # (n_layers, n_heads)
    mlp: torch.Tensor  # (n_layers,)
    embed: float  # token (and learned position) embeddings
    other: float  # every bias: output projections, MLP outputs, norms, LM head
    model_logit: float  # the model's own logit (difference), after the soft-cap; = logit without one
    final_softcap: float | None = None  # Gemma 2's cap, when the model has one


def weight_of(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W (out, in), bias) of a Linear or GPT-2's Conv1D (whose weight is (in, out))."""
    weight, bias = getattr(module, "weight"), getattr(module, "bias", None)  # noqa: B009
    assert isinstance(weight, torch.Tensor)
    if not isinstance(module, nn.Linear) and isinstance(getattr(module, "nf", None), int):
        weight = weight.T
    return weight, bias if isinstance(bias, torch.Tensor) else None


def value_weight(adapter: Adapter, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The value projection of block `layer`: W (n_kv_heads * head_dim, d_model) and its bias, or None.

    Separate projections ([q, k, v]), fused ones with q, k, v side by side (GPT-2's c_attn, Phi-3's
    qkv_proj, MPT's Wqkv), or a query_key_value whose rows go per KV head: its query heads, its key, its
    value (GPT-NeoX and BLOOM: [q, k, v] per head; Falcon: all queries then k, v with multi-query).
    """
    layout = adapter.layout
    width = layout.n_kv_heads * layout.head_dim
    projs = adapter.qkv_projections(layer)
    w, b = weight_of(projs[-1])
    if len(projs) == 3:
        return w, b
    if hasattr(adapter.attention(layer), "query_key_value"):  # per KV head: g query heads, k, v of head_dim rows
        hd, g = layout.head_dim, layout.group_size
        w = w.view(layout.n_kv_heads, (g + 2) * hd, -1)[:, (g + 1) * hd :].reshape(width, -1)
        return w, None if b is None else b.view(layout.n_kv_heads, (g + 2) * hd)[:, (g + 1) * hd :].reshape(width)
    return w[-width:], None if b is None else b[-width:]


def per_head(out_proj: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Each head's output through its columns of the output projection, bias excluded: (n_heads, d_model).

    z: (n_heads, head_dim), one position.
    """
    n_heads, head_dim = z.shape
    w, _ = weight_of(out_proj)  # (d, n_heads * head_dim)
    return torch.einsum("he,dhe->hd", z, w.to(z.dtype).view(-1, n_heads, head_dim))


@dataclass
class Components:
    """The residual stream at one position, split into its parts (float32 or wider, each (…, d_model))."""

    embed: torch.Tensor  # (d,)
    z: torch.Tensor  # (n_layers, n_heads, head_dim): each head's output-projection input
    heads: torch.Tensor  # (n_layers, n_heads, d): each head's write into the stream
    mlp: torch.Tensor  # (n_layers, d), MLP output bias excluded
    biases: torch.Tensor  # (d,): every output-projection, MLP-output and norm bias, summed
    final: torch.Tensor  # (d,): the residual stream entering the final norm
    block_error: float  # largest |rebuilt block output − the next block's cached input|, relative


@dataclass
class _Block:
    """One block's parts at the position, on the block's device."""

    z: torch.Tensor  # (n_heads, head_dim)
    heads: torch.Tensor  # (n_heads, d)
    mlp: torch.Tensor  # (d,)
    biases: torch.Tensor  # (d,)
    out: torch.Tensor  # (d,): the stream after the block, rebuilt


def _block(adapter: Adapter, run: Run, layer: int, p: int, wide: torch.dtype) -> _Block:
    """Block `layer`'s attention and MLP writes at position p, from its cached input and attention row."""
    layout, plan = adapter.layout, block_plan(adapter, layer)
    hd, n_heads, rm = layout.head_dim, layout.n_heads, plan.residual_multiplier
    kv = torch.arange(n_heads) // layout.group_size
    x = run.layer_inputs[layer][0, : p + 1]  # (p+1, d): the block input up to the position
    dtype, dev = x.dtype, x.device
    normed = part(adapter, layer, plan.attn_norm)(x).to(wide)  # (p+1, d)
    rows = run.maps(layer, list(range(n_heads)), layout.group_size, slice(p, p + 1))[:, 0, : p + 1]
    rows = rows.to(dev, wide)  # (n_heads, p+1); sums to < 1 with sinks
    w_v, b_v = value_weight(adapter, layer)
    clip = adapter.qkv_clip(layer)
    if clip is None:  # Σ_k a_k (W_V n_k + b_V) = W_V (Σ_k a_k n_k) + b_V Σ_k a_k: mix first, project n_heads rows
        mixed = rows @ normed  # (n_heads, d)
        z = torch.einsum("hd,hed->he", mixed, w_v.to(wide).view(layout.n_kv_heads, hd, -1)[kv])  # (n_heads, hd)
        if b_v is not None:
            z = z + rows.sum(-1, keepdim=True) * b_v.to(wide).view(layout.n_kv_heads, hd)[kv]
    else:  # values clipped (MPT, OLMo): not linear, so each key's value is projected and clipped, then mixed
        values = normed @ w_v.to(wide).T + (0 if b_v is None else b_v.to(wide))  # (p+1, n_kv_heads * hd)
        values = values.clamp(-clip, clip).view(p + 1, layout.n_kv_heads, hd)[:, kv]  # (p+1, n_heads, hd)
        z = torch.einsum("hk,khe->he", rows, values)
    head_out = per_head(adapter.out_proj(layer), z)  # (n_heads, d)
    zero = torch.zeros(layout.d_model, device=dev, dtype=wide)
    o_bias = adapter.out_proj_bias(layer)
    o_bias_w = zero if o_bias is None else o_bias.to(wide)
    f_attn = freeze(part(adapter, layer, plan.attn_out_norm), head_out.sum(0) + o_bias_w)
    head_writes = rm * f_attn.linear(head_out)  # (n_heads, d)
    attn_bias = rm * (f_attn.linear(o_bias_w) + f_attn.const(zero))
    attn_write = head_writes.sum(0) + attn_bias
    x_p = x[p].to(wide)
    mlp_in = x_p if plan.parallel else x_p + attn_write
    mlp_normed = part(adapter, layer, plan.mlp_norm)(mlp_in.to(dtype).view(1, 1, -1))
    m = adapter.mlp_output(layer, mlp_normed).reshape(-1).to(wide)  # (d,)
    mlp_out = adapter.family.mlp_out
    m_bias = getattr(adapter.block_part(layer, mlp_out), "bias", None) if mlp_out else None
    m_bias_w = m_bias.to(wide) if isinstance(m_bias, torch.Tensor) else zero
    f_mlp = freeze(part(adapter, layer, plan.mlp_out_norm), m)
    biases = attn_bias + rm * (f_mlp.linear(m_bias_w) + f_mlp.const(zero))
    rebuilt = x_p + attn_write + rm * (f_mlp.linear(m) + f_mlp.const(zero))
    return _Block(z, head_writes, rm * f_mlp.linear(m - m_bias_w), biases, rebuilt)


@torch.inference_mode()
def components(loaded: Loaded | Adapter, run: Run, position: int) -> Components:
    """Recompute every block's attention and MLP write at `position` from the run's cached block inputs."""
    adapter = loaded if isinstance(loaded, Adapter) else loaded.adapter
    n_layers, p = adapter.layout.n_layers, position
    wide = torch.promote_types(next(adapter.model.parameters()).dtype, torch.float32)
    x0 = run.layer_inputs[0][0, p].to(wide)
    device = x0.device  # parts are gathered here (blocks may sit on other devices under a device_map)
    blocks = [_block(adapter, run, layer, p, wide) for layer in range(n_layers)]
    error = 0.0
    for layer, block in enumerate(blocks[:-1]):
        cached = run.layer_inputs[layer + 1][0, p].to(block.out.device, wide)
        error = max(error, float((block.out - cached).abs().max() / (1 + cached.abs().max())))
    return Components(
        embed=x0,
        z=torch.stack([b.z.to(device) for b in blocks]),
        heads=torch.stack([b.heads.to(device) for b in blocks]),
        mlp=torch.stack([b.mlp.to(device) for b in blocks]),
        biases=torch.stack([b.biases.to(device) for b in blocks]).sum(0),
        final=blocks[-1].out.to(device),
        block_error=error,
    )


@torch.inference_mode()
def attribute(loaded: Loaded, run: Run, position: int, target: int, contrast: int | None = None) -> Attribution:
    """Direct logit attribution of logit[target] (− logit[contrast]) at `position` (≥ 0), before a final soft-cap.

    Args:
        loaded: the model.
        run: the analysed text (its cached block inputs and queries/keys are used; no forward runs).
        position: query position, 0 ≤ position < n_tokens.
        target: token id whose logit is explained.
        contrast: optional token id; then the parts explain logit[target] − logit[contrast].
    """
    return _attribute(loaded.adapter, run, position, target, contrast)


def _attribute(adapter: Adapter, run: Run, position: int, target: int, contrast: int | None) -> Attribution:
    lm_head = adapter.unembedding()
    parts = components(adapter, run, position)
    wide = parts.final.dtype
    weight, bias = weight_of(lm_head)  # (vocab, d)
    unembed = weight[target].to(wide) - (weight[contrast].to(wide) if contrast is not None else 0)
    frozen = freeze(adapter.final_norm(), parts.final)
    scale = adapter.logit_scale()
    g = frozen.adjoint(unembed) * scale  # (d,)
    const = float(unembed @ frozen.const(unembed)) * scale
    if bias is not None:
        const += (float(bias[target]) - (float(bias[contrast]) if contrast is not None else 0.0)) * scale
    raw = lm_head(run.hidden[position : position + 1]).to(wide)[0] * scale  # (vocab,): before the soft-cap
    cap = adapter.final_softcap()
    capped = raw if cap is None else torch.tanh(raw / cap) * cap  # what adapter.lm_head() gives

    def pick(logits: torch.Tensor) -> float:
        return float(logits[target]) - (float(logits[contrast]) if contrast is not None else 0.0)

    return Attribution(
        logit=pick(raw),
        heads=(parts.heads @ g).cpu(),
        mlp=(parts.mlp @ g).cpu(),
        embed=float(parts.embed @ g),
        other=float(parts.biases @ g) + const,
        model_logit=pick(capped),
        final_softcap=cap,
    )


@torch.inference_mode()
def check(adapter: Adapter) -> str | None:
    """Why DLA would not be exact on this model (None: it is), from one probe forward.

    Rebuilds every head's output-projection input and every block's output at two positions and
    compares them with the forward's own, then checks the parts sum to the logit.
    """
    layout = adapter.layout
    device = next(adapter.model.parameters()).device
    dtype = next(adapter.model.parameters()).dtype
    tol = 1e-3 if dtype.itemsize >= 4 else 5e-2
    ids = [(7 * i + 3) % layout.vocab_size for i in range(PROBE_TOKENS)]
    inputs: dict[int, torch.Tensor] = {}
    hooked: dict[int, torch.Tensor] = {}

    with (
        capture.recording() as rec,
        recording_block_inputs(adapter, inputs),
        recording_head_outputs(adapter, hooked, keep=lambda x: x[0].detach()),  # (T, n_heads * head_dim)
    ):
        out = adapter.backbone()(input_ids=torch.tensor([ids], device=device), use_cache=False)
    if len(rec.captured) != layout.n_layers:
        return "direct logit attribution needs every layer's attention captured"
    run = Run("probe", "", ids, [""] * len(ids), rec.captured, out.last_hidden_state[0], {}, inputs)
    name = layout.architecture
    for p in (PROBE_TOKENS // 2, PROBE_TOKENS - 1):
        try:
            parts = components(adapter, run, p)
        except UnknownNorm as err:
            return f"direct logit attribution cannot freeze a norm of {name}: {err}"
        for layer in range(layout.n_layers):
            want = hooked[layer][p].to(parts.z.dtype).view(layout.n_heads, layout.head_dim)
            if (parts.z[layer] - want).abs().max() > tol * (1 + want.abs().max()):
                return f"direct logit attribution cannot rebuild the head outputs of {name} (layer {layer})"
        if parts.block_error > tol:
            return f"direct logit attribution does not know how {name}'s blocks combine attention and MLP"
        target = int(adapter.unembedding()(run.hidden[p : p + 1])[0].argmax())
        a = _attribute(adapter, run, p, target, None)
        total = float(a.heads.sum() + a.mlp.sum()) + a.embed + a.other
        if abs(total - a.logit) > tol * (1 + abs(a.logit)):
            return f"direct logit attribution's parts do not sum to {name}'s logit ({total:.4g} vs {a.logit:.4g})"
    return None

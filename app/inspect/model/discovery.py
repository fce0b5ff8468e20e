"""Find a decoder's layout from the model itself: blocks, attention, output projection, norms.

A family without an entry in adapters.FAMILIES is described by what its modules are: the block list
is the ModuleList of num_hidden_layers blocks under the base model; the attention module is the
block's child that has a projection from n_heads·head_dim to d_model (the heads side by side — the
input HeadScope gates and reads), checked by shape (by name among OUT_PROJS where q_proj has the same
shape); the final norm is the base model's norm child. The MLP is the block's `mlp` (or `ffn`); whether
its forward takes the residual (BLOOM and MPT add it inside) is read off its signature.
Anything that cannot be found is named in the UnsupportedArchitecture message.
"""

from __future__ import annotations

import inspect

from torch import nn
from transformers import PreTrainedModel

from app.inspect.model.families import TUPLE_BLOCKS, Family, UnsupportedArchitecture

OUT_PROJS = ("o_proj", "out_proj", "dense", "c_proj", "wo")  # names of output projections, where shape cannot tell
FINAL_NORMS = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f")
ATTN_NORMS = ("input_layernorm", "ln_1", "ln_attn", "norm_1")
MLP_NORMS = ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2", "norm_2", "ln_mlp")
MLPS = ("mlp", "ffn")
MLP_OUTS = ("down_proj", "fc2", "c_proj", "fc_out", "dense_4h_to_h")  # under the MLP


def in_out(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a Linear or GPT-2's Conv1D, else None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight = getattr(module, "weight", None)
    nx, nf = getattr(module, "nx", None), getattr(module, "nf", None)
    if weight is not None and isinstance(nx, int) and isinstance(nf, int):  # Conv1D: weight (nx, nf)
        return nx, nf
    return None


def discover(model: PreTrainedModel, n_heads: int, head_dim: int, d_model: int, n_layers: int) -> Family:
    """The Family of `model`, found from its modules.

    Raises:
        UnsupportedArchitecture: naming the part that could not be found.
    """
    model_type = str(getattr(model.config, "model_type", "?"))

    def refuse(what: str) -> UnsupportedArchitecture:
        return UnsupportedArchitecture(f"architecture {model_type!r}: cannot find {what}")

    prefix = model.base_model_prefix
    base = getattr(model, prefix, None)
    if not isinstance(base, nn.Module):
        raise refuse(f"the base model (attribute {prefix!r})")
    lists = [
        name for name, child in base.named_children() if isinstance(child, nn.ModuleList) and len(child) == n_layers
    ]
    if len(lists) != 1:
        raise refuse(f"one list of {n_layers} decoder blocks under {prefix!r} (found {lists})")
    block = getattr(base, lists[0])[0]
    heads_width = n_heads * head_dim
    found = [
        (attn_name, proj_name)
        for attn_name, attn in block.named_children()
        for proj_name, proj in attn.named_children()
        if in_out(proj) == (heads_width, d_model) and attn_name not in ("mlp", "feed_forward", "ffn")
    ]
    if len(found) > 1:  # n_heads·head_dim = d_model: q_proj has the same shape; the name tells them apart
        found = [(attn, proj) for attn, proj in found if proj in OUT_PROJS]
    if len(found) != 1:
        raise refuse(
            f"one attention output projection from n_heads·head_dim = {heads_width} to d_model = {d_model} "
            f"in a block (found {found})"
        )
    attention, out_proj = found[0]
    final_norm = next((name for name in FINAL_NORMS if hasattr(base, name)), None)
    if final_norm is None:
        raise refuse(f"the final norm (one of {', '.join(FINAL_NORMS)}) under {prefix!r}")
    # the norms and MLP output below are read by DLA only; "" marks what the block does not have
    attn_norm = next((name for name in ATTN_NORMS if hasattr(block, name)), "")
    mlp_norm = next((name for name in MLP_NORMS if hasattr(block, name)), "")
    mlp = next((name for name in MLPS if hasattr(block, name)), "mlp")
    mlp_out = next((f"{mlp}.{name}" for name in MLP_OUTS if _has_path(block, f"{mlp}.{name}")), "")
    forward = getattr(getattr(block, mlp, None), "forward", None)
    takes_residual = forward is not None and "residual" in inspect.signature(forward).parameters
    return Family(
        name=model_type,
        layers=f"{prefix}.{lists[0]}",
        attention=attention,
        out_proj=out_proj,
        final_norm=f"{prefix}.{final_norm}",
        attn_norm=attn_norm,
        mlp_norm=mlp_norm,
        mlp_out=mlp_out,
        mlp=mlp,
        mlp_residual=takes_residual,
        block_returns_tuple=model_type in TUPLE_BLOCKS,
    )


def _has_path(module: nn.Module, path: str) -> bool:
    for part in path.split("."):
        if not hasattr(module, part):
            return False
        module = getattr(module, part)
    return True

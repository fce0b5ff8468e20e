"""Loading: registry, unsupported architectures, safetensors only, device and dtype choice, and the start-up
checks' verdict kept in a model's cache folder."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from app.config import Settings
from app.inspect import checks, loading
from app.inspect.model.adapters import Adapter
from app.inspect.model.families import UnsupportedArchitecture
from tests.support.models import gpt2_tokenizer, save_tiny


def test_every_registry_entry_has_the_keys_its_source_needs() -> None:
    """Read raw, so a dotted name left unquoted (nested tables without a `source`) fails here."""
    import tomllib

    raw = tomllib.loads(loading.REGISTRY.read_text())["models"]
    assert raw, "the registry lists no model"
    for name, entry in raw.items():
        assert entry.get("source") in loading.SOURCE_KEYS, f"{name}: {entry}"
        for key in (*loading.SOURCE_KEYS[entry["source"]], "notes"):
            assert isinstance(entry.get(key), str) and entry[key], f"{name} lacks {key}"
    assert loading.registry() == raw
    assert Settings.model_fields["model"].default in raw  # the default served model is a registry name
    assert raw["smollm2-135m"]["file"].endswith(".gguf")


def test_every_registry_name_the_readme_uses_resolves() -> None:
    readme = (loading.ROOT / "README.md").read_text()
    named = set(re.findall(r"HEADSCOPE_MODEL=([\w.\-]+)", readme))
    assert "qwen2.5-0.5b" in named
    hub = {name for name, e in loading.registry().items() if e["source"] == "hub"}
    for name in named & hub:
        assert loading.resolve(name) == (name, loading.registry()[name]["id"])
    assert loading.resolve("qwen2.5-0.5b") == ("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct")
    with pytest.raises(loading.ModelNotFound):
        loading.resolve("qwen2")  # a fragment of a dotted name is not an entry


def test_a_malformed_registry_is_refused_naming_the_entry(tmp_path: Path) -> None:
    bad = tmp_path / "registry.toml"
    bad.write_text('[models.qwen2.5-0.5b]\nsource = "hub"\nid = "Qwen/Qwen2.5-0.5B"\n')
    with pytest.raises(ValueError, match=r"model 'qwen2'.*must be quoted"):
        loading.registry(bad)
    bad.write_text('[models.m]\nsource = "wheel-gguf"\npackage = "p"\n')
    with pytest.raises(ValueError, match=r"model 'm' \(source 'wheel-gguf'\) lacks file"):
        loading.registry(bad)


def test_unsupported_architecture_names_it_and_the_supported_ones(tmp_path: Path) -> None:
    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(tmp_path)
    gpt2_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitecture, match=r"'bert'.*gpt2.*llama"):
        loading.check(str(tmp_path))
    with pytest.raises(UnsupportedArchitecture):
        Adapter(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)))


def test_unknown_model_name_is_refused() -> None:
    with pytest.raises(loading.ModelNotFound, match=r"not in registry\.toml"):
        loading.resolve("no-such-model")


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path("/tmp/headscope-pwned").touch, ())  # type: ignore[return-value]


def test_pickle_checkpoints_are_refused_and_never_unpickled(tmp_path: Path) -> None:
    model_dir = save_tiny(tmp_path / "m", "llama")
    for f in model_dir.glob("*.safetensors"):
        f.unlink()
    marker = Path("/tmp/headscope-pwned")
    marker.unlink(missing_ok=True)
    with (model_dir / "pytorch_model.bin").open("wb") as f:
        pickle.dump({"payload": _Exploit()}, f)
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do, as long as nothing ran
        loading.load(str(model_dir), device="cpu")
    assert not marker.exists()


def test_device_and_dtype_defaults() -> None:
    assert loading.pick_device("cpu") == torch.device("cpu")
    assert loading.pick_dtype(None, torch.device("cpu")) == torch.float32
    assert loading.pick_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        loading.pick_dtype("float99", torch.device("cpu"))
    if not torch.cuda.is_available():
        assert loading.pick_device(None) == torch.device("cpu")
        with pytest.raises(ValueError, match="not available"):
            loading.pick_device("cuda:0")


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_each_family_loads_from_a_directory(tmp_path: Path, arch: str) -> None:
    loaded = loading.load(str(save_tiny(tmp_path / arch, arch)), device="cpu", dtype="float32")
    assert loaded.adapter.layout.architecture == arch
    assert loaded.model.config._attn_implementation == "headscope"
    assert not any(p.requires_grad for p in loaded.model.parameters())


def _count_probes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each time the start-up checks' probe forwards run (they still run)."""
    probes: list[str] = []
    probe = checks._probe

    def counted(model: torch.nn.Module, adapter: Adapter) -> None:
        probes.append(adapter.layout.architecture)
        probe(model, adapter)

    monkeypatch.setattr(checks, "_probe", counted)
    return probes


def _touch(folder: Path) -> None:
    """The weights rewritten: a later modification time, the same bytes."""
    weights = next(folder.glob("*.safetensors"))
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_a_passed_check_is_kept_beside_the_cached_model_and_redone_when_its_key_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    folder = save_tiny(cache / "tiny", "llama")
    probes = _count_probes(monkeypatch)

    def load(dtype: str = "float32") -> Adapter:
        return loading.load(str(folder), device="cpu", dtype=dtype, cache=cache).adapter

    first = load()
    kept = json.loads((folder / checks.VERDICT_FILE).read_text())
    assert probes == ["llama"] and kept["passed"] is True and kept["dla_gap"] is None
    again = load()  # nothing changed: the verdict is used, the probes skipped, the gaps as found
    assert probes == ["llama"] and again.gaps == first.gaps == {False: None, True: None}
    _touch(folder)
    load()
    assert len(probes) == 2
    load()
    assert len(probes) == 2
    # the module object checks.py read its version from: transformers 5 replaces sys.modules["transformers"] on its
    # first model import, so after other tests this file's own `transformers` can be a newer object than checks'
    monkeypatch.setattr(checks.transformers, "__version__", "0.0.0-another")
    load()
    assert len(probes) == 3
    load(dtype="bfloat16")
    assert len(probes) == 4
    assert json.loads((folder / checks.VERDICT_FILE).read_text())["key"] != kept["key"]

    elsewhere = save_tiny(tmp_path / "elsewhere", "llama")  # not in the cache folder: always probed, nothing kept
    for _ in range(2):
        loading.load(str(elsewhere), device="cpu", dtype="float32", cache=cache)
    assert len(probes) == 6 and not (elsewhere / checks.VERDICT_FILE).exists()


def test_a_refused_model_is_never_kept_and_is_refused_again_with_the_same_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    folder = save_tiny(cache / "tiny", "llama")
    probes = _count_probes(monkeypatch)
    gap = "llama computes its logits in a way tracing does not reproduce (here: made to)"

    def refused() -> str:
        with pytest.raises(UnsupportedArchitecture) as err:
            loading.load(str(folder), device="cpu", dtype="float32", cache=cache)
        return str(err.value)

    with monkeypatch.context() as m:  # the probe finds logits lm_head() does not reproduce
        m.setattr(checks, "_readout_gap", lambda adapter: gap)
        assert [refused(), refused()] == [f"architecture 'llama': {gap}"] * 2
        assert len(probes) == 2 and not (folder / checks.VERDICT_FILE).exists()
    loading.load(str(folder), device="cpu", dtype="float32", cache=cache)  # as it is: served, and kept
    assert len(probes) == 3 and (folder / checks.VERDICT_FILE).exists()
    with monkeypatch.context() as m:
        m.setattr(checks, "_readout_gap", lambda adapter: gap)
        _touch(folder)  # the model changed: probed again, and refused with the same error
        assert refused() == f"architecture 'llama': {gap}" and len(probes) == 4

"""The GPU's default dtypes (bfloat16, float16) on CPU: capture, ablation, gradient importance and the sweep.

A GPU host runs the model in bf16 (fp16 where bf16 is missing); these tests keep that path exercised in CI
on a CPU-only machine. Tolerances follow from the formats: bf16 keeps 8 significant bits (unit roundoff
2⁻⁹ ≈ 0.002), fp16 keeps 11 (2⁻¹² ≈ 0.0002). Eager attention rounds the scores q·kᵀ to the model dtype and the
probabilities back to it after an fp32 softmax; capture recomputes the scores in fp32 from the same
rounded q and k. Each side therefore carries one or two roundings of values ≤ 1, a few units of roundoff:
atol 2⁻⁸ for bf16 and 2⁻¹¹ for fp16 (measured: 1.9e-3 and 2.4e-4, one roundoff of the probabilities).
Whole-model quantities (a loss change, KL, gradients) go through every layer in the reduced dtype and are
compared with the same float32 model: measured deviations of a head's Δ loss are ≤ 7e-4 nats (bf16) and
≤ 1.5e-4 (fp16) on effects of 5e-3–6e-2 nats, hence atol 3e-3 and 5e-4.
"""

from __future__ import annotations

import pytest
import torch

from app.inspect.engine import runs
from app.inspect.intervene.ablation import ablate
from app.inspect.intervene.importance import ablation_sweep, gradient_importance
from app.inspect.model import capture
from tests.support.models import ARCHS, as_loaded, tiny_model

# dtype, atol for attention weights, atol for a loss difference in nats (see the module docstring)
DTYPES = {"bfloat16": (torch.bfloat16, 2**-8, 3e-3), "float16": (torch.float16, 2**-11, 5e-4)}
SHARPEN = 5.0  # weight matrices × 5: random-init heads then change the loss by 1e-2–1e-1 nats, well above roundoff
TEXT = "The heads of a small model, run in half precision, still attend where they should. The heads of a small"


def _loaded(arch: str, dtype: torch.dtype, seed: int = 0):  # type: ignore[no-untyped-def]
    model = tiny_model(arch, seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.mul_(SHARPEN)
    loaded = as_loaded(model.to(dtype), f"tiny-{arch}-{dtype}")
    loaded.dtype = dtype
    return loaded


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", DTYPES)
def test_captured_maps_match_eager_in_the_same_dtype(arch: str, name: str) -> None:
    dtype, atol, _ = DTYPES[name]
    ids = torch.randint(0, 50000, (1, 24), generator=torch.Generator().manual_seed(2))
    eager = tiny_model(arch, attn="eager").to(dtype)
    with torch.no_grad():
        ref = eager(ids, output_attentions=True).attentions
    model = tiny_model(arch).to(dtype)
    capture.install(model)
    with torch.no_grad(), capture.recording() as rec:
        model(ids)
    group = model.config.num_attention_heads // getattr(model.config, "num_key_value_heads", 4)
    for layer, expected in enumerate(ref):
        got = capture.attention_maps(rec.captured[layer], list(range(4)), group)  # (1, H, T, T), float32
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected.float(), atol=atol, rtol=0)
        torch.testing.assert_close(got.sum(-1), torch.ones(got.shape[:-1]))  # fp32 rows still sum to 1


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", DTYPES)
def test_ablation_in_reduced_precision_tracks_float32(arch: str, name: str) -> None:
    dtype, _, atol = DTYPES[name]
    low, full = _loaded(arch, dtype), _loaded(arch, torch.float32)
    run_low, run_full = runs.analyse(low, TEXT), runs.analyse(full, TEXT)
    nothing = ablate(low, run_low, [], "zero", 5)
    assert nothing.kl_last == 0 and nothing.delta_loss == 0  # no gate: the baseline itself, bit for bit
    heads = [(0, 1), (1, 2)]
    for mode in ("zero", "mean"):
        got = ablate(low, run_low, heads, mode, 5)  # type: ignore[arg-type]
        want = ablate(full, run_full, heads, mode, 5)  # type: ignore[arg-type]
        assert got.delta_loss is not None and want.delta_loss is not None
        assert abs(want.delta_loss) > 2 * atol  # the effect is larger than the tolerance: the check can fail
        assert got.delta_loss == pytest.approx(want.delta_loss, abs=atol)
        assert got.kl_last == pytest.approx(want.kl_last, rel=0.1)
        assert [i for i, _ in got.ablated.top_k[:1]] == [i for i, _ in want.ablated.top_k[:1]]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", DTYPES)
def test_gradient_importance_in_reduced_precision_tracks_float32(arch: str, name: str) -> None:
    dtype, _, _ = DTYPES[name]
    ids = runs.encode(_loaded(arch, torch.float32).tokenizer, TEXT)
    got = gradient_importance(_loaded(arch, dtype, seed=3), ids)
    want = gradient_importance(_loaded(arch, torch.float32, seed=3), ids)
    assert got.dtype == torch.float32 and bool(torch.isfinite(got).all())
    # per-head gradients of a loss summed through every layer in the low dtype: compare as a whole
    assert float((got - want).norm() / want.norm()) < 0.05  # measured ≤ 1e-2 (bf16), ≤ 1.1e-3 (fp16)
    assert int(got.flatten().argmax()) == int(want.flatten().argmax())


@pytest.mark.parametrize("name", DTYPES)
def test_sweep_in_reduced_precision_equals_one_at_a_time(name: str) -> None:
    dtype, _, atol = DTYPES[name]
    loaded = _loaded("llama", dtype, seed=4)
    run = runs.analyse(loaded, TEXT)
    sweep = ablation_sweep(loaded, run, batch_size=4)
    for layer, head in [(0, 0), (0, 3), (1, 1)]:
        one = ablate(loaded, run, [(layer, head)], "zero", 1)
        assert one.delta_loss is not None
        # batch rows and a single row may take different kernels: a few roundoffs of the loss apart
        assert float(sweep.delta_loss[layer, head]) == pytest.approx(one.delta_loss, abs=atol)

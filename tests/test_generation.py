"""Generation with heads switched off: against transformers' generate (plain and hand-hooked), the sampler's
definition, the API's limits, the event stream, and a disconnect that stops the work."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn
from transformers import PreTrainedModel

from app.config import Settings
from app.inspect.engine import runs
from app.inspect.engine.steps import drain
from app.inspect.intervene import generation
from app.inspect.intervene.generation import Sampling, choose, first_difference, steps
from app.inspect.model.loaded import Loaded
from app.main import create_app
from app.service import Service
from tests.support.checks import assert_same_continuation, hook_count
from tests.support.clients import make_client
from tests.support.disconnect import Watch, leave_midway, run_async
from tests.support.models import ARCHS, as_loaded, tiny_model

PROMPT = "The capital of France is"
HEADS = [(0, 1), (1, 2)]


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[Loaded, PreTrainedModel]]:
    """Per family: the model as the server holds it (capture installed) and an identical plain SDPA reference."""
    return {arch: (as_loaded(tiny_model(arch), f"tiny-{arch}"), tiny_model(arch)) for arch in ARCHS}


def prompt_ids(loaded: Loaded) -> list[int]:
    return runs.encode(loaded.tokenizer, PROMPT)


def reference(model: PreTrainedModel, ids: list[int], n: int) -> tuple[list[int], list[float]]:
    """transformers' greedy generate: the new tokens and the log-prob of each under the model."""
    out = model.generate(
        torch.tensor([ids]), max_new_tokens=n, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    new = out.sequences[0, len(ids) :].tolist()
    logps = [float(torch.log_softmax(lg[0].float(), -1)[t]) for lg, t in zip(out.logits, new, strict=False)]
    return new, logps


def out_projs(model: PreTrainedModel) -> list[nn.Module]:
    """Each layer's attention output projection, found by hand (not through the app's adapter)."""
    name = {"llama": "self_attn.o_proj", "gpt2": "attn.c_proj", "gpt_neox": "attention.dense"}[model.config.model_type]
    return [m for n, m in model.named_modules() if n.endswith(name)]


def hooked(model: PreTrainedModel, heads: list[tuple[int, int]], means: list[torch.Tensor] | None) -> list[Any]:
    """Pre-hooks that set the heads' slice of the output projection's input to zero (or to the given means)."""
    n_heads = model.config.num_attention_heads
    handles = []
    for layer, proj in enumerate(out_projs(model)):
        mine = [h for ly, h in heads if ly == layer]
        if not mine:
            continue

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], mine: list[int] = mine, layer: int = layer) -> Any:
            x = args[0].clone()  # (B, T, n_heads * head_dim)
            d = x.shape[-1] // n_heads
            for h in mine:
                x[..., h * d : (h + 1) * d] = 0.0 if means is None else means[layer][h * d : (h + 1) * d]
            return (x, *args[1:])

        handles.append(proj.register_forward_pre_hook(hook))
    return handles


def prompt_means(model: PreTrainedModel, ids: list[int]) -> list[torch.Tensor]:
    """Each layer's mean output-projection input over the prompt's positions, recorded by hand."""
    means: list[torch.Tensor] = []
    handles = [proj.register_forward_pre_hook(lambda m, a: means.append(a[0][0].mean(0))) for proj in out_projs(model)]
    try:
        with torch.no_grad():
            model(torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()
    return means


# -- the inspection code against transformers --------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_equals_generate_with_and_without_an_ablated_row(
    models: dict[str, tuple[Loaded, PreTrainedModel]], arch: str
) -> None:
    loaded, ref = models[arch]
    ids = prompt_ids(loaded)
    want, want_logp = reference(ref, ids, 16)
    alone = drain(steps(loaded, ids, 16))
    beside = drain(steps(loaded, ids, 16, HEADS))
    assert len(alone) == 1 and len(beside) == 2
    for row in (alone[0], beside[0]):
        assert row.token_ids == want
        assert row.logprobs == pytest.approx(want_logp, abs=1e-4)
        assert row.stop == "length"
    assert hook_count(loaded.model) == 0  # the gates are gone after every step


@pytest.mark.parametrize("mode", ["zero", "mean"])
@pytest.mark.parametrize("arch", ARCHS)
def test_ablated_row_equals_generate_with_a_hand_written_hook(
    models: dict[str, tuple[Loaded, PreTrainedModel]], arch: str, mode: str
) -> None:
    loaded, ref = models[arch]
    ids = prompt_ids(loaded)
    means = prompt_means(ref, ids) if mode == "mean" else None
    handles = hooked(ref, HEADS, means)
    try:
        want, want_logp = reference(ref, ids, 16)
    finally:
        for h in handles:
            h.remove()
    run = runs.analyse(loaded, PROMPT)  # the API takes the means from the cached run of the prompt
    base, abl = drain(steps(loaded, ids, 16, HEADS, mode, run.head_means))  # type: ignore[arg-type]
    assert abl.token_ids == want
    assert abl.logprobs == pytest.approx(want_logp, abs=1e-4)
    # the heads did something: the ablated log-probs are not the baseline's
    assert max(abs(a - b) for a, b in zip(abl.logprobs, base.logprobs, strict=False)) > 1e-3


def test_each_row_stops_at_the_end_of_text_token(models: dict[str, tuple[Loaded, PreTrainedModel]]) -> None:
    loaded, ref = models["llama"]
    ids = prompt_ids(loaded)
    base, abl = drain(steps(loaded, ids, 8, HEADS))
    eos = base.token_ids[2]  # make the baseline's third token the end of text
    assert eos not in abl.token_ids[:3]
    old = loaded.model.generation_config.eos_token_id
    loaded.model.generation_config.eos_token_id = eos
    ref.generation_config.eos_token_id = eos
    try:
        base2, abl2 = drain(steps(loaded, ids, 8, HEADS))
        assert base2.token_ids == reference(ref, ids, 8)[0] == base.token_ids[:3]
        assert base2.stop == "eos" and base2.logprobs == base.logprobs[:3]
        assert abl2.token_ids == abl.token_ids[: len(abl2.token_ids)]  # the other row goes on
        text = generation.continuation_text(loaded.tokenizer, ids, base2.token_ids, frozenset([eos]))
        assert text == loaded.tokenizer.decode(base2.token_ids[:2])  # the end-of-text token is not in the text
    finally:
        loaded.model.generation_config.eos_token_id = old
        ref.generation_config.eos_token_id = old


# -- sampling ------------------------------------------------------------------------------------------


def test_the_sampler_is_the_inverse_cdf_of_the_nucleus() -> None:
    probs = torch.tensor([0.06, 0.5, 0.04, 0.3, 0.1])
    logits = probs.log()[None]  # (1, V)
    n = 2000
    grid = [(k + 0.5) / n for k in range(n)]

    def shares(top_p: float) -> list[float]:
        picks = [int(choose(logits, Sampling(1.0, top_p, 0), u)[0]) for u in grid]
        return [picks.count(i) / n for i in range(5)]

    assert shares(1.0) == pytest.approx(probs.tolist(), abs=1e-3)
    assert shares(0.75) == pytest.approx([0, 0.5 / 0.8, 0, 0.3 / 0.8, 0], abs=1e-3)  # nucleus {1, 3}
    assert shares(0.3) == pytest.approx([0, 1, 0, 0, 0])  # the top token alone already reaches 0.3
    assert int(choose(logits, Sampling(), None)[0]) == 1  # greedy
    assert {int(choose(logits, Sampling(1e-30, 1.0, 0), u)[0]) for u in grid} == {1}  # a tiny temperature: greedy


def test_seeded_sampling_is_reproducible_and_the_rows_share_their_random_numbers(
    models: dict[str, tuple[Loaded, PreTrainedModel]],
) -> None:
    loaded, _ = models["gpt_neox"]
    ids = prompt_ids(loaded)
    s = Sampling(temperature=1.0, top_p=0.95, seed=7)
    first = drain(steps(loaded, ids, 12, HEADS, sampling=s))
    again = drain(steps(loaded, ids, 12, HEADS, sampling=s))
    assert [r.token_ids for r in first] == [r.token_ids for r in again]
    other = drain(steps(loaded, ids, 12, HEADS, sampling=Sampling(1.0, 0.95, 8)))
    assert other[0].token_ids != first[0].token_ids
    alone = drain(steps(loaded, ids, 12, sampling=s))  # no ablate: the baseline row is the same
    assert alone[0].token_ids == first[0].token_ids


def test_sampled_rows_agree_when_the_heads_have_no_effect() -> None:
    model = tiny_model("gpt2", seed=3)
    d = model.config.n_embd // model.config.n_head
    with torch.no_grad():
        for layer, head in HEADS:  # GPT-2's c_proj is Conv1D: weight (in, out); these rows carry the head
            model.transformer.h[layer].attn.c_proj.weight[head * d : (head + 1) * d] = 0.0
        # A random tiny model's next token is near-uniform over 50k ids (a nucleus of ~44k): there, the ~1e-7 by
        # which the two rows of a batch can differ on some CPU kernels (AVX2) moves the sampled id by one. Logits
        # ×30 give a nucleus of ~90 tokens: the coupling is still tested, not the rounding of a flat distribution.
        model.transformer.ln_f.weight *= 30.0
    loaded = as_loaded(model)
    ids = prompt_ids(loaded)
    seen = set()
    for seed in range(4):
        base, abl = drain(steps(loaded, ids, 12, HEADS, sampling=Sampling(1.0, 0.9, seed)))
        assert abl.token_ids == base.token_ids and first_difference(base.token_ids, abl.token_ids) is None
        seen.add(tuple(base.token_ids))
    assert len(seen) > 1  # it samples: the seeds give different continuations


def test_first_difference() -> None:
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 9]) == 2


# -- the API -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(models: dict[str, tuple[Loaded, PreTrainedModel]]) -> Iterator[TestClient]:
    yield from make_client(models["llama"][0], max_tokens=40)


ABLATE = [{"layer": layer, "head": head} for layer, head in HEADS]


def test_api_answers_both_continuations(client: TestClient, models: dict[str, tuple[Loaded, PreTrainedModel]]) -> None:
    loaded, _ = models["llama"]
    ids = prompt_ids(loaded)
    r = client.post("/api/generate", json={"text": PROMPT, "max_new_tokens": 6, "ablate": ABLATE})
    assert r.status_code == 200, r.text
    out = r.json()
    base, abl = drain(steps(loaded, ids, 6, HEADS))
    assert out["token_ids"] == ids and out["tokens"] == runs.token_strings(loaded.tokenizer, ids)
    assert out["baseline"]["token_ids"] == base.token_ids and out["ablated"]["token_ids"] == abl.token_ids
    assert out["baseline"]["text"] == loaded.tokenizer.decode(base.token_ids)
    assert out["baseline"]["tokens"] == runs.token_strings(loaded.tokenizer, base.token_ids)
    assert out["ablated"]["logprobs"] == pytest.approx(abl.logprobs, abs=1e-5)
    assert out["first_difference"] == first_difference(base.token_ids, abl.token_ids)
    assert out["seed"] is None and out["baseline"]["stop"] == "length"
    # Alone (a batch of one) vs beside the ablated row (a batch of two): other kernels may round differently.
    plain = client.post("/api/generate", json={"text": PROMPT, "max_new_tokens": 6}).json()
    assert plain["ablated"] is None
    assert_same_continuation(plain["baseline"], out["baseline"])
    assert len(client.post("/api/generate", json={"text": PROMPT}).json()["baseline"]["token_ids"]) == 32


def test_api_sampling_is_reproducible_with_its_seed(client: TestClient) -> None:
    body = {"text": PROMPT, "max_new_tokens": 8, "ablate": ABLATE, "mode": "mean", "temperature": 0.8, "top_p": 0.9}
    first = client.post("/api/generate", json=body).json()
    assert isinstance(first["seed"], int)
    again = client.post("/api/generate", json={**body, "seed": first["seed"]}).json()
    assert again == first


@pytest.mark.parametrize(
    "change",
    [
        {"max_new_tokens": 0},
        {"max_new_tokens": 257},
        {"max_new_tokens": 36},  # 5 prompt tokens + 36 > max_tokens 40
        {"ablate": [{"layer": 2, "head": 0}]},
        {"ablate": [{"layer": 0, "head": -1}]},
        {"mode": "half"},
        {"top_p": 0},
        {"temperature": -1},
        {"text": "  "},
    ],
)
def test_api_limits_are_422(client: TestClient, change: dict[str, Any]) -> None:
    r = client.post("/api/generate", json={"text": PROMPT, **change})
    assert r.status_code == 422 and set(r.json()) == {"error", "detail"}, r.text


def test_api_accepts_exactly_max_tokens(client: TestClient) -> None:
    assert client.post("/api/generate", json={"text": PROMPT, "max_new_tokens": 35}).status_code == 200


def sse(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_stream_yields_tokens_then_an_end_event(client: TestClient) -> None:
    body = {"text": PROMPT, "max_new_tokens": 5, "ablate": ABLATE}
    r = client.post("/api/generate", json=body, headers={"Accept": "text/event-stream"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert [name for name, _ in events] == ["token"] * 5 + ["end"]
    end = events[-1][1]
    assert end == client.post("/api/generate", json=body).json()
    for row in ("baseline", "ablated"):
        assert [e[row]["id"] for _, e in events[:-1]] == end[row]["token_ids"]
        assert [e[row]["token"] for _, e in events[:-1]] == end[row]["tokens"]
    assert [e["index"] for _, e in events[:-1]] == list(range(5))
    bad = client.post("/api/generate", json={**body, "max_new_tokens": 999}, headers={"Accept": "text/event-stream"})
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/json")


# -- a client that goes away stops the generation --------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_disconnects_stops_the_generation(
    models: dict[str, tuple[Loaded, PreTrainedModel]], monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """Over real ASGI: the client leaves mid-generation; the steps are closed and no more run."""
    loaded, _ = models["llama"]
    app = create_app(Settings(model=loaded.name), loaded=loaded)
    svc: Service = app.state.service
    svc.ready = True
    watch = Watch()
    monkeypatch.setattr("app.api.generate.steps", watch.wrap(generation.steps, 0.1))  # as long as the poll
    body = json.dumps({"text": PROMPT, "max_new_tokens": 200, "ablate": ABLATE}).encode()
    accept = b"text/event-stream" if stream else b"application/json"
    sent: list[dict[str, Any]] = []

    async def scenario() -> None:
        left = await leave_midway(app, "/api/generate", body, watch, 4, [(b"accept", accept)], sent)
        # at most the token under way when it left, and one begun before the next poll (every 0.1 s) saw it
        assert sum(t > left for t in watch.made) <= 2
        assert len(watch.made) < 200

    run_async(scenario)
    if stream:  # the tokens made before it left were streamed as they came
        chunks = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        assert chunks.count(b"event: token") >= 3
    assert svc.queue_depth == 0
    svc.shutdown()


# -- the real default model -------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_france_example_on_the_default_model() -> None:
    """Greedy and ablated continuations equal transformers' generate (plain, and with a hand-written hook)."""
    from app.inspect.loading import load

    loaded = load("smollm2-135m", device="cpu", dtype="float32")
    ids = prompt_ids(loaded)
    heads = [(23, 4), (0, 4)]
    base, abl = drain(steps(loaded, ids, 12, heads))
    loaded.model.set_attn_implementation("sdpa")  # the reference is transformers' own attention
    assert base.token_ids == reference(loaded.model, ids, 12)[0]
    handles = hooked(loaded.model, heads, None)
    try:
        assert abl.token_ids == reference(loaded.model, ids, 12)[0]
    finally:
        for h in handles:
            h.remove()
    eos = generation.eos_ids(loaded)
    assert generation.continuation_text(loaded.tokenizer, ids, base.token_ids, eos).startswith(" Paris")
    assert not generation.continuation_text(loaded.tokenizer, ids, abl.token_ids, eos).startswith(" Paris")

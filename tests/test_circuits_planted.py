"""A planted circuit: a hand-set 2-layer attention-only Llama (GQA) with a previous-token head in layer 0 and two
induction heads in layer 1 that share one KV head (K-composition). On a repeated random sequence, edge attribution
must rank L0 prev-head → L1 KV head (k) first, and patching that edge alone must restore the answer; the same
architecture with random weights must not show it."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from app.inspect.engine.runs import Run, analyse
from app.inspect.intervene import circuits, path_patching
from app.inspect.model.loaded import Loaded
from tests.support.models import as_loaded

D, HEAD_DIM, VOCAB = 128, 32, 32
TOKENS = 20  # tokens 0..19 make the sequences; token t's embedding is one-hot in dim t
CONST, PREV, IGNORED = 32, 64, 25  # a constant dim in every embedding; where L0H0 writes; a token L0H0 skips
# head dims whose rotary pairs barely turn over 32 positions at rope_theta 1e9 (position-free content matching)
CONTENT = [*range(5, 16), *range(21, 30)]
PLANTED = ("L0H0", "L1KV0", "k")


def planted(random: bool = False) -> Loaded:
    """The hand-set model (or, with `random`, the same architecture with random weights of a similar scale).

    L0H0 (KV head 0) attends to the previous token: its query is a constant and its key the same constant turned
    back one position by the rotary embedding (pairs 0–2); it skips the IGNORED token. It copies that token into
    the PREV dims. L1H0 and L1H1 (both on KV head 0) attend where the previous token equals their own token (query:
    the token; key: the PREV dims) and copy the token found there into the logits. MLPs are zero.
    """
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=D,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_theta=1e9,
        rms_norm_eps=1e-6,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    freq = model.model.rotary_emb.inv_freq
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if random:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + (1.0 if "norm" in name else 0.0))
            else:
                p.fill_(1.0 if "norm" in name else 0.0)
        if not random:
            emb = model.model.embed_tokens.weight
            for t in [*range(TOKENS), IGNORED]:
                emb[t, t], emb[t, CONST] = 1.0, 1.0
            a0, a1 = model.model.layers[0].self_attn, model.model.layers[1].self_attn
            a = 2.0
            for i in range(3):  # q = a·e_i, k = a·R(θ_i)e_i: q·k peaks where the key is one position back
                a0.q_proj.weight[i, CONST] = a
                a0.k_proj.weight[i, CONST] = a * math.cos(float(freq[i]))
                a0.k_proj.weight[i + HEAD_DIM // 2, CONST] = a * math.sin(float(freq[i]))
            a0.q_proj.weight[5, CONST], a0.k_proj.weight[5, IGNORED] = a, -3 * a
            for t in range(TOKENS):
                a0.v_proj.weight[t, t] = 1.0
                a0.o_proj.weight[PREV + t, t] = 1 / 8
                a1.k_proj.weight[CONTENT[t], PREV + t] = 1.5
                a1.v_proj.weight[t, t] = 1.0
                model.lm_head.weight[t, t] = 1.0
                for h in (0, 1):
                    a1.q_proj.weight[h * HEAD_DIM + CONTENT[t], t] = 1.5
                    a1.o_proj.weight[t, h * HEAD_DIM + t] = 2.0
    return as_loaded(model, "planted-random" if random else "planted")


def prompts(loaded: Loaded) -> tuple[Run, Run, int]:
    """Clean: 8 random tokens, then their first 7 again (the answer is the 8th); corrupted: the token before the
    8th replaced by one the previous-token head skips, so nothing earlier follows the last token."""
    seq = torch.randperm(TOKENS, generator=torch.Generator().manual_seed(5))[:8].tolist()
    clean = seq + seq[:7]
    corrupted = list(clean)
    corrupted[6] = IGNORED
    return analyse(loaded, "", token_ids=clean), analyse(loaded, "", token_ids=corrupted), seq[7]


def test_the_planted_heads_do_what_they_say() -> None:
    loaded = planted()
    clean, corrupted, answer = prompts(loaded)
    prev = clean.maps(0, [0], 2)[0]  # (T, T)
    assert [int(prev[p].argmax()) for p in range(1, 15)] == list(range(14))
    assert float(prev[1:].max(-1).values.min()) > 0.9
    induction = clean.maps(1, [0, 1], 2)[:, 14]  # from the last token
    assert torch.all(induction.argmax(-1) == 7) and float(induction[:, 7].min()) > 0.9
    assert float(corrupted.maps(1, [0, 1], 2)[:, 14, 7].max()) < 0.2
    logits = loaded.adapter.unembedding()(clean.hidden[14])
    assert int(logits.argmax()) == answer


@pytest.mark.parametrize(("method_steps", "direction"), [(5, "denoise"), (1, "denoise"), (5, "noise")])
def test_edge_attribution_finds_the_k_composition_edge(method_steps: int, direction: str) -> None:
    loaded = planted()
    clean, corrupted, answer = prompts(loaded)
    this, other = path_patching.pair(direction, clean, corrupted)  # type: ignore[arg-type]
    att = circuits.attribute(loaded, this, other, 14, answer, None, steps=method_steps)
    graph = att.graph
    (s, r, score), (_, _, second) = att.ranked(2)
    assert (graph.senders[s], graph.receivers[r].target, graph.receivers[r].channel) == PLANTED
    assert abs(score) > 1.2 * abs(second)
    [alone] = path_patching.metrics(loaded, this, other, [((s, r),)], 14, answer, None).tolist()
    assert path_patching.recovered(alone, att.metric_this, att.metric_other) == pytest.approx(1.0, abs=0.1)


def test_random_weights_do_not_show_it() -> None:
    loaded = planted(random=True)
    clean, corrupted, answer = prompts(loaded)
    att = circuits.attribute(loaded, corrupted, clean, 14, answer, None, steps=5)
    edge = att.graph.edge(*PLANTED)
    ranked = [(s, r) for s, r, _ in att.ranked()]
    assert ranked.index(edge) > 10
    assert abs(float(att.scores[edge[1], edge[0]])) < 0.1 * abs(att.ranked(1)[0][2])
    [alone] = path_patching.metrics(loaded, corrupted, clean, [(edge,)], 14, answer, None).tolist()
    recovered = path_patching.recovered(alone, att.metric_this, att.metric_other)
    assert recovered is not None and abs(recovered) < 0.1

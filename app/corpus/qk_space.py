"""One head's queries and keys over a job's texts in one 2-D space, as AttentionViz (Yeh et al. 2023) draws them.

What crosses the boundary: a job's texts (dataset index, token ids) and a layer in; a sample of positions with each
head's post-RoPE query and key vectors there, then per head a joint projection out. Forwards run on the model
worker in steps of about one forward of SLICE_TOKENS tokens, through the blocks up to the layer asked for only.

Positions are sampled with a seeded reservoir (app.corpus.sampling): at most MAX_POSITIONS positions whatever
the corpus size, each giving a query point and a key point. Before projecting, queries are scaled by a and keys
by 1/a so that both clouds have the same mean length, then keys are shifted by c so that their centroid is the
queries' (AttentionViz's normalisation). Neither changes any attention row: (a·q)·(k/a + c) = q·k + a·q·c, and
a·q·c is the same for every key of one query, which softmax ignores. The projection is PCA (an SVD of the
stacked, centred matrix): exact, linear (distances along its axes are dot-product structure, not an artefact of
a neighbour graph), deterministic, and a 20,000 × 64 SVD takes milliseconds. umap-learn, openTSNE and
scikit-learn are not installed; umap-learn would pull in numba and llvmlite, and UMAP and t-SNE are stochastic
neighbour embeddings whose distances between clusters mean little, so they would not keep the global layout a
reader compares across heads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Generator
from contextlib import suppress
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch

from app.corpus.measure import length_batches, pad
from app.corpus.sampling import Reservoir
from app.errors import Conflict
from app.inspect.engine import segments
from app.inspect.engine.runs import encode, token_strings
from app.inspect.engine.segments import SLICE_TOKENS
from app.inspect.engine.steps import Progress
from app.inspect.model import capture
from app.inspect.model.loaded import Loaded

MAX_POSITIONS = 10_000  # sampled positions: a query and a key each, so at most 20,000 points per head
MAX_BATCH_TEXTS = 64
CACHED = 8  # head embeddings kept (per job, texts done, head): each holds up to 20,000 points
K = TypeVar("K")
V = TypeVar("V")


def sample_steps(
    loaded: Loaded,
    texts: list[tuple[int, list[int]]],
    layers: list[int],
    cap: int = MAX_POSITIONS,
    seed: int = 0,
) -> Generator[Progress, None, Reservoir]:
    """A seeded sample of at most `cap` (text, position) pairs with every head's query and key of `layers` there.

    Yields before each padded batch (about SLICE_TOKENS tokens through the whole model). The reservoir's payload:
    "token" (m,) token ids, and per layer l "q{l}" (m, n_heads, head_dim) and "k{l}" (m, n_kv_heads, head_dim),
    float32, post-RoPE (the vectors the attention scores are made of).
    """
    layout = loaded.adapter.layout
    stop = max(layers) + 1
    reservoir = Reservoir(cap, seed)
    per_batch = min(2048, SLICE_TOKENS * layout.n_layers // stop)  # a step costs about one slice
    plan = length_batches([len(ids) for _, ids in texts], per_batch, MAX_BATCH_TEXTS)
    for n, batch in enumerate(plan):
        items = [texts[i] for i in batch if texts[i][1]]
        yield Progress(n, len(plan))
        if not items:
            continue
        padded = pad([ids for _, ids in items], "right", loaded.device)
        with (
            torch.inference_mode(),
            capture.recording(frozenset(layers)) as rec,
            suppress(segments.Reached),  # raised at block `stop`: the blocks after `layers` are not run
            segments.stopping(loaded, stop),
        ):
            loaded.adapter.backbone()(**padded.inputs(), use_cache=False)
        for row, (index, ids) in enumerate(items):
            window = padded.windows[row]
            payload = {"token": np.asarray(ids, dtype=np.int64)}
            for layer in layers:
                qk = rec.captured[layer]
                payload[f"q{layer}"] = qk.q[row, :, window].transpose(0, 1).float().cpu().numpy()  # (T, H, D)
                payload[f"k{layer}"] = qk.k[row, :, window].transpose(0, 1).float().cpu().numpy()  # (T, KV, D)
            reservoir.offer(index, np.arange(len(ids)), payload)
    reservoir.sorted()
    return reservoir


@dataclass(frozen=True)
class Embedding:
    """A head's sampled queries and keys in one 2-D space. Rows: the sample's queries, then its keys, in order."""

    scale: float  # queries × scale, keys ÷ scale: equal mean lengths
    key_shift: np.ndarray  # (D,) added to every (scaled) key: the key centroid becomes the query centroid
    centre: np.ndarray  # (D,) the mean of the stacked matrix, subtracted before the SVD
    components: np.ndarray  # (2, D) the first two right singular vectors (each one's largest entry positive)
    explained: np.ndarray  # (2,) the share of the variance along each
    coords: np.ndarray  # (2m, 2) the stacked matrix's rows projected


def joint_space(q: np.ndarray, k: np.ndarray) -> tuple[float, np.ndarray]:
    """AttentionViz's normalisation of queries q (m, D) and keys k (m, D): (scale a, key shift c), so that
    a·q and k/a + c have equal mean lengths and one centroid. q·k changes by a·q·c, constant per query."""
    q_len, k_len = np.linalg.norm(q, axis=1).mean(), np.linalg.norm(k, axis=1).mean()
    scale = float(np.sqrt(k_len / q_len)) if q_len > 0 and k_len > 0 else 1.0
    shift = (q * scale).mean(0) - (k / scale).mean(0)
    return scale, shift


def project(q: np.ndarray, k: np.ndarray) -> Embedding:
    """Normalise queries q (m, D) and keys k (m, D) into one space (joint_space) and project both to 2-D by PCA."""
    q, k = q.astype(np.float64), k.astype(np.float64)
    scale, shift = joint_space(q, k)
    stacked = np.concatenate([q * scale, k / scale + shift])  # (2m, D)
    centre = stacked.mean(0)
    _, singular, vt = np.linalg.svd(stacked - centre, full_matrices=False)
    top = vt[:2]  # (2, D): each axis's sign is fixed by its largest entry, so the picture does not flip at random
    components = top * np.sign(top[np.arange(len(top)), np.abs(top).argmax(1)])[:, None]
    variance = singular**2
    explained = variance[:2] / variance.sum() if variance.sum() > 0 else np.zeros(2)
    return Embedding(scale, shift, centre, components, explained, (stacked - centre) @ components.T)


def head_vectors(reservoir: Reservoir, layer: int, head: int, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(q, k) of one query head at the sampled positions, (m, D) each; k is its KV head's."""
    return reservoir.payload[f"q{layer}"][:, head], reservoir.payload[f"k{layer}"][:, head // group_size]


def points(
    reservoir: Reservoir, embedding: Embedding, tokens: dict[int, list[str]], context: int = 6
) -> list[dict[str, object]]:
    """The embedding's points as the API gives them: each sampled position's query, then its key.

    `tokens`: the display tokens of every text in the sample, by dataset index; a point carries the `context`
    tokens before its own.
    """
    m = len(reservoir)
    out = []
    for row, (x, y) in enumerate(embedding.coords.tolist()):
        i = row % m
        index, position = int(reservoir.text_index[i]), int(reservoir.position[i])
        words = tokens[index]
        out.append(
            {
                "x": x,
                "y": y,
                "kind": "query" if row < m else "key",
                "text_index": index,
                "position": position,
                "token": words[position],
                "before": "".join(words[max(0, position - context) : position]),
            }
        )
    return out


class LRU(Generic[K, V]):
    """A small thread-safe least-recently-used map (the computed samples and embeddings of recent heads)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
            return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)


@dataclass(frozen=True)
class HeadEmbedding:
    """What GET .../qk_embedding answers for one head, before it becomes JSON."""

    embedding: Embedding
    points: list[dict[str, object]]
    n_texts: int  # texts the sample was drawn from
    seen: int  # positions offered to the reservoir (each text's, cut to the job's max_tokens)


TOKENIZE_CHUNK = 256  # texts tokenized per step


def head_embedding_steps(
    loaded: Loaded,
    texts: list[str],
    indices: list[int],
    max_tokens: int,
    layer: int,
    head: int,
    seed: int,
    samples: LRU[tuple[object, ...], Reservoir],
    sample_key: tuple[object, ...],
    cap: int = MAX_POSITIONS,
) -> Generator[Progress, None, HeadEmbedding]:
    """One head's joint Q/K embedding over the texts `indices` of `texts` (each cut to max_tokens), in steps.

    The layer's sample is taken from `samples` under `sample_key` when there (every head of the layer shares it),
    else measured and kept there.
    """
    tokenizer = loaded.tokenizer
    items: list[tuple[int, list[int]]] = []
    for start in range(0, len(indices), TOKENIZE_CHUNK):
        yield Progress(start, len(indices))
        items += [(i, encode(tokenizer, texts[i])[:max_tokens]) for i in indices[start : start + TOKENIZE_CHUNK]]
    sample = samples.get(sample_key)
    if sample is None:
        sample = yield from sample_steps(loaded, items, [layer], cap, seed)
        samples.put(sample_key, sample)
    if len(sample) == 0:
        raise Conflict("the job's texts have no tokens to sample")
    embedding = project(*head_vectors(sample, layer, head, loaded.adapter.layout.group_size))
    by_index = dict(items)
    tokens = {int(i): token_strings(tokenizer, by_index[int(i)]) for i in np.unique(sample.text_index)}
    return HeadEmbedding(embedding, points(sample, embedding, tokens), len(items), sample.seen)

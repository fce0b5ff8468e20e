"""`Scope`: HeadScope's API as methods named after its endpoints, the same whether the model runs in this
process (`headscope.open`) or behind a server (`headscope.connect`)."""

from __future__ import annotations

import os
import time
from functools import cached_property
from pathlib import Path
from typing import Any

from app.config import Settings
from app.main import create_app
from headscope.circuits import Circuit, Composition, HeadCircuits, PathPatch, QkAttribution
from headscope.corpus import Datasets, Jobs
from headscope.errors import HeadScopeError
from headscope.heads import Head, parse, refs
from headscope.inprocess import InProcess
from headscope.results import Dla, Generation, HeadMatrix, HeadTable, LogitLens
from headscope.transport import Client, http
from headscope.views import Ablation, Attention, Combined, Context, Overview, Similarity

Heads = Head | list[Head] | tuple[Head, ...] | None


def _token(name: str, value: str | int | None) -> dict[str, Any]:
    """A token argument: a one-token string as `name`, an id as `name_id`."""
    if value is None:
        return {}
    return {f"{name}_id": value} if isinstance(value, int) else {name: value}


class Scope:
    """One served model. Every method is one request; errors raise HeadScopeError (status, code, message)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self.datasets = Datasets(client)

    @cached_property
    def jobs(self) -> Jobs:
        """Corpus jobs: `start(dataset, analyses)`, `get(id)`, `list()`."""
        return Jobs(self._client, self.context)

    def request(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        """Any endpoint, by path: the parsed JSON answer."""
        return self._client.request(method, path, body, params)

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        return self._client.request("POST", path, body)

    def close(self) -> None:
        """In-process: stop the model worker and the app. Over HTTP: nothing to release."""
        self._client.close()

    def __enter__(self) -> Scope:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @cached_property
    def model(self) -> dict[str, Any]:
        """GET /api/model: name, n_layers, n_heads, n_kv_heads, kv_groups, max_tokens, device, dtype, …"""
        out: dict[str, Any] = self._client.request("GET", "/api/model")
        return out

    @cached_property
    def roles(self) -> list[dict[str, Any]]:
        """GET /api/roles' `roles`: every head metric's name, label and definition (the columns of heads())."""
        out: list[dict[str, Any]] = self._client.request("GET", "/api/roles")["roles"]
        return out

    @cached_property
    def context(self) -> Context:
        return Context(self.model["name"], self.model, self.roles)

    def __repr__(self) -> str:
        m = self.model
        return f"<Scope {m['name']}: {m['n_layers']} layers × {m['n_heads']} heads on {m['device']} ({m['dtype']})>"

    def tokenize(self, text: str) -> dict[str, Any]:
        """{tokens, token_ids, n_tokens}."""
        out: dict[str, Any] = self._post("/api/tokenize", {"text": text})
        return out

    def attention(self, text: str, heads: Heads = None, layers: list[int] | None = None) -> Attention:
        """Attention maps of `heads` (or every head of `layers`; neither: every head of every layer).

        Returns: Attention; `.to_numpy()` is (n_maps, n_queries, n_keys) in the order asked.
        """
        body: dict[str, Any] = {"text": text, "encoding": "f16"}
        if heads is not None:
            body["heads"] = refs(heads)
        if layers is not None:
            body["layers"] = list(layers)
        if heads is None and layers is None:
            body["layers"] = list(range(self.model["n_layers"]))
        return Attention(self._post("/api/attention", body), text, self.context)

    def overview(self, text: str, thumb: int = 32, top_k: int = 10) -> Overview:
        """Every head's thumbnail and role scores, and the prediction. `.to_numpy()`: (n_layers, n_heads, s, s)."""
        return Overview(self._post("/api/overview", {"text": text, "thumb": thumb, "top_k": top_k}), text, self.context)

    def heads(self, text: str) -> HeadTable:
        """Every head's metrics on the text. `.to_pandas()`: layer, head, kv_group + the registry's names."""
        return HeadTable(self._post("/api/heads", {"text": text}), [r["name"] for r in self.roles])

    def similarity(
        self, text: str, measure: str = "js", order: str = "layer", layer: int | None = None, kv_head: int | None = None
    ) -> Similarity:
        """Heads × heads: `measure` "js" (JS divergence, nats) or "cosine". `.to_numpy()`: (n, n) over `.heads`."""
        body = {"text": text, "metric": measure, "order": order, "layer": layer, "kv_head": kv_head}
        return Similarity(self._post("/api/similarity", body), text, self.context)

    def ablate(self, text: str, heads: Heads, mode: str = "zero", top_k: int = 10) -> Ablation:
        """Switch `heads` off ("zero" or "mean"). `.delta_loss`, `.kl_last`, `.to_numpy()`: KL per position;
        drawn (and `save_html`) as the next-token predictions before and after."""
        off = refs(heads)
        body = {"text": text, "ablate": off, "mode": mode, "top_k": top_k}
        return Ablation(self._post("/api/ablate", body), text, self.context, off, mode)

    def importance(self, text: str, method: str = "gradient") -> HeadMatrix:
        """Head importance: "gradient" (|∂loss/∂gate|) or "ablation" (loss increase). `.to_numpy()`: (L, H)."""
        return HeadMatrix(self._post("/api/importance", {"text": text, "method": method}), "scores", method)

    def patch(
        self,
        clean: str,
        corrupted: str,
        answer: str | int | None = None,
        wrong: str | int | None = None,
        position: int = -1,
        direction: str = "denoise",
    ) -> HeadMatrix:
        """Activation patching per head: (patched − corrupted) / (clean − corrupted). `.to_numpy()`: (L, H)."""
        body = self._pair(clean, corrupted, answer, wrong, position, direction)
        return HeadMatrix(self._post("/api/patch", body), "scores", "patch")

    def dla(
        self, text: str, position: int = -1, target: str | int | None = None, contrast: str | int | None = None
    ) -> Dla:
        """Direct logit attribution. `.to_numpy()`: (L, H) head terms; `.mlp` (L,); they add up to `.logit`."""
        body = {"text": text, "position": position, **_token("target", target), **_token("contrast", contrast)}
        return Dla(self._post("/api/dla", body))

    def logit_lens(self, text: str, position: int = -1, target: str | int | None = None, top_k: int = 5) -> LogitLens:
        """Each block's stream through the final norm and LM head. `.to_numpy()`: target prob per block (L,)."""
        body = {"text": text, "position": position, "top_k": top_k, **_token("target", target)}
        return LogitLens(self._post("/api/logit_lens", body))

    def generate(
        self,
        text: str,
        heads: Heads = None,
        max_new_tokens: int = 32,
        mode: str = "zero",
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Generation:
        """The continuation, and with `heads` the one with them switched off. `.text`, `.ablated_text`."""
        body: dict[str, Any] = {
            "text": text,
            "max_new_tokens": max_new_tokens,
            "mode": mode,
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed,
        }
        if heads is not None:
            body["ablate"] = refs(heads)
        return Generation(self._post("/api/generate", body))

    def circuit(
        self,
        clean: str,
        corrupted: str,
        answer: str | int | None = None,
        wrong: str | int | None = None,
        position: int = -1,
        method: str = "eap-ig",
        steps: int = 5,
        direction: str = "denoise",
        top_n: int = 300,
        faithfulness: bool = False,
    ) -> Circuit:
        """Edge attribution ("eap" or "eap-ig") on one prompt pair: `.to_pandas()` the top_n edges (source, target,
        channel, score), `.node_scores()`, and with `faithfulness` the exact metric recovered by the top n edges."""
        body = {
            **self._pair(clean, corrupted, answer, wrong, position, direction),
            "method": method,
            "steps": steps,
            "top_n": top_n,
            "faithfulness": faithfulness,
        }
        return Circuit(self._post("/api/circuit", body))

    def circuit_pairs(
        self,
        pair_set: str | None = None,
        pairs: list[dict[str, str]] | None = None,
        position: int = -1,
        method: str = "eap-ig",
        steps: int = 5,
        direction: str = "denoise",
        top_n: int = 300,
        seed: int = 0,
    ) -> Circuit:
        """The circuit over a set of prompt pairs: a built-in `pair_set` ("builtin:ioi-pairs") or `pairs` (dicts
        of clean, corrupted, answer, wrong). Each edge's mean with a seeded 95% bootstrap CI over the pairs."""
        body = {"pair_set": pair_set, "pairs": pairs, "position": position, "method": method, "steps": steps}
        body |= {"direction": direction, "top_n": top_n, "seed": seed}
        return Circuit(self._post("/api/circuit_pairs", body))

    def path_patch(
        self,
        clean: str,
        corrupted: str,
        edges: list[tuple[str, str, str]] | str,
        answer: str | int | None = None,
        wrong: str | int | None = None,
        position: int = -1,
        direction: str = "denoise",
    ) -> PathPatch:
        """Exact path patching: only `edges` ((source, target, channel) tuples, or "all") carry the other run's
        values. `.metric`, `.recovered`."""
        listed = edges if isinstance(edges, str) else [{"source": s, "target": t, "channel": c} for s, t, c in edges]
        body = {**self._pair(clean, corrupted, answer, wrong, position, direction), "edges": listed}
        return PathPatch(self._post("/api/path_patch", body))

    def composition(self, kind: str = "k") -> Composition:
        """Q-, K- or V-composition scores of every sender head with every later head, from the weights.
        `.to_numpy()`: (n_senders, n_receivers), NaN where the receiver is not later; `.baseline`."""
        return Composition(self._client.request("GET", "/api/composition", None, {"kind": kind}))

    def head_circuits(self, head: Head) -> HeadCircuits:
        """One head's QK and OV circuits from the weights: singular values, copying score, OV token map."""
        layer, h = parse(head)
        return HeadCircuits(self._client.request("GET", "/api/head_circuits", None, {"layer": layer, "head": h}))

    def qk_attribution(self, text: str, head: Head, query_pos: int = -1, key_pos: int | None = None) -> QkAttribution:
        """Why `head` attends from query_pos to key_pos: the score split into query-node × key-node terms
        (`.to_pandas()`), which add up to `.score`."""
        layer, h = parse(head)
        body = {"text": text, "layer": layer, "head": h, "query_pos": query_pos, "key_pos": key_pos}
        return QkAttribution(self._post("/api/qk_attribution", body))

    @staticmethod
    def _pair(
        clean: str, corrupted: str, answer: str | int | None, wrong: str | int | None, position: int, direction: str
    ) -> dict[str, Any]:
        return {
            "clean": clean,
            "corrupted": corrupted,
            "position": position,
            "direction": direction,
            **_token("answer", answer),
            **_token("wrong", wrong),
        }

    def snapshot(
        self,
        text: str,
        heads: Heads = None,
        thumbnails: bool = True,
        similarity: str | None = None,
        ablate: Heads = None,
        mode: str = "zero",
    ) -> Combined:
        """One view of `text` to show or save: the all-heads grid, the maps of `heads`, a similarity matrix, and
        with `ablate` the next-token predictions before and after switching those heads off."""
        ov = self.overview(text) if thumbnails else None
        maps = self.attention(text, heads) if heads is not None else None
        sim = self.similarity(text, similarity) if similarity else None
        off = self.ablate(text, ablate, mode) if ablate else None
        return Combined(text, self.context, overview=ov, attention=maps, similarity=sim, ablation=off)


def _wait_ready(client: Client, timeout_s: float) -> None:
    """Poll /api/ready until the model is loaded and warm; a failed load raises at once (load_failed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.request("GET", "/api/ready", retry=False)
            return
        except HeadScopeError as err:
            if err.code != "not_ready" or time.monotonic() > deadline:
                raise
        time.sleep(0.02)


def open(
    model: str = "smollm2-135m",
    device: str | None = None,
    dtype: str | None = None,
    data_dir: str | Path | None = None,
    timeout_s: float = 600.0,
    **settings: Any,
) -> Scope:
    """The model in this process, behind the same app as the server (its routes, checks and limits).

    Args:
        model: a registry name (models/registry.toml), a local directory, or a hub id.
        device: "cpu", "cuda", "cuda:N", "mps" (default: auto). dtype: "float32", "bfloat16", "float16".
        data_dir: where corpus datasets and jobs are kept (default: HEADSCOPE_DATA_DIR, else ~/.cache/headscope).
        settings: any other app.config.Settings field (max_tokens, …); `warmup` is off here (the first request
            warms the model) unless given.
    """
    store = data_dir or os.environ.get("HEADSCOPE_DATA_DIR") or Path.home() / ".cache" / "headscope"
    # A server warms its model before it says it is ready, so that its first client does not wait; in this
    # process the first request is the only client, and it warms the model itself (warmup=True to warm first).
    settings.setdefault("warmup", False)
    config = Settings(
        model=model, device=device or "auto", dtype=dtype or "auto", data_dir=Path(store), api_key=None, **settings
    )
    app = InProcess(create_app(config))
    client = Client(app.send, close=app.close)
    try:
        _wait_ready(client, timeout_s)
    except BaseException:
        app.close()
        raise
    return Scope(client)


def connect(url: str, api_key: str | None = None, timeout_s: float = 600.0) -> Scope:
    """A HeadScope server at `url` (e.g. "http://127.0.0.1:8000"); `api_key` when it has HEADSCOPE_API_KEY set.

    Raises HeadScopeError: code "unreachable" when nothing answers there, the server's 401 "unauthorized"
    when it wants a key and `api_key` is missing or wrong (asked of GET /api/roles, which needs the key but
    not the model, so a server still loading its model is connected to).
    """
    client = Client(http(url, timeout_s), api_key=api_key)
    client.request("GET", "/api/health")
    client.request("GET", "/api/roles")  # needs the key, not the model: a missing or wrong key fails here
    return Scope(client)

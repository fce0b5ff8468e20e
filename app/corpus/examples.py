"""An example text as the pages show it: its tokens (cut to the job's max_tokens) and where the head does it most.

Shared by GET .../examples and the static atlas, so both describe a text the same way.
"""

from __future__ import annotations

from typing import Any

from app.inspect.engine.runs import encode, token_strings


def describe(
    tokenizer: Any,
    text: str,
    max_tokens: int,
    index: int,
    score: float,
    where: tuple[int, int] | None,
    decile: int | None = None,
) -> dict[str, Any]:
    """{text_index, score, text, tokens, query_pos, key_pos, decile}: the fields of the API's ExampleOut."""
    ids = encode(tokenizer, text)[:max_tokens]
    return {
        "text_index": index,
        "score": score,
        "text": text,
        "tokens": token_strings(tokenizer, ids),
        "query_pos": where[0] if where else None,
        "key_pos": where[1] if where else None,
        "decile": decile,
    }

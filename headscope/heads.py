"""Heads as the client takes them, `(3, 5)`, `"L3H5"` or `{"layer": 3, "head": 5}`, and as the API wants them."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

Head = tuple[int, int] | str | Mapping[str, int]
_LABEL = re.compile(r"^\s*L(\d+)\s*H(\d+)\s*$", re.I)


def parse(head: Head) -> tuple[int, int]:
    """(layer, head) from any accepted form; ValueError for anything else (the server checks the bounds)."""
    if isinstance(head, str):
        m = _LABEL.match(head)
        if not m:
            raise ValueError(f"a head is (layer, head) or 'L3H5', not {head!r}")
        return int(m.group(1)), int(m.group(2))
    if isinstance(head, Mapping):
        return int(head["layer"]), int(head["head"])
    layer, h = head
    return int(layer), int(h)


def label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def refs(heads: Head | Iterable[Head] | None) -> list[dict[str, int]]:
    """The API's list of {layer, head}; one head alone (a tuple or a label) counts as a list of one."""
    if heads is None:
        return []
    one = isinstance(heads, str | Mapping) or (
        isinstance(heads, tuple) and len(heads) == 2 and all(isinstance(x, int) for x in heads)
    )
    items: Iterable[Any] = [heads] if one else heads
    return [{"layer": layer, "head": h} for layer, h in (parse(x) for x in items)]

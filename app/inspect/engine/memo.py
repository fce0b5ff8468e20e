"""A run's memo: what analyses derive from a run and keep on it, under typed keys, every byte counted.

Each analysis declares its `Key` once (`BASELINE = Key[Baseline]("baseline")`); `get` returns that type,
`put` counts the bytes of every tensor the value holds and tells the run cache, which enforces its byte limit
whenever a run grows, not only when a run is added.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Key(Generic[T]):
    """The name of one kind of derived data; its type parameter is the type of the value kept under it."""

    name: str


def nbytes(value: Any) -> int:
    """Bytes held by the tensors in a value: a tensor, or dataclasses, dicts, lists and tuples of them."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(nbytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(nbytes(v) for v in value)
    return 0


class Memo:
    """Derived data of one run by key, with the bytes of each counted when it is put."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}
        self._bytes: dict[str, int] = {}
        self.on_grow: Callable[[], None] | None = None  # set by the run cache that holds the run

    def get(self, key: Key[T]) -> T | None:
        return cast("T | None", self._values.get(key.name))

    def put(self, key: Key[T], value: T) -> T:
        """Keep `value` under `key` (replacing what was there) and return it."""
        self._values[key.name] = value
        self._bytes[key.name] = nbytes(value)
        if self.on_grow is not None:
            self.on_grow()
        return value

    def pop(self, key: Key[T]) -> T | None:
        self._bytes.pop(key.name, None)
        return cast("T | None", self._values.pop(key.name, None))

    def __contains__(self, key: Key[Any]) -> bool:
        return key.name in self._values

    @property
    def nbytes(self) -> int:
        return sum(self._bytes.values())

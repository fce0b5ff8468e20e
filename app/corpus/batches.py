"""A corpus job's batch as it goes to whatever measures it, and the one retry rule when it runs out of memory.

A batch is (text index, token ids) items. A batch that runs out of memory is measured again as its two
halves, each on its own (in-process, as slices of their own; on Ray, as pieces any actor may take); a
single text that does not fit alone fails the job with a message that says what to change.
"""

from __future__ import annotations

Items = list[tuple[int, list[int]]]  # (text index, token ids) of one batch


class OutOfMemoryInBatch(Exception):
    """A single text did not fit in memory even alone."""


def halves(items: Items, cause: BaseException | None = None) -> tuple[Items, Items]:
    """The two halves to measure instead of `items`, which ran out of memory (`cause`, when there is one).

    Raises:
        OutOfMemoryInBatch: `items` is one text, which cannot be split further.
    """
    if len(items) == 1:
        index, ids = items[0]
        raise OutOfMemoryInBatch(
            f"out of memory on text {index} ({len(ids)} tokens) even alone; start the job with a smaller max_tokens"
        ) from cause
    half = len(items) // 2
    return items[:half], items[half:]
